"""Generic link helpers: veth pairs across namespaces, bridges and their ports, attributes.

Built on the raw rtnetlink socket of plugins.pkg.rtnl (no pyroute2 import: a plugin
exec pays ~1 ms here instead of ~50-130 ms). Every function takes an open `Rtnl`
(`open_rtnl(netns_path)`), so a caller keeps one socket per namespace for a whole
command. Names are checked with plugins.pkg.names before they reach the kernel.
Nothing here knows CNI.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

from plugins.pkg import rtnl as nl
from plugins.pkg.names import check_ifname

RTM_SETLINK = 19
IFLA_MASTER, IFLA_PROTINFO, IFLA_NET_NS_FD = 10, 12, 28
IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 4, 5
IFLA_BRPORT_MODE = 4          # hairpin
VETH_INFO_PEER = 1
NLA_F_NESTED = 0x8000
_IFI = struct.Struct("=BxHiII")


@dataclass(frozen=True)
class Port:
    """A link's place on a bridge: master ifindex (0: none), hairpin (None: not a bridge port)."""
    master: int
    hairpin: bool | None


def open_rtnl(netns_path: str | None = None) -> nl.Rtnl:
    """A netlink socket in the namespace at `netns_path` (None: this one); it stays there."""
    if netns_path is None:
        return nl.Rtnl()
    from plugins.pkg.ns import enter
    with enter(netns_path):
        return nl.Rtnl()


def random_mac() -> str:
    """A random locally administered unicast MAC."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _nla(kind: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return struct.pack("=HH", n, kind) + data + b"\0" * (-n % 4)


def _u32(v: int) -> bytes:
    return struct.pack("=I", v)


def _ifi(index: int = 0, up: bool | None = None, family: int = socket.AF_UNSPEC) -> bytes:
    flags, change = (nl.IFF_UP if up else 0, nl.IFF_UP) if up is not None else (0, 0)
    return _IFI.pack(family, 0, index, flags, change)


def _link_attrs(name: str | None = None, mtu: int = 0, mac: str = "", master: int | None = None) -> bytes:
    out = b""
    if name is not None:
        out += _nla(nl.IFLA_IFNAME, check_ifname(name).encode() + b"\0")
    if mtu:
        out += _nla(nl.IFLA_MTU, _u32(mtu))
    if mac:
        out += _nla(nl.IFLA_ADDRESS, nl.mac_bytes(mac))
    if master is not None:
        out += _nla(IFLA_MASTER, _u32(master))
    return out


def _attrs(buf, off: int = 0, end: int | None = None) -> dict[int, bytes]:
    out, end = {}, len(buf) if end is None else end
    while off + 4 <= end:
        n, kind = struct.unpack_from("=HH", buf, off)
        if n < 4:
            break
        out[kind & 0x3FFF] = bytes(buf[off + 4:off + n])
        off += (n + 3) & ~3
    return out


def _apply(rt: nl.Rtnl, msgs: list, what: str) -> None:
    for err in rt.batch(msgs):
        if err:
            raise nl.NetlinkError(err, f"{what}: {os.strerror(err)}")


def create_veth(rt: nl.Rtnl, name: str, peer_name: str, peer_netns: str | None = None, *,
                mtu: int = 0, mac: str = "", peer_mac: str = "", master: int = 0,
                up: bool = False) -> int:
    """Create the pair in one request: `name` here, `peer_name` in `peer_netns` (a path).

    `master` (an ifindex) and `up` apply to `name`; the peer starts down (the kernel
    cannot open a veth end before the pair is linked: ENOTCONN).
    Returns the index of `name`. FileExistsError when either name is taken.
    """
    fd = os.open(peer_netns, os.O_RDONLY | os.O_CLOEXEC) if peer_netns is not None else -1
    try:
        peer = _ifi() + _link_attrs(peer_name, mtu, peer_mac)
        if fd >= 0:
            peer += _nla(IFLA_NET_NS_FD, _u32(fd))
        info = _nla(nl.IFLA_INFO_KIND, b"veth") + _nla(nl.IFLA_INFO_DATA, _nla(VETH_INFO_PEER, peer))
        body = _ifi(up=up or None) + _link_attrs(name, mtu, mac, master or None) + _nla(nl.IFLA_LINKINFO, info)
        err = rt.batch([(nl.RTM_NEWLINK, nl.F_CREATE | nl.F_EXCL, body)])[0]
    finally:
        if fd >= 0:
            os.close(fd)
    if err == errno.EEXIST:
        raise FileExistsError(err, f"link {name} (or {peer_name} in the peer namespace) exists")
    if err:
        raise nl.NetlinkError(err, f"create veth {name}/{peer_name}: {os.strerror(err)}")
    created = rt.link(name)
    if created is None:
        raise nl.NetlinkError(errno.ENODEV, f"veth {name} vanished after creation")
    return created.index


def ensure_bridge(rt: nl.Rtnl, name: str, *, mtu: int = 0, mac: str = "") -> nl.Link:
    """The bridge called `name`, created (with a fixed MAC, so ports never change it) and up.

    Safe against a concurrent creator. ValueError when `name` is another kind of link.
    """
    cur = rt.link(check_ifname(name))
    if cur is None:
        info = _nla(nl.IFLA_LINKINFO, _nla(nl.IFLA_INFO_KIND, b"bridge"))
        body = _ifi(up=True) + _link_attrs(name, mtu, mac or random_mac()) + info
        err = rt.batch([(nl.RTM_NEWLINK, nl.F_CREATE | nl.F_EXCL, body)])[0]
        if err and err != errno.EEXIST:
            raise nl.NetlinkError(err, f"create bridge {name}: {os.strerror(err)}")
        cur = rt.link(name)
    if cur is None or cur.kind != "bridge":
        raise ValueError(f"link {name} exists and is not a bridge (kind {cur.kind if cur else '?'!r})")
    if not cur.up:
        _apply(rt, [nl.link_set_msg(cur.index, up=True)], f"set {name} up")
    return cur


def set_link(rt: nl.Rtnl, index: int, *, mtu: int | None = None, mac: str | None = None,
             up: bool | None = None, master: int | None = None, name: str | None = None) -> None:
    """Change the given attributes of link `index` in one request (rename, MAC, MTU, master, state)."""
    body = _ifi(index, up) + _link_attrs(name, mtu or 0, mac or "", master)
    _apply(rt, [(nl.RTM_NEWLINK, 0, body)], f"set link {index}")


def set_hairpin(rt: nl.Rtnl, index: int, on: bool = True) -> None:
    """Hairpin (reflective relay) on a bridge port, as `bridge link set ... hairpin on`."""
    protinfo = _nla(IFLA_PROTINFO | NLA_F_NESTED, _nla(IFLA_BRPORT_MODE, bytes([1 if on else 0])))
    _apply(rt, [(RTM_SETLINK, 0, _ifi(index, family=socket.AF_BRIDGE) + protinfo)], f"hairpin on link {index}")


def port(rt: nl.Rtnl, index: int) -> Port | None:
    """Master and hairpin of link `index`; None when there is no such link."""
    for _, p in rt.dump(nl.RTM_GETLINK, _ifi()):
        if _IFI.unpack_from(p)[2] != index:
            continue
        attrs = _attrs(p, _IFI.size)
        master = struct.unpack("=I", attrs[IFLA_MASTER])[0] if IFLA_MASTER in attrs else 0
        hairpin = None
        info = _attrs(attrs.get(nl.IFLA_LINKINFO, b""))
        if info.get(IFLA_INFO_SLAVE_KIND, b"").rstrip(b"\0") == b"bridge" and IFLA_INFO_SLAVE_DATA in info:
            hairpin = bool(_attrs(info[IFLA_INFO_SLAVE_DATA]).get(IFLA_BRPORT_MODE, b"\0")[0])
        return Port(master, hairpin)
    return None


def move_to_netns(rt: nl.Rtnl, index: int, netns_path: str, new_name: str | None = None) -> None:
    """Move link `index` into the namespace at `netns_path` (optionally renaming it)."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        body = _ifi(index) + _link_attrs(new_name) + _nla(IFLA_NET_NS_FD, _u32(fd))
        _apply(rt, [(nl.RTM_NEWLINK, 0, body)], f"move link {index} to {netns_path}")
    finally:
        os.close(fd)


def delete_if_exists(rt: nl.Rtnl, name: str) -> bool:
    """Delete link `name`; False when it was not there. Deleting a veth end removes the pair."""
    cur = rt.link(check_ifname(name))
    if cur is None:
        return False
    err = rt.batch([nl.link_del_msg(cur.index)])[0]
    if err in (errno.ENODEV, errno.ENOENT):
        return False
    if err:
        raise nl.NetlinkError(err, f"delete {name}: {os.strerror(err)}")
    return True
