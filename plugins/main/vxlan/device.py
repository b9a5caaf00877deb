"""The underlay (where VXLAN packets leave) and the node's vxlan device.

Underlay: `iface` when configured; else the device holding `publicIP` when that is a
local address; else the device of the default route. Its source address is
`publicIP` when local to it, else its first IPv4 address. Public IP announced to
peers: `publicIP`, else that source address.

Device `vxlan.<vni>` (or `deviceName`): VNI, UDP port, learning off, underlay device
and source address. Ours carries the alias `pycni-vxlan network=<name>` (IFLA_IFALIAS,
as edgemesh marks `edgemesh0`). The kernel ignores an alias in the RTM_NEWLINK that
creates a link, so the mark is set by a second request; what the creating request does
carry is the lease's VTEP MAC, derived from (network name, node name): an unmarked vxlan
device with our VNI and port and either exactly our attributes (a device of the version
before marks, or one whose ADD was killed between the two requests) or our VTEP MAC is
adopted and marked. Any other link of that name (a bridge, the uplink, a veth, another
network's vxlan device, an unmarked vxlan device of someone else) is never deleted or
changed: 107 naming it. Our device that differs in VNI, port, learning, underlay device
or source address is deleted and created again, as flannel does; MTU (underlay - 50),
MAC, up state and the address (subnet network address /32) are corrected in place.

IPv6 (`ipv6Network`): a second device `vxlan-v6.<vni>` (or `ipv6DeviceName`, as flannel's
flannel-v6.<vni>) over the IPv6 underlay: `ipv6Iface`; else the device holding `publicIPv6`;
else the device of the IPv6 default route; else the IPv4 underlay's device. Its source address
is `publicIPv6` when local to it, else its first global IPv6 address. Same VNI, port, VTEP MAC
and mark as the IPv4 device; MTU underlay - 70 (IPv6 outer header); address the IPv6 subnet's
network address /128 (nodad). The same adoption and recreation rules apply.
"""
from __future__ import annotations

import ipaddress
import os
import socket

from libcni_py.errors import CNIError
from plugins.pkg import rtnl as nl
from .errors import DEVICE_FAILED, NO_UNDERLAY

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

ENCAP_OVERHEAD = 50
ENCAP_OVERHEAD6 = 70          # outer IPv6 (40) + UDP (8) + VXLAN (8) + inner Ethernet (14)
IFA_F_NODAD, IFA_F_DADFAILED = 0x02, 0x08
IFLA_IFALIAS = 20
MARK_PREFIX = "pycni-vxlan "


class Underlay:
    """Where VXLAN packets leave: the link, its MTU, source address, on-link subnets (directRouting)."""
    __slots__ = ("index", "name", "mtu", "local", "public_ip", "networks")

    def __init__(self, index: int, name: str, mtu: int, local, public_ip, networks: tuple):
        self.index, self.name, self.mtu = index, name, mtu
        self.local = local              # source address of the VXLAN packets
        self.public_ip = public_ip      # what peers send to
        self.networks = networks

    def on_link(self, ip) -> bool:
        return ip is not None and any(ip.version == net.version and ip in net for net in self.networks)

    @property
    def version(self) -> int:
        return self.local.version


def find_underlay(rt: nl.Rtnl, cfg) -> Underlay:
    addrs = rt.addrs()
    if cfg.iface:
        link = rt.link(cfg.iface)
        if link is None:
            raise CNIError(NO_UNDERLAY, f"underlay iface {cfg.iface!r} not found")
    else:
        index = next((a.index for a in addrs if cfg.public_ip is not None and a.address.ip == cfg.public_ip),
                     None) or _default_route_oif(rt)
        link = rt.link(index=index) if index else None      # one RTM_GETLINK, not a dump of every veth
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


def _global6(addrs) -> list:
    """The IPv6 addresses VXLAN can leave from: not link-local, loopback or failed DAD."""
    return [a for a in addrs if a.address.version == 6 and not a.address.ip.is_link_local
            and not a.address.ip.is_loopback and not a.flags & IFA_F_DADFAILED]


def find_underlay6(rt: nl.Rtnl, cfg, v4: Underlay | None = None) -> Underlay:
    """The IPv6 underlay (see the module docstring); CNIError(106) when there is none."""
    addrs = _global6(rt.addrs(None, socket.AF_INET6))
    if cfg.iface6:
        link = rt.link(cfg.iface6)
        if link is None:
            raise CNIError(NO_UNDERLAY, f"IPv6 underlay ipv6Iface {cfg.iface6!r} not found")
    else:
        index = next((a.index for a in addrs if cfg.public_ip6 is not None and a.address.ip == cfg.public_ip6),
                     None)
        if index is None:
            defaults = [r for r in nl.routes6(rt) if r.dst.prefixlen == 0 and r.oif]
            index = min(defaults, key=lambda r: r.priority).oif if defaults else None
        if index is None and v4 is not None:
            index = v4.index
        link = rt.link(index=index) if index else None
        if link is None:
            raise CNIError(NO_UNDERLAY, "no IPv6 underlay: no IPv6 default route, no ipv6Iface and no IPv4 "
                           "underlay with an IPv6 address", "set `ipv6Iface` (or `publicIPv6` to a local address)")
    mine = [a.address for a in addrs if a.index == link.index]
    if not mine:
        raise CNIError(NO_UNDERLAY, f"IPv6 underlay {link.name} has no global IPv6 address",
                       "give it one, or set `ipv6Iface` to the device that has one")
    local = next((a.ip for a in mine if a.ip == cfg.public_ip6), mine[0].ip)
    return Underlay(link.index, link.name, link.mtu, local, cfg.public_ip6 or local,
                    tuple(a.network for a in mine))


class Want:
    """The device as it should be."""
    __slots__ = ("name", "vni", "port", "underlay", "mac", "address", "mark")

    def __init__(self, name: str, vni: int, port: int, underlay: Underlay, mac: str,
                 address, mark: str = ""):
        self.name, self.vni, self.port = name, vni, port
        self.underlay, self.mac, self.address = underlay, mac, address
        self.mark = mark                # the alias our device carries

    @property
    def mtu(self) -> int:
        return self.underlay.mtu - (ENCAP_OVERHEAD6 if self.underlay.version == 6 else ENCAP_OVERHEAD)

    @property
    def family(self) -> int:
        """The family of the device's own address (the overlay family it carries)."""
        return socket.AF_INET6 if self.address.version == 6 else socket.AF_INET


def want(cfg, lease, underlay: Underlay) -> Want:
    return Want(cfg.device_name, cfg.vni, cfg.port, underlay, lease.vtep_mac,
                ipaddress.IPv4Interface(f"{lease.subnet.network_address}/32"), mark(cfg.name))


def want6(cfg, lease, underlay6: Underlay) -> Want:
    """The IPv6 device: the same VNI, port, VTEP MAC and mark over the IPv6 underlay."""
    return Want(cfg.device6_name, cfg.vni, cfg.port, underlay6, lease.vtep_mac,
                ipaddress.IPv6Interface(f"{lease.subnet6.network_address}/128"), mark(cfg.name))


def _addrs(rt: nl.Rtnl, index: int, w: Want) -> set:
    """The device's addresses of its family (IPv6: link-local ones aside, the kernel's own)."""
    return {a.address for a in rt.addrs(index, w.family)
            if not (a.address.version == 6 and a.address.ip.is_link_local)}


def mark(network_name: str) -> str:
    """The alias of this network's device (IFALIASZ: at most 255 bytes)."""
    return (MARK_PREFIX + "network=" + network_name).encode()[:255].decode(errors="ignore")


def alias(rt: nl.Rtnl, link: nl.Link) -> str:
    got = rt.link_attrs(index=link.index)
    raw = got[2].get(IFLA_IFALIAS, b"") if got else b""
    return bytes(raw).rstrip(b"\0").decode(errors="replace")


def _foreign(what: str, name: str) -> CNIError:
    return CNIError(DEVICE_FAILED, f"deviceName {name!r} names {what}: not this network's vxlan device, "
                    "left as it is",
                    "set `deviceName` to a free name (default vxlan.<vni>), or remove that link yourself "
                    "if it is a leftover")


def vet(rt: nl.Rtnl, name: str, want_mark: str, vni: int, port: int, underlay: Underlay | None = None,
        mac: Callable[[], str] | None = None) -> nl.Link | None:
    """The link called `name` when it may be our device (None when there is none); CNIError(107)
    when it cannot be ours: another kind of link, another mark, an unmarked vxlan device with another
    VNI or port, or (given `underlay` and `mac()`, the VTEP MAC the lease will have) an unmarked one
    with neither exactly our attributes nor our MAC. Decided before the node takes or changes a lease."""
    link = rt.link(name)
    if link is None:
        return None
    if link.kind != "vxlan":
        held = " holding addresses" if rt.addrs(link.index, socket.AF_UNSPEC) else ""
        raise _foreign(f"a {link.kind or 'device'} link (index {link.index}){held}", name)
    have = alias(rt, link)
    if have and have != want_mark:
        raise _foreign(f"a vxlan device marked {have!r}", name)
    if not have and (link.vxlan.get("id") != vni or link.vxlan.get("port") != port):
        raise _foreign(f"an unmarked vxlan device with VNI {link.vxlan.get('id')} port "
                       f"{link.vxlan.get('port')} (want {vni}/{port})", name)
    if not have and underlay is not None and mac is not None:
        w = Want(name, vni, port, underlay, mac(), ipaddress.IPv4Interface("0.0.0.0/32"), want_mark)
        to_adopt(rt, link, w)
    return link


def to_adopt(rt: nl.Rtnl, link: nl.Link, w: Want) -> bool:
    """False when `link` carries our mark; True when it is ours without it (our VNI and port and
    either exactly our attributes or our VTEP MAC: ensure() marks it); CNIError(107) otherwise."""
    vet(rt, w.name, w.mark, w.vni, w.port)       # kind, mark, VNI and port
    if alias(rt, link) == w.mark:
        return False
    if not identity_drift(link, w) or link.mac == w.mac:
        return True
    raise _foreign(f"an unmarked vxlan device with other attributes and MAC "
                   f"({'; '.join(identity_drift(link, w))}; mac {link.mac}, ours {w.mac})", w.name)


def _mark_msg(index: int, text: str) -> tuple[int, int, bytes]:
    body = nl._IFI.pack(socket.AF_UNSPEC, 0, index, 0, 0) + nl.nla(IFLA_IFALIAS, text.encode())
    return nl.RTM_NEWLINK, 0, body


def identity_drift(link: nl.Link, w: Want) -> list[str]:
    """Differences that need the device recreated."""
    if link.kind != "vxlan":
        return [f"kind {link.kind or 'unknown'!r}, want 'vxlan'"]
    have = link.vxlan
    local = "local6" if w.underlay.version == 6 else "local"
    wanted = {"id": w.vni, "port": w.port, "learning": 0, "link": w.underlay.index, local: w.underlay.local}
    return [f"{key} {have.get(key)}, want {value}" for key, value in wanted.items() if have.get(key) != value]


def drift(rt: nl.Rtnl, w: Want) -> list[str]:
    """Everything wrong with the device, for CHECK; [] when it is as wanted."""
    link = rt.link(w.name)
    if link is None:
        return [f"device {w.name} missing"]
    out = identity_drift(link, w)
    have = alias(rt, link)
    if w.mark and have != w.mark:
        out.append(f"alias {have!r}, want {w.mark!r}")
    if link.mtu != w.mtu:
        out.append(f"mtu {link.mtu}, want {w.mtu}")
    if link.mac != w.mac:
        out.append(f"mac {link.mac}, want {w.mac}")
    if not link.up:
        out.append("down, want up")
    addrs = _addrs(rt, link.index, w)
    if w.address not in addrs:
        out.append(f"address {w.address} missing")
    out.extend(f"unexpected address {a}" for a in sorted(addrs - {w.address}))
    return [f"{w.name}: {d}" if not d.startswith("device ") else d for d in out]


def ensure(rt: nl.Rtnl, w: Want) -> nl.Link:
    """Create or fix the device; return it. Leaves a correct device untouched."""
    link = rt.link(w.name)
    if link is not None and to_adopt(rt, link, w):
        _apply(rt, [_mark_msg(link.index, w.mark)], f"mark {w.name} as ours (adopted)")
    if link is not None and identity_drift(link, w):
        _apply(rt, [nl.link_del_msg(link.index)], f"delete {w.name} ({'; '.join(identity_drift(link, w))})")
        link = None
    if link is None:
        make = nl.vxlan6_link_msg if w.underlay.version == 6 else nl.vxlan_link_msg
        kind, flags, body = make(w.name, w.vni, w.port, w.underlay.index, w.underlay.local, w.mac, w.mtu)
        # The alias rides along (a kernel that honours it at creation marks in one request); the
        # VTEP MAC set here is what identifies the device should we be killed before the mark.
        _apply(rt, [(kind, flags, body + nl.nla(IFLA_IFALIAS, w.mark.encode()))], f"create {w.name}")
        link = _present(rt, w.name)
        _apply(rt, [_mark_msg(link.index, w.mark)], f"mark {w.name}")
    if link.mtu != w.mtu or link.mac != w.mac or not link.up:
        _apply(rt, [nl.link_set_msg(link.index, up=True, mtu=w.mtu, mac=w.mac)], f"set {w.name} up")
    addrs = _addrs(rt, link.index, w)
    msgs = [nl.addr_msg(False, link.index, a) for a in addrs - {w.address}]
    if w.address not in addrs:
        msgs.append(nl.addr_msg(True, link.index, w.address, flags=IFA_F_NODAD if w.address.version == 6 else 0))
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
