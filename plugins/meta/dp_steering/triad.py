"""Pull a pod's port into the enforcer netns, and put it back (NeuVector's pull/restore).

pull:    in the pod netns the original interface goes down, becomes vex<id>, loses its
         addresses and wears a parking MAC; a new veth CNI_IFNAME <-> vin<id> takes the
         original MAC, MTU and addresses; routes and permanent neighbours are re-bound to
         it; vex and vin move into the enforcer netns. The host side is not touched.
restore: the reverse, from whatever state a pull (or a failed one) left: vex comes back
         as CNI_IFNAME with the MAC, addresses, routes and neighbours CNI_IFNAME has now.
"""
from __future__ import annotations

import errno
import os
import socket
import time
from collections import namedtuple

from libcni_py.errors import CNIError
from plugins.pkg import link
from plugins.pkg import rtnl as nl
from plugins.pkg.log import get_logger
from plugins.pkg.names import check_ifname

from . import errors

log = get_logger("pycni.dp-steering")
RT_TABLE_LOCAL, RTPROT_KERNEL = 255, 2
VEX_INDEX_BASE = 1000000      # vex ifindexes start here, away from host-side ones vin takes
IFA_F_NODAD = 0x02


# What the pod's interface carries that must survive the swap: its MAC, MTU, txqlen, the
# veth peer's ifindex (host side), its addresses (IPv6 link-local included: added before the
# link goes up, without DAD, it is usable at once, where the one the kernel would make from the
# MAC is tentative for a second), routes (local table and kernel routes left out) and permanent
# ARP/NDP entries.
Snapshot = namedtuple("Snapshot", "mac mtu txqlen peer addrs routes neighs")


def must_index(rt: nl.Rtnl, name: str, netns: str) -> int:
    """The ifindex of `name` in `netns` (rt's), for a device dp-steering made or found a moment
    ago: one that is gone now (deleted under us) is dp-steering's IFACE_MISSING, never a None
    handed on to the kernel."""
    index = link.index_of(rt, name)
    if index is None:
        raise CNIError(errors.IFACE_MISSING, f"{name} is missing in {netns}",
                       "it was deleted while dp-steering worked on it; DEL and ADD the pod again")
    return index


def snapshot(rt: nl.Rtnl, index: int, have: nl.Link | None = None) -> Snapshot:
    """What link `index` carries (`have`: the link as just read, else read here)."""
    have = have if have is not None else rt.link(index=index)
    if have is None:
        raise FileNotFoundError(errno.ENODEV, f"link {index} is gone")
    return Snapshot(
        mac=have.mac, mtu=have.mtu, txqlen=have.txqlen, peer=have.peer,
        addrs=rt.addrs(index, socket.AF_UNSPEC),
        routes=[r for r in link.routes_through(rt, index)
                if r.table != RT_TABLE_LOCAL and r.protocol != RTPROT_KERNEL],
        neighs=[n for n in rt.neighs(socket.AF_UNSPEC, index)
                if n.state & nl.NUD_PERMANENT and n.lladdr and n.dst is not None])


def apply(rt: nl.Rtnl, index: int, snap: Snapshot) -> None:
    """Give link `index` the snapshot's addresses, bring it up, add routes and neighbours."""
    # IPv6 addresses with no DAD (the pod had them already) and newest first, as the kernel
    # lists them: added in reverse, they list (and are chosen as sources) in the order they had
    v4 = [a for a in snap.addrs if a.address.version == 4]
    v6 = [a for a in snap.addrs if a.address.version == 6]
    _batch(rt, [nl.addr_msg(True, index, a.address, a.broadcast, a.flags | IFA_F_NODAD if a.address.version == 6 else 0)
                for a in v4 + v6[::-1]], "add address", (errno.EEXIST,))
    link.set_link(rt, index, up=True)
    pending = sorted(snap.routes, key=lambda r: r.gateway)     # direct routes first
    for attempt in range(3):             # a gateway may need a route added later in the list
        errs = rt.batch([link.route_through_msg(r, index) for r in pending])
        failed = [(r, err) for r, err in zip(pending, errs) if err and err != errno.EEXIST]
        pending = [r for r, _ in failed]
        if not pending:
            break
        time.sleep(0.05 * (attempt + 1))
    for r, err in failed:
        log.warning("route %s not restored on %d: %s", r, index, os.strerror(err))
    _batch(rt, [nl.neigh_msg(True, index, n.dst, n.lladdr) for n in snap.neighs], "add neighbour", ())


def _batch(rt: nl.Rtnl, msgs: list, what: str, tolerated: tuple[int, ...]) -> None:
    for err in rt.batch(msgs):
        if err and err not in tolerated:
            raise nl.NetlinkError(err, f"{what}: {os.strerror(err)}")


def snapshot_record(snap: Snapshot) -> dict:
    """The snapshot as JSON a journal keeps (a killed pull is undone with what it had)."""
    return {"mac": snap.mac, "mtu": snap.mtu, "txqlen": snap.txqlen, "peer": snap.peer,
            "addrs": [[str(a.address), a.flags, str(a.broadcast) if a.broadcast else None] for a in snap.addrs],
            "routes": [[*r[:9], {str(k): v.hex() for k, v in r.attrs.items()}] for r in snap.routes],
            "neighs": [[str(n.dst), n.lladdr] for n in snap.neighs]}


def snapshot_from(rec) -> Snapshot | None:
    """snapshot_record's inverse; None for anything else (a journal we cannot trust)."""
    import ipaddress
    try:
        return Snapshot(
            mac=str(rec["mac"]), mtu=int(rec["mtu"]), txqlen=int(rec["txqlen"]), peer=int(rec["peer"] or 0),
            addrs=[nl.Addr(0, ipaddress.ip_interface(a), int(f), ipaddress.ip_address(b) if b else None)
                   for a, f, b in rec["addrs"]],
            routes=[link.LinkRoute._make([*(int(v) for v in r[:9]),
                                          {int(k): bytes.fromhex(v) for k, v in r[9].items()}])
                    for r in rec["routes"]],
            neighs=[nl.Neigh(0, 0, ipaddress.ip_address(d), str(ll), nl.NUD_PERMANENT, 0, 0)
                    for d, ll in rec["neighs"]])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def pull(pod_ns: str, enf_ns: str, ifname: str, vex: str, vin: str, parking_mac: str,
         before=None) -> Snapshot:
    """Swap the pod's interface for a vex/vin triad; returns the snapshot taken before.

    Indexes are kept where they can be, so the veth peering looks the same from both
    ends (the previous plugin's CHECK compares them): the new CNI_IFNAME gets vex's
    ifindex and vin the ifindex of the host-side peer. Raises FileNotFoundError when
    `ifname` is not in the pod netns, FileExistsError when vex/vin names are taken.
    On any failure the pod is restored before raising. `before(snapshot)` runs after the
    checks and before the first change (dp-steering's journal).
    """
    with link.open_rtnl(pod_ns) as pod, link.open_rtnl(enf_ns) as enf:
        found = link.find(pod, ifname)
        if found is None:
            raise FileNotFoundError(errno.ENODEV, f"no interface {ifname} in {pod_ns}")
        index = found.index
        for rt, where in ((pod, pod_ns), (enf, enf_ns)):
            taken = [n for n in (vex, vin) if link.index_of(rt, n) is not None]
            if taken:
                raise FileExistsError(errno.EEXIST, f"{', '.join(taken)} already in {where}")
        snap = snapshot(pod, index, found)
        if before is not None:
            before(snap)
        try:
            link.set_link(pod, index, up=False)
            link.set_link(pod, index, name=vex, mac=parking_mac)
            _batch(pod, [nl.addr_msg(False, index, a.address) for a in snap.addrs], "delete address",
                   (errno.EADDRNOTAVAIL, errno.ENOENT))
            # an ifindex free in the pod too, so the new CNI_IFNAME can take it (see above)
            link.move_to_netns(pod, index, enf_ns, new_index=link.free_index(enf, VEX_INDEX_BASE, pod))
            vex_index = must_index(enf, vex, enf_ns)
            asked = vex_index if pod.link(index=vex_index) is None else 0
            # the kernel gives a veth's peer the ifindex asked for only when the first end's is asked too
            peer_index = snap.peer if asked and snap.peer and enf.link(index=snap.peer) is None else 0
            new = link.create_veth(pod, ifname, vin, enf_ns, mtu=snap.mtu, mac=snap.mac, txqlen=snap.txqlen,
                                   index=asked, peer_index=peer_index)
            apply(pod, new, snap)
            quiet_up(enf, enf_ns, vex, vin, known={vex: vex_index, **({vin: peer_index} if peer_index else {})})
        except BaseException:
            _restore(pod, enf, pod_ns, ifname, vex, vin, snap.mac, snap)
            raise
    return snap


def quiet_up(rt: nl.Rtnl, netns: str, *names: str, known: dict[str, int] | None = None) -> None:
    """Bring ports of ours up in `netns` with IPv6 off first (no autoconf chatter), in order:
    each one's sysctl, then each one up (the netns entered once). `known`: ifindexes of some of
    them the caller has just made or moved there (not looked up again)."""
    from plugins.pkg import ns
    with ns.enter(netns):
        for name in names:
            try:
                with open(f"/proc/sys/net/ipv6/conf/{check_ifname(name)}/disable_ipv6", "w") as f:
                    f.write("1")
            except FileNotFoundError:       # IPv6 off in this kernel or netns
                pass
    known = known or {}
    for name in names:
        try:
            link.set_link(rt, known.get(name) or must_index(rt, name, netns), up=True)
        except nl.NetlinkError as e:
            if e.errno != errno.ENODEV or name not in known:
                raise
            # not at the ifindex the caller had: by its name (IFACE_MISSING when it is gone)
            link.set_link(rt, must_index(rt, name, netns), up=True)


def restore(pod_ns: str | None, enf_ns: str, ifname: str, vex: str, vin: str, mac: str | None,
            before: Snapshot | None = None, also: tuple[str, ...] = ()) -> None:
    """Undo a pull. With the pod netns gone (None), just delete vex/vin in the enforcer.
    `before`: the snapshot a pull that did not finish took (the pod gets it back); without
    it the pod gets what CNI_IFNAME carries now. `also`: links of the enforcer netns deleted
    in the same kernel pass as vin (the shared pair with its last pod: one deletion's RCU
    waits instead of two)."""
    with link.open_rtnl(enf_ns) as enf:
        if pod_ns is None or not os.path.exists(pod_ns):
            delete(enf, (vex, vin, *also))
            return
        with link.open_rtnl(pod_ns) as pod:
            snap = before
            cur = link.find(pod, ifname)
            in_enf = link.index_of(enf, vex)
            pulled = in_enf is not None or link.index_of(pod, vex) is not None
            if snap is None and cur is not None and pulled:
                snap = snapshot(pod, cur.index, cur)      # the pod's live config, on our veth
            _restore(pod, enf, pod_ns, ifname, vex, vin, mac, snap, also, vex_at=in_enf)


def delete(rt: nl.Rtnl, names: tuple[str, ...]) -> None:
    """Delete the links of `names` that are here, in one kernel pass when there are several."""
    found = [i for i in (link.index_of(rt, name) for name in names) if i is not None]
    if len(found) > 1:
        link.delete_together(rt, found)
    elif found:
        link.delete_index(rt, found[0])


def _restore(pod: nl.Rtnl, enf: nl.Rtnl, pod_ns: str, ifname: str, vex: str, vin: str, mac: str | None,
             snap: Snapshot | None, also: tuple[str, ...] = (), vex_at: int | None | bool = False) -> None:
    """`vex_at`: vex's ifindex in the enforcer netns as the caller has just read it (None: not
    there); False: look it up. Deleting vin does not change it."""
    delete(enf, (vin, *also))                    # vin takes our CNI_IFNAME in the pod with it
    idx = link.index_of(enf, vex) if vex_at is False else vex_at
    if idx is not None:                          # back to the pod, where its ifindex is free now
        link.move_to_netns(enf, idx, pod_ns)     # the move takes it down (dev_close) and its qdiscs
    vex_idx = link.index_of(pod, vex)
    if vex_idx is None:                          # never renamed: the original is there, maybe down
        cur = link.index_of(pod, ifname)
        if cur is not None and snap is not None:
            apply(pod, cur, snap)                # up again, with the routes going down took
        return
    link.delete_if_exists(pod, ifname)           # ours, if vin was already gone
    if idx is None:                              # never moved (a pull that failed before the move)
        link.set_link(pod, vex_idx, up=False)
    link.set_link(pod, vex_idx, name=ifname, mac=mac, mtu=snap.mtu if snap else None,
                  txqlen=snap.txqlen if snap else None)
    if snap is not None:
        apply(pod, vex_idx, snap)
    else:
        link.set_link(pod, vex_idx, up=True)


def lost(pod_ns: str, ifname: str, prev) -> str | None:
    """CHECK: the first address or route of prevResult (either family) that `ifname` in the pod
    lost, or None. Addresses: prevResult's IPs of that interface (by index, or all when none
    names one); routes: those whose gateway lies in one of its subnets (by destination and
    gateway), or with no gateway of a family it has an address of (by destination), among the
    routes through it (the pull re-binds all of them)."""
    import ipaddress
    ifaces = prev.interfaces
    mine = [ip for ip in prev.ips
            if ip.interface is None or (0 <= ip.interface < len(ifaces) and ifaces[ip.interface].name == ifname)]
    want = [ipaddress.ip_interface(ip.address) for ip in mine]
    with link.open_rtnl(pod_ns) as rt:
        index = link.index_of(rt, ifname)
        if index is None:
            return f"{ifname} is missing in the pod netns"
        have = {a.address for a in rt.addrs(index, socket.AF_UNSPEC)}
        for w in want:
            if w not in have:
                return f"{ifname} lost its address {w} (prevResult has it)"
        routes = {(r.family, _route_dst(r), _route_gw(r)) for r in link.routes_through(rt, index)}
    for r in prev.routes:
        dst = ipaddress.ip_network(r.dst, strict=False)
        gw = ipaddress.ip_address(r.gw) if r.gw else None
        family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
        if gw is None:             # through this interface when it has an address of the family
            if any(w.version == dst.version for w in want) and \
                    not any(f == family and d == dst for f, d, _ in routes):
                return f"{ifname} lost its route to {dst} (prevResult has it)"
        elif any(gw in w.network for w in want if w.version == gw.version) and (family, dst, gw) not in routes:
            return f"{ifname} lost its route to {dst} via {gw} (prevResult has it)"
    return None


def _route_dst(r: link.LinkRoute):
    import ipaddress
    size = 16 if r.family == socket.AF_INET6 else 4
    raw = r.attrs.get(nl.RTA_DST, b"\0" * size)
    return ipaddress.ip_network((raw, r.dst_len))       # packed: 4 or 16 bytes say the family


def _route_gw(r: link.LinkRoute):
    import ipaddress
    raw = r.attrs.get(nl.RTA_GATEWAY)
    return ipaddress.ip_address(raw) if raw else None
