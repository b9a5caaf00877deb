"""The real executables: .venv/bin/pycni-passthrough (and a crashing skel plugin) via exec.

Bad input, each with its code: exit status 1, stdout exactly one JSON error object
and never a traceback.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from libcni_py.types import decode
from tests.conftest import VENV_BIN

PASSTHROUGH = os.path.join(VENV_BIN, "pycni-passthrough")
NETNS = "/proc/self/ns/net"


def conf(ver="1.1.0", **extra):
    c = {"cniVersion": ver, "name": "net1", "type": "pycni-passthrough"}
    c.update(extra)
    return c


def env_for(cmd, **over):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": cmd, "CNI_CONTAINERID": "c1",
           "CNI_NETNS": NETNS, "CNI_IFNAME": "eth0", "CNI_PATH": VENV_BIN}
    env.update(over)
    return {k: v for k, v in env.items() if v is not None}


def exec_plugin(env, stdin, exe=PASSTHROUGH):
    if isinstance(stdin, dict):
        stdin = json.dumps(stdin)
    return subprocess.run([exe], input=stdin.encode(), env=env, capture_output=True, timeout=60)


def assert_error(p, code):
    out = p.stdout.decode()
    assert p.returncode == 1, out
    assert "Traceback" not in out
    obj = json.loads(out)                       # the whole of stdout is one JSON document
    assert isinstance(obj, dict) and obj["code"] == code, obj
    assert obj["msg"] and set(obj) <= {"cniVersion", "code", "msg", "details"}
    return obj


BAD_INPUT = [
    # (id, env overrides, stdin, code)
    ("missing CNI_CONTAINERID", dict(CNI_CONTAINERID=None), conf(), 4),
    ("missing CNI_NETNS", dict(CNI_NETNS=None), conf(), 4),
    ("missing CNI_IFNAME", dict(CNI_IFNAME=None), conf(), 4),
    ("missing CNI_PATH", dict(CNI_PATH=None), conf(), 4),
    ("unknown CNI_COMMAND", dict(CNI_COMMAND="ATTACH"), conf(), 4),
    ("bad JSON", {}, '{"cniVersion": "1.0.0", "name": ', 6),
    ("JSON not an object", {}, "[1, 2]", 6),
    ("unknown cniVersion", {}, conf("0.9.0"), 1),
    ("invalid field value", {}, conf(logLevel="verbose"), 7),
    ("unknown field", {}, conf(mtu=1400), 7),
    ("invalid network name", {}, conf(name="net 1"), 7),
    ("invalid container ID", dict(CNI_CONTAINERID="../etc"), conf(), 4),
    ("ifname too long", dict(CNI_IFNAME="a-very-long-ifname"), conf(), 4),
    ("CHECK at 0.3.1", dict(CNI_COMMAND="CHECK"), conf("0.3.1"), 1),
    ("GC at 1.0.0", dict(CNI_COMMAND="GC"), conf("1.0.0"), 1),
    ("STATUS at 1.0.0", dict(CNI_COMMAND="STATUS"), conf("1.0.0"), 1),
    ("netns does not exist", dict(CNI_NETNS="/run/netns/pycni-absent"), conf(), 4),
    ("CHECK netns does not exist", dict(CNI_COMMAND="CHECK", CNI_NETNS="/run/netns/pycni-absent"), conf(), 4),
    ("malformed prevResult", {}, conf(prevResult={"ips": [{"address": "10.0.0.300/24"}]}), 6),
]


@pytest.mark.parametrize("over,stdin,code", [b[1:] for b in BAD_INPUT], ids=[b[0] for b in BAD_INPUT])
def test_bad_input_gives_its_code_and_no_traceback(over, stdin, code):
    assert_error(exec_plugin(env_for("ADD", **over), stdin), code)


def test_invalid_field_error_names_the_field_and_the_value():
    e = assert_error(exec_plugin(env_for("ADD"), conf(logLevel="verbose")), 7)
    assert "'logLevel'" in e["msg"] and "'verbose'" in e["msg"] and '"verbose"' in e["details"]


def test_error_object_is_in_the_config_version():
    e = assert_error(exec_plugin(env_for("CHECK"), conf("0.3.1")), 1)
    assert e["cniVersion"] == "0.3.1"


@pytest.mark.parametrize("ver", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_add_passes_prev_result_through_in_the_config_version(ver):
    prev = decode({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": NETNS}],
                   "ips": [{"interface": 0, "address": "10.1.0.9/24", "gateway": "10.1.0.1"}],
                   "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.1.0.1"]}}).encode(ver)
    p = exec_plugin(env_for("ADD"), conf(ver, prevResult=prev))   # a runtime sends it in the list version
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout) == prev
    assert ("version" in prev["ips"][0]) == (ver < "1.0.0")


def test_add_without_prev_result_is_an_empty_result():
    p = exec_plugin(env_for("ADD"), conf("1.0.0"))
    assert p.returncode == 0 and json.loads(p.stdout) == {"cniVersion": "1.0.0", "dns": {}}


@pytest.mark.parametrize("cmd,ver", [("CHECK", "0.4.0"), ("DEL", "0.3.0"), ("GC", "1.1.0"), ("STATUS", "1.1.0")])
def test_other_verbs_succeed_with_empty_stdout(cmd, ver):
    p = exec_plugin(env_for(cmd), conf(ver))
    assert (p.returncode, p.stdout) == (0, b""), p.stderr


def test_del_succeeds_when_the_netns_is_gone():
    p = exec_plugin(env_for("DEL", CNI_NETNS="/run/netns/pycni-absent"), conf())
    assert (p.returncode, p.stdout) == (0, b"")


def test_version():
    p = exec_plugin({"CNI_COMMAND": "VERSION"}, '{"cniVersion": "1.0.0"}')
    assert p.returncode == 0
    assert json.loads(p.stdout) == {"cniVersion": "1.0.0",
                                    "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_about_text_without_cni_command():
    p = exec_plugin({"PATH": os.environ.get("PATH", "")}, "")
    assert p.returncode == 0 and p.stdout == b""
    assert b"pycni-passthrough" in p.stderr and b"CNI protocol versions supported: 0.3.0" in p.stderr


def test_a_bug_inside_a_plugin_is_code_999_and_the_traceback_goes_to_stderr(tmp_path):
    exe = tmp_path / "crashing-plugin"
    exe.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        sys.path.insert(0, {os.path.dirname(os.path.dirname(VENV_BIN))!r})
        from libcni_py.skel import Plugin, plugin_main

        def add(args):
            return 1 / 0

        plugin_main(Plugin(add=add, check=add, delete=add))
        """))
    exe.chmod(0o755)
    p = exec_plugin(env_for("ADD"), conf("1.0.0"), exe=str(exe))
    e = assert_error(p, 999)
    assert "ZeroDivisionError" in e["msg"] and e["cniVersion"] == "1.0.0"
    assert b"Traceback" in p.stderr
