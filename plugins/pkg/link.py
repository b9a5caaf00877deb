"""Generic link helpers: veth pairs across namespaces (with chosen ifindexes), bridges and
their ports, attributes, moves between namespaces, and a link's routes carried over to
another link.

Built on the raw rtnetlink socket of plugins.pkg.rtnl (no pyroute2 import: a plugin
exec pays ~1 ms here instead of ~50-130 ms). Every function takes an open `Rtnl`
(`open_rtnl(netns_path)`), so a caller keeps one socket per namespace for a whole
command. Names are checked with plugins.pkg.names before they reach the kernel.
Addresses and neighbours: `Rtnl.addrs`/`neighs` and `rtnl.addr_msg`/`neigh_msg`.
Nothing here knows CNI.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections import namedtuple

from plugins.pkg import rtnl as nl
from plugins.pkg.names import check_ifname

RTM_SETLINK = 19
IFLA_MASTER, IFLA_PROTINFO, IFLA_NET_NS_FD, IFLA_NEW_IFINDEX = 10, 12, 28, 49
IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 4, 5
IFLA_BRPORT_MODE = 4          # hairpin
VETH_INFO_PEER = 1
NLA_F_NESTED = 0x8000
RTA_SRC, RTA_PREFSRC, RTA_METRICS, RTA_VIA, RTA_PREF = 2, 7, 8, 18, 20
RT_TABLE_COMPAT = 252         # rtm_table of a route in a table above 255 (RTA_TABLE has it)
# what a route is apart from its link
_ROUTE_KEEP = (nl.RTA_DST, RTA_SRC, nl.RTA_GATEWAY, nl.RTA_PRIORITY, RTA_PREFSRC, RTA_METRICS, RTA_VIA, RTA_PREF)
_IFI = struct.Struct("=BxHiII")
_RTM = struct.Struct("=BBBBBBBBI")


# A link's place on a bridge: master ifindex (0: none), hairpin (None: not a bridge port).
Port = namedtuple("Port", "master hairpin")


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


def _u32(v: int) -> bytes:
    return struct.pack("=I", v)


def _ifi(index: int = 0, up: bool | None = None, family: int = socket.AF_UNSPEC) -> bytes:
    flags, change = (nl.IFF_UP if up else 0, nl.IFF_UP) if up is not None else (0, 0)
    return _IFI.pack(family, 0, index, flags, change)


def _link_attrs(name: str | None = None, mtu: int = 0, mac: str = "", master: int | None = None,
                txqlen: int | None = None) -> bytes:
    out = b""
    if name is not None:
        out += nl.nla(nl.IFLA_IFNAME, check_ifname(name).encode() + b"\0")
    if mtu:
        out += nl.nla(nl.IFLA_MTU, _u32(mtu))
    if mac:
        out += nl.nla(nl.IFLA_ADDRESS, nl.mac_bytes(mac))
    if master is not None:
        out += nl.nla(IFLA_MASTER, _u32(master))
    if txqlen is not None:
        out += nl.nla(nl.IFLA_TXQLEN, _u32(txqlen))
    return out


def _apply(rt: nl.Rtnl, msgs: list, what: str) -> None:
    for err in rt.batch(msgs):
        if err:
            raise nl.NetlinkError(err, f"{what}: {os.strerror(err)}")


def find(rt: nl.Rtnl, name: str) -> nl.Link | None:
    """The link called `name` here, or None."""
    return rt.link(check_ifname(name))


def index_of(rt: nl.Rtnl, name: str) -> int | None:
    """The ifindex of link `name` here, or None (the answer's header only: no attribute parsed)."""
    return rt.link_index(check_ifname(name))


def free_index(rt: nl.Rtnl, base: int, *others: nl.Rtnl) -> int:
    """The lowest ifindex from `base` up that no link here (nor in the `others` namespaces) has
    (the dumps' ifindexes only: a netns with many links is not parsed whole)."""
    taken = {_IFI.unpack_from(p)[2] for r in (rt, *others) for _, p in r.dump(nl.RTM_GETLINK, _ifi())}
    return next(i for i in range(base, base + len(taken) + 1) if i not in taken)


def create_veth(rt: nl.Rtnl, name: str, peer_name: str, peer_netns: str | None = None, *,
                mtu: int = 0, mac: str = "", peer_mac: str = "", master: int = 0,
                up: bool = False, txqlen: int | None = None, index: int = 0, peer_index: int = 0) -> int:
    """Create the pair in one request: `name` here, `peer_name` in `peer_netns` (a path).

    `mtu` applies to both ends; `master` (an ifindex), `up` and `txqlen` to `name`; the
    peer starts down (the kernel cannot open a veth end before the pair is linked:
    ENOTCONN). `index`/`peer_index` (not 0) ask for those ifindexes; the kernel honours
    `peer_index` only with `index` asked too (without, the peer gets any free one).
    Returns the index of `name`. FileExistsError when a name or an asked ifindex is taken.
    """
    fd = os.open(peer_netns, os.O_RDONLY | os.O_CLOEXEC) if peer_netns is not None else -1
    try:
        peer = _ifi(peer_index) + _link_attrs(peer_name, mtu, peer_mac)
        if fd >= 0:
            peer += nl.nla(IFLA_NET_NS_FD, _u32(fd))
        info = nl.nla(nl.IFLA_INFO_KIND, b"veth") + nl.nla(nl.IFLA_INFO_DATA, nl.nla(VETH_INFO_PEER, peer))
        body = (_ifi(index, up=up or None) + _link_attrs(name, mtu, mac, master or None, txqlen)
                + nl.nla(nl.IFLA_LINKINFO, info))
        err = rt.batch([(nl.RTM_NEWLINK, nl.F_CREATE | nl.F_EXCL, body)])[0]
    finally:
        if fd >= 0:
            os.close(fd)
    if err in (errno.EEXIST, errno.EBUSY):
        raise FileExistsError(err, f"link {name} (or {peer_name} in the peer namespace, or an ifindex asked for) "
                              "exists")
    if err:
        raise nl.NetlinkError(err, f"create veth {name}/{peer_name}: {os.strerror(err)}")
    if index:                 # the kernel gives the asked ifindex or refuses (EBUSY, above)
        return index
    created = index_of(rt, name)
    if created is None:
        raise nl.NetlinkError(errno.ENODEV, f"veth {name} vanished after creation")
    return created


def ensure_bridge(rt: nl.Rtnl, name: str, *, mtu: int = 0, mac: str = "") -> nl.Link:
    """The bridge called `name`, created (with a fixed MAC, so ports never change it) and up.

    Safe against a concurrent creator. ValueError when `name` is another kind of link.
    """
    cur = find(rt, name)
    if cur is None:
        info = nl.nla(nl.IFLA_LINKINFO, nl.nla(nl.IFLA_INFO_KIND, b"bridge"))
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
             up: bool | None = None, master: int | None = None, name: str | None = None,
             txqlen: int | None = None) -> None:
    """Change the given attributes of link `index` in one request (rename, MAC, MTU, master,
    queue length, state)."""
    body = _ifi(index, up) + _link_attrs(name, mtu or 0, mac or "", master, txqlen)
    _apply(rt, [(nl.RTM_NEWLINK, 0, body)], f"set link {index}")


def set_hairpin(rt: nl.Rtnl, index: int, on: bool = True) -> None:
    """Hairpin (reflective relay) on a bridge port, as `bridge link set ... hairpin on`."""
    protinfo = nl.nla(IFLA_PROTINFO | NLA_F_NESTED, nl.nla(IFLA_BRPORT_MODE, bytes([1 if on else 0])))
    _apply(rt, [(RTM_SETLINK, 0, _ifi(index, family=socket.AF_BRIDGE) + protinfo)], f"hairpin on link {index}")


def port(rt: nl.Rtnl, index: int) -> Port | None:
    """Master and hairpin of link `index`; None when there is no such link."""
    for _, p in rt.dump(nl.RTM_GETLINK, _ifi()):
        if _IFI.unpack_from(p)[2] != index:
            continue
        attrs = nl.nla_parse(p, _IFI.size)
        master = struct.unpack("=I", attrs[IFLA_MASTER])[0] if IFLA_MASTER in attrs else 0
        hairpin = None
        info = nl.nla_parse(attrs.get(nl.IFLA_LINKINFO, b""))
        if info.get(IFLA_INFO_SLAVE_KIND, b"").rstrip(b"\0") == b"bridge" and IFLA_INFO_SLAVE_DATA in info:
            hairpin = bool(nl.nla_parse(info[IFLA_INFO_SLAVE_DATA]).get(IFLA_BRPORT_MODE, b"\0")[0])
        return Port(master, hairpin)
    return None


def move_to_netns(rt: nl.Rtnl, index: int, netns_path: str, new_name: str | None = None,
                  new_index: int = 0) -> None:
    """Move link `index` into the namespace at `netns_path` (optionally renaming it).

    It keeps its ifindex there when free, or takes `new_index` (not 0) where the kernel
    can be asked for one (IFLA_NEW_IFINDEX, Linux >= 6.5; older kernels ignore the wish,
    and a taken `new_index` falls back to the kernel's choice)."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        body = _ifi(index) + _link_attrs(new_name) + nl.nla(IFLA_NET_NS_FD, _u32(fd))
        if new_index:
            err = rt.batch([(nl.RTM_NEWLINK, 0, body + nl.nla(IFLA_NEW_IFINDEX, _u32(new_index)))])[0]
            if not err:
                return
            if err not in (errno.EBUSY, errno.EEXIST, errno.EINVAL, errno.EOPNOTSUPP):
                raise nl.NetlinkError(err, f"move link {index} to {netns_path}: {os.strerror(err)}")
        _apply(rt, [(nl.RTM_NEWLINK, 0, body)], f"move link {index} to {netns_path}")
    finally:
        os.close(fd)


def delete_if_exists(rt: nl.Rtnl, name: str) -> bool:
    """Delete link `name`; False when it was not there. Deleting a veth end removes the pair."""
    cur = find(rt, name)
    if cur is None:
        return False
    err = rt.batch([nl.link_del_msg(cur.index)])[0]
    if err in (errno.ENODEV, errno.ENOENT):
        return False
    if err:
        raise nl.NetlinkError(err, f"delete {name}: {os.strerror(err)}")
    return True


class LinkRoute(namedtuple("LinkRoute", "family dst_len src_len tos table protocol scope type flags attrs")):
    """A route through a link, in any table, as the kernel dumps it: the rtmsg fields and
    the attributes that say what the route is apart from its link (_ROUTE_KEEP)."""
    __slots__ = ()

    @property
    def gateway(self) -> bool:
        return nl.RTA_GATEWAY in self.attrs or RTA_VIA in self.attrs

    def __str__(self) -> str:
        dst = self.attrs.get(nl.RTA_DST)
        return f"{ipaddress.ip_address(dst) if dst else 'default'}/{self.dst_len} table {self.table}"


def routes_through(rt: nl.Rtnl, index: int) -> list[LinkRoute]:
    """The IPv4 and IPv6 routes whose output link is `index`, in every table."""
    out = []
    for _, p in rt.dump(nl.RTM_GETROUTE, _RTM.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0)):
        family, dst_len, src_len, tos, table, proto, scope, rtype, flags = _RTM.unpack_from(p)
        a = nl.nla_parse(p, _RTM.size)
        if family not in (socket.AF_INET, socket.AF_INET6) or a.get(nl.RTA_OIF) != _u32(index):
            continue
        table = struct.unpack("=I", a[nl.RTA_TABLE])[0] if nl.RTA_TABLE in a else table
        out.append(LinkRoute(family, dst_len, src_len, tos, table, proto, scope, rtype, flags,
                             {k: v for k, v in a.items() if k in _ROUTE_KEEP}))
    return out


def route_through_msg(r: LinkRoute, oif: int) -> tuple[int, int, bytes]:
    """Add route `r` through link `oif` instead (fails if present); for Rtnl.batch."""
    body = _RTM.pack(r.family, r.dst_len, r.src_len, r.tos, r.table if r.table < 256 else RT_TABLE_COMPAT,
                     r.protocol, r.scope, r.type, r.flags & nl.RTNH_F_ONLINK)
    body += b"".join(nl.nla(k, v) for k, v in r.attrs.items())
    body += nl.nla(nl.RTA_TABLE, _u32(r.table)) + nl.nla(nl.RTA_OIF, _u32(oif))
    return nl.RTM_NEWROUTE, nl.F_CREATE | nl.F_EXCL, body


# -- marks: telling a link we made from one someone else made ------------------------------
IFLA_IFALIAS, IFLA_GROUP = 20, 27

# What `marks()` reads of a link: ifindex, kind, up, device group (IFLA_GROUP, 0 = default)
# and alias ("" = none).
Marks = namedtuple("Marks", "index kind up group alias")


def marks(rt: nl.Rtnl, name: str) -> Marks | None:
    """Kind, state, group and alias of link `name` here; None when there is none."""
    got = rt.link_attrs(check_ifname(name))
    if got is None:
        return None
    index, flags, attrs = got
    info = nl.nla_parse(attrs.get(nl.IFLA_LINKINFO, b""))
    group = attrs.get(IFLA_GROUP)
    return Marks(index, info.get(nl.IFLA_INFO_KIND, b"").rstrip(b"\0").decode(), bool(flags & nl.IFF_UP),
                 struct.unpack("=I", group)[0] if group else 0,
                 attrs.get(IFLA_IFALIAS, b"").rstrip(b"\0").decode(errors="replace"))


def create_marked(rt: nl.Rtnl, name: str, kind: str, group: int, *, up: bool = False, mac: str = "") -> int:
    """Create link `name` of `kind` (one that needs no IFLA_INFO_DATA: bridge, dummy) in device
    group `group`, in ONE request, so the link never exists unmarked: a process killed at any
    point leaves no link, or a marked one. (The kernel ignores IFLA_IFALIAS in a creating
    RTM_NEWLINK, so an alias is a second request and cannot be the mark; the group is applied
    at creation.) Returns its ifindex; FileExistsError when the name is taken."""
    info = nl.nla(nl.IFLA_LINKINFO, nl.nla(nl.IFLA_INFO_KIND, kind.encode()))
    body = _ifi(up=up or None) + _link_attrs(name, mac=mac) + nl.nla(IFLA_GROUP, _u32(group)) + info
    err = rt.batch([(nl.RTM_NEWLINK, nl.F_CREATE | nl.F_EXCL, body)])[0]
    if err == errno.EEXIST:
        raise FileExistsError(err, f"link {name} exists")
    if err:
        raise nl.NetlinkError(err, f"create {kind} {name}: {os.strerror(err)}")
    created = rt.link(name)
    if created is None:
        raise nl.NetlinkError(errno.ENODEV, f"{kind} {name} vanished after creation")
    return created.index


def set_alias_msg(index: int, alias: str) -> tuple[int, int, bytes]:
    """Set the alias of link `index` (`ip link set ... alias`); for Rtnl.batch."""
    return nl.RTM_NEWLINK, 0, _ifi(index) + nl.nla(IFLA_IFALIAS, alias.encode())


def delete_index(rt: nl.Rtnl, index: int) -> bool:
    """Delete link `index`; False when it was not there."""
    err = rt.batch([nl.link_del_msg(index)])[0]
    if err in (errno.ENODEV, errno.ENOENT):
        return False
    if err:
        raise nl.NetlinkError(err, f"delete link {index}: {os.strerror(err)}")
    return True


def delete_together(rt: nl.Rtnl, indexes: list[int]) -> None:
    """Delete links `indexes` here in one kernel pass, as `ip link delete group G` does: each is
    put into a device group no link here has (random, checked against a dump) and that group is
    deleted, in one sendmsg (RTM_NEWLINK IFLA_GROUP per link, then RTM_DELLINK IFLA_GROUP: one
    unregister_netdevice_many, so the RCU waits of a link's deletion are paid once, not once per
    link). A veth takes its peer with it, as delete_index; a link that is gone already is skipped.
    Where the kernel refuses the group delete, the links still there are deleted one by one."""
    indexes = [i for i in dict.fromkeys(indexes) if i]
    if not indexes:
        return
    taken = set()
    for _, p in rt.dump(nl.RTM_GETLINK, _ifi()):
        raw = nl.nla_parse(p, _IFI.size).get(IFLA_GROUP)
        taken.add(struct.unpack("=I", raw)[0] if raw else 0)
    group = 0                             # the default group: never ours (and the kernel refuses it)
    while group == 0 or group in taken:
        group = int.from_bytes(os.urandom(4), "little") | 0x10000
    msgs = [(nl.RTM_NEWLINK, 0, _ifi(i) + nl.nla(IFLA_GROUP, _u32(group))) for i in indexes]
    errs = rt.batch(msgs + [(nl.RTM_DELLINK, 0, _ifi() + nl.nla(IFLA_GROUP, _u32(group)))])
    if errs[-1] in (0, errno.ENODEV) and all(e in (0, errno.ENODEV) for e in errs[:-1]):
        return                            # ENODEV: none of them was there any more
    for index in indexes:
        delete_index(rt, index)
