"""vxlan pods on three test hosts, attached through libcni_py with the real Go host-local."""
import json
import os

import pytest

from libcni_py.errors import CNIError
from plugins.pkg import ns, probe
from tests.kit.vxlan_pods import Pods
from tests.kit.vxlan_hosts import Cluster

pytestmark = pytest.mark.root


@pytest.fixture
def cluster(netns, tmp_path):
    return Cluster(netns, tmp_path, segments=[0, 0, 0])


def test_every_pod_reaches_every_other_pod_across_hosts(cluster, netns, tmp_path):
    """vxlan + Go portmap + Go tuning in one conflist; ping and TCP between all pairs."""
    pods = Pods(cluster, netns, tmp_path, chain=[{"type": "portmap", "capabilities": {"portMappings": True}},
                                                 {"type": "tuning", "dataDir": str(tmp_path / "tuning"),
                                                  "sysctl": {"net.ipv4.conf.eth0.rp_filter": "0"}}])
    attached = [pods.add(h, f"c{h.index}") for h in cluster.hosts]
    cluster.ensure_all()            # the reconcile an agent would do once every host has joined
    subnets = {h.node: json.loads(h.run("cat", os.path.join(h.conf["stateDir"], "lease.json")).stdout)["subnet"]
               for h in cluster.hosts}
    assert len(set(subnets.values())) == 3
    for h, pod in zip(cluster.hosts, attached):
        res = pod.result.encode()
        assert [i["name"] for i in res["interfaces"]] == ["cni0", pod.veth, "eth0"]
        assert res["interfaces"][2]["sandbox"] == pod.ns.path
        assert res["ips"][0]["interface"] == 2
        assert res["ips"][0]["gateway"] == subnets[h.node].replace(".0/24", ".1")
        assert {"dst": "0.0.0.0/0", "gw": res["ips"][0]["gateway"]} in res["routes"]
        assert pod.ip.startswith(subnets[h.node].rsplit(".", 1)[0] + ".")
        assert pod.ns.run("cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter").stdout.strip() == "0"   # tuning ran
    servers = [probe.TCPEcho(p.ns.path) for p in attached]
    try:
        for a in attached:
            for b, srv in zip(attached, servers):
                if a is b:
                    continue
                assert probe.ping(a.ns.path, b.ip) == [0], f"{a.ip} -> {b.ip}"
                assert probe.tcp_exchange(a.ns.path, b.ip, srv.port, a.ip.encode()) == a.ip.encode()[::-1]
    finally:
        for s in servers:
            s.close()
    for pod in attached:
        pods.check(pod)
        pods.delete(pod)
        pods.assert_gone(pod)


def test_32_concurrent_adds_and_dels_on_one_host(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, ipMasq=True)
    made = pods.add_many(host, [f"p{i:02d}" for i in range(32)])
    assert not [p for p in made if isinstance(p, BaseException)], made
    assert len({p.ip for p in made}) == 32
    links = json.loads(host.run("ip", "-d", "-j", "link", "show").stdout)
    assert sum(1 for link in links if link.get("linkinfo", {}).get("info_kind") == "vxlan") == 1
    assert sum(1 for link in links if link.get("master") == "cni0") == 32
    assert len(pods.allocations(host)) == 32
    jumps = [line for line in host.run("iptables-save", "-t", "nat").stdout.splitlines()
             if line.startswith("-A POSTROUTING") and "pycni-vxlan" in line]
    assert sorted(j.split()[3] for j in jumps) == sorted(f"{p.ip}/32" for p in made)
    errors = [e for e in pods.delete_many(made) if e is not None]
    assert not errors, errors
    assert host.run("ip", "-o", "link", "show", "master", "cni0").stdout == ""
    assert [p.veth for p in made if p.veth in host.run("ip", "-o", "link").stdout] == []
    assert pods.allocations(host) == []
    assert "pycni-vxlan" not in host.run("iptables-save", "-t", "nat").stdout
    assert os.listdir(os.path.join(host.conf["stateDir"], "attachments")) == []


def test_ipmasq_rules_exist_while_the_pod_does_and_masquerade_outside_traffic(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    plain = Pods(cluster, netns, tmp_path)
    masq = Pods(cluster, netns, tmp_path, ipMasq=True)
    a = plain.add(host, "nomasq")
    # The underlay router has no route back to pod addresses: only a masqueraded ping returns.
    assert probe.ping(a.ns.path, host.router, timeout=1) == []
    b = masq.add(host, "withmasq")
    saved = host.run("iptables-save", "-t", "nat").stdout
    assert f"-A POSTROUTING -s {b.ip}/32" in saved and "pycni-vxlan net=vxtest id=withmasq if=eth0" in saved
    assert "id=nomasq" not in saved
    assert probe.ping(b.ns.path, host.router) == [0]
    with probe.TCPEcho(a.ns.path) as srv:            # inside the cluster network: not masqueraded
        assert probe.tcp_exchange(b.ns.path, a.ip, srv.port, b"in") == b"ni"
    masq.delete(b)
    assert "pycni-vxlan" not in host.run("iptables-save", "-t", "nat").stdout
    plain.delete(a)


def test_del_twice_and_del_after_the_netns_is_gone_succeed(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, ipMasq=True)
    a, b = pods.add(host, "twice"), pods.add(host, "nsgone")
    pods.delete(a)
    pods.delete(a)
    pods.assert_gone(a)
    b.ns.close()
    pods.delete(b)
    pods.delete(b)
    pods.assert_gone(b)


def test_check_names_a_removed_peer_route_and_a_wrong_pod_address(cluster, netns, tmp_path):
    pods = Pods(cluster, netns, tmp_path)
    h0, h1 = cluster.hosts[0], cluster.hosts[1]
    a = pods.add(h0, "checked")
    pods.add(h1, "peer")
    h0.ensure()
    pods.check(a)
    peer_subnet = json.loads(h1.run("cat", os.path.join(h1.conf["stateDir"], "lease.json")).stdout)["subnet"]
    h0.run("ip", "route", "del", peer_subnet)
    with pytest.raises(CNIError) as e:
        pods.check(a)
    assert e.value.code == 110 and peer_subnet in str(e.value)
    h0.ensure()
    pods.check(a)
    a.ns.run("ip", "addr", "flush", "dev", "eth0")
    a.ns.run("ip", "addr", "add", "10.99.0.7/24", "dev", "eth0")
    with pytest.raises(CNIError) as e:
        pods.check(a)
    assert e.value.code == 116 and f"address {a.cidr} missing" in e.value.msg and "10.99.0.7/24" in e.value.msg


def test_check_names_a_removed_pod_route_and_missing_masq_rule(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, ipMasq=True)
    a = pods.add(host, "routes")
    a.ns.run("ip", "route", "del", "default")
    with pytest.raises(CNIError) as e:
        pods.check(a)
    assert e.value.code == 116 and "route 0.0.0.0/0 via" in e.value.msg
    a.ns.run("ip", "route", "add", "default", "via", a.gateway)
    pods.check(a)
    chain = [w for w in host.run("iptables-save", "-t", "nat").stdout.split() if w.startswith("PYCNI-VX-")][0]
    host.run("iptables", "-t", "nat", "-D", "POSTROUTING", "-s", f"{a.ip}/32", "-m", "comment", "--comment",
             "pycni-vxlan net=vxtest id=routes if=eth0", "-j", chain)
    with pytest.raises(CNIError) as e:
        pods.check(a)
    assert e.value.code == 116 and f"ipMasq rule for {a.ip}/32" in e.value.msg


@pytest.mark.parametrize("example", ["vxlan.conflist", "vxlan-host-local.conflist"])
def test_example_conflists_attach_check_and_detach_a_pod(cluster, netns, tmp_path, example):
    """conf/<example> with only the host-specific paths moved into the test's tmp."""
    from libcni_py.conf import conflist_from_dict
    from tests.kit.vxlan_pods import ROOT
    with open(os.path.join(ROOT, "conf", example)) as f:
        doc = json.load(f)
    host = cluster.hosts[0]
    vx = doc["plugins"][0]
    vx.update(registry={**vx["registry"], "path": cluster.registry_path}, stateDir=host.conf["stateDir"],
              nodeName=host.node)
    if "dataDir" in vx.get("ipam", {}):
        vx["ipam"]["dataDir"] = str(tmp_path / "networks")
    pods = Pods(cluster, netns, tmp_path)
    pods.conflist = lambda h, **_: conflist_from_dict(doc)
    pod = pods.add(host, "example")
    assert pod.ip.startswith("10.244.")
    pods.check(pod)
    if "dataDir" in vx.get("ipam", {}):
        assert os.listdir(tmp_path / "networks" / doc["name"]).count(pod.ip) == 1
    pods.delete(pod)
    assert pod.veth not in host.run("ip", "-o", "link").stdout


def test_add_and_del_import_neither_pyroute2_nor_jsonschema(cluster, netns):
    """The exec cost guard: the plugin path speaks netlink itself and checks its schema itself."""
    import subprocess
    import sys
    from tests.kit.vxlan_pods import CNI_PATH, ROOT
    host, pod = cluster.hosts[0], netns("pod")
    code = ("import io, os, sys; from libcni_py import skel; from plugins.main.vxlan import cmd\n"
            "conf = sys.stdin.buffer.read()\n"
            "for verb in ('ADD', 'DEL'):\n"
            "    out = io.StringIO()\n"
            "    assert skel.run(cmd.PLUGIN, {**os.environ, 'CNI_COMMAND': verb}, io.BytesIO(conf), out, sys.stderr)"
            " == 0, out.getvalue()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'jsonschema')))\n")
    env = dict(os.environ, CNI_CONTAINERID="imports", CNI_NETNS=pod.path, CNI_IFNAME="eth0",
               CNI_PATH=":".join(CNI_PATH))
    with ns.enter(host.path):
        p = subprocess.run([sys.executable, "-c", code], input=json.dumps(host.conf), env=env,
                           capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
