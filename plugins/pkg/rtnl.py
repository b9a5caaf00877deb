"""A small raw rtnetlink socket: fast dumps and batched writes, no pyroute2.

Enough for programs that read links, addresses, neighbours, FDB entries and routes
and write many link/address/neighbour/FDB/route messages at once: messages are packed
with `struct`, sent many per sendmsg(), and a batch reports an errno per message.
IPv4 and IPv6 where a family applies. `nla`/`nla_parse` build and read the attributes
of other rtnetlink messages (links in plugins.pkg.link, tc in plugins.pkg.tc).
Nothing here knows CNI or a plugin.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections import namedtuple

# message types, flags (linux/netlink.h, linux/rtnetlink.h)
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
F_REQUEST, F_ACK, F_DUMP_INTR, F_DUMP = 0x1, 0x4, 0x10, 0x300
F_REPLACE, F_EXCL, F_CREATE = 0x100, 0x200, 0x400
NETLINK_CAP_ACK = 10
# neighbours
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
NDA_DST, NDA_LLADDR, NDA_IFINDEX, NDA_PROTOCOL = 1, 2, 8, 12
# routes
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
RT_TABLE_MAIN, RTN_UNICAST, RT_SCOPE_UNIVERSE = 254, 1, 0
RTNH_F_ONLINK = 4
# links and addresses
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_TXQLEN, IFLA_LINKINFO = 1, 3, 4, 5, 13, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN = {1: "id", 3: "link", 4: "local", 7: "learning", 15: "port"}
IFF_UP = 0x1
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST, IFA_FLAGS = 1, 2, 4, 8

_NLH = struct.Struct("=IHHII")
_NDM = struct.Struct("=BxxxiHBB")
_RTM = struct.Struct("=BBBBBBBBI")
_IFI = struct.Struct("=BxHiII")
_IFA = struct.Struct("=BBBBi")
_RTA = struct.Struct("=HH")


class NetlinkError(OSError):
    pass


def nla(kind: int, data: bytes) -> bytes:
    """One netlink attribute, padded."""
    n = _RTA.size + len(data)
    return _RTA.pack(n, kind) + data + b"\0" * (-n % 4)


def nla_parse(buf, off: int = 0, end: int | None = None) -> dict[int, bytes]:
    """{type: payload} of the attributes in buf[off:end], in wire order (NLA_F_* flags dropped)."""
    end = len(buf) if end is None else end
    out = {}
    while off + 4 <= end:
        n, kind = _RTA.unpack_from(buf, off)
        if n < 4:
            break
        out[kind & 0x3FFF] = bytes(buf[off + 4:off + n])
        off += (n + 3) & ~3
    return out


def _packed(ip) -> bytes:
    """4 or 16 bytes of an address object or text (ip_address(IPv4Address) would re-parse text)."""
    if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ip.packed
    return ipaddress.ip_address(ip).packed


def _family(ip) -> int:
    return socket.AF_INET6 if len(_packed(ip)) == 16 else socket.AF_INET


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _ip4(raw: bytes | None):
    return ipaddress.IPv4Address(raw) if raw is not None and len(raw) == 4 else None


def _ip(raw: bytes | None):
    """An IPv4Address or IPv6Address from 4 or 16 bytes; None otherwise."""
    return ipaddress.ip_address(raw) if raw is not None and len(raw) in (4, 16) else None


# What the readers return: plain namedtuples (typing.NamedTuple costs ~4 ms of every exec).
# Link.vxlan: id, link, local, learning, port (kind vxlan only); Link.peer: IFLA_LINK, a veth's
# peer ifindex (in the peer's netns), 0 if none.
Link = namedtuple("Link", "index name kind mtu mac up vxlan txqlen peer", defaults=(0, 0))
# Addr.flags: IFA_F_* (IFA_FLAGS when the kernel sends it).
Addr = namedtuple("Addr", "index address flags broadcast", defaults=(0, None))
# Neigh.family: AF_INET (ARP), AF_INET6 (NDP) or AF_BRIDGE (FDB).
Neigh = namedtuple("Neigh", "index family dst lladdr state flags protocol")
Route = namedtuple("Route", "dst gateway oif protocol priority flags table")


NETLINK_NETFILTER = 12      # Rtnl(NETLINK_NETFILTER): nf_tables' tables and chains (plugins.pkg.nft, iptables)
NFNL_SUBSYS_NFTABLES = 10


def nft_msg(msg: int) -> int:
    """The netlink message type of nf_tables message `msg` (NFT_MSG_*: linux/netfilter/nf_tables.h)."""
    return (NFNL_SUBSYS_NFTABLES << 8) | msg


class Rtnl:
    """One NETLINK_ROUTE socket in the netns current at construction (`protocol`: another netlink
    family's, e.g. NETLINK_NETFILTER for plugins.pkg.iptables; dump and batch work the same)."""

    CHUNK = 256          # messages per sendmsg()

    def __init__(self, protocol: int = socket.NETLINK_ROUTE):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        try:
            self.sock.setsockopt(270, NETLINK_CAP_ACK, 1)   # SOL_NETLINK: short ACKs
        except OSError:
            pass
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- plumbing -------------------------------------------------------------
    def _msg(self, kind: int, flags: int, body: bytes) -> tuple[int, bytes]:
        self.seq += 1
        return self.seq, _NLH.pack(_NLH.size + len(body), kind, flags, self.seq, 0) + body

    def _recv(self):
        data = self.sock.recv(1 << 18)
        off = 0
        while off + _NLH.size <= len(data):
            n, kind, flags, seq, _ = _NLH.unpack_from(data, off)
            if n < _NLH.size:
                break
            yield kind, flags, seq, memoryview(data)[off + _NLH.size:off + n]
            off += (n + 3) & ~3

    def dump(self, kind: int, body: bytes, attempts: int = 3) -> list:
        """The message bodies of a dump; redone when the kernel flags it inconsistent
        (NLM_F_DUMP_INTR: the table changed while it was being dumped)."""
        for _ in range(attempts):
            seq, msg = self._msg(kind, F_REQUEST | F_DUMP, body)
            self.sock.send(msg)
            out, interrupted, done = [], False, False
            while not done:
                for rkind, rflags, rseq, payload in self._recv():
                    if rseq != seq or done:
                        continue
                    if rkind in (NLMSG_DONE, NLMSG_ERROR):
                        err = -struct.unpack_from("=i", payload)[0] if rkind == NLMSG_ERROR else 0
                        if err:
                            raise NetlinkError(err, os.strerror(err))
                        done = True
                    else:
                        interrupted |= bool(rflags & F_DUMP_INTR)
                        out.append((rkind, payload))
            if not interrupted:
                return out
        raise NetlinkError(errno.EAGAIN, "netlink dump kept changing under us")

    def batch(self, msgs: list[tuple[int, int, bytes]]) -> list[int]:
        """Send (type, flags, body) messages; return an errno per message (0 = ok).

        Only the last message of each sendmsg() asks for an ACK: the kernel answers a
        failing message with an error anyway, in order, so once the last ACK is in,
        every error before it is too (one recv per chunk instead of one per message)."""
        results: list[int] = []
        for start in range(0, len(msgs), self.CHUNK):
            chunk = msgs[start:start + self.CHUNK]
            last = len(chunk) - 1
            packed = [self._msg(kind, flags | F_REQUEST | (F_ACK if i == last else 0), body)
                      for i, (kind, flags, body) in enumerate(chunk)]
            first = packed[0][0]
            self.sock.sendall(b"".join(m for _, m in packed))
            errs = [0] * len(packed)
            done = False
            while not done:
                for rkind, _, rseq, payload in self._recv():
                    i = rseq - first
                    if rkind == NLMSG_ERROR and 0 <= i <= last:
                        errs[i] = -struct.unpack_from("=i", payload)[0]
                        done = done or i == last
            results.extend(errs)
        return results

    # -- reads ----------------------------------------------------------------
    def links(self) -> list[Link]:
        out = []
        for _, p in self.dump(RTM_GETLINK, _IFI.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            out.append(_parse_link(p))
        return out

    def link(self, name: str | None = None, index: int = 0) -> Link | None:
        """The link called `name` (or with ifindex `index`); None when there is none."""
        p = self._get_link(name, index)
        return None if p is None else _parse_link(p)

    def link_index(self, name: str) -> int | None:
        """The ifindex of the link called `name`; None when there is none (nothing parsed but
        the answer's header: a lookup that needs only the index)."""
        p = self._get_link(name, 0)
        return None if p is None else _IFI.unpack_from(p)[2]

    def link_attrs(self, name: str | None = None, index: int = 0) -> tuple[int, int, dict[int, bytes]] | None:
        """The link called `name` (or with ifindex `index`) as (ifindex, IFF_* flags, {IFLA_*:
        payload}) for attributes `link()` does not parse (IFLA_GROUP, IFLA_IFALIAS...); None
        when there is none."""
        p = self._get_link(name, index)
        if p is None:
            return None
        _, _, idx, flags, _ = _IFI.unpack_from(p)
        return idx, flags, nla_parse(p, _IFI.size, len(p))

    def _get_link(self, name: str | None, index: int) -> bytes | None:
        """One RTM_GETLINK answer's payload; None for ENODEV."""
        body = _IFI.pack(socket.AF_UNSPEC, 0, index, 0, 0)
        if name is not None:
            body += nla(IFLA_IFNAME, name.encode() + b"\0")
        try:
            return self.get(RTM_GETLINK, body)
        except NetlinkError as e:
            if e.errno == errno.ENODEV:
                return None
            raise

    def get(self, kind: int, body: bytes):
        """One request (RTM_GET*, no dump) and its answer's payload; NetlinkError with the
        kernel's errno when it answers with an error."""
        seq, msg = self._msg(kind, F_REQUEST, body)
        self.sock.send(msg)
        while True:
            for rkind, _, rseq, p in self._recv():
                if rseq != seq:
                    continue
                if rkind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", p)[0]
                    raise NetlinkError(err, os.strerror(err))
                return p

    def addrs(self, index: int | None = None, family: int = socket.AF_INET) -> list[Addr]:
        """Addresses (of link `index`) in `family` (AF_UNSPEC: IPv4 and IPv6)."""
        out = []
        for _, p in self.dump(RTM_GETADDR, _IFA.pack(family, 0, 0, 0, 0)):
            fam, plen, flags, _, idx = _IFA.unpack_from(p)
            if (index is not None and idx != index) or fam not in (socket.AF_INET, socket.AF_INET6):
                continue
            a = nla_parse(p, _IFA.size, len(p))
            ip = _ip(a.get(IFA_LOCAL) or a.get(IFA_ADDRESS))
            if ip is not None:
                out.append(Addr(idx, ipaddress.ip_interface((ip, plen)),
                                _u32(a[IFA_FLAGS]) if IFA_FLAGS in a else flags, _ip4(a.get(IFA_BROADCAST))))
        return out

    def neighs(self, family: int, index: int) -> list[Neigh]:
        """Neighbours of link `index` in `family` (AF_UNSPEC: ARP and NDP)."""
        out = []
        req = _NDM.pack(family, 0, 0, 0, 0) + nla(NDA_IFINDEX, struct.pack("=I", index))
        for _, p in self.dump(RTM_GETNEIGH, req):
            fam, idx, state, flags, _ = _NDM.unpack_from(p)
            if idx != index or (family and fam != family):
                continue
            a = nla_parse(p, _NDM.size, len(p))
            ll = a.get(NDA_LLADDR)
            proto = a.get(NDA_PROTOCOL)
            out.append(Neigh(idx, fam, _ip(a.get(NDA_DST)), mac_str(ll) if ll else None, state, flags,
                             proto[0] if proto else 0))
        return out

    def routes(self, table: int = RT_TABLE_MAIN) -> list[Route]:
        out = []
        for _, p in self.dump(RTM_GETROUTE, _RTM.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)):
            _, dlen, _, _, tbl, proto, _, rtype, flags = _RTM.unpack_from(p)
            a = nla_parse(p, _RTM.size, len(p))
            tbl = struct.unpack("=I", a[RTA_TABLE])[0] if RTA_TABLE in a else tbl
            if tbl != table or rtype != RTN_UNICAST:
                continue
            dst = ipaddress.IPv4Network((a.get(RTA_DST, b"\0\0\0\0"), dlen))
            out.append(Route(dst, _ip4(a.get(RTA_GATEWAY)),
                             _u32(a.get(RTA_OIF)), proto, _u32(a.get(RTA_PRIORITY)), flags, tbl))
        return out


def _u32(raw: bytes | None) -> int:
    return struct.unpack("=I", raw)[0] if raw else 0


def _parse_link(p) -> Link:
    _, _, idx, flags, _ = _IFI.unpack_from(p)
    a = nla_parse(p, _IFI.size, len(p))
    kind, vx = "", {}
    if IFLA_LINKINFO in a:
        info = nla_parse(a[IFLA_LINKINFO])
        kind = info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
        if kind == "vxlan" and IFLA_INFO_DATA in info:
            data = nla_parse(info[IFLA_INFO_DATA])
            for key, name in IFLA_VXLAN.items():
                raw = data.get(key)
                if raw is None:
                    continue
                if name == "local":
                    vx[name] = _ip4(raw)
                elif name == "local6":
                    vx[name] = _ip(raw)
                elif name == "port":
                    vx[name] = struct.unpack("!H", raw)[0]
                elif name == "learning":
                    vx[name] = raw[0]
                else:
                    vx[name] = struct.unpack("=I", raw)[0]
    mac = a.get(IFLA_ADDRESS)
    return Link(idx, a.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(), kind, _u32(a.get(IFLA_MTU)),
                mac_str(mac) if mac else "", bool(flags & IFF_UP), vx, _u32(a.get(IFLA_TXQLEN)),
                _u32(a.get(IFLA_LINK)))


# -- message bodies for batch() ---------------------------------------------------
def neigh_msg(add: bool, index: int, ip, mac: str, protocol: int = 0) -> tuple[int, int, bytes]:
    """A permanent ARP (NDP for IPv6) entry ip -> mac on device `index` (add = create or replace)."""
    body = _NDM.pack(_family(ip), index, NUD_PERMANENT, 0, RTN_UNICAST)
    body += nla(NDA_DST, _packed(ip))
    if add:
        body += nla(NDA_LLADDR, mac_bytes(mac))
        if protocol:
            body += nla(NDA_PROTOCOL, bytes([protocol]))
        return RTM_NEWNEIGH, F_CREATE | F_REPLACE, body
    return RTM_DELNEIGH, 0, body


def fdb_msg(add: bool, index: int, mac: str, dst) -> tuple[int, int, bytes]:
    """A permanent FDB entry mac -> dst on a vxlan device (`bridge fdb replace ... self`)."""
    body = _NDM.pack(socket.AF_BRIDGE, index, NUD_PERMANENT, NTF_SELF, 0)
    body += nla(NDA_LLADDR, mac_bytes(mac)) + nla(NDA_DST, _packed(dst))
    if add:
        return RTM_NEWNEIGH, F_CREATE | F_REPLACE, body
    return RTM_DELNEIGH, 0, body


def route_msg(op: str, dst: ipaddress.IPv4Network | ipaddress.IPv6Network, gateway, oif: int, protocol: int,
              onlink: bool = False) -> tuple[int, int, bytes]:
    """op: 'add' (fails if present), 'replace' or 'del'; a main-table unicast route (an IPv6
    `dst` makes an IPv6 one: route6_msg)."""
    body = _RTM.pack(_family(dst.network_address), dst.prefixlen, 0, 0, RT_TABLE_MAIN, protocol,
                     RT_SCOPE_UNIVERSE, RTN_UNICAST, RTNH_F_ONLINK if onlink else 0)
    body += nla(RTA_DST, dst.network_address.packed)
    if gateway is not None:
        body += nla(RTA_GATEWAY, _packed(gateway))
    body += nla(RTA_OIF, struct.pack("=I", oif))
    if op == "del":
        return RTM_DELROUTE, 0, body
    return RTM_NEWROUTE, F_CREATE | (F_REPLACE if op == "replace" else F_EXCL), body


def addr_msg(add: bool, index: int, iface, broadcast=None, flags: int = 0) -> tuple[int, int, bytes]:
    """An IPv4Interface or IPv6Interface on link `index` (add fails if present); IFA_F_* `flags`."""
    body = _IFA.pack(_family(iface.ip), iface.network.prefixlen, flags & 0xFF, 0, index)
    body += nla(IFA_LOCAL, iface.ip.packed) + nla(IFA_ADDRESS, iface.ip.packed)
    if broadcast is not None:
        body += nla(IFA_BROADCAST, _packed(broadcast))
    if flags:
        body += nla(IFA_FLAGS, struct.pack("=I", flags))
    if add:
        return RTM_NEWADDR, F_CREATE | F_EXCL, body
    return RTM_DELADDR, 0, body


def vxlan_link_msg(name: str, vni: int, port: int, underlay: int, local, mac: str,
                   mtu: int) -> tuple[int, int, bytes]:
    """Create a vxlan device with learning off (`ip link add NAME type vxlan ... nolearning`)."""
    return _vxlan_msg(name, vni, port, underlay, 4, local, mac, mtu)          # IFLA_VXLAN_LOCAL


def _vxlan_msg(name: str, vni: int, port: int, underlay: int, local_attr: int, local, mac: str,
               mtu: int) -> tuple[int, int, bytes]:
    data = (nla(1, struct.pack("=I", vni)) + nla(3, struct.pack("=I", underlay))
            + nla(local_attr, _packed(local)) + nla(7, b"\0")
            + nla(15, struct.pack("!H", port)))
    info = nla(IFLA_INFO_KIND, b"vxlan") + nla(IFLA_INFO_DATA, data)
    body = (_IFI.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + nla(IFLA_IFNAME, name.encode() + b"\0")
            + nla(IFLA_MTU, struct.pack("=I", mtu)) + nla(IFLA_ADDRESS, mac_bytes(mac))
            + nla(IFLA_LINKINFO, info))
    return RTM_NEWLINK, F_CREATE | F_EXCL, body


def link_set_msg(index: int, up: bool | None = None, mtu: int | None = None,
                 mac: str | None = None) -> tuple[int, int, bytes]:
    flags, change = (IFF_UP if up else 0, IFF_UP) if up is not None else (0, 0)
    body = _IFI.pack(socket.AF_UNSPEC, 0, index, flags, change)
    if mtu is not None:
        body += nla(IFLA_MTU, struct.pack("=I", mtu))
    if mac is not None:
        body += nla(IFLA_ADDRESS, mac_bytes(mac))
    return RTM_NEWLINK, 0, body


def link_del_msg(index: int) -> tuple[int, int, bytes]:
    return RTM_DELLINK, 0, _IFI.pack(socket.AF_UNSPEC, 0, index, 0, 0)


# -- IPv6 routes and IPv6-underlay vxlan devices ----------------------------------
IFLA_VXLAN_LOCAL6 = 17
IFLA_VXLAN[IFLA_VXLAN_LOCAL6] = "local6"      # Link.vxlan["local6"]: an IPv6Address


def _rtm_dump(rt: Rtnl, kind: int, family: int):
    """(the rtmsg header's fields, the attributes) of each message of `family` in a dump of `kind`
    (RTM_GETROUTE, RTM_GETRULE: both answer with an rtmsg)."""
    for _, p in rt.dump(kind, _RTM.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
        head = _RTM.unpack_from(p)
        if head[0] == family:
            yield head, nla_parse(p, _RTM.size, len(p))


def routes6(rt: Rtnl, table: int = RT_TABLE_MAIN) -> list[Route]:
    """The IPv6 unicast routes of `table` (Rtnl.routes is IPv4); Route.dst an IPv6Network."""
    out = []
    for (_, dlen, _, _, tbl, proto, _, rtype, flags), a in _rtm_dump(rt, RTM_GETROUTE, socket.AF_INET6):
        tbl = struct.unpack("=I", a[RTA_TABLE])[0] if RTA_TABLE in a else tbl
        if tbl != table or rtype != RTN_UNICAST:
            continue
        dst = ipaddress.IPv6Network((a.get(RTA_DST, b"\0" * 16), dlen))
        gw = a.get(RTA_GATEWAY)
        out.append(Route(dst, ipaddress.IPv6Address(gw) if gw and len(gw) == 16 else None,
                         _u32(a.get(RTA_OIF)), proto, _u32(a.get(RTA_PRIORITY)), flags, tbl))
    return out


def route6_msg(op: str, dst: ipaddress.IPv6Network, gateway, oif: int, protocol: int,
               onlink: bool = False) -> tuple[int, int, bytes]:
    """route_msg for IPv6: op 'add' (fails if present), 'replace' or 'del'; a main-table unicast
    route (the kernel gives it metric 1024, `ip -6 route`'s default; del matches any metric)."""
    return route_msg(op, dst, gateway, oif, protocol, onlink)


def route_any_msg(op: str, dst, gateway, oif: int, protocol: int, onlink: bool = False) -> tuple[int, int, bytes]:
    """route_msg or route6_msg, by the family of `dst`."""
    if dst.version == 6:
        return route6_msg(op, dst, gateway, oif, protocol, onlink)
    return route_msg(op, dst, gateway, oif, protocol, onlink)


def vxlan6_link_msg(name: str, vni: int, port: int, underlay: int, local6, mac: str,
                    mtu: int) -> tuple[int, int, bytes]:
    """vxlan_link_msg over an IPv6 underlay: source address IFLA_VXLAN_LOCAL6, learning off."""
    return _vxlan_msg(name, vni, port, underlay, IFLA_VXLAN_LOCAL6, local6, mac, mtu)


# -- routes of every table, policy rules, route lookups (pycni-doctor inside a plugin's CHECK) ----
RTM_GETRULE = 34
RTA_SRC, RTA_IIF, RTA_MULTIPATH = 2, 3, 9
FRA_DST, FRA_SRC, FRA_PRIORITY, FRA_TABLE = 1, 2, 6, 15
# what a rule selects on besides its source, destination and tos (linux/fib_rules.h), by name
FRA_SELECTORS = {3: "iifname", 10: "fwmark", 12: "tun_id", 17: "oifname", 19: "l3mdev", 20: "uid_range",
                 22: "ip_proto", 23: "sport_range", 24: "dport_range"}
IFLA_IFALIAS = 20
_RTNH = struct.Struct("=HBBi")

# AnyRoute: a route of any table and type; oif None when it has none (multipath: the nexthops'
# oifs in `multipath`). Rule: an `ip rule`; src/dst networks or None, selectors the FRA_SELECTORS
# names it has. Lookup: the kernel's answer to RTM_GETROUTE (rtm type and output ifindex).
AnyRoute = namedtuple("AnyRoute", "dst gateway oif protocol priority flags table type multipath")
Rule = namedtuple("Rule", "priority table action src dst tos selectors")
Lookup = namedtuple("Lookup", "oif type")


def _net(raw: bytes | None, plen: int, family: int):
    size = 16 if family == socket.AF_INET6 else 4
    return ipaddress.ip_network((raw if raw is not None and len(raw) == size else b"\0" * size, plen))


def routes_all(rt: Rtnl, family: int) -> list[AnyRoute]:
    """Every route of `family` (AF_INET, AF_INET6) in every table, of every type (`ip route show table all`)."""
    out = []
    for (fam, dlen, _, _, tbl, proto, _, rtype, flags), a in _rtm_dump(rt, RTM_GETROUTE, family):
        hops = []
        mp = a.get(RTA_MULTIPATH, b"")
        off = 0
        while off + _RTNH.size <= len(mp):
            n, _, _, ifindex = _RTNH.unpack_from(mp, off)
            if n < _RTNH.size:
                break
            hops.append(ifindex)
            off += (n + 3) & ~3
        out.append(AnyRoute(_net(a.get(RTA_DST), dlen, fam), _ip(a.get(RTA_GATEWAY)),
                            _u32(a.get(RTA_OIF)) if RTA_OIF in a else None, proto, _u32(a.get(RTA_PRIORITY)),
                            flags, _u32(a[RTA_TABLE]) if RTA_TABLE in a else tbl, rtype, tuple(hops)))
    return out


def rules(rt: Rtnl, family: int) -> list[Rule]:
    """The policy rules of `family` (`ip rule` / `ip -6 rule`), in the kernel's order."""
    out = []
    for (fam, dlen, slen, tos, tbl, _, _, action, _), a in _rtm_dump(rt, RTM_GETRULE, family):
        out.append(Rule(_u32(a.get(FRA_PRIORITY)), _u32(a[FRA_TABLE]) if FRA_TABLE in a else tbl, action,
                        _net(a.get(FRA_SRC), slen, fam) if slen else None,
                        _net(a.get(FRA_DST), dlen, fam) if dlen else None, tos,
                        frozenset(name for kind, name in FRA_SELECTORS.items() if kind in a)))
    return out


def route_get(rt: Rtnl, dst, src=None, iif: int | None = None) -> Lookup:
    """The kernel's route for a packet to `dst` [from `src` [arriving on ifindex `iif`]]
    (`ip route get DST from SRC iif DEV`); NetlinkError with the kernel's errno when it refuses
    (EXDEV, EINVAL: reverse-path filtering; ENETUNREACH ...)."""
    d = _packed(dst)
    family = socket.AF_INET6 if len(d) == 16 else socket.AF_INET
    body = nla(RTA_DST, d)
    if src is not None:
        body += nla(RTA_SRC, _packed(src))
    if iif is not None:
        body += nla(RTA_IIF, struct.pack("=I", iif))
    p = rt.get(RTM_GETROUTE, _RTM.pack(family, len(d) * 8, len(d) * 8 if src is not None else 0, 0, 0, 0, 0, 0, 0)
               + body)
    a = nla_parse(p, _RTM.size, len(p))
    return Lookup(_u32(a.get(RTA_OIF)) if RTA_OIF in a else None, _RTM.unpack_from(p)[7])


def links_with_alias(rt: Rtnl) -> list[tuple[Link, str]]:
    """Every link with its alias (IFLA_IFALIAS, `ip link set DEV alias TEXT`; "" when none)."""
    out = []
    for _, p in rt.dump(RTM_GETLINK, _IFI.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        alias = nla_parse(p, _IFI.size, len(p)).get(IFLA_IFALIAS, b"")
        out.append((_parse_link(p), alias.rstrip(b"\0").decode(errors="replace")))
    return out
