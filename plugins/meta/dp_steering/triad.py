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
import ipaddress
import logging
import os
import time
from dataclasses import dataclass, field

from plugins.pkg import iplink
from plugins.pkg.names import check_ifname

log = logging.getLogger("pycni.dp-steering")
RT_TABLE_LOCAL, RTPROT_KERNEL, RTNH_F_ONLINK = 255, 2, 4
NUD_PERMANENT = 0x80
VEX_INDEX_BASE = 1000000      # vex ifindexes start here, away from host-side ones vin takes
IFA_F_NODAD = 0x02
_ROUTE_ATTRS = (("dst", "RTA_DST"), ("gateway", "RTA_GATEWAY"), ("priority", "RTA_PRIORITY"),
                ("prefsrc", "RTA_PREFSRC"), ("metrics", "RTA_METRICS"))


@dataclass
class Snapshot:
    """What the pod's interface carries that must survive the swap."""
    mac: str
    mtu: int
    txqlen: int
    addrs: list = field(default_factory=list)      # pyroute2 addr() kwargs
    routes: list = field(default_factory=list)     # pyroute2 route() kwargs, oif left out
    neighs: list = field(default_factory=list)     # pyroute2 neigh() kwargs, ifindex left out


def snapshot(ipr, index: int) -> Snapshot:
    msg = ipr.link("get", index=index)[0]
    snap = Snapshot(mac=msg.get_attr("IFLA_ADDRESS"), mtu=msg.get_attr("IFLA_MTU"),
                    txqlen=msg.get_attr("IFLA_TXQLEN") or 0)
    for a in ipr.get_addr(index=index):
        addr = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
        if a["family"] == 10 and ipaddress.ip_address(addr).is_link_local:
            continue                                  # the kernel makes it again from the MAC
        spec = {"address": addr, "prefixlen": a["prefixlen"], "family": a["family"]}
        if a.get_attr("IFA_BROADCAST"):
            spec["broadcast"] = a.get_attr("IFA_BROADCAST")
        if a["family"] == 10:
            spec["flags"] = (a.get_attr("IFA_FLAGS") or a["flags"]) | IFA_F_NODAD
        snap.addrs.append(spec)
    for r in ipr.get_routes():
        table = r.get_attr("RTA_TABLE") or r["table"]
        if r.get_attr("RTA_OIF") != index or table == RT_TABLE_LOCAL or r["proto"] == RTPROT_KERNEL:
            continue
        spec = {"family": r["family"], "dst_len": r["dst_len"], "table": table, "proto": r["proto"],
                "scope": r["scope"], "type": r["type"], "tos": r["tos"], "flags": r["flags"] & RTNH_F_ONLINK}
        for key, attr in _ROUTE_ATTRS:
            value = r.get_attr(attr)
            if value is not None:
                spec[key] = {"attrs": value["attrs"]} if key == "metrics" else value
        snap.routes.append(spec)
    for n in ipr.get_neighbours(ifindex=index):
        if n["state"] & NUD_PERMANENT and n.get_attr("NDA_LLADDR"):
            snap.neighs.append({"dst": n.get_attr("NDA_DST"), "lladdr": n.get_attr("NDA_LLADDR"),
                                "family": n["family"], "state": NUD_PERMANENT})
    return snap


def apply(ipr, index: int, snap: Snapshot) -> None:
    """Give link `index` the snapshot's addresses, bring it up, add routes and neighbours."""
    for spec in snap.addrs:
        _quiet_exists(ipr.addr, "add", index=index, **spec)
    iplink.set_link(ipr, index, up=True)
    pending = sorted(snap.routes, key=lambda r: "gateway" in r)     # direct routes first
    for attempt in range(3):             # a gateway may need a route added later in the list
        failed = []
        for spec in pending:
            try:
                ipr.route("add", oif=index, **spec)
            except iplink.netlink_error() as e:
                if e.code != errno.EEXIST:
                    failed.append((spec, e))
        pending = [spec for spec, _ in failed]
        if not pending:
            break
        time.sleep(0.05 * (attempt + 1))
    for spec, e in failed if pending else []:
        log.warning("route %s not restored on %d: %s", spec, index, e)
    for spec in snap.neighs:
        _quiet_exists(ipr.neigh, "replace", ifindex=index, **spec)


def _quiet_exists(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except iplink.netlink_error() as e:
        if e.code != errno.EEXIST:
            raise


def pull(pod_ns: str, enf_ns: str, ifname: str, vex: str, vin: str, parking_mac: str) -> Snapshot:
    """Swap the pod's interface for a vex/vin triad; returns the snapshot taken before.

    Indexes are kept where they can be, so the veth peering looks the same from both
    ends (the previous plugin's CHECK compares them): the new CNI_IFNAME gets vex's
    ifindex and vin the ifindex of the host-side peer. Raises FileNotFoundError when
    `ifname` is not in the pod netns, FileExistsError when vex/vin names are taken.
    On any failure the pod is restored before raising.
    """
    with iplink.open_iproute(pod_ns) as pod, iplink.open_iproute(enf_ns) as enf:
        index = iplink.index_of(pod, ifname)
        if index is None:
            raise FileNotFoundError(errno.ENODEV, f"no interface {ifname} in {pod_ns}")
        for ipr, where in ((pod, pod_ns), (enf, enf_ns)):
            taken = [n for n in (vex, vin) if iplink.index_of(ipr, n) is not None]
            if taken:
                raise FileExistsError(errno.EEXIST, f"{', '.join(taken)} already in {where}")
        snap = snapshot(pod, index)
        host_peer = pod.link("get", index=index)[0].get_attr("IFLA_LINK") or 0
        try:
            iplink.set_link(pod, index, up=False)
            iplink.set_link(pod, index, name=vex, mac=parking_mac)
            for spec in snap.addrs:
                pod.addr("del", index=index, address=spec["address"], prefixlen=spec["prefixlen"])
            iplink.move_to_netns(pod, index, enf_ns, new_index=_free_index(enf, VEX_INDEX_BASE))
            vex_index = iplink.index_of(enf, vex)
            new = iplink.create_veth(
                pod, ifname, vin, mtu=snap.mtu, mac=snap.mac, txqlen=snap.txqlen, peer_netns=enf_ns,
                index=vex_index if iplink.index_free(pod, vex_index) else 0,
                peer_index=host_peer if host_peer and iplink.index_free(enf, host_peer) else 0)
            apply(pod, new, snap)
            for name in (vex, vin):
                quiet_up(enf, enf_ns, name)
        except BaseException:
            _restore(pod, enf, pod_ns, ifname, vex, vin, snap.mac, snap)
            raise
    return snap


def _free_index(ipr, base: int) -> int:
    taken = {m["index"] for m in ipr.get_links()}
    return next(i for i in range(base, base + len(taken) + 1) if i not in taken)


def quiet_up(ipr, netns: str, name: str) -> None:
    """Bring a port of ours up in `netns` with IPv6 off first (no autoconf chatter)."""
    from plugins.pkg import ns
    with ns.enter(netns):
        try:
            with open(f"/proc/sys/net/ipv6/conf/{check_ifname(name)}/disable_ipv6", "w") as f:
                f.write("1")
        except FileNotFoundError:       # IPv6 off in this kernel or netns
            pass
    iplink.set_link(ipr, iplink.index_of(ipr, name), up=True)


def restore(pod_ns: str | None, enf_ns: str, ifname: str, vex: str, vin: str, mac: str) -> None:
    """Undo a pull. With the pod netns gone (None), just delete vex/vin in the enforcer."""
    with iplink.open_iproute(enf_ns) as enf:
        if pod_ns is None or not os.path.exists(pod_ns):
            for name in (vex, vin):
                iplink.delete_if_exists(enf, name)
            return
        with iplink.open_iproute(pod_ns) as pod:
            snap = None
            cur = iplink.index_of(pod, ifname)
            if cur is not None and (iplink.index_of(enf, vex) is not None or iplink.index_of(pod, vex) is not None):
                snap = snapshot(pod, cur)         # the pod's live config, on our veth
            _restore(pod, enf, pod_ns, ifname, vex, vin, mac, snap)


def _restore(pod, enf, pod_ns, ifname, vex, vin, mac: str, snap: Snapshot | None) -> None:
    iplink.delete_if_exists(enf, vin)            # takes our CNI_IFNAME in the pod with it
    idx = iplink.index_of(enf, vex)
    if idx is not None:                          # back to the pod, where its ifindex is free now
        iplink.set_link(enf, idx, up=False)
        iplink.move_to_netns(enf, idx, pod_ns)
    vex_idx = iplink.index_of(pod, vex)
    if vex_idx is None:
        return                                   # never renamed: the original is intact
    if (cur := iplink.index_of(pod, ifname)) is not None:
        pod.link("del", index=cur)               # ours, if vin was already gone
    iplink.set_link(pod, vex_idx, up=False)
    iplink.set_link(pod, vex_idx, name=ifname, mac=mac, mtu=snap.mtu if snap else None,
                    txqlen=snap.txqlen if snap else None)
    if snap is not None:
        apply(pod, vex_idx, snap)
    else:
        iplink.set_link(pod, vex_idx, up=True)
