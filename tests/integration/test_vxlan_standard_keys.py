"""vxlan with the keys runtimes put in a config: `capabilities`, `dns`, the `ips` and `mac`
capabilities through to the real Go host-local (compared with Go's bridge + host-local given the
same request), and a DEL that never strands a pod (unknown keys, bad values, a gone netns)."""
import json
import os

import pytest

from libcni_py.api import CNIConfig, RuntimeConf
from libcni_py.conf import conflist_from_dict
from libcni_py.errors import CNIError
from plugins.pkg import ns
from tests.kit.vxlan_hosts import Cluster
from tests.kit.vxlan_pods import Pods

pytestmark = pytest.mark.root

CAPS = {"ips": True, "mac": True}
DNS = {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"], "options": ["ndots:5"]}


@pytest.fixture
def cluster(netns, tmp_path):
    return Cluster(netns, tmp_path, segments=[0])


def _subnet(host) -> str:
    with open(os.path.join(host.conf["stateDir"], "lease.json")) as f:
        return json.load(f)["subnet"]


def _pod_link(pod) -> dict:
    return json.loads(pod.ns.run("ip", "-j", "addr", "show", pod.ifname).stdout)[0]


def test_static_ip_and_mac_capabilities_reach_host_local_and_the_pod(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, version="1.1.0", capabilities=CAPS, dns=DNS)
    first = pods.add(host, "c0")                      # the node joins; its subnet is known from now on
    prefix = _subnet(host).rsplit(".", 1)[0]
    static, mac = f"{prefix}.77", "0a:58:0a:f4:01:4d"
    pod = pods.add(host, "c1", caps={"ips": [f"{static}/24"], "mac": mac})
    assert pod.cidr == f"{static}/24"
    assert static in pods.allocations(host)           # host-local allocated exactly that address
    link = _pod_link(pod)
    assert link["address"] == mac
    assert f"{static}" in [a["local"] for a in link["addr_info"]]
    res = pod.result.encode()
    assert res["interfaces"][2]["mac"] == mac
    assert res["dns"] == DNS                          # the config's dns wins over IPAM's (Go's bridge)
    pods.check(pod)
    pods.delete(pod)
    pods.assert_gone(pod)
    pods.delete(first)
    pods.assert_gone(first)


def test_mac_from_cni_args_and_runtime_config_precedence(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, capabilities=CAPS)
    a = pods.add(host, "c1", extra_args=[("MAC", "0a:58:00:00:00:11")])
    assert _pod_link(a)["address"] == "0a:58:00:00:00:11"
    b = pods.add(host, "c2", caps={"mac": "0a:58:00:00:00:22"}, extra_args=[("MAC", "0a:58:00:00:00:33")])
    assert _pod_link(b)["address"] == "0a:58:00:00:00:22"      # runtimeConfig.mac wins, as in Go's bridge
    with pytest.raises(CNIError) as e:
        pods.add(host, "c3", caps={"mac": "01:00:5e:00:00:01"})
    assert e.value.code == 7 and "multicast" in e.value.msg
    for p in (a, b):
        pods.delete(p)
        pods.assert_gone(p)
    assert not os.listdir(os.path.join(host.conf["stateDir"], "attachments"))


def test_static_ip_outside_the_node_subnet_fails_and_leaves_nothing(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, capabilities=CAPS)
    with pytest.raises(CNIError) as e:
        pods.add(host, "c1", caps={"ips": ["10.244.200.9/24"]})
    assert e.value.code == 115 and "10.244.200.9" in e.value.msg   # host-local's 999, re-coded
    assert "veth" not in host.run("ip", "-o", "link").stdout
    assert not pods.allocations(host)
    assert not os.listdir(os.path.join(host.conf["stateDir"], "attachments"))


def test_no_dns_in_the_config_keeps_ipam_dns(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, dns={"nameservers": []},
                ipam={"type": "host-local", "resolvConf": str(tmp_path / "resolv.conf")})
    (tmp_path / "resolv.conf").write_text("nameserver 10.96.0.53\nsearch example.test\n")
    pod = pods.add(host, "c1")
    assert pod.result.encode()["dns"] == {"nameservers": ["10.96.0.53"], "search": ["example.test"]}
    pods.delete(pod)


def test_same_request_through_go_bridge_and_host_local(cluster, netns, tmp_path):
    """What Go's bridge + host-local give for the same ips/mac/dns request: the same address, MAC and DNS."""
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, version="1.0.0", capabilities=CAPS, dns=DNS)
    pods.add(host, "c0")
    prefix = _subnet(host).rsplit(".", 1)[0]
    caps = {"ips": [f"{prefix}.88/24"], "mac": "0a:58:0a:f4:01:58"}
    ours = pods.add(host, "c1", caps=caps).result.encode()
    go_host = netns("gobr")
    lst = conflist_from_dict({"cniVersion": "1.0.0", "name": "gobr", "plugins": [{
        "type": "bridge", "bridge": "br-go", "isGateway": True, "capabilities": CAPS, "dns": DNS,
        "ipam": {"type": "host-local", "dataDir": str(tmp_path / "go-ipam"),
                 "ranges": [[{"subnet": _subnet(host)}]]}}]})
    pod_ns = netns("gopod")
    rt = RuntimeConf(container_id="c1", netns=pod_ns.path, ifname="eth0", capability_args=caps)
    go = CNIConfig(path=["/usr/lib/cni"], cache_dir=str(tmp_path / "go-cache"))
    with ns.enter(go_host.path):
        theirs = go.add_network_list(lst, rt).encode()
        try:
            assert theirs["ips"][0]["address"] == ours["ips"][0]["address"] == f"{prefix}.88/24"
            assert theirs["dns"] == ours["dns"] == DNS
            pod_if = [i for i in theirs["interfaces"] if i.get("sandbox")][0]
            assert pod_if["mac"] == ours["interfaces"][2]["mac"] == caps["mac"]
        finally:
            go.del_network_list(lst, rt)


@pytest.mark.parametrize("extra", [
    {"capabilities": CAPS, "dns": DNS},
    {"someFutureKey": {"x": 1}, "hairpinMode": "yes"},            # unknown key; a bad value DEL does not need
    {"network": "not-a-cidr", "subnetLen": 99, "registry": {"type": "nope"}, "bridge": "x" * 40},
], ids=["standard-keys", "unknown-and-bad-value", "bad-node-keys"])
def test_del_with_keys_it_does_not_need_succeeds_and_removes_everything(cluster, netns, tmp_path, extra):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, ipMasq=True)
    pod = pods.add(host, "c1")
    pods.delete(pod, **extra)
    pods.assert_gone(pod)
    pods.delete(pod, **extra)                                      # idempotent


def test_del_with_the_netns_gone_removes_everything(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, ipMasq=True)
    pod = pods.add(host, "c1")
    pod.ns.close()                                  # unmounted: CNI_NETNS names no netns any more
    pods.delete(pod, capabilities=CAPS, dns=DNS)
    pods.assert_gone(pod)


def test_add_refuses_an_unknown_key_naming_the_nearest(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path)
    with pytest.raises(CNIError) as e:
        pods.add(host, "c1", hairpinMod=True)
    assert e.value.code == 7 and "hairpinMode" in e.value.msg
    assert "veth" not in host.run("ip", "-o", "link").stdout
