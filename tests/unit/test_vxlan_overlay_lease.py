"""Leases and node config: carving, stability across restarts, mismatches, defaults."""
import ipaddress
import json
import os

import pytest

from libcni_py.errors import CNIError
from plugins.main.vxlan import errors as codes
from plugins.main.vxlan import lease as L
from plugins.main.vxlan.overlay import node_config
from plugins.main.vxlan.registry import open_registry
from plugins.pkg.schema import validate

IP1, IP2 = ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv4Address("198.18.0.2")


def conf(tmp_path, node="n1", **extra):
    return {"cniVersion": "1.0.0", "name": "vxnet", "type": "vxlan", "network": "10.244.0.0/16",
            "registry": {"type": "file", "path": str(tmp_path / "registry.json")},
            "stateDir": str(tmp_path / "state" / node), "nodeName": node, **extra}


def join(tmp_path, node="n1", ip=IP1, **extra):
    cfg = node_config(conf(tmp_path, node, **extra))
    reg = open_registry(cfg.registry_type, cfg.registry_path, cfg.registry_ttl)
    return L.acquire(reg, cfg, ip)[0]


def test_defaults_and_schema(tmp_path):
    c = conf(tmp_path)
    validate(c, "vxlan")
    cfg = node_config({"cniVersion": "1.0.0", "name": "vxnet", "type": "vxlan", "network": "10.244.0.0/16"})
    assert (cfg.subnet_len, cfg.vni, cfg.port, cfg.device_name) == (24, 1, 8472, "vxlan.1")
    assert cfg.state_dir == "/var/lib/cni/pycni/vxlan/vxnet"
    assert cfg.registry_path == "/var/lib/cni/pycni/vxlan/vxnet/registry.json"
    assert cfg.node_name and not cfg.direct_routing and cfg.public_ip is None
    assert node_config({**c, "vni": 4096}).device_name == "vxlan.4096"
    with pytest.raises(CNIError) as e:
        validate({**c, "registry": {"type": "file", "endpoints": []}}, "vxlan")
    assert "registry.endpoints" in e.value.msg
    pod_keys = {"bridge": "cni0", "isDefaultGateway": True, "hairpinMode": False, "ipMasq": True,
                "ipam": {"type": "host-local"}}
    validate({**c, **pod_keys}, "vxlan")


def test_subnets_are_carved_without_overlap_skipping_the_first(tmp_path):
    subnets = [join(tmp_path, f"n{i}", ipaddress.IPv4Address(f"198.18.0.{i + 1}")).subnet for i in range(5)]
    assert subnets == [ipaddress.IPv4Network(f"10.244.{i}.0/24") for i in range(1, 6)]
    assert len({s for s in subnets}) == 5


def test_same_node_gets_the_same_lease_back(tmp_path):
    first = join(tmp_path)
    join(tmp_path, "n2", IP2)
    again = join(tmp_path)
    assert (again.subnet, again.vtep_mac) == (first.subnet, first.vtep_mac)
    moved = join(tmp_path, ip=ipaddress.IPv4Address("198.18.0.9"))     # a new public IP, same lease
    assert (moved.subnet, moved.vtep_mac, str(moved.public_ip)) == (first.subnet, first.vtep_mac, "198.18.0.9")


def test_a_lost_lease_comes_back_from_the_local_copy(tmp_path):
    first, second = join(tmp_path), join(tmp_path, "n2", IP2)
    saved = json.loads((tmp_path / "state" / "n2" / "lease.json").read_text())
    assert saved == {"node": "n2", "subnet": str(second.subnet), "vtepMAC": second.vtep_mac}
    reg = open_registry("file", str(tmp_path / "registry.json"))
    reg.update(lambda d: d.leases.clear())          # e.g. TTLs expired while the nodes were down
    back = join(tmp_path, "n2", IP2)                # not the lowest free subnet: its own
    assert (back.subnet, back.vtep_mac) == (second.subnet, second.vtep_mac)
    assert join(tmp_path).subnet == first.subnet


def test_vtep_mac_is_stable_unicast_and_locally_administered():
    mac = L.vtep_mac("vxnet", "n1")
    assert mac == L.vtep_mac("vxnet", "n1") != L.vtep_mac("vxnet", "n2")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01


def test_ttl_renewal(tmp_path):
    first = join(tmp_path, registry={"type": "file", "path": str(tmp_path / "registry.json"), "ttl": 30})
    assert first.expires is not None
    again = join(tmp_path, registry={"type": "file", "path": str(tmp_path / "registry.json"), "ttl": 30})
    assert again.expires == first.expires           # far from expiry: no write
    doc = json.loads((tmp_path / "registry.json").read_text())
    doc["leases"]["n1"]["expires"] -= 20            # past half its life: renewed
    (tmp_path / "registry.json").write_text(json.dumps(doc))
    assert join(tmp_path, registry={"type": "file", "path": str(tmp_path / "registry.json"), "ttl": 30}
                ).expires > first.expires


def test_mismatch_and_exhaustion(tmp_path):
    join(tmp_path, network="10.244.0.0/16")
    for key, value in (("network", "10.0.0.0/8"), ("subnetLen", 25), ("vni", 2)):
        with pytest.raises(CNIError) as e:
            join(tmp_path, "n2", IP2, **{key: value})
        assert e.value.code == codes.NETWORK_MISMATCH
    assert "overlapping" in str(pytest.raises(CNIError, join, tmp_path, "n2", IP2, network="10.0.0.0/8").value)
    L.release(open_registry("file", str(tmp_path / "registry.json")), node_config(conf(tmp_path)))
    moved = join(tmp_path, "n2", IP2, network="10.0.0.0/8")      # nobody left on the old network
    assert moved.subnet == ipaddress.IPv4Network("10.0.1.0/24")
    small = tmp_path / "small"
    small.mkdir()
    join(small, "a", network="10.9.0.0/23")          # two /24s; the first is never handed out
    with pytest.raises(CNIError) as e:
        join(small, "b", IP2, network="10.9.0.0/23")
    assert e.value.code == codes.SUBNETS_EXHAUSTED
    assert not os.path.exists(small / "state" / "b" / "lease.json")


@pytest.mark.parametrize("bad, code", [
    ({"subnetLen": 16}, codes.BAD_SUBNET_LEN), ({"subnetLen": 31}, codes.BAD_SUBNET_LEN),
    ({"network": "10.244.1.0/16"}, 7), ({"network": "fd00::/64"}, 7), ({"nodeName": "../x"}, 7),
    ({"deviceName": "a-name-far-too-long"}, 7), ({"registry": {"type": "consul"}}, codes.REGISTRY_UNKNOWN_TYPE),
    ({"registry": {"type": "etcd"}}, 7), ({"registry": {"type": "etcd", "endpoints": ["http://198.18.0.9:2379"],
                                                        "path": "/x/r.json"}}, 7),
    ({"registry": {"type": "file", "endpoints": ["http://198.18.0.9:2379"]}}, 7),
])
def test_node_config_rejects(tmp_path, bad, code):
    with pytest.raises(CNIError) as e:
        node_config({**conf(tmp_path), **bad})
    assert e.value.code == code


def test_a_node_holding_a_lease_under_another_name_is_117_and_nothing_is_written(tmp_path):
    join(tmp_path, "old", IP1)
    reg_path = tmp_path / "registry.json"
    before = reg_path.read_text()
    renamed = conf(tmp_path, "new")
    renamed["stateDir"] = str(tmp_path / "state" / "old")      # same node, same stateDir
    cfg = node_config(renamed)
    reg = open_registry(cfg.registry_type, cfg.registry_path)
    with pytest.raises(CNIError) as e:
        L.acquire(reg, cfg, IP1)
    assert e.value.code == codes.NODE_RENAMED and "as 'old'" in e.value.msg
    assert "local lease copy" in e.value.msg and "public IP" in e.value.msg
    with pytest.raises(CNIError) as e:               # stateDir lost: the public IP still tells
        L.acquire(reg, node_config(conf(tmp_path, "new")), IP1)
    assert e.value.code == 117 and "public IP 198.18.0.1" in e.value.msg
    assert reg_path.read_text() == before
    assert join(tmp_path, "new", IP2).node == "new"            # another machine may take that name


def test_a_vetoed_lease_is_not_written(tmp_path):
    join(tmp_path)
    before = (tmp_path / "registry.json").read_text()
    cfg = node_config(conf(tmp_path, subnetLen=26))
    reg = open_registry(cfg.registry_type, cfg.registry_path)

    def veto(lease):
        raise CNIError(codes.SUBNET_IN_USE, f"pods use the old subnet, not {lease.subnet}")
    with pytest.raises(CNIError) as e:
        L.acquire(reg, cfg, IP1, vet=veto)
    assert e.value.code == 117 and "/26" in e.value.msg
    assert (tmp_path / "registry.json").read_text() == before
    assert L.acquire(reg, node_config(conf(tmp_path)), IP1, vet=veto)[0].subnet.prefixlen == 24   # no change
