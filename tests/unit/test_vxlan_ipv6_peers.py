"""Desired IPv6 peer entries, directRouting over the IPv6 underlay and the drift CHECK names (pure;
the kernel side is tests/integration/test_vxlan_ipv6_overlay.py)."""
import ipaddress

from plugins.main.vxlan.device import ENCAP_OVERHEAD6, Underlay, Want
from plugins.main.vxlan.peers import RouteSpec, assumed, desired, drift
from plugins.main.vxlan.registry import Lease

A4, N4 = ipaddress.IPv4Address, ipaddress.IPv4Network
A6, N6 = ipaddress.IPv6Address, ipaddress.IPv6Network
UNDERLAY6 = Underlay(2, "eth0", 1500, A6("fd00:198:18::1"), A6("fd00:198:18::1"), (N6("fd00:198:18::/64"),))


def leases():
    return [Lease("me", N4("10.244.1.0/24"), A4("198.18.0.1"), "02:00:00:00:00:01", 1,
                  subnet6=N6("fd00:10:244:1::/64"), public_ip6=A6("fd00:198:18::1")),
            Lease("far", N4("10.244.3.0/24"), A4("198.18.1.3"), "02:00:00:00:00:03", 1,
                  subnet6=N6("fd00:10:244:3::/64"), public_ip6=A6("fd00:198:18:1::3")),
            Lease("near", N4("10.244.2.0/24"), A4("198.18.0.2"), "02:00:00:00:00:02", 1,
                  subnet6=N6("fd00:10:244:2::/64"), public_ip6=A6("fd00:198:18::2")),
            Lease("v4only", N4("10.244.4.0/24"), A4("198.18.0.4"), "02:00:00:00:00:04", 1),
            Lease("v6only", None, None, "02:00:00:00:00:05", 1,
                  subnet6=N6("fd00:10:244:5::/64"), public_ip6=A6("fd00:198:18::5"))]


def test_ipv6_peers_are_the_leases_with_an_ipv6_half_in_subnet_order():
    peers = desired(leases(), "me", 9, UNDERLAY6, direct_routing=False, family=6)
    assert [p.node for p in peers] == ["near", "far", "v6only"]
    far = peers[1]
    assert (far.anchor, far.mac, far.public_ip) == (A6("fd00:10:244:3::"), "02:00:00:00:00:03", A6("fd00:198:18:1::3"))
    assert far.route == RouteSpec(A6("fd00:10:244:3::"), 9, True)
    assert [p.node for p in desired(leases(), "me", 7, UNDERLAY6, False)] == ["near", "far", "v4only"]


def test_ipv6_direct_routing_only_for_peers_on_the_ipv6_underlay_subnet():
    near, far, _ = desired(leases(), "me", 9, UNDERLAY6, direct_routing=True, family=6)
    assert near.mac is None and near.route == RouteSpec(A6("fd00:198:18::2"), 2, False)
    assert far.mac == "02:00:00:00:00:03" and far.route.onlink


def test_ipv6_drift_names_ndp_entries_and_the_device_mtu_is_underlay_minus_70():
    peers = desired(leases(), "me", 9, UNDERLAY6, direct_routing=False, family=6)
    have = assumed(peers[:1])
    problems = drift(peers, have, "vxlan-v6.1")
    assert problems[0] == \
        "peer far (fd00:10:244:3::/64): NDP fd00:10:244:3:: -> 02:00:00:00:00:03 on vxlan-v6.1 missing"
    assert len(problems) == 6          # far and v6only: NDP, FDB and route each
    w = Want("vxlan-v6.1", 1, 8472, UNDERLAY6, "02:00:00:00:00:01", ipaddress.IPv6Interface("fd00:10:244:1::/128"))
    assert w.mtu == 1500 - ENCAP_OVERHEAD6 == 1430
