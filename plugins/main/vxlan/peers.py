"""Per remote lease exactly three entries, kept by diffing desired against actual.

For a remote lease (subnet S, network address N, VTEP MAC M, public IP P):
  1. ARP   N -> M, permanent, on our device, tagged with protocol RTPROT;
  2. FDB   M -> dst P, permanent, self, on our device;
  3. route S via N onlink dev <device>, protocol RTPROT, main table.
With directRouting and P on one of the underlay's own subnets: only `S via P dev
<underlay>` (protocol RTPROT).

What is ours (everything else is never touched):
  - routes: protocol RTPROT and a destination inside the cluster `network`;
  - ARP entries: on our device, permanent, protocol RTPROT, inside `network`;
  - FDB entries: on our device, permanent, with a dst, whose MAC is one of our ARP
    entries' MACs or a current lease's MAC. Creation goes ARP, FDB, route and removal
    goes route, FDB, ARP, so an FDB entry of ours always has its ARP anchor, even
    after a crash between two steps.
IPv6 (the `vxlan-v6.<vni>` device): the same trio for the lease's IPv6 half (subnet6, its
network address as the NDP anchor, publicIPv6 as the FDB dst), of each lease that has one;
directRouting when publicIPv6 is on one of the IPv6 underlay's subnets. Ours and foreign are
told apart the same way (a foreign IPv6 route in the way is one with the default metric 1024).
A reconcile sends at most six batches (stale routes, stale FDB, ARP, FDB, routes,
stale ARP), one netlink message per changed entry; unchanged entries get none.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket

from libcni_py.errors import CNIError
from plugins.pkg import rtnl as nl
from .errors import PEER_PROGRAMMING

RTPROT = 118          # route/neighbour protocol number marking pycni vxlan entries
_GONE = (errno.ENOENT, errno.ESRCH)


class RouteSpec:
    """How a peer subnet is routed: via `gateway` out of `oif`, onlink or not."""
    __slots__ = ("gateway", "oif", "onlink")

    def __init__(self, gateway: ipaddress.IPv4Address | ipaddress.IPv6Address, oif: int, onlink: bool):
        self.gateway, self.oif, self.onlink = gateway, oif, onlink

    def __eq__(self, other) -> bool:
        return isinstance(other, RouteSpec) and \
            (self.gateway, self.oif, self.onlink) == (other.gateway, other.oif, other.onlink)


class Peer:
    """The entries for one remote lease; mac None: a direct route only."""
    __slots__ = ("node", "subnet", "route", "mac", "public_ip")

    def __init__(self, node: str, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network, route: RouteSpec,
                 mac: str | None = None, public_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None):
        self.node, self.subnet, self.route, self.mac, self.public_ip = node, subnet, route, mac, public_ip

    def __eq__(self, other) -> bool:
        return isinstance(other, Peer) and (self.node, self.subnet, self.route, self.mac, self.public_ip) == \
            (other.node, other.subnet, other.route, other.mac, other.public_ip)

    @property
    def anchor(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return self.subnet.network_address


def desired(leases, own_node: str, dev_index: int, underlay, direct_routing: bool,
            family: int = 4) -> list[Peer]:
    """The peers of `family` (4: the leases' subnet/publicIP; 6: subnet6/publicIPv6, leases without
    an IPv6 half, IPv4-only nodes, have none)."""
    out = []
    halves = [(lease, lease.subnet, lease.public_ip) if family == 4 else (lease, lease.subnet6, lease.public_ip6)
              for lease in leases if lease.node != own_node]
    for lease, subnet, public_ip in sorted(((lease, s, p) for lease, s, p in halves
                                            if s is not None and p is not None),
                                           key=lambda h: int(h[1].network_address)):
        if direct_routing and underlay.on_link(public_ip):
            out.append(Peer(lease.node, subnet, RouteSpec(public_ip, underlay.index, False)))
        else:
            out.append(Peer(lease.node, subnet, RouteSpec(subnet.network_address, dev_index, True),
                            lease.vtep_mac, public_ip))
    return out


class Actual:
    """The peer entries a device has (or is assumed to have)."""

    def __init__(self, arp: dict | None = None, fdb: dict | None = None, routes: dict | None = None):
        self.arp = {} if arp is None else arp              # ip -> mac (ours)
        self.fdb = {} if fdb is None else fdb              # mac -> dst (ours; one remote per unicast MAC)
        self.routes = {} if routes is None else routes     # dst -> RouteSpec (ours)
        self.foreign_arp: set = set()           # permanent, not ours, on our device
        self.foreign_routes: set = set()        # metric-0 main routes, not ours


def actual(rt: nl.Rtnl, dev_index: int, network, peers: list[Peer]) -> Actual:
    """What the kernel holds on device `dev_index` for the overlay `network` (IPv4 or IPv6)."""
    a = Actual()
    v6 = network.version == 6
    for n in rt.neighs(socket.AF_INET6 if v6 else socket.AF_INET, dev_index):
        if not (n.state & nl.NUD_PERMANENT) or n.dst is None:
            continue
        if n.protocol == RTPROT and n.dst in network:
            a.arp[n.dst] = n.lladdr
        else:
            a.foreign_arp.add(n.dst)
    anchors = set(a.arp.values()) | {p.mac for p in peers if p.mac}
    for n in rt.neighs(socket.AF_BRIDGE, dev_index):
        if n.state & nl.NUD_PERMANENT and n.dst is not None and n.lladdr in anchors:
            a.fdb[n.lladdr] = n.dst
    for r in nl.routes6(rt) if v6 else rt.routes():
        if r.protocol == RTPROT and r.dst.subnet_of(network):
            a.routes[r.dst] = RouteSpec(r.gateway, r.oif, bool(r.flags & nl.RTNH_F_ONLINK))
        elif r.priority == (1024 if v6 else 0):        # where ours would go (IPv6: the default metric)
            a.foreign_routes.add(r.dst)
    return a


def assumed(programmed: list[Peer]) -> Actual:
    """The entries `programmed` peers left in the kernel, as actual() would read them."""
    a = Actual()
    for p in programmed:
        if p.mac:
            a.arp[p.anchor] = p.mac
            a.fdb[p.mac] = p.public_ip
        a.routes[p.subnet] = p.route
    return a


class Stats:
    """What a reconcile did: entries added and deleted, and what the kernel refused."""

    def __init__(self):
        self.added, self.deleted, self.failed = 0, 0, []

    @property
    def changes(self) -> int:
        return self.added + self.deleted


def reconcile(rt: nl.Rtnl, dev_index: int, network, peers: list[Peer], have: Actual | None = None) -> Stats:
    """Make the kernel match `peers`; raise CNIError(108) naming what the kernel refused."""
    have = have if have is not None else actual(rt, dev_index, network, peers)
    by_subnet = {p.subnet: p for p in peers}
    by_mac = {p.mac: p for p in peers if p.mac}
    by_anchor = {p.anchor: p for p in peers if p.mac}
    stats, broken = Stats(), set()

    def run(ops, adding: bool) -> None:
        ops = [op for op in ops if op[0] not in broken]
        if not ops:
            return
        for (node, what, _), err in zip(ops, rt.batch([op[2] for op in ops])):
            if err == 0 or (not adding and err in _GONE):
                if adding:
                    stats.added += 1
                else:
                    stats.deleted += 1
            else:
                broken.add(node)
                stats.failed.append(f"{what}: {os.strerror(err)}")
    stale_routes = [(None, f"delete route {dst}", nl.route_any_msg("del", dst, s.gateway, s.oif, RTPROT, s.onlink))
                    for dst, s in have.routes.items() if dst not in by_subnet]
    run(stale_routes, False)
    stale_fdb = [(None, f"delete fdb {mac} dst {ip}", nl.fdb_msg(False, dev_index, mac, ip))
                 for mac, ip in have.fdb.items() if mac not in by_mac]
    run(stale_fdb, False)
    for p in peers:
        if p.mac and p.anchor in have.foreign_arp:
            broken.add(p.node)
            stats.failed.append(f"arp {p.anchor}: a permanent entry we did not create is in the way")
    arp_ops = [(p.node, f"arp {p.anchor} -> {p.mac}", nl.neigh_msg(True, dev_index, p.anchor, p.mac, RTPROT))
               for p in peers if p.mac and have.arp.get(p.anchor) != p.mac and p.node not in broken]
    run(arp_ops, True)
    fdb_ops = [(p.node, f"fdb {p.mac} -> {p.public_ip}", nl.fdb_msg(True, dev_index, p.mac, p.public_ip))
               for p in peers if p.mac and have.fdb.get(p.mac) != p.public_ip]   # replace: remote rewritten
    run(fdb_ops, True)
    route_ops = []
    for p in peers:
        cur = have.routes.get(p.subnet)
        if cur == p.route:
            continue
        if cur is None and p.subnet in have.foreign_routes:
            broken.add(p.node)
            stats.failed.append(f"route {p.subnet}: a route we did not create is in the way")
            continue
        route_ops.append((p.node, f"route {p.subnet} via {p.route.gateway}",
                          nl.route_any_msg("replace" if cur else "add", p.subnet, p.route.gateway, p.route.oif,
                                           RTPROT, p.route.onlink)))
    run(route_ops, True)
    stale_arp = [(None, f"delete arp {ip}", nl.neigh_msg(False, dev_index, ip, mac))
                 for ip, mac in have.arp.items() if ip not in by_anchor]
    run(stale_arp, False)
    if stats.failed:
        raise CNIError(PEER_PROGRAMMING, f"{len(stats.failed)} peer entries could not be programmed",
                       "; ".join(stats.failed[:5]))
    return stats


def drift(peers: list[Peer], have: Actual, device: str) -> list[str]:
    """What CHECK reports: every missing, wrong or stale entry, naming the peer."""
    out = []
    for p in peers:
        tag = f"peer {p.node} ({p.subnet})"
        if p.mac:
            mac = have.arp.get(p.anchor)
            if mac != p.mac:
                out.append(f"{tag}: {'NDP' if p.subnet.version == 6 else 'ARP'} {p.anchor} -> {p.mac} on {device} "
                           + ("missing" if mac is None else f"is {mac}"))
            dst = have.fdb.get(p.mac)
            if dst != p.public_ip:
                out.append(f"{tag}: FDB {p.mac} dst {p.public_ip} on {device} "
                           + ("missing" if dst is None else f"is {dst}"))
        r = have.routes.get(p.subnet)
        if r != p.route:
            want = f"via {p.route.gateway}" + (" onlink" if p.route.onlink else "")
            out.append(f"{tag}: route {p.subnet} {want} " + ("missing" if r is None else f"is via {r.gateway}"))
    subnets = {p.subnet for p in peers}
    out += [f"stale route {dst} (no lease)" for dst in have.routes if dst not in subnets]
    anchors = {p.anchor for p in peers if p.mac}
    out += [f"stale {'NDP' if ip.version == 6 else 'ARP'} {ip} on {device} (no lease)"
            for ip in have.arp if ip not in anchors]
    return out
