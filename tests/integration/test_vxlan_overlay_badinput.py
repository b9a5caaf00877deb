"""Bad input: a clear error and nothing created (no device, no entries, registry as it was)."""
import os

import pytest

from libcni_py.errors import CNIError
from plugins.main.vxlan import errors as codes
from plugins.main.vxlan.overlay import registry_status
from tests.kit.vxlan_hosts import Cluster

pytestmark = pytest.mark.root


def snapshot(c, h):
    reg = open(c.registry_path, "rb").read() if os.path.isfile(c.registry_path) else None
    return reg, h.run("ip", "-o", "link").stdout, h.dumps("eth0")["route"]


def assert_nothing_created(c, h, before):
    assert snapshot(c, h) == before
    assert h.run("ip", "link", "show", "vxlan.1", check=False).returncode != 0
    assert not os.path.exists(os.path.join(h.conf["stateDir"], "lease.json"))


def fails(h, code, **overrides) -> CNIError:
    with pytest.raises(CNIError) as e:
        h.ensure(**overrides)
    assert e.value.code == code, e.value
    return e.value


def test_network_overlapping_the_registry_network(netns, tmp_path):
    c = Cluster(netns, tmp_path, segments=[0, 0])
    c.hosts[0].ensure()
    h = c.hosts[1]
    before = snapshot(c, h)
    e = fails(h, codes.NETWORK_MISMATCH, network="10.244.0.0/17")
    assert "overlapping" in e.msg and "10.244.0.0/16" in e.details
    fails(h, codes.NETWORK_MISMATCH, subnetLen=26)
    assert_nothing_created(c, h, before)


@pytest.mark.parametrize("conf, code, text", [
    ({"subnetLen": 16}, codes.BAD_SUBNET_LEN, "subnetLen 16 out of range"),
    ({"subnetLen": 31}, codes.BAD_SUBNET_LEN, "subnetLen 31 out of range"),
    ({"registry": {"type": "consul"}}, codes.REGISTRY_UNKNOWN_TYPE, "unknown registry type 'consul'"),
    ({"network": "10.244.1.0/16"}, 7, "invalid config field 'network'"),
])
def test_bad_node_keys(netns, tmp_path, conf, code, text):
    c = Cluster(netns, tmp_path, segments=[0])
    h = c.hosts[0]
    before = snapshot(c, h)
    assert text in fails(h, code, **conf).msg
    assert_nothing_created(c, h, before)


def test_unreadable_or_corrupt_registry(netns, tmp_path):
    c = Cluster(netns, tmp_path, segments=[0])
    h = c.hosts[0]
    os.makedirs(c.registry_path)                      # a directory where the file should be
    before = snapshot(c, h)
    assert "cannot read registry file" in fails(h, codes.REGISTRY_UNREADABLE).msg
    assert_nothing_created(c, h, before)
    with pytest.raises(CNIError) as e:
        registry_status(h.cfg())
    assert e.value.code == 50
    os.rmdir(c.registry_path)
    with open(c.registry_path, "w") as f:
        f.write('{"revision": 3, "leases": {"host9": ')
    before = snapshot(c, h)
    assert "is not JSON" in fails(h, codes.REGISTRY_CORRUPT).msg
    assert_nothing_created(c, h, before)
    with pytest.raises(CNIError) as e:
        registry_status(h.cfg())
    assert e.value.code == 50 and "not JSON" in e.value.msg


def test_no_underlay_and_how_the_underlay_is_found(netns, tmp_path):
    c = Cluster(netns, tmp_path, segments=[0])
    h = c.hosts[0]
    h.run("ip", "route", "del", "default")
    assert "no default route" in fails(h, codes.NO_UNDERLAY).msg
    assert "not found" in fails(h, codes.NO_UNDERLAY, iface="eth7").msg
    assert h.ensure(iface="eth0").device == "vxlan.1"
    assert str(h.ensure(publicIP=str(h.ip.ip)).public_ip) == str(h.ip.ip)       # iface found by publicIP
    natted = h.ensure(iface="eth0", publicIP="198.19.9.9")                     # announced, not local
    assert str(natted.public_ip) == "198.19.9.9" == c.registry()["leases"]["host0"]["publicIP"]
    assert f"local {h.ip.ip}" in h.run("ip", "-d", "link", "show", "vxlan.1").stdout
