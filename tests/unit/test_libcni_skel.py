"""The plugin skeleton in-process: env per verb, name rules, version gates, error objects.

Every path drives libcni_py.skel.run with a real environment dict, stdin and stdout,
the way plugin_main does; the executable itself is driven in test_libcni_plugin_exec.py.
"""
import io
import json

import pytest

from libcni_py import errors as E
from libcni_py import skel
from libcni_py.errors import CNIError
from libcni_py.types import IPConfig, Result
from libcni_py.version import ALL

NETNS = "/proc/self/ns/net"          # exists for everyone; the skel only checks existence
VERBS_WITH_CONF = ("ADD", "CHECK", "DEL", "GC", "STATUS")


def env_for(cmd, **over):
    env = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": "c1", "CNI_NETNS": NETNS,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    env.update(over)
    return {k: v for k, v in env.items() if v is not None}


def conf(ver="1.1.0", **extra):
    c = {"cniVersion": ver, "name": "net1", "type": "test"}
    c.update(extra)
    return c


class Recorder:
    """Handlers that remember the CmdArgs they got."""

    def __init__(self):
        self.calls = []

    def add(self, args):
        self.calls.append(("ADD", args))
        prev = args.prev_result
        return prev if prev is not None else Result(ips=[IPConfig(address="10.1.0.5/24", gateway="10.1.0.1")])

    def check(self, args):
        self.calls.append(("CHECK", args))

    def delete(self, args):
        self.calls.append(("DEL", args))

    def gc(self, args):
        self.calls.append(("GC", args))

    def status(self, args):
        self.calls.append(("STATUS", args))


def run(env, stdin=None, plugin=None, rec=None):
    rec = rec or Recorder()
    plugin = plugin or skel.Plugin(add=rec.add, check=rec.check, delete=rec.delete, gc=rec.gc,
                                   status=rec.status, about="test plugin v0")
    if isinstance(stdin, dict):
        stdin = json.dumps(stdin)
    out, err = io.StringIO(), io.StringIO()
    rc = skel.run(plugin, env, io.BytesIO((stdin or "").encode()), out, err)
    return rc, out.getvalue(), err.getvalue(), rec


def error_of(env, stdin=None, **kw):
    rc, out, err, _ = run(env, stdin, **kw)
    assert rc == 1, out
    obj = json.loads(out)                    # exactly one JSON document
    assert isinstance(obj, dict) and "Traceback" not in out
    assert set(obj) <= {"cniVersion", "code", "msg", "details"}
    return obj


# ---- environment per verb (CNI spec 1.1.0 / Go skel) ----

REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}
ALL_VARS = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH", "CNI_ARGS")


@pytest.mark.parametrize("cmd,var", [(c, v) for c, vs in REQUIRED.items() for v in vs])
def test_missing_required_env_var_is_code_4_naming_it(cmd, var):
    e = error_of(env_for(cmd, **{var: None}), conf())
    assert e["code"] == E.INVALID_ENV == 4
    assert e["msg"] == f"required env variables [{var}] missing"


@pytest.mark.parametrize("cmd,var", [(c, v) for c, vs in REQUIRED.items() for v in ALL_VARS if v not in vs])
def test_optional_env_var_may_be_absent(cmd, var):
    rc, out, err, rec = run(env_for(cmd, **{var: None}), conf())
    assert rc == 0, out + err
    if cmd != "VERSION":
        assert rec.calls[0][0] == cmd


def test_missing_vars_are_listed_together_in_go_order():
    env = {"CNI_COMMAND": "ADD", "CNI_NETNS": NETNS}
    assert error_of(env, conf())["msg"] == "required env variables [CNI_CONTAINERID,CNI_IFNAME,CNI_PATH] missing"


def test_empty_env_var_counts_as_missing():
    assert error_of(env_for("ADD", CNI_IFNAME=""), conf())["code"] == 4


def test_unknown_cni_command_is_code_4():
    e = error_of(env_for("FROB"), conf())
    assert e["code"] == 4 and e["msg"] == "unknown CNI_COMMAND: FROB"


def test_no_cni_command_prints_the_about_text_on_stderr_and_exits_0():
    rc, out, err, rec = run({}, "")
    assert rc == 0 and out == "" and not rec.calls
    assert err.splitlines() == ["test plugin v0", "CNI protocol versions supported: " + ", ".join(ALL)]


def test_no_cni_command_without_about_text_is_code_4():
    rec = Recorder()
    plugin = skel.Plugin(add=rec.add, check=rec.check, delete=rec.delete)
    e = error_of({}, "", plugin=plugin)
    assert e["code"] == 4 and "CNI_COMMAND" in e["msg"]


def test_cmd_args_carry_the_environment_and_stdin():
    stdin = json.dumps(conf("1.0.0"))
    rc, out, _, rec = run(env_for("DEL", CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web-0"), stdin)
    assert rc == 0 and out == ""
    args = rec.calls[0][1]
    assert (args.command, args.container_id, args.netns, args.ifname, args.path) == \
        ("DEL", "c1", NETNS, "eth0", "/opt/cni/bin")
    assert args.stdin == stdin.encode() and args.conf == conf("1.0.0")
    assert args.cni_version == "1.0.0" and args.network == "net1"
    assert args.args_dict == {"IgnoreUnknown": "1", "K8S_POD_NAME": "web-0"}


# ---- names ----

GOOD_IDS = ["a", "0", "c1", "abc-DEF_0.9", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
BAD_IDS = ["-a", ".a", "_a", "a b", "a/b", "a:b", "a\n", "a\tb", "é", "a;b", "a$b"]


@pytest.mark.parametrize("cid", GOOD_IDS)
def test_valid_container_ids(cid):
    skel.validate_container_id(cid)
    assert run(env_for("ADD", CNI_CONTAINERID=cid), conf())[0] == 0


@pytest.mark.parametrize("cid", BAD_IDS)
def test_invalid_container_id_is_code_4(cid):
    e = error_of(env_for("ADD", CNI_CONTAINERID=cid), conf())
    assert e["code"] == 4 and e["msg"] == "invalid characters in containerID" and e["details"] == cid


def test_empty_container_id_is_unknown_container():
    with pytest.raises(CNIError) as ei:
        skel.validate_container_id("")
    assert ei.value.code == E.UNKNOWN_CONTAINER == 3


@pytest.mark.parametrize("name", GOOD_IDS)
def test_valid_network_names(name):
    assert run(env_for("ADD"), conf(name=name))[0] == 0


@pytest.mark.parametrize("name", BAD_IDS)
def test_invalid_network_name_is_code_7(name):
    e = error_of(env_for("ADD"), conf(name=name))
    assert e["code"] == E.INVALID_CONFIG == 7 and e["details"] == name


def test_missing_network_name_is_code_7():
    c = conf()
    del c["name"]
    e = error_of(env_for("ADD"), c)
    assert e["code"] == 7 and e["msg"] == "missing network name"


@pytest.mark.parametrize("ifname", ["e", "eth0", "a" * 15, "net1.100", "veth-ab_cd", "é" * 7])
def test_valid_ifnames(ifname):
    skel.validate_ifname(ifname)
    assert run(env_for("ADD", CNI_IFNAME=ifname), conf())[0] == 0


@pytest.mark.parametrize("ifname,msg", [
    ("a" * 16, "interface name is too long"),
    ("é" * 8, "interface name is too long"),          # 16 bytes: the kernel (and Go) count bytes
    (".", "interface name is . or .."),
    ("..", "interface name is . or .."),
    ("a/b", "interface name contains / or : or whitespace characters"),
    ("a:b", "interface name contains / or : or whitespace characters"),
    ("a b", "interface name contains / or : or whitespace characters"),
    ("a\tb", "interface name contains / or : or whitespace characters"),
    ("eth0\n", "interface name contains / or : or whitespace characters"),
])
def test_invalid_ifname_is_code_4(ifname, msg):
    e = error_of(env_for("ADD", CNI_IFNAME=ifname), conf())
    assert e["code"] == 4 and e["msg"] == msg


def test_names_are_checked_for_check_and_del_too():
    for cmd in ("CHECK", "DEL"):
        assert error_of(env_for(cmd, CNI_CONTAINERID="a/b"), conf())["code"] == 4
        assert error_of(env_for(cmd, CNI_IFNAME="a" * 16), conf())["code"] == 4


def test_bad_cni_args_pair_is_code_4():
    e = error_of(env_for("ADD", CNI_ARGS="K8S_POD_NAME=a;novalue"), conf())
    assert e["code"] == 4 and "novalue" in e["msg"]


# ---- stdin and versions ----

@pytest.mark.parametrize("stdin", ["", "{", "not json", '{"cniVersion": "1.0.0",}', "\xff"])
def test_bad_json_is_code_6(stdin):
    assert error_of(env_for("ADD"), stdin)["code"] == E.DECODING_FAILURE == 6


@pytest.mark.parametrize("stdin", ["[]", '"net"', "42", "null"])
def test_json_that_is_not_an_object_is_code_6(stdin):
    assert error_of(env_for("ADD"), stdin)["code"] == 6


@pytest.mark.parametrize("ver", ["0.5.0", "9.9.9", "1.2.0", "0.2.0"])
def test_unknown_cni_version_is_code_1(ver):
    e = error_of(env_for("ADD"), conf(ver))
    assert e["code"] == E.INCOMPATIBLE_VERSION == 1 and ver in e["details"]
    assert e["cniVersion"] == "1.1.0"      # an error in a version the runtime can read


@pytest.mark.parametrize("cmd,code", [("ADD", 1), ("DEL", 1), ("CHECK", 6), ("GC", 6), ("STATUS", 6)])
def test_a_cni_version_that_is_no_version_is_code_1_or_6_as_in_go(cmd, code):
    """Go's skel looks ADD/DEL's version up (not found: 1) and compares the others' (unparsable: 6)."""
    assert error_of(env_for(cmd), conf("1.0"))["code"] == code


def test_absent_cni_version_means_0_1_0_which_we_do_not_support():
    c = conf()
    del c["cniVersion"]
    assert error_of(env_for("ADD"), c)["code"] == 1


@pytest.mark.parametrize("ver", ["0.3.0", "0.3.1"])
def test_check_below_0_4_0_is_code_1(ver):
    e = error_of(env_for("CHECK"), conf(ver))
    assert e["code"] == 1 and "CHECK" in e["msg"] and e["cniVersion"] == ver


@pytest.mark.parametrize("cmd", ["GC", "STATUS"])
@pytest.mark.parametrize("ver", ["0.3.1", "0.4.0", "1.0.0"])
def test_gc_and_status_below_1_1_0_are_code_1(cmd, ver):
    e = error_of(env_for(cmd), conf(ver))
    assert e["code"] == 1 and cmd in e["msg"]


@pytest.mark.parametrize("cmd,lowest", [("CHECK", "0.4.0"), ("GC", "1.1.0"), ("STATUS", "1.1.0")])
def test_verbs_run_from_their_first_version(cmd, lowest):
    for ver in ALL[ALL.index(lowest):]:
        rc, out, err, rec = run(env_for(cmd), conf(ver))
        assert rc == 0 and rec.calls[0][0] == cmd, out + err


def test_plugin_without_gc_and_status_handlers_succeeds_silently():
    rec = Recorder()
    plugin = skel.Plugin(add=rec.add, check=rec.check, delete=rec.delete)
    for cmd in ("GC", "STATUS"):
        assert run(env_for(cmd), conf(), plugin=plugin)[:2] == (0, "")


def test_version_the_plugin_does_not_support_is_code_1():
    rec = Recorder()
    plugin = skel.Plugin(add=rec.add, check=rec.check, delete=rec.delete, supported=("0.4.0", "1.0.0"))
    e = error_of(env_for("ADD"), conf("1.1.0"), plugin=plugin)
    assert e["code"] == 1 and not rec.calls


@pytest.mark.parametrize("cmd", ["ADD", "CHECK"])
def test_netns_that_does_not_exist_is_code_4(cmd):
    e = error_of(env_for(cmd, CNI_NETNS="/run/netns/pycni-no-such-ns"), conf())
    assert e["code"] == 4 and "pycni-no-such-ns" in e["msg"]


def test_del_with_a_netns_that_is_gone_still_runs():
    rc, out, _, rec = run(env_for("DEL", CNI_NETNS="/run/netns/pycni-no-such-ns"), conf())
    assert rc == 0 and out == "" and rec.calls[0][0] == "DEL"


def test_version_answers_the_supported_list():
    for stdin, want in [("", "1.1.0"), (json.dumps({"cniVersion": "0.4.0"}), "0.4.0"),
                        (json.dumps({"cniVersion": "7.0.0"}), "1.1.0")]:
        rc, out, _, rec = run({"CNI_COMMAND": "VERSION"}, stdin)
        assert rc == 0 and not rec.calls
        assert json.loads(out) == {"cniVersion": want, "supportedVersions": list(ALL)}


# ---- results and errors from handlers ----

@pytest.mark.parametrize("ver", ALL)
def test_add_result_is_encoded_in_the_config_version(ver):
    rc, out, _, _ = run(env_for("ADD"), conf(ver))
    assert rc == 0
    res = json.loads(out)
    assert res["cniVersion"] == ver
    assert res["ips"][0]["address"] == "10.1.0.5/24"
    assert ("version" in res["ips"][0]) == (ver in ("0.3.0", "0.3.1", "0.4.0"))


def test_prev_result_is_parsed_in_the_config_version():
    prev = {"cniVersion": "0.4.0", "interfaces": [{"name": "eth0", "sandbox": NETNS}],
            "ips": [{"version": "4", "interface": 0, "address": "10.9.0.2/16"}], "dns": {}}
    rc, out, _, rec = run(env_for("ADD"), conf("0.4.0", prevResult=prev))
    assert rc == 0 and json.loads(out) == prev
    assert rec.calls[0][1].prev_result.ips[0].address == "10.9.0.2/16"


def test_cni_error_from_a_handler_keeps_its_code_and_details():
    def add(args):
        raise CNIError(121, "pod port not found", "ifindex 7")
    plugin = skel.Plugin(add=add, check=add, delete=add)
    e = error_of(env_for("ADD"), conf("1.0.0"), plugin=plugin)
    assert e == {"cniVersion": "1.0.0", "code": 121, "msg": "pod port not found", "details": "ifindex 7"}


def test_exception_in_a_handler_is_code_999_with_the_traceback_on_stderr_only():
    def add(args):
        return {"a": 1}["missing-key"]
    plugin = skel.Plugin(add=add, check=add, delete=add)
    rc, out, err, _ = run(env_for("ADD"), conf("1.0.0"), plugin=plugin)
    assert rc == 1
    e = json.loads(out)
    assert e["code"] == E.INTERNAL == 999 and "KeyError" in e["msg"] and e["cniVersion"] == "1.0.0"
    assert "Traceback" not in out and "Traceback" in err


def test_add_without_a_result_is_code_999():
    plugin = skel.Plugin(add=lambda a: None, check=lambda a: None, delete=lambda a: None)
    assert error_of(env_for("ADD"), conf(), plugin=plugin)["code"] == 999


def test_validate_hook_error_names_field_and_value():
    from plugins.pkg.schema import validator
    rec = Recorder()
    plugin = skel.Plugin(add=rec.add, check=rec.check, delete=rec.delete, validate=validator("passthrough"))
    e = error_of(env_for("ADD"), conf(logLevel="loud"), plugin=plugin)
    assert e["code"] == 7 and "logLevel" in e["msg"] and '"loud"' in e["details"] and not rec.calls
    e = error_of(env_for("ADD"), conf(bogusKey=3), plugin=plugin)
    assert e["code"] == 7 and "bogusKey" in e["msg"]


def test_cni_error_dict_round_trip():
    err = CNIError(7, "bad", "field x")
    assert CNIError.from_dict(err.to_dict("1.0.0")).to_dict("1.0.0") == \
        {"cniVersion": "1.0.0", "code": 7, "msg": "bad", "details": "field x"}
    assert CNIError(4, "m").to_dict() == {"code": 4, "msg": "m"}


@pytest.mark.parametrize("raw", [["c1"], [{"containerID": "c1"}], [{"containerID": 1, "ifname": "eth0"}], "c1"],
                         ids=["string entry", "no ifname", "non-string id", "not a list"])
def test_malformed_valid_attachments_are_code_7_not_skipped(raw):
    args = skel.CmdArgs("GC", conf={"cniVersion": "1.1.0", "name": "n", "cni.dev/valid-attachments": raw})
    with pytest.raises(CNIError) as e:
        _ = args.valid_attachments
    assert e.value.code == 7


def test_valid_attachments_from_either_key():
    good = [{"containerID": "c1", "ifname": "eth0"}]
    for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
        assert skel.CmdArgs("GC", conf={key: good}).valid_attachments == good
