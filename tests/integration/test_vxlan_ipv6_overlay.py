"""The IPv6 overlay between test hosts: the vxlan-v6 device and its per-peer trio (route, NDP,
FDB), beside the IPv4 one; IPv6-only; a mixed cluster with an IPv4-only node; directRouting."""
import ipaddress
import json
import os

import pytest

from libcni_py.errors import CNIError
from plugins.main.vxlan import errors as codes
from tests.kit.vxlan_dual import DualCluster, dumps6, ping
from tests.kit.vxlan_hosts import monitor_events

pytestmark = pytest.mark.root
PRE_IPV6 = "783cef0"          # the last commit before IPv6 leases


def peer6_lines(d: dict, lease) -> dict:
    net = str(lease.subnet6.network_address)
    return {"neigh": [x for x in d["neigh"] if x.split()[0] == net],
            "fdb": [x for x in d["fdb"] if x.split()[0] == lease.vtep_mac],
            "route": [x for x in d["route"] if x.split()[0] == str(lease.subnet6)]}


def leases(cluster) -> dict:
    from plugins.main.vxlan.registry.base import decode
    return decode(cluster.registry()).leases


def test_dual_stack_three_hosts_exactly_three_entries_per_peer_per_family(netns, tmp_path):
    c = DualCluster(netns, tmp_path)
    c.ensure_all()
    infos = c.ensure_all()
    assert [str(i.subnet6) for i in infos] == [f"fd00:10:244:{n}::/64" for n in (1, 2, 3)]
    assert all(i.subnet is not None and i.mtu == 1430 and i.mtu6 == 1430 for i in infos)
    by_node = leases(c)
    for h, me in zip(c.hosts, infos):
        d4, d6 = h.dumps(), dumps6(h)
        assert len(d4["neigh"]) == 2 and len(d4["fdb"]) == 2 and len(d6["neigh"]) == 2 and len(d6["fdb"]) == 2
        assert len([r for r in d6["route"] if "vxlan-v6.1 proto 118" in r]) == 2
        for other in infos:
            if other is me:
                continue
            lease = by_node[other.node_name]
            net = str(lease.subnet6.network_address)
            assert peer6_lines(d6, lease) == {
                "neigh": [f"{net} lladdr {lease.vtep_mac} PERMANENT proto 118"],
                "fdb": [f"{lease.vtep_mac} dst {lease.public_ip6} self permanent"],
                "route": [f"{lease.subnet6} via {net} dev vxlan-v6.1 proto 118 metric 1024 onlink pref medium"]}
        link = json.loads(h.run("ip", "-d", "-j", "addr", "show", "vxlan-v6.1").stdout)[0]
        data = link["linkinfo"]["info_data"]
        assert (data["id"], data["port"], data["learning"], data["local6"]) == (1, 8472, False, str(h.ip6.ip))
        assert link["mtu"] == 1430 and link["address"] == me.vtep_mac
        assert link["ifalias"] == "pycni-vxlan network=vxtest"
        assert [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet6"
                and a["scope"] == "global"] == [(str(me.subnet6.network_address), 128)]
        h.check()
    for src, me in zip(c.hosts, infos):
        for other in infos:
            if other is not me:
                assert ping(src.path, other.subnet6.network_address), (me.node_name, other.node_name)
                assert ping(src.path, other.subnet.network_address)
    # a second round changes nothing; a lost entry is drift that CHECK names and ensure repairs
    assert [h.ensure().changes for h in c.hosts] == [0, 0, 0]
    lost = by_node["host1"]
    c.hosts[0].run("ip", "-6", "neigh", "del", str(lost.subnet6.network_address), "dev", "vxlan-v6.1")
    with pytest.raises(CNIError) as e:
        c.hosts[0].check()
    assert e.value.code == codes.PEER_DRIFT and "NDP" in e.value.msg and "host1" in e.value.msg
    assert c.hosts[0].ensure().changes == 1
    c.hosts[0].check()
    # leaving removes the node's entries of both families everywhere, and its devices
    c.hosts[2].leave()
    for h in c.hosts[:2]:
        assert h.ensure().changes == 6
        assert len(dumps6(h)["neigh"]) == 1 and len(h.dumps()["neigh"]) == 1
    assert "vxlan-v6.1" not in c.hosts[2].run("ip", "-o", "link").stdout


def test_ipv6_only_overlay_on_an_ipv6_only_underlay(netns, tmp_path):
    c = DualCluster(netns, tmp_path, underlays=["v6", "v6", "v6"])
    c.ensure_all()
    infos = c.ensure_all()
    assert all(i.subnet is None and i.device is None and i.device6 == "vxlan-v6.1" for i in infos)
    doc = c.registry()
    assert "network" not in doc["network"] and all("subnet" not in x for x in doc["leases"].values())
    for h in c.hosts:
        assert "vxlan.1" not in h.run("ip", "-o", "link").stdout
        d6 = dumps6(h)
        assert len(d6["neigh"]) == 2 and len(d6["fdb"]) == 2
        assert h.run("ip", "-4", "route", "show", "proto", "118").stdout == ""
        h.check()
    for src, me in zip(c.hosts, infos):
        for other in infos:
            if other is not me:
                assert ping(src.path, other.subnet6.network_address)


def test_mixed_cluster_ipv4_only_node(netns, tmp_path):
    """host2 has no ipv6Network (and no IPv6 underlay): it ignores the IPv6 fields; the dual-stack
    nodes reach it over IPv4 and program no IPv6 entries for it."""
    c = DualCluster(netns, tmp_path, underlays=["dual", "dual", "v4"])
    assert "ipv6Network" not in c.hosts[2].conf
    c.ensure_all()
    infos = c.ensure_all()
    assert infos[2].subnet6 is None and infos[2].device6 is None
    assert c.registry()["network"]["ipv6Network"] == "fd00:10:244::/48"
    assert "vxlan-v6.1" not in c.hosts[2].run("ip", "-o", "link").stdout
    for h in c.hosts[:2]:
        assert len(h.dumps()["neigh"]) == 2 and len(dumps6(h)["neigh"]) == 1
        h.check()
    assert len(c.hosts[2].dumps()["neigh"]) == 2
    c.hosts[2].check()
    for src, me in zip(c.hosts, infos):
        for other in infos:
            if other is not me:
                assert ping(src.path, other.subnet.network_address)
    assert ping(c.hosts[0].path, infos[1].subnet6.network_address)


def test_direct_routing_for_ipv6_peers_on_the_same_segment(netns, tmp_path):
    c = DualCluster(netns, tmp_path, segments=[0, 0, 1])
    c.ensure_all(directRouting=True)
    infos = c.ensure_all(directRouting=True)
    by_node = leases(c)
    d6 = dumps6(c.hosts[0])
    same, other = by_node["host1"], by_node["host2"]
    assert peer6_lines(d6, same) == {
        "neigh": [], "fdb": [],
        "route": [f"{same.subnet6} via {same.public_ip6} dev eth0 proto 118 metric 1024 pref medium"]}
    assert len(peer6_lines(d6, other)["neigh"]) == 1 and len(peer6_lines(d6, other)["fdb"]) == 1
    for h in c.hosts:
        h.check(directRouting=True)
    for src, me in zip(c.hosts, infos):
        for peer in infos:
            if peer is not me:
                assert ping(src.path, peer.subnet6.network_address), (me.node_name, peer.node_name)


def test_public_ipv6_change_recreates_the_device_and_replaces_only_the_fdb_entries(netns, tmp_path):
    c = DualCluster(netns, tmp_path)
    c.ensure_all()
    c.ensure_all()
    mover = c.hosts[2]
    mover.run("ip", "-6", "addr", "del", str(mover.ip6), "dev", "eth0")
    mover.run("ip", "-6", "addr", "add", "fd00:198:18:0::33/64", "dev", "eth0", "nodad")
    mover.run("ip", "-6", "route", "replace", "default", "via", mover.router6, "dev", "eth0")
    moved = mover.ensure()
    assert str(moved.public_ip6) == "fd00:198:18::33"
    data = json.loads(mover.run("ip", "-d", "-j", "link", "show", "vxlan-v6.1").stdout)[0]["linkinfo"]["info_data"]
    assert data["local6"] == "fd00:198:18::33"
    lease = leases(c)["host2"]
    for h in c.hosts[:2]:
        old = dumps6(h)
        h.ensure()
        new = dumps6(h)
        assert peer6_lines(new, lease)["fdb"] == [f"{lease.vtep_mac} dst fd00:198:18::33 self permanent"]
        assert old["neigh"] == new["neigh"] and old["route"] == new["route"]
        h.check()
        assert ping(h.path, lease.subnet6.network_address)


@pytest.fixture
def pre_ipv6_tree(tmp_path):
    """The suite as of the last commit before IPv6 (`git archive`), to run a node of that version."""
    import shutil
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if shutil.which("git") is None or not os.path.isdir(os.path.join(root, ".git")):
        pytest.skip("needs the git history")
    out = tmp_path / "pre-ipv6"
    out.mkdir()
    archive = subprocess.run(["git", "-C", root, "archive", PRE_IPV6, "libcni_py", "plugins"],
                             capture_output=True, timeout=60)
    if archive.returncode:
        pytest.skip(f"commit {PRE_IPV6} not in this clone")
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True, timeout=60)
    return str(out)


def old_ensure(host, tree: str) -> dict:
    """overlay.ensure_node of the pre-IPv6 version in the host's netns (its own interpreter)."""
    import sys
    script = ("import json, sys\n"
              f"sys.path.insert(0, {tree!r})\n"
              "from plugins.main.vxlan.overlay import ensure_node, node_config\n"
              "info = ensure_node(node_config(json.loads(sys.argv[1])))\n"
              "print(json.dumps({'subnet': str(info.subnet), 'changes': info.changes}))\n")
    p = host.run(sys.executable, "-c", script, json.dumps(host.conf))
    return json.loads(p.stdout)


def test_mixed_cluster_with_a_node_of_the_previous_version(netns, tmp_path, pre_ipv6_tree):
    """host2 runs the code of the version before IPv6 on the same file registry: it reads the
    dual-stack documents (no 101), programs the IPv4 trio for both dual-stack peers and is reached
    over IPv4. Its write drops the IPv6 keys (it re-encodes what it understood); the dual-stack
    nodes' next ensure writes them back and their IPv6 overlay is whole again."""
    c = DualCluster(netns, tmp_path, underlays=["dual", "dual", "v4"])
    c.hosts[0].ensure()
    c.hosts[1].ensure()
    old = old_ensure(c.hosts[2], pre_ipv6_tree)
    assert old["subnet"] == "10.244.3.0/24" and old["changes"] == 6
    assert "ipv6Subnet" not in json.dumps(c.registry())          # what the old node's write left
    infos = [h.ensure() for h in c.hosts[:2]]                       # the dual-stack nodes restore theirs
    infos = [h.ensure() for h in c.hosts[:2]]
    doc = c.registry()
    assert doc["network"]["ipv6Network"] == "fd00:10:244::/48"
    assert all("ipv6Subnet" in doc["leases"][h.node] for h in c.hosts[:2])
    assert old_ensure(c.hosts[2], pre_ipv6_tree)["changes"] == 0  # the old node still reads it, nothing to do
    assert "ipv6Subnet" in json.dumps(c.registry())                # and a no-op leaves the document alone
    for h in c.hosts[:2]:
        assert len(h.dumps()["neigh"]) == 2 and len(dumps6(h)["neigh"]) == 1
        h.check()
    assert len(c.hosts[2].dumps()["neigh"]) == 2
    third = ipaddress.IPv4Network(old["subnet"]).network_address
    for src, me in zip(c.hosts[:2], infos):
        assert ping(src.path, third)
        assert ping(c.hosts[2].path, me.subnet.network_address)
    assert ping(c.hosts[0].path, infos[1].subnet6.network_address)


def test_ipv6_entries_are_created_ndp_then_fdb_then_route(netns, tmp_path):
    c = DualCluster(netns, tmp_path)
    for h in c.hosts[1:]:
        h.ensure()
    events = monitor_events(c.hosts[0], c.hosts[0].ensure)
    for node in ("host1", "host2"):
        lease = leases(c)[node]
        net = str(lease.subnet6.network_address)
        ndp = next(i for i, e in enumerate(events) if e.startswith(f"{net} dev vxlan-v6.1 lladdr {lease.vtep_mac}"))
        fdb = next(i for i, e in enumerate(events) if e.startswith(f"{lease.public_ip6} dev vxlan-v6.1 lladdr"))
        route = next(i for i, e in enumerate(events) if e.startswith(f"{lease.subnet6} via {net} dev vxlan-v6.1"))
        assert ndp < fdb < route, events
