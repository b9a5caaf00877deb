"""The skel's side of issue 8: bad input gets its spec code (never 999), CNI_NETNS must be a network
namespace, failures of shared code reach the plugin's translation, one log line per command."""
import json
import os
import subprocess
import sys

import pytest

from libcni_py import skel
from libcni_py.errors import CNIError
from tests.unit.test_libcni_skel import conf, env_for, error_of, run


@pytest.mark.parametrize("stdin", ['{"cniVersion": "1.1.0", "name": "n", "x": 1e999}',
                                   '{"cniVersion": "1.1.0", "name": "n", "x": NaN}',
                                   '{"a": ' * 50000 + "1" + "}" * 50000,
                                   '{"cniVersion": "1.1.0", "name": "n", "prevResult": '
                                   + "[" * 50000 + "]" * 50000 + "}"])
def test_undecodable_stdin_is_code_6(stdin):
    assert error_of(env_for("ADD"), stdin)["code"] == 6


def test_non_utf8_stdin_is_code_6():
    import io
    out, err = io.StringIO(), io.StringIO()
    plugin = skel.Plugin(add=lambda a: None, check=lambda a: None, delete=lambda a: None)
    rc = skel.run(plugin, env_for("ADD"), io.BytesIO(b'{"cniVersion": "1.1.0", "name": "\xff"}'), out, err)
    assert rc == 1 and json.loads(out.getvalue())["code"] == 6


def test_non_utf8_ifname_is_code_4():
    ifname = b"eth\xff".decode("utf-8", "surrogateescape")       # what os.environ makes of it
    assert error_of(env_for("ADD", CNI_IFNAME=ifname), conf())["code"] == 4


@pytest.mark.parametrize("kind", ["file", "dir", "relative", "fifo", "missing"])
@pytest.mark.parametrize("cmd", ["ADD", "CHECK"])
def test_cni_netns_that_is_no_network_namespace_is_code_4_without_blocking(tmp_path, kind, cmd):
    path = {"file": tmp_path / "f", "dir": tmp_path, "relative": "ns/x", "fifo": tmp_path / "fifo",
            "missing": tmp_path / "gone"}[kind]
    if kind == "file":
        path.write_text("")
    if kind == "fifo":
        os.mkfifo(path)
    c = conf(prevResult={"cniVersion": "1.1.0"}) if cmd == "CHECK" else conf()
    assert error_of(env_for(cmd, CNI_NETNS=str(path)), c)["code"] == 4


def test_del_treats_a_cni_netns_that_is_no_namespace_as_gone(tmp_path):
    left = tmp_path / "netns-file"          # what a bind mount leaves after umount
    left.write_text("")
    rc, out, _, rec = run(env_for("DEL", CNI_NETNS=str(left)), conf())
    assert rc == 0 and out == ""
    args = rec.calls[0][1]
    assert args.netns == "" and args.netns_gone == str(left)


def test_translate_turns_shared_code_failures_into_plugin_codes():
    def add(args):
        raise PermissionError(13, "denied")
    def translate(e):
        return CNIError(123, "kernel said no", str(e)) if isinstance(e, OSError) else None
    plugin = skel.Plugin(add=add, check=add, delete=add, translate=translate)
    out = error_of(env_for("ADD"), conf(), plugin=plugin)
    assert out["code"] == 123 and out["details"] == "[Errno 13] denied"


def test_untranslated_failure_is_999_with_traceback_on_stderr_only():
    def add(args):
        raise ZeroDivisionError("x")
    plugin = skel.Plugin(add=add, check=add, delete=add, translate=lambda e: None)
    rc, out, err, _ = run(env_for("ADD"), conf(), plugin=plugin)
    assert rc == 1 and json.loads(out)["code"] == 999
    assert "Traceback" in err and "Traceback" not in out


PLUGIN_SRC = """
import sys
sys.path.insert(0, {root!r})
from libcni_py.errors import CNIError
from libcni_py.skel import Plugin, plugin_main
from libcni_py.types import Result
def add(args):
    if args.container_id == "bad":
        raise CNIError(108, "kernel refused a peer entry", "EEXIST")
    return Result()
plugin_main(Plugin(add=add, check=lambda a: None, delete=lambda a: None))
"""


def exec_plugin(tmp_path, cid, c):
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN_SRC.format(root=os.getcwd()))
    env = {**os.environ, **env_for("ADD", CNI_CONTAINERID=cid)}
    return subprocess.run([sys.executable, str(script)], input=json.dumps(c).encode(), env=env,
                          capture_output=True, timeout=30)


@pytest.mark.parametrize("level", ["info", "debug"])
def test_log_file_gets_one_line_per_command_and_every_failure(tmp_path, level):
    log = tmp_path / "plugin.log"
    c = conf(logFile=str(log), logLevel=level)
    assert exec_plugin(tmp_path, "good", c).returncode == 0
    p = exec_plugin(tmp_path, "bad", c)
    assert p.returncode == 1 and json.loads(p.stdout)["code"] == 108
    lines = log.read_text().splitlines()
    info = [line for line in lines if " INFO " in line or " ERROR " in line]
    assert len(info) == 2, lines
    assert "ADD network=net1 containerID=good ifname=eth0: ok (" in info[0]
    assert "ERROR" in info[1] and "containerID=bad" in info[1] and "code 108: kernel refused" in info[1]
    assert any(" DEBUG " in line for line in lines) == (level == "debug")


def test_failures_are_logged_at_error_whatever_the_level(tmp_path):
    log = tmp_path / "plugin.log"
    p = exec_plugin(tmp_path, "bad", conf(logFile=str(log), logLevel="error"))
    assert p.returncode == 1
    assert "code 108" in log.read_text() and "code 108" in p.stderr.decode()
    assert exec_plugin(tmp_path, "good", conf(logFile=str(log), logLevel="error")).returncode == 0
    assert len(log.read_text().splitlines()) == 1


@pytest.mark.parametrize("kind", ["fifo", "dir", "symlink", "relative", "long"])
def test_bad_log_file_is_code_7_on_add_and_a_warning_elsewhere(tmp_path, kind):
    path = {"fifo": tmp_path / "fifo", "dir": tmp_path, "symlink": tmp_path / "link",
            "relative": "x.log", "long": "/" + "a" * 300}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    if kind == "symlink":
        os.symlink(tmp_path / "target", path)
    assert error_of(env_for("ADD"), conf(logFile=str(path)))["code"] == 7
    rc, out, err, _ = run(env_for("DEL"), conf(logFile=str(path)))
    assert rc == 0 and "logFile" in err
    assert not (tmp_path / "target").exists()
