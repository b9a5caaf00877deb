"""The underlay (where VXLAN packets leave) and the node's vxlan device.

Underlay: `iface` when configured; else the device holding `publicIP` when that is a
local address; else the device of the default route. Its source address is
`publicIP` when local to it, else its first IPv4 address. Public IP announced to
peers: `publicIP`, else that source address.

Device `vxlan.<vni>` (or `deviceName`): VNI, UDP port, learning off, underlay device
and source address. An existing device that differs in any of those (or is not a
vxlan device) is deleted and created again, as flannel does; MTU (underlay - 50),
MAC (the lease's VTEP MAC), up state and the address (subnet network address /32)
are corrected in place.
"""
from __future__ import annotations

import ipaddress
import os

from libcni_py.errors import CNIError
from plugins.pkg import rtnl as nl
from .errors import DEVICE_FAILED, NO_UNDERLAY

ENCAP_OVERHEAD = 50


class Underlay:
    """Where VXLAN packets leave: the link, its MTU, source address, on-link subnets (directRouting)."""
    __slots__ = ("index", "name", "mtu", "local", "public_ip", "networks")

    def __init__(self, index: int, name: str, mtu: int, local: ipaddress.IPv4Address,
                 public_ip: ipaddress.IPv4Address, networks: tuple[ipaddress.IPv4Network, ...]):
        self.index, self.name, self.mtu = index, name, mtu
        self.local = local              # source address of the VXLAN packets
        self.public_ip = public_ip      # what peers send to
        self.networks = networks

    def on_link(self, ip: ipaddress.IPv4Address) -> bool:
        return any(ip in net for net in self.networks)


def find_underlay(rt: nl.Rtnl, cfg) -> Underlay:
    addrs = rt.addrs()
    if cfg.iface:
        link = rt.link(cfg.iface)
        if link is None:
            raise CNIError(NO_UNDERLAY, f"underlay iface {cfg.iface!r} not found")
    else:
        index = next((a.index for a in addrs if cfg.public_ip is not None and a.address.ip == cfg.public_ip),
                     None) or _default_route_oif(rt)
        link = next((lk for lk in rt.links() if lk.index == index), None)
        if link is None:
            raise CNIError(NO_UNDERLAY, "no underlay: no default route and no iface configured",
                           "set `iface` (or `publicIP` to a local address)")
    mine = [a.address for a in addrs if a.index == link.index]
    if not mine:
        raise CNIError(NO_UNDERLAY, f"underlay {link.name} has no IPv4 address")
    local = next((a.ip for a in mine if a.ip == cfg.public_ip), mine[0].ip)
    return Underlay(link.index, link.name, link.mtu, local, cfg.public_ip or local,
                    tuple(a.network for a in mine))


def _default_route_oif(rt: nl.Rtnl) -> int | None:
    defaults = [r for r in rt.routes() if r.dst.prefixlen == 0 and r.oif]
    return min(defaults, key=lambda r: r.priority).oif if defaults else None


class Want:
    """The device as it should be."""
    __slots__ = ("name", "vni", "port", "underlay", "mac", "address")

    def __init__(self, name: str, vni: int, port: int, underlay: Underlay, mac: str,
                 address: ipaddress.IPv4Interface):
        self.name, self.vni, self.port = name, vni, port
        self.underlay, self.mac, self.address = underlay, mac, address

    @property
    def mtu(self) -> int:
        return self.underlay.mtu - ENCAP_OVERHEAD


def want(cfg, lease, underlay: Underlay) -> Want:
    return Want(cfg.device_name, cfg.vni, cfg.port, underlay, lease.vtep_mac,
                ipaddress.IPv4Interface(f"{lease.subnet.network_address}/32"))


def identity_drift(link: nl.Link, w: Want) -> list[str]:
    """Differences that need the device recreated."""
    if link.kind != "vxlan":
        return [f"kind {link.kind or 'unknown'!r}, want 'vxlan'"]
    have = link.vxlan
    wanted = {"id": w.vni, "port": w.port, "learning": 0, "link": w.underlay.index, "local": w.underlay.local}
    return [f"{key} {have.get(key)}, want {value}" for key, value in wanted.items() if have.get(key) != value]


def drift(rt: nl.Rtnl, w: Want) -> list[str]:
    """Everything wrong with the device, for CHECK; [] when it is as wanted."""
    link = rt.link(w.name)
    if link is None:
        return [f"device {w.name} missing"]
    out = identity_drift(link, w)
    if link.mtu != w.mtu:
        out.append(f"mtu {link.mtu}, want {w.mtu}")
    if link.mac != w.mac:
        out.append(f"mac {link.mac}, want {w.mac}")
    if not link.up:
        out.append("down, want up")
    addrs = {a.address for a in rt.addrs(link.index)}
    if w.address not in addrs:
        out.append(f"address {w.address} missing")
    out.extend(f"unexpected address {a}" for a in sorted(addrs - {w.address}))
    return [f"{w.name}: {d}" if not d.startswith("device ") else d for d in out]


def ensure(rt: nl.Rtnl, w: Want) -> nl.Link:
    """Create or fix the device; return it. Leaves a correct device untouched."""
    link = rt.link(w.name)
    if link is not None and identity_drift(link, w):
        _apply(rt, [nl.link_del_msg(link.index)], f"delete {w.name} ({'; '.join(identity_drift(link, w))})")
        link = None
    if link is None:
        _apply(rt, [nl.vxlan_link_msg(w.name, w.vni, w.port, w.underlay.index, w.underlay.local, w.mac, w.mtu)],
               f"create {w.name}")
        link = _present(rt, w.name)
    if link.mtu != w.mtu or link.mac != w.mac or not link.up:
        _apply(rt, [nl.link_set_msg(link.index, up=True, mtu=w.mtu, mac=w.mac)], f"set {w.name} up")
    addrs = {a.address for a in rt.addrs(link.index)}
    msgs = [nl.addr_msg(False, link.index, a) for a in addrs - {w.address}]
    if w.address not in addrs:
        msgs.append(nl.addr_msg(True, link.index, w.address))
    if msgs:
        _apply(rt, msgs, f"set address {w.address} on {w.name}")
    return _present(rt, w.name)


def _present(rt: nl.Rtnl, name: str) -> nl.Link:
    link = rt.link(name)
    if link is None:
        raise CNIError(DEVICE_FAILED, f"vxlan device {name} vanished while being configured",
                       "another program deletes it: find it (`ip monitor link`)")
    return link


def _apply(rt: nl.Rtnl, msgs, what: str) -> None:
    errs = [e for e in rt.batch(msgs) if e]
    if errs:
        raise CNIError(DEVICE_FAILED, f"vxlan device: {what} failed", os.strerror(errs[0]))
