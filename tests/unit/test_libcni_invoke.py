"""Plugin lookup, VERSION probing and delegation (Go's pkg/invoke), on real plugins.

Go host-local needs no netns and no netlink, so IPAM delegation runs here without root.
"""
import json
import os
import sys

import pytest

from libcni_py import invoke
from libcni_py.errors import CNIError
from libcni_py.version import ALL
from tests.conftest import GO_CNI_DIR, VENV_BIN


def test_find_in_path_takes_the_first_directory_that_has_it(tmp_path):
    first = tmp_path / "first"
    first.mkdir()
    (first / "bridge").write_text("#!/bin/true\n")
    (first / "bridge").chmod(0o755)
    (first / "portmap").write_text("not executable")
    assert invoke.find_in_path("bridge", [str(first), GO_CNI_DIR]) == str(first / "bridge")
    assert invoke.find_in_path("portmap", [str(first), GO_CNI_DIR]) == f"{GO_CNI_DIR}/portmap"


@pytest.mark.parametrize("name,paths", [("", [GO_CNI_DIR]), ("../bridge", [GO_CNI_DIR]), ("..", [GO_CNI_DIR]),
                                        ("bridge", []), ("no-such-plugin", [VENV_BIN, GO_CNI_DIR])])
def test_find_in_path_errors(name, paths):
    with pytest.raises(CNIError) as e:
        invoke.find_in_path(name, paths)
    assert e.value.code == (7 if name == "no-such-plugin" else 999)


def test_version_info_of_ours_and_of_go():
    assert invoke.version_info(f"{VENV_BIN}/pycni-passthrough") == list(ALL)
    go = invoke.version_info(f"{GO_CNI_DIR}/bridge")
    assert "1.0.0" in go and "0.4.0" in go and "1.1.0" not in go


@pytest.fixture
def plugin_env(monkeypatch):
    """The environment a plugin delegating to IPAM runs in."""
    for k, v in {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net",
                 "CNI_IFNAME": "eth0", "CNI_ARGS": "", "CNI_PATH": f"{VENV_BIN}:{GO_CNI_DIR}"}.items():
        monkeypatch.setenv(k, v)


def ipam_conf(tmp_path, ver="1.0.0", **ipam):
    return json.dumps({"cniVersion": ver, "name": "dnet", "ipam": {
        "type": "host-local", "dataDir": str(tmp_path), "ranges": [[{"subnet": "10.79.0.0/24"}]], **ipam}}).encode()


@pytest.mark.parametrize("ver", ["0.3.1", "0.4.0", "1.0.0"])
def test_delegate_add_check_del_to_go_host_local(tmp_path, plugin_env, ver):
    conf = ipam_conf(tmp_path, ver)
    res = invoke.delegate_add("host-local", conf)
    assert res.cni_version == ver and [ip.address for ip in res.ips] == ["10.79.0.2/24"]
    assert (tmp_path / "dnet" / "10.79.0.2").read_text().startswith("c1")
    if ver != "0.3.1":
        invoke.delegate_check("host-local", conf)
    invoke.delegate_del("host-local", conf)
    assert not (tmp_path / "dnet" / "10.79.0.2").exists()
    invoke.delegate_del("host-local", conf)                         # idempotent


def test_delegate_overrides_only_the_command(tmp_path, plugin_env, monkeypatch):
    monkeypatch.setenv("CNI_COMMAND", "DEL")
    res = invoke.delegate_add("host-local", ipam_conf(tmp_path))      # ADD despite CNI_COMMAND=DEL
    assert res.ips[0].address == "10.79.0.2/24"
    assert os.environ["CNI_COMMAND"] == "DEL"


def test_delegate_error_is_the_plugins_error(tmp_path, plugin_env):
    with pytest.raises(CNIError) as ei:
        invoke.delegate_add("host-local", ipam_conf(tmp_path, ranges=[[{"subnet": "10.79.0.0/33"}]]))
    assert ei.value.code != 0 and "10.79.0.0/33" in ei.value.msg


def test_delegate_gc_and_status_to_our_plugin(plugin_env):
    conf = json.dumps({"cniVersion": "1.1.0", "name": "dnet", "type": "pycni-passthrough",
                       "cni.dev/valid-attachments": []}).encode()
    invoke.delegate_gc("pycni-passthrough", conf)
    invoke.delegate_status("pycni-passthrough", conf)
    with pytest.raises(CNIError) as ei:
        invoke.delegate_status("pycni-passthrough", conf.replace(b'"1.1.0"', b'"1.0.0"'))
    assert ei.value.code == 1


def test_delegate_to_a_plugin_not_on_cni_path(plugin_env):
    with pytest.raises(CNIError):
        invoke.delegate_add("no-such-ipam", b"{}")


@pytest.mark.parametrize("stdout,rc,code", [
    ('{"code": 11, "msg": "busy", "details": "retry"}', 1, 11),
    ("not json at all", 1, 999),
    ("", 3, 999),
])
def test_exec_plugin_failures(tmp_path, stdout, rc, code):
    exe = tmp_path / "failing"
    exe.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write({stdout!r})\nsys.exit({rc})\n")
    exe.chmod(0o755)
    with pytest.raises(CNIError) as ei:
        invoke.exec_plugin(str(exe), b"{}", dict(os.environ))
    assert ei.value.code == code
    if code == 11:
        assert (ei.value.msg, ei.value.details) == ("busy", "retry")
