"""vxlan pods: failed ADDs leave nothing, bad input is refused first, GC and STATUS (1.1.0)."""
import os
import shutil

import pytest

from libcni_py.errors import CNIError
from plugins.pkg import ns
from tests.kit.vxlan_hosts import Cluster
from tests.kit.vxlan_pods import Pod, Pods

pytestmark = pytest.mark.root


@pytest.fixture
def cluster(netns, tmp_path):
    return Cluster(netns, tmp_path, segments=[0])


def _pod_leftovers(host) -> dict:
    """Everything a pod attachment can leave on a host."""
    return {"ports": host.run("ip", "-o", "link", "show", "master", "cni0", check=False).stdout,
            "masq": [line for line in host.run("iptables-save", "-t", "nat").stdout.splitlines()
                     if "pycni-vxlan" in line],
            "records": sorted(os.listdir(os.path.join(host.conf["stateDir"], "attachments")))
            if os.path.isdir(os.path.join(host.conf["stateDir"], "attachments")) else []}


def test_add_with_ipam_exhausted_leaves_no_veth_rules_or_record(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    subnet = str(host.ensure().subnet)
    one = subnet.replace(".0/24", ".10")
    pods = Pods(cluster, netns, tmp_path, ipMasq=True,
                ipam={"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                      "ranges": [[{"subnet": subnet, "rangeStart": one, "rangeEnd": one}]]})
    first = pods.add(host, "first")
    assert first.ip == one
    before = _pod_leftovers(host)
    with pytest.raises(CNIError) as e:
        pods.add(host, "second")
    assert "no IP addresses available" in str(e.value)
    assert _pod_leftovers(host) == before
    pods.delete(first)
    assert _pod_leftovers(host) == {"ports": "", "masq": [], "records": []}


def test_add_failing_after_ipam_releases_the_address(cluster, netns, tmp_path):
    """The pod already has an eth0: the veth cannot be made; IPAM and the record are undone."""
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, ipMasq=True)
    pod = pods.add(host, "ok")
    busy = netns("busy")
    busy.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    clash = Pod(host, "clash", busy)
    with pytest.raises(CNIError) as e:
        pods._on(host, "add", clash)
    assert e.value.code == 114 and "eth0" in e.value.msg
    assert pods.allocations(host) == [pod.ip]
    assert _pod_leftovers(host)["records"] == [pod.veth + ".json"]
    assert clash.veth not in host.run("ip", "-o", "link").stdout
    assert "id=clash" not in host.run("iptables-save", "-t", "nat").stdout


def test_add_failing_after_the_veth_exists_removes_it(cluster, netns, tmp_path):
    """IPAM hands out a route via an unreachable gateway: the pod side fails after the pair exists."""
    host = cluster.hosts[0]
    subnet = str(host.ensure().subnet)
    pods = Pods(cluster, netns, tmp_path, ipMasq=True,
                ipam={"type": "host-local", "dataDir": str(tmp_path / "ipam"), "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": "10.1.0.0/16", "gw": "192.0.2.1"}]})
    with pytest.raises(CNIError) as e:
        pods.add(host, "badroute")
    assert "route" in str(e.value)
    assert _pod_leftovers(host) == {"ports": "", "masq": [], "records": []}
    assert os.listdir(tmp_path / "ipam" / cluster.network_name) in ([], ["lock"], ["last_reserved_ip.0", "lock"],
                                                                    ["lock", "last_reserved_ip.0"])


def test_unknown_ipam_type_fails_before_anything_is_created(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, ipam={"type": "no-such-ipam"})
    with pytest.raises(CNIError) as e:
        pods.add(host, "c1")
    assert 'failed to find plugin "no-such-ipam"' in str(e.value)
    assert host.run("ip", "-o", "link").stdout.count("\n") == 2          # lo and the underlay only
    assert not os.path.exists(host.conf["stateDir"])


@pytest.mark.parametrize("bad, field", [
    ({"hairpinMode": "yes"}, "hairpinMode"),
    ({"ipMasq": 1}, "ipMasq"),
    ({"bridge": "a-bridge-name-too-long"}, "bridge"),
    ({"bridge": "br0;rm"}, "bridge"),
    ({"ipam": {"dataDir": "/tmp"}}, "ipam"),
    ({"isDefaultGateway": "no"}, "isDefaultGateway"),
    ({"network": "10.244.0.0/33"}, "network"),
    ({"subnetLen": 40}, "subnetLen"),
    ({"registry": {"type": "zookeeper"}}, "zookeeper"),
    ({"mtu": 1400}, "mtu"),
])
def test_bad_input_is_a_clear_error_and_nothing_is_created(cluster, netns, tmp_path, bad, field):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, **bad)
    with pytest.raises(CNIError) as e:
        pods.add(host, "c1")
    assert field in str(e.value)
    assert host.run("ip", "-o", "link").stdout.count("\n") == 2
    assert not os.path.exists(host.conf["stateDir"])
    assert not os.path.exists(cluster.registry_path)


def test_bad_container_ifname_is_refused(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path)
    with pytest.raises(CNIError) as e:
        pods._on(host, "add", Pod(host, "c1", netns("pod"), ifname="eth0$"))
    assert "CNI_IFNAME" in str(e.value)
    assert not os.path.exists(host.conf["stateDir"])
    masq = Pods(cluster, netns, tmp_path, ipMasq=True)
    masq._on(host, "del", Pod(host, "c1", netns("pod"), ifname="eth0$"))      # DEL of it still succeeds


def test_gc_releases_attachments_the_runtime_no_longer_lists(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, version="1.1.0", ipMasq=True)
    keep, stale = pods.add(host, "keep"), pods.add(host, "stale")
    # A runtime that lost its cache: only the plugin's own records know about `stale`.
    shutil.rmtree(os.path.join(str(tmp_path), "cache"))
    lst = pods.conflist(host)
    with ns.enter(host.path):
        pods.cni(host).gc_network_list(lst, valid_attachments=[{"containerID": "keep", "ifname": "eth0"}])
    pods.assert_gone(stale)
    assert pods.allocations(host) == [keep.ip]
    assert "id=keep " in host.run("iptables-save", "-t", "nat").stdout
    assert keep.veth in host.run("ip", "-o", "link", "show", "master", "cni0").stdout


def test_status_is_50_when_the_registry_cannot_be_read(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, version="1.1.0")
    pods.add(host, "c1")
    with ns.enter(host.path):
        pods.cni(host).get_status_network_list(pods.conflist(host))
        os.remove(cluster.registry_path)
        os.mkdir(cluster.registry_path)
        with pytest.raises(CNIError) as e:
            pods.cni(host).get_status_network_list(pods.conflist(host))
    assert e.value.code == 50 and "registry" in e.value.msg
