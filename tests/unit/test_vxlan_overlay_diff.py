"""Desired peer entries and the drift CHECK reports (pure; the kernel side is in integration/)."""
import ipaddress

from plugins.main.vxlan.device import Underlay
from plugins.main.vxlan.peers import Actual, RouteSpec, desired, drift
from plugins.main.vxlan.registry import Lease

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network
UNDERLAY = Underlay(2, "eth0", 1500, A("198.18.0.1"), A("198.18.0.1"), (N("198.18.0.0/24"),))


def leases():
    return [Lease("me", N("10.244.1.0/24"), A("198.18.0.1"), "02:00:00:00:00:01", 1),
            Lease("near", N("10.244.2.0/24"), A("198.18.0.2"), "02:00:00:00:00:02", 1),
            Lease("far", N("10.244.3.0/24"), A("198.18.1.3"), "02:00:00:00:00:03", 1)]


def test_desired_one_peer_per_remote_lease():
    peers = desired(leases(), "me", 7, UNDERLAY, direct_routing=False)
    assert [p.node for p in peers] == ["near", "far"]
    far = peers[1]
    assert (far.anchor, far.mac, far.public_ip) == (A("10.244.3.0"), "02:00:00:00:00:03", A("198.18.1.3"))
    assert far.route == RouteSpec(A("10.244.3.0"), 7, True)


def test_direct_routing_only_for_peers_on_the_underlay_subnet():
    near, far = desired(leases(), "me", 7, UNDERLAY, direct_routing=True)
    assert near.mac is None and near.route == RouteSpec(A("198.18.0.2"), 2, False)
    assert far.mac == "02:00:00:00:00:03" and far.route.onlink


def test_drift_names_each_missing_wrong_or_stale_entry():
    peers = desired(leases(), "me", 7, UNDERLAY, direct_routing=False)
    have = Actual(arp={A("10.244.2.0"): "02:00:00:00:00:02", A("10.244.9.0"): "02:00:00:00:00:09"},
                  fdb={"02:00:00:00:00:02": A("198.18.0.2"), "02:00:00:00:00:03": A("198.18.0.99")},
                  routes={N("10.244.2.0/24"): RouteSpec(A("10.244.2.0"), 7, True),
                          N("10.244.3.0/24"): RouteSpec(A("10.244.3.0"), 7, True),
                          N("10.244.8.0/24"): RouteSpec(A("10.244.8.0"), 7, True)})
    assert drift(peers, have, "vxlan.1") == [
        "peer far (10.244.3.0/24): ARP 10.244.3.0 -> 02:00:00:00:00:03 on vxlan.1 missing",
        "peer far (10.244.3.0/24): FDB 02:00:00:00:00:03 dst 198.18.1.3 on vxlan.1 is 198.18.0.99",
        "stale route 10.244.8.0/24 (no lease)",
        "stale ARP 10.244.9.0 on vxlan.1 (no lease)",
    ]
    good = Actual(arp={p.anchor: p.mac for p in peers}, fdb={p.mac: p.public_ip for p in peers},
                  routes={p.subnet: p.route for p in peers})
    assert drift(peers, good, "vxlan.1") == []
