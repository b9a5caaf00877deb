"""IPv6 and dual-stack leases: config keys, v6 subnets in the registry, and documents that a node of
the version before IPv6 still reads (and the other way round)."""
import importlib.util
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import types

import pytest

from libcni_py.errors import CNIError
from plugins.main.vxlan import errors as codes
from plugins.main.vxlan import lease as L
from plugins.main.vxlan.overlay import node_config
from plugins.main.vxlan.registry import open_registry
from plugins.main.vxlan.registry.base import decode
from plugins.pkg.schema import validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRE_IPV6 = "783cef0"          # the last commit before IPv6 leases (its base.py is what old nodes run)


def ip4(i):
    return ipaddress.IPv4Address(f"198.18.0.{i}")


def ip6(i):
    return ipaddress.IPv6Address(f"fd00:198:18::{i}")


def conf(tmp_path, node="n1", v4=True, v6=True, **extra):
    c = {"cniVersion": "1.0.0", "name": "vxnet", "type": "vxlan",
         "registry": {"type": "file", "path": str(tmp_path / "registry.json")},
         "stateDir": str(tmp_path / "state" / node), "nodeName": node}
    if v4:
        c["network"] = "10.244.0.0/16"
    if v6:
        c["ipv6Network"] = "fd00:10:244::/48"
    return {**c, **extra}


def join(tmp_path, node="n1", i=1, v4=True, v6=True, **extra):
    cfg = node_config(conf(tmp_path, node, v4, v6, **extra))
    reg = open_registry(cfg.registry_type, cfg.registry_path, cfg.registry_ttl)
    return L.acquire(reg, cfg, ip4(i) if v4 else None, public_ip6=ip6(i) if v6 else None)[0]


def doc(tmp_path):
    with open(tmp_path / "registry.json") as f:
        return json.load(f)


def test_config_keys_defaults_and_refusals(tmp_path):
    c = conf(tmp_path, publicIPv6="fd00:198:18::1", ipv6Iface="eth1")
    validate(c, "vxlan")
    cfg = node_config(c)
    assert cfg.network6 == ipaddress.IPv6Network("fd00:10:244::/48") and cfg.subnet_len6 == 64
    assert (cfg.device6_name, cfg.iface6, str(cfg.public_ip6)) == ("vxlan-v6.1", "eth1", "fd00:198:18::1")
    assert cfg.families == (4, 6)
    only6 = node_config(conf(tmp_path, v4=False))
    assert only6.network is None and only6.families == (6,)
    validate(conf(tmp_path, v4=False), "vxlan")
    assert node_config(conf(tmp_path, v6=False)).families == (4,)
    assert node_config(conf(tmp_path, v6=False, vni=16777215)).device_name == "vxlan.16777215"   # no v6 device
    for bad, code in (({"ipv6Network": "fd00:10:244::1/48"}, 7), ({"ipv6Network": "10.0.0.0/8"}, 7),
                      ({"ipv6SubnetLen": 48}, codes.BAD_SUBNET_LEN),
                      ({"ipv6SubnetLen": 126}, codes.BAD_SUBNET_LEN),
                      ({"publicIPv6": "fe80::1"}, 7), ({"publicIPv6": "198.18.0.1"}, 7),
                      ({"vni": 16777215}, 7), ({"ipv6DeviceName": "cni0"}, 7)):
        with pytest.raises(CNIError) as e:
            node_config(conf(tmp_path, **bad))
        assert e.value.code == code, bad
    with pytest.raises(CNIError) as e:
        node_config(conf(tmp_path, v4=False, v6=False))
    assert e.value.code == 7 and "ipv6Network" in e.value.msg
    assert node_config(conf(tmp_path, vni=16777215, ipv6DeviceName="vx6")).device6_name == "vx6"
    # DEL and GC stay lenient about the IPv6 keys
    assert node_config(conf(tmp_path, ipv6Network="bogus"), "DEL").network6 is None


def test_dual_stack_leases_carve_both_families_without_overlap(tmp_path):
    leases = [join(tmp_path, f"n{i}", i) for i in range(1, 5)]
    assert [str(lease.subnet) for lease in leases] == [f"10.244.{i}.0/24" for i in range(1, 5)]
    assert [str(lease.subnet6) for lease in leases] == [f"fd00:10:244:{i}::/64" for i in range(1, 5)]
    assert all(lease.has6 and lease.public_ip6 == ip6(i) for i, lease in enumerate(leases, 1))
    d = doc(tmp_path)
    assert d["network"] == {"network": "10.244.0.0/16", "subnetLen": 24, "vni": 1,
                            "ipv6Network": "fd00:10:244::/48", "ipv6SubnetLen": 64}
    assert d["leases"]["n1"]["ipv6Subnet"] == "fd00:10:244:1::/64"
    assert d["leases"]["n1"]["publicIPv6"] == "fd00:198:18::1"
    again = join(tmp_path, "n2", 2)             # the same subnets back, nothing written
    assert (again.subnet, again.subnet6) == (leases[1].subnet, leases[1].subnet6)
    assert doc(tmp_path)["revision"] == d["revision"]
    with open(tmp_path / "state" / "n3" / "lease.json") as f:
        assert json.load(f)["ipv6Subnet"] == "fd00:10:244:3::/64"


def test_ipv6_only_leases_and_exhaustion(tmp_path):
    a = join(tmp_path, "a", 1, v4=False, ipv6SubnetLen=49)       # /48 in /49s: the first is skipped
    assert (a.subnet, a.public_ip, str(a.subnet6)) == (None, None, "fd00:10:244:8000::/49")
    assert "subnet" not in doc(tmp_path)["leases"]["a"] and "publicIP" not in doc(tmp_path)["leases"]["a"]
    assert "network" not in doc(tmp_path)["network"]
    with pytest.raises(CNIError) as e:
        join(tmp_path, "b", 2, v4=False, ipv6SubnetLen=49)
    assert e.value.code == codes.SUBNETS_EXHAUSTED and "ipv6SubnetLen" in e.value.details
    snap = decode(doc(tmp_path))
    assert snap.network.network is None and snap.leases["a"] == a


def test_mixed_cluster_ipv4_only_node_joins_a_dual_stack_network(tmp_path):
    join(tmp_path, "ds1", 1)
    v4only = join(tmp_path, "v4", 2, v6=False)
    assert v4only.subnet6 is None and v4only.public_ip6 is None and not v4only.has6
    d = doc(tmp_path)
    assert d["network"]["ipv6Network"] == "fd00:10:244::/48"     # the IPv4-only node kept the IPv6 half
    assert set(d["leases"]["v4"]) == {"subnet", "publicIP", "vtepMAC", "vni"}
    join(tmp_path, "ds2", 3)                    # a later dual-stack node still agrees with the record
    # a dual-stack node joining an IPv4-only network extends the record
    other = tmp_path / "other"
    other.mkdir()
    join(other, "v4", 1, v6=False)
    join(other, "ds", 2)
    assert doc(other)["network"]["ipv6Network"] == "fd00:10:244::/48"
    # a different IPv6 network, or an IPv6-only node in a dual-stack network: 104
    for kw in ({"ipv6Network": "fd00:99::/48"}, {"v4": False}):
        with pytest.raises(CNIError) as e:
            join(tmp_path, "bad", 9, **kw)
        assert e.value.code == codes.NETWORK_MISMATCH, kw
        assert "ipv6Network" in e.value.details


def test_a_lease_stripped_of_its_ipv6_fields_is_written_again(tmp_path):
    """A file registry rewritten by a node of the previous version loses the IPv6 keys (it re-encodes
    what it understood); the dual-stack node's next acquire (ADD, the agent's resync) restores them."""
    first = join(tmp_path, "ds", 1)
    d = doc(tmp_path)
    for key in ("ipv6Subnet", "publicIPv6"):
        del d["leases"]["ds"][key]
    for key in ("ipv6Network", "ipv6SubnetLen"):
        del d["network"][key]
    with open(tmp_path / "registry.json", "w") as f:
        json.dump(d, f)
    again = join(tmp_path, "ds", 1)
    assert again.subnet6 == first.subnet6       # the local lease copy remembers it
    assert doc(tmp_path)["network"]["ipv6Network"] == "fd00:10:244::/48"


def _old_base():
    """registry/base.py as the version before IPv6 had it (from git), as a module."""
    if shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("needs the git history")
    p = subprocess.run(["git", "-C", ROOT, "show", f"{PRE_IPV6}:plugins/main/vxlan/registry/base.py"],
                       capture_output=True, text=True, timeout=30)
    if p.returncode:
        pytest.skip(f"commit {PRE_IPV6} not in this clone")
    pkg = "_pre_ipv6_vxlan"
    for name in (pkg, pkg + ".registry"):
        mod = types.ModuleType(name)
        mod.__path__ = []
        sys.modules[name] = mod
    sys.modules[pkg + ".errors"] = sys.modules["plugins.main.vxlan.errors"]
    spec = importlib.util.spec_from_loader(pkg + ".registry.base", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = pkg + ".registry"
    exec(compile(p.stdout, "old-base.py", "exec"), mod.__dict__)
    return mod


def test_documents_are_readable_by_a_node_of_the_previous_version(tmp_path):
    old = _old_base()
    join(tmp_path, "ds1", 1)
    join(tmp_path, "v4", 2, v6=False)
    snap = old.decode(doc(tmp_path))            # the IPv6 keys are ignored
    assert sorted(snap.leases) == ["ds1", "v4"]
    assert str(snap.leases["ds1"].subnet) == "10.244.1.0/24" and str(snap.leases["ds1"].public_ip) == ip4(1).exploded
    # an old node's own record equals the stored one: it sees no mismatch and writes no record
    assert snap.network == old.NetworkRecord(ipaddress.IPv4Network("10.244.0.0/16"), 24, 1)
    # and the other way round: what an old node writes is an IPv4-only node to us
    written = old.encode(old.Snapshot(3, old.NetworkRecord(ipaddress.IPv4Network("10.244.0.0/16"), 24, 1),
                                      {"old": old.Lease("old", ipaddress.IPv4Network("10.244.7.0/24"), ip4(7),
                                                        "02:00:00:00:00:07", 1)}))
    new = decode(written)
    assert new.leases["old"].subnet6 is None and not new.leases["old"].has6
    assert new.network.network6 is None
