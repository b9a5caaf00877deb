"""pod.py, masq.py and plugins/pkg/link.py against a bridge in a test namespace (no overlay)."""
import json

import pytest

from libcni_py.errors import CNIError
from libcni_py.types import IPConfig, Route
from plugins.main.vxlan import masq, pod
from plugins.pkg import link, ns, probe

pytestmark = pytest.mark.root

NET = pod.PodNet(bridge="cni0", subnet="10.244.1.0/24", gateway="10.244.1.1", network="10.244.0.0/16",
                 mtu=1450, hairpin=True)


def _attach(host, podns, ifname="eth0", veth="vethtest0001", ip="10.244.1.5/24"):
    att = pod.Attachment(podns.path, ifname, veth, pod.pod_ips(NET, [IPConfig(ip)]),
                         pod.pod_routes(NET, [Route(dst="10.244.0.0/16")]))
    with ns.enter(host.path), link.open_rtnl() as ipr:
        br = pod.ensure_bridge(ipr, NET)
        return br, pod.attach(ipr, NET, br, att), att


def test_attach_configures_both_sides_and_detach_removes_the_pair(netns):
    host, p = netns("host"), netns("pod")
    br, (host_if, pod_if), att = _attach(host, p)
    links = {lk["ifname"]: lk for lk in json.loads(host.run("ip", "-d", "-j", "link", "show").stdout)}
    assert links["cni0"]["address"] == br.mac and links["cni0"]["linkinfo"]["info_kind"] == "bridge"
    v = links["vethtest0001"]
    assert v["master"] == "cni0" and v["mtu"] == 1450 and v["address"] == host_if.mac
    assert v["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert "10.244.1.1/24" in host.run("ip", "-4", "-o", "addr", "show", "cni0").stdout
    assert host.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    e = json.loads(p.run("ip", "-j", "link", "show", "eth0").stdout)[0]
    assert e["mtu"] == 1450 and e["address"] == pod_if.mac and "UP" in e["flags"]
    routes = p.run("ip", "-4", "route").stdout
    assert "default via 10.244.1.1 dev eth0" in routes and "10.244.0.0/16 via 10.244.1.1 dev eth0" in routes
    assert probe.ping(p.path, "10.244.1.1") == [0]
    with ns.enter(host.path), link.open_rtnl() as ipr:
        pod.check(ipr, NET, att)
        assert pod.detach(ipr, "vethtest0001") is True
        assert pod.detach(ipr, "vethtest0001") is False
    assert "eth0" not in p.run("ip", "link").stdout


def test_two_pods_on_one_bridge_ping_and_talk_tcp(netns):
    host, a, b = netns("host"), netns("pa"), netns("pb")
    _attach(host, a, veth="vethtesta", ip="10.244.1.10/24")
    _attach(host, b, veth="vethtestb", ip="10.244.1.11/24")
    assert probe.ping(a.path, "10.244.1.11") == [0]
    with probe.TCPEcho(b.path) as srv:
        assert probe.tcp_exchange(a.path, "10.244.1.11", srv.port, b"abc") == b"cba"


def test_check_names_the_missing_route_and_the_wrong_address(netns):
    host, p = netns("host"), netns("pod")
    _, _, att = _attach(host, p)
    p.run("ip", "route", "del", "10.244.0.0/16")
    with ns.enter(host.path), link.open_rtnl() as ipr:
        with pytest.raises(CNIError) as e:
            pod.check(ipr, NET, att)
    assert e.value.code == pod.POD_DRIFT and "route 10.244.0.0/16 via 10.244.1.1 missing" in e.value.msg
    p.run("ip", "addr", "del", "10.244.1.5/24", "dev", "eth0")
    p.run("ip", "addr", "add", "10.244.1.6/24", "dev", "eth0")
    with ns.enter(host.path), link.open_rtnl() as ipr:
        with pytest.raises(CNIError) as e:
            pod.check(ipr, NET, att)
    assert "address 10.244.1.5/24 missing" in e.value.msg and "10.244.1.6/24" in e.value.msg


def test_bridge_holding_another_gateway_is_refused(netns):
    host, p = netns("host"), netns("pod")
    host.run("ip", "link", "add", "cni0", "type", "bridge")
    host.run("ip", "addr", "add", "10.244.7.1/24", "dev", "cni0")
    with pytest.raises(CNIError) as e:
        _attach(host, p)
    assert e.value.code == pod.BRIDGE_CONFLICT and "10.244.7.1/24" in e.value.msg
    assert "veth" not in host.run("ip", "link").stdout


def test_existing_host_veth_is_a_clear_error(netns):
    host, p = netns("host"), netns("pod")
    _attach(host, p)
    with pytest.raises(CNIError) as e:
        _attach(host, netns("pod2"))
    assert e.value.code == pod.VETH_EXISTS and "vethtest0001" in e.value.msg


def test_masq_rules_carry_the_tag_and_go_away(netns):
    host = netns("host")
    with ns.enter(host.path):
        masq.setup("net1", "c1", "eth0", ["10.244.1.5"], "10.244.0.0/16")
        masq.setup("net1", "c1", "eth0", ["10.244.1.5"], "10.244.0.0/16")   # idempotent
        masq.setup("net1", "c2", "eth0", ["10.244.1.6"], "10.244.0.0/16")
        assert masq.present("net1", "c1", "eth0") == ["10.244.1.5/32"]
    saved = host.run("iptables-save", "-t", "nat").stdout
    chain = masq.chain_name("net1", "c1", "eth0")
    assert saved.count(f"-j {chain}") == 1
    assert f"-A {chain} -d 10.244.0.0/16" in saved and "MASQUERADE" in saved
    assert "pycni-vxlan net=net1 id=c1 if=eth0" in saved
    host.run("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.9.9.9/32", "-m", "comment", "--comment",
             "pycni-vxlan net=net1 id=x%y if=eth0", "-j", "ACCEPT")        # not a tag we could write
    with ns.enter(host.path):
        assert masq.teardown("net1", "c1", "eth0") is True
        assert masq.teardown("net1", "c1", "eth0") is False
        assert masq.present("net1", "c2", "eth0") == ["10.244.1.6/32"]
        assert masq.gc("net1", keep=set()) == [("c2", "eth0")]
    left = [line for line in host.run("iptables-save", "-t", "nat").stdout.splitlines() if "pycni-vxlan" in line]
    assert left == ['-A POSTROUTING -s 10.9.9.9/32 -m comment --comment "pycni-vxlan net=net1 id=x%y if=eth0" '
                    '-j ACCEPT']


def test_link_helpers_rename_set_move_and_delete(netns):
    """plugins/pkg/link.py on its own: the generic pieces another plugin reuses."""
    a, b, c = netns("la"), netns("lb"), netns("lc")
    with ns.enter(a.path), link.open_rtnl() as rt:
        idx = link.create_veth(rt, "va0", "vb0", b.path, mtu=1400)
        with pytest.raises(FileExistsError):
            link.create_veth(rt, "va0", "other", b.path)
        link.set_link(rt, idx, name="va1", mtu=1300, mac="02:00:00:00:00:11", up=True)
        got = rt.link("va1")
        assert (got.index, got.mtu, got.mac, got.up) == (idx, 1300, "02:00:00:00:00:11", True)
        br = link.ensure_bridge(rt, "br9", mtu=1300)
        assert link.ensure_bridge(rt, "br9").index == br.index and br.up
        link.set_link(rt, idx, master=br.index)
        link.set_hairpin(rt, idx, True)
        assert link.port(rt, idx) == link.Port(br.index, True)
        link.set_hairpin(rt, idx, False)
        assert link.port(rt, idx) == link.Port(br.index, False)
        assert link.port(rt, br.index).hairpin is None
        with pytest.raises(ValueError):
            link.ensure_bridge(rt, "va1")
    with ns.enter(b.path), link.open_rtnl() as rt:
        peer = rt.link("vb0")
        assert peer.mtu == 1400 and not peer.up
        link.move_to_netns(rt, peer.index, c.path, new_name="moved0")
        assert rt.link("vb0") is None
    assert "moved0" in c.run("ip", "-o", "link").stdout
    with ns.enter(a.path), link.open_rtnl() as rt:
        assert link.delete_if_exists(rt, "va1") is True
        assert link.delete_if_exists(rt, "va1") is False
    assert "moved0" not in c.run("ip", "-o", "link").stdout
