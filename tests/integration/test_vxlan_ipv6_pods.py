"""Dual-stack and IPv6-only vxlan pods on test hosts, attached through libcni_py with the real Go
host-local (two ranges: one address of each family)."""
import ipaddress
import json
import shlex

import pytest

from libcni_py.errors import CNIError
from plugins.main.vxlan import errors as codes
from tests.kit.vxlan_dual import DualCluster, TCPEcho, ping, tcp_exchange
from tests.kit.vxlan_pods import Pods

pytestmark = pytest.mark.root


def addr(pod, version: int):
    got = [ipaddress.ip_interface(ip.address) for ip in pod.result.ips]
    mine = [a for a in got if a.version == version]
    assert len(mine) <= 1, got
    return mine[0] if mine else None


def talk_all(attached, version: int) -> None:
    """Every pod pings every other pod of `version` and exchanges a TCP message with it."""
    servers = [TCPEcho(p.ns.path) for p in attached]
    try:
        for a in attached:
            for b, srv in zip(attached, servers):
                if a is b:
                    continue
                dst = addr(b, version).ip
                assert ping(a.ns.path, dst), f"{addr(a, version)} -> {dst}"
                msg = f"{a.cid}->{dst}".encode()
                assert tcp_exchange(a.ns.path, dst, srv.port, msg) == msg[::-1]
    finally:
        for s in servers:
            s.close()


def test_dual_stack_pods_talk_both_families_across_three_hosts(netns, tmp_path):
    c = DualCluster(netns, tmp_path)
    pods = Pods(c, netns, tmp_path, ipMasq=True)
    attached = [pods.add(h, f"c{h.index}") for h in c.hosts]
    c.ensure_all()                      # the reconcile an agent would do once every host has joined
    for h, pod in zip(c.hosts, attached):
        lease = json.loads(h.run("cat", f"{h.conf['stateDir']}/lease.json").stdout)
        v4, v6 = addr(pod, 4), addr(pod, 6)
        assert v4 in ipaddress.ip_network(lease["subnet"]) and v6 in ipaddress.ip_network(lease["ipv6Subnet"])
        res = pod.result.encode()
        gw6 = str(ipaddress.ip_network(lease["ipv6Subnet"]).network_address + 1)
        assert {"dst": "::/0", "gw": gw6} in res["routes"] and {"dst": "0.0.0.0/0", "gw": str(
            ipaddress.ip_network(lease["subnet"]).network_address + 1)} in res["routes"]
        assert [ip["gateway"] for ip in res["ips"] if ":" in ip["address"]] == [gw6]
        # pod side: both addresses, both default routes, MTU of the smaller device (IPv6: 1430)
        link = json.loads(pod.ns.run("ip", "-j", "addr", "show", "eth0").stdout)[0]
        assert link["mtu"] == 1430
        assert {(a["local"], a["prefixlen"]) for a in link["addr_info"] if a.get("scope") == "global"} == \
            {(str(v4.ip), v4.network.prefixlen), (str(v6.ip), v6.network.prefixlen)}
        assert f"default via {gw6} dev eth0" in pod.ns.run("ip", "-6", "route").stdout
        # host side: the bridge holds both gateways (the IPv6 one nodad), forwarding on for both
        br = json.loads(h.run("ip", "-j", "addr", "show", "cni0").stdout)[0]
        six = [a for a in br["addr_info"] if a["family"] == "inet6" and a["scope"] == "global"]
        assert [(a["local"], a.get("nodad")) for a in six] == [(gw6, True)]
        assert h.run("sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip() == "1"
        # masquerade for both families
        nat6 = h.run("ip6tables-save", "-t", "nat").stdout
        assert f"-A POSTROUTING -s {v6.ip}/128 " in nat6 and "! -d ff00::/8" in nat6
        assert f"-A POSTROUTING -s {v4.ip}/32 " in h.run("iptables-save", "-t", "nat").stdout
    talk_all(attached, 4)
    talk_all(attached, 6)
    for pod in attached:
        pods.check(pod)
    # CHECK verifies the IPv6 half: a lost IPv6 default route, a lost ip6tables jump
    victim = attached[0]
    victim.ns.run("ip", "-6", "route", "del", "default")
    with pytest.raises(CNIError) as e:
        pods.check(victim)
    assert e.value.code == codes.POD_DRIFT and "::/0" in e.value.msg
    victim.ns.run("ip", "-6", "route", "add", "default", "via", victim.result.ips[1].gateway, "dev", "eth0")
    pods.check(victim)
    v6 = addr(victim, 6).ip
    jump = next(line for line in c.hosts[0].run("ip6tables-save", "-t", "nat").stdout.splitlines()
                if line.startswith(f"-A POSTROUTING -s {v6}/128 "))
    c.hosts[0].run("ip6tables", "-t", "nat", *shlex.split(jump.replace("-A ", "-D ", 1)))
    with pytest.raises(CNIError) as e:
        pods.check(victim)
    assert e.value.code == codes.POD_DRIFT and "ip6tables" in e.value.msg
    for pod in attached:
        pods.delete(pod)
        pods.assert_gone(pod)
        assert f"id={pod.cid} " not in pod.host.run("ip6tables-save", "-t", "nat").stdout
        assert str(addr(pod, 6).ip) not in pods.allocations(pod.host)
        pods.delete(pod)                 # DEL again: idempotent


def test_ipv6_only_pods_on_an_ipv6_only_underlay(netns, tmp_path):
    c = DualCluster(netns, tmp_path, underlays=["v6", "v6", "v6"])
    pods = Pods(c, netns, tmp_path, ipMasq=True)
    attached = [pods.add(h, f"s{h.index}") for h in c.hosts]
    c.ensure_all()
    for pod in attached:
        assert addr(pod, 4) is None and addr(pod, 6) is not None
        assert [r.dst for r in pod.result.routes if r.dst in ("::/0", "0.0.0.0/0")] == ["::/0"]
        assert "pycni-vxlan" not in pod.host.run("iptables-save", "-t", "nat").stdout
    talk_all(attached, 6)
    for pod in attached:
        pods.check(pod)
        pods.delete(pod)
        assert pod.veth not in pod.host.run("ip", "-o", "link").stdout
        assert "pycni-vxlan" not in pod.host.run("ip6tables-save", "-t", "nat").stdout


def test_mixed_cluster_pods_reach_the_ipv4_only_node_over_ipv4(netns, tmp_path):
    c = DualCluster(netns, tmp_path, underlays=["dual", "dual", "v4"])
    pods = Pods(c, netns, tmp_path)
    attached = [pods.add(h, f"m{h.index}") for h in c.hosts]
    c.ensure_all()
    assert addr(attached[2], 6) is None and addr(attached[0], 6) is not None
    talk_all(attached, 4)
    talk_all(attached[:2], 6)
    for pod in attached:
        pods.check(pod)
        pods.delete(pod)


def test_a_new_ipv6_subnet_while_pods_use_the_old_one_is_117_then_moves_once_they_are_gone(netns, tmp_path):
    c = DualCluster(netns, tmp_path, underlays=["dual"])
    host = c.hosts[0]
    pods = Pods(c, netns, tmp_path)
    first = pods.add(host, "old")
    old_gw = first.result.ips[1].gateway
    with pytest.raises(CNIError) as e:
        pods.add(host, "new", ipv6SubnetLen=80)
    assert e.value.code == codes.SUBNET_IN_USE and "old/eth0" in e.value.msg
    assert json.loads(host.run("cat", f"{host.conf['stateDir']}/lease.json").stdout)["ipv6Subnet"].endswith("/64")
    pods.delete(first)
    moved = pods.add(host, "new", ipv6SubnetLen=80)
    six = addr(moved, 6)
    assert six.network.prefixlen == 80 and moved.result.ips[1].gateway != old_gw
    br = host.run("ip", "-6", "addr", "show", "dev", "cni0", "scope", "global").stdout
    assert old_gw not in br and moved.result.ips[1].gateway in br
    pods.check(moved, ipv6SubnetLen=80)
    pods.delete(moved, ipv6SubnetLen=80)


def test_gc_and_status_on_a_dual_stack_node(netns, tmp_path):
    import os
    import shutil

    from plugins.pkg import ns
    c = DualCluster(netns, tmp_path, underlays=["dual"])
    host = c.hosts[0]
    pods = Pods(c, netns, tmp_path, version="1.1.0", ipMasq=True)
    keep, stale = pods.add(host, "keep"), pods.add(host, "stale")
    shutil.rmtree(os.path.join(str(tmp_path), "cache"))        # only the plugin's records know `stale`
    lst = pods.conflist(host)
    with ns.enter(host.path):
        pods.cni(host).get_status_network_list(lst)
        pods.cni(host).gc_network_list(lst, valid_attachments=[{"containerID": "keep", "ifname": "eth0"}])
    nat6 = host.run("ip6tables-save", "-t", "nat").stdout
    assert "id=keep " in nat6 and "id=stale " not in nat6
    assert stale.veth not in host.run("ip", "-o", "link").stdout
    assert sorted(pods.allocations(host)) == sorted(str(addr(keep, v).ip) for v in (4, 6))
    host.run("ip", "link", "del", "vxlan-v6.1")
    with ns.enter(host.path), pytest.raises(CNIError) as e:
        pods.cni(host).get_status_network_list(lst)
    assert e.value.code == 50 and "vxlan-v6.1 missing" in e.value.msg
