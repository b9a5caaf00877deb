"""vxlan's config seam (config.NetConf/load), its registry type table, and the lenient schema
outside ADD (no root needed)."""
import ipaddress
import os

import pytest

from libcni_py.errors import CNIError
from plugins.main.vxlan import cmd, config, errors, registry
from plugins.main.vxlan.registry.file import FileRegistry

BASE = {"cniVersion": "1.1.0", "name": "net1", "type": "vxlan", "network": "10.244.0.0/16",
        "nodeName": "n1"}


def conf(**kw):
    return {**BASE, "stateDir": "/tmp/pycni-unit-state", **kw}


def test_load_builds_a_typed_netconf_with_defaults():
    n = config.load(conf(), "ADD")
    assert isinstance(n, config.NetConf)
    assert n.network == ipaddress.IPv4Network("10.244.0.0/16") and n.subnet_len == 24 and n.vni == 1
    assert n.port == 8472 and n.bridge == "cni0" and n.is_default_gateway and not n.hairpin
    assert n.device_name == "vxlan.1" and n.registry_type == "file"
    assert n.registry_path == "/tmp/pycni-unit-state/registry.json"
    assert n.ipam is None and n.ipam_type == "host-local" and n.dns is None and n.mac is None
    default = config.load({**BASE}, "ADD")
    assert default.state_dir == os.path.join(config.DEFAULT_STATE_ROOT, "net1")


def test_dns_is_kept_only_when_it_sets_something():
    assert config.load(conf(dns={}), "ADD").dns is None
    assert config.load(conf(dns={"nameservers": [], "domain": ""}), "ADD").dns is None
    dns = {"nameservers": ["10.96.0.10"], "search": ["svc"], "options": ["ndots:5"], "domain": "d"}
    assert config.load(conf(dns=dns), "ADD").dns == dns


def test_mac_precedence_is_go_bridges():
    rc = {"mac": "0A:58:00:00:00:01"}
    args = {"cni": {"mac": "0a:58:00:00:00:02"}}
    assert config.load(conf(), "ADD", "IgnoreUnknown=1;MAC=0a:58:00:00:00:03").mac == "0a:58:00:00:00:03"
    assert config.load(conf(args=args), "ADD", "MAC=0a:58:00:00:00:03").mac == "0a:58:00:00:00:02"
    assert config.load(conf(args=args, runtimeConfig=rc), "ADD", "MAC=0a:58:00:00:00:03").mac == \
        "0a:58:00:00:00:01"
    assert config.load(conf(runtimeConfig=rc), "DEL").mac is None          # only ADD sets a MAC


@pytest.mark.parametrize("bad", ["01:00:5e:00:00:01", "00:00:00:00:00:00", "zz:00:00:00:00:01", 7, "0a:58"])
def test_a_bad_mac_is_code_7(bad):
    with pytest.raises(CNIError) as e:
        config.load(conf(runtimeConfig={"mac": bad}), "ADD")
    assert e.value.code == 7 and "runtimeConfig.mac" in e.value.msg


@pytest.mark.parametrize("key, value, code", [
    ("network", "10.244.0.1/16", 7), ("subnetLen", 16, errors.BAD_SUBNET_LEN), ("publicIP", "1.2.3", 7),
    ("bridge", "x" * 16, 7), ("registry", {"type": "consul"}, errors.REGISTRY_UNKNOWN_TYPE),
])
def test_add_refuses_a_bad_node_key_and_del_goes_on(key, value, code):
    with pytest.raises(CNIError) as e:
        config.load(conf(**{key: value}), "ADD")
    assert e.value.code == code
    n = config.load(conf(**{key: value}), "DEL")
    assert n.state_dir == "/tmp/pycni-unit-state" and n.name == "net1"


def test_state_dir_must_be_a_directory_even_on_del(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for command in ("ADD", "DEL", "GC"):
        with pytest.raises(CNIError) as e:
            config.load(conf(stateDir=str(f)), command)
        assert e.value.code == 7 and "stateDir" in e.value.msg


def test_registry_types_are_one_table():
    assert registry.BACKENDS["file"] is FileRegistry
    assert registry.types() == ("etcd", "file")
    with pytest.raises(CNIError) as e:
        registry.open_registry("consul", "/x")
    assert e.value.code == errors.REGISTRY_UNKNOWN_TYPE and "known types: etcd, file" in e.value.details
    with pytest.raises(ValueError):
        registry.register("file", FileRegistry)


def test_a_registered_type_is_opened_by_name(monkeypatch, tmp_path):
    class Memory(FileRegistry):
        pass
    monkeypatch.setitem(registry.BACKENDS, "memory", Memory)
    reg = registry.open_registry("memory", str(tmp_path / "r.json"), 5)
    assert isinstance(reg, Memory) and reg.ttl == 5
    assert registry.check_type("memory") == "memory"


@pytest.mark.parametrize("command", ["DEL", "GC"])
def test_del_and_gc_drop_what_they_do_not_need(command):
    c = conf(capabilities={"ips": True}, dns={"nameservers": ["1.1.1.1"]}, someFutureKey=1,
             hairpinMode="yes", network="junk", registry={"type": 5}, runtimeConfig={"ips": ["x"]},
             **{"cni.dev/valid-attachments": []})
    cmd.validate_conf(c, command)
    assert "someFutureKey" not in c and "hairpinMode" not in c and "network" not in c
    assert c["stateDir"] == "/tmp/pycni-unit-state"
    config.load(c, command)
    with pytest.raises(CNIError) as e:
        cmd.validate_conf(conf(stateDir="relative"), command)
    assert e.value.code == 7 and "stateDir" in e.value.msg


def test_add_refuses_an_unknown_key_with_the_nearest_and_accepts_standard_keys():
    cmd.validate_conf(conf(capabilities={"ips": True, "mac": True}, dns={"nameservers": ["10.96.0.10"]},
                           runtimeConfig={"ips": ["10.244.1.5/24"], "mac": "0a:58:00:00:00:01"},
                           args={"cni": {"ips": ["10.244.1.5"]}}, prevResult={}), "ADD")
    with pytest.raises(CNIError) as e:
        cmd.validate_conf(conf(subnetlen=24), "ADD")
    assert e.value.code == 7 and "subnetLen" in e.value.msg


def test_check_and_status_still_refuse_a_bad_key_they_verify():
    for command in ("CHECK", "STATUS"):
        with pytest.raises(CNIError) as e:
            cmd.validate_conf(conf(network="junk"), command)
        assert e.value.code == 7 and "network" in e.value.msg
        c = conf(someFutureKey=1)
        cmd.validate_conf(c, command)
        assert "someFutureKey" not in c


def test_translate_gives_every_shared_failure_a_vxlan_or_spec_code():
    from plugins.pkg.rtnl import NetlinkError
    err = errors.translate(NetlinkError(17, "add 10.244.1.1/24 to cni0: File exists"))
    assert err.code == errors.KERNEL_REFUSED and "cni0" in err.details
    assert errors.translate(FileNotFoundError(2, "No such file", "iptables-save")).code == errors.MASQ_FAILED
    assert errors.translate(PermissionError(13, "denied", "/var/lib/x")).code == 5


@pytest.mark.parametrize("path", ["/tmp/a\0b", "relative.json", "/tmp/dir/", "/tmp/" + "x" * 251, 5])
def test_a_registry_path_that_is_no_file_path_is_code_7(path):
    with pytest.raises(CNIError) as e:
        config.load(conf(registry={"type": "file", "path": path}), "STATUS")
    assert e.value.code == 7 and "registry.path" in e.value.msg


def test_check_compares_prev_result_text_it_cannot_parse_as_missing():
    from plugins.main.vxlan import pod
    assert pod._canonical("10.244.1.5/24", __import__("ipaddress").ip_interface) == "10.244.1.5/24"
    assert pod._canonical("fd00::5", __import__("ipaddress").ip_interface) == "fd00::5/128"
    assert pod._canonical("junk", __import__("ipaddress").ip_network) == "junk"


@pytest.mark.parametrize("ipam_type", ["vxlan", "vxlan-agent", "dp-steering", "edgemesh", "pycnitool"])
def test_ipam_naming_one_of_our_plugins_is_7_on_add_and_check_and_noted_on_del(ipam_type):
    for command in ("ADD", "CHECK"):
        with pytest.raises(CNIError) as e:
            config.load(conf(ipam={"type": ipam_type}), command)
        assert e.value.code == 7 and "ipam.type" in e.value.msg and "delegate to itself" in e.value.msg
    for command in ("DEL", "GC"):
        assert config.load(conf(ipam={"type": ipam_type}), command).ipam_self
    assert config.load(conf(), "ADD").ipam_self == ""


def test_ipam_resolving_to_the_running_executable_is_7(tmp_path, monkeypatch):
    """A symlink (or hard link) on CNI_PATH to the executable running now, under another name."""
    import sys
    exe = tmp_path / "plugin"
    exe.write_text("#!/bin/false\n")
    exe.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(exe)])
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(exe, bindir / "my-ipam")
    os.link(exe, bindir / "hard-ipam")
    other = bindir / "host-local"
    other.write_text("#!/bin/false\n")
    other.chmod(0o755)
    monkeypatch.setenv("CNI_PATH", f"{tmp_path / 'none'}:{bindir}")
    for name in ("my-ipam", "hard-ipam"):
        with pytest.raises(CNIError) as e:
            config.load(conf(ipam={"type": name}), "ADD")
        assert e.value.code == 7 and "own executable" in e.value.msg and str(bindir / name) in e.value.msg
    assert config.load(conf(ipam={"type": "host-local"}), "ADD").ipam_self == ""
    assert config.self_delegation("missing", os.environ["CNI_PATH"]) == ""


def test_device_name_equal_to_the_bridge_is_7():
    with pytest.raises(CNIError) as e:
        config.load(conf(deviceName="cni0"), "ADD")
    assert e.value.code == 7 and "deviceName and bridge" in e.value.msg
    config.load(conf(deviceName="cni0"), "DEL")      # DEL goes on


def test_a_vxlan_run_as_a_vxlans_ipam_refuses_add_and_does_nothing_on_del(monkeypatch):
    from plugins.main.vxlan import ipam
    assert not cmd.run_as_own_ipam("ADD")
    monkeypatch.setenv(ipam.DELEGATED_MARK, "c1/eth0 loop-ipam")
    for command in ("ADD", "CHECK"):
        with pytest.raises(CNIError) as e:
            cmd.run_as_own_ipam(command)
        assert e.value.code == 7 and "c1/eth0 loop-ipam" in e.value.msg
    assert cmd.run_as_own_ipam("DEL") and cmd.run_as_own_ipam("GC")
