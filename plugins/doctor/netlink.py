"""The kernel reads the routing and overlay diagnoses make, as plain values, with two backends:
Pyroute2Kernel when pycni-doctor runs as a tool (runner.Context: pyroute2, start-up does not
matter there), RtnlKernel when a diagnosis runs inside a plugin's CHECK (checkctx.PluginContext:
plugins.pkg.rtnl, the one netlink stack of a plugin exec, no pyroute2 import). A diagnosis asks
ctx.kernel() and never sees a netlink message.

What they answer: links (kind, alias, vxlan attributes), addresses, routes of every table, policy
rules, neighbours (AF_INET ARP, AF_INET6 NDP, AF_BRIDGE FDB) of a device, and RTM_GETROUTE for a
packet (dst [src [iif]]): the output device, or the errno the kernel refused it with. Each dump is
asked once per namespace (one look, shared by the diagnoses); lookups are asked every time.
"""
from __future__ import annotations

import ipaddress
import socket
from collections import namedtuple

from plugins.pkg import rtnl

TYPE_CHECKING = False          # typing stays off the plugins' CHECK path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

RTNH_F_ONLINK = rtnl.RTNH_F_ONLINK

# Link.vxlan: {id, port, learning, link, local, local6} as the kernel has them (kind vxlan; a key
# missing when the kernel sends no such attribute); local/local6 ip_address objects.
Link = namedtuple("Link", "index name kind mtu mac up alias vxlan")
# Addr.interface: an IPv4Interface / IPv6Interface (the local address and its prefix).
Addr = namedtuple("Addr", "index interface")
# Route: dst an ip_network (0.0.0.0/0 for a default), oif None for none (then `multipath` holds
# the nexthops' oifs), type RTN_*, metric RTA_PRIORITY (0 when absent).
Route = namedtuple("Route", "dst gateway oif table type protocol metric onlink multipath")
# Rule: src/dst ip_network or None; selectors: what else it matches on (rtnl.FRA_SELECTORS names).
Rule = namedtuple("Rule", "priority table action src dst tos selectors")
Neighbour = namedtuple("Neighbour", "index dst lladdr state")
# Lookup: the kernel's route for one packet: oif and type (RTN_*), or errno when it refused.
Lookup = namedtuple("Lookup", "oif type errno")


class Kernel:
    """One namespace's netlink answers; a backend implements the _read_* methods and route_get."""

    def __init__(self) -> None:
        self._seen: dict[tuple, list] = {}

    def _once(self, key: tuple, read: Callable[[], list]) -> list:
        if key not in self._seen:
            self._seen[key] = read()
        return self._seen[key]

    def links(self) -> list[Link]:
        return self._once(("links",), self._read_links)

    def addrs(self, family: int) -> list[Addr]:
        return self._once(("addrs", family), lambda: self._read_addrs(family))

    def routes(self, family: int) -> list[Route]:
        """Every table's routes of `family`, of every type."""
        return self._once(("routes", family), lambda: self._read_routes(family))

    def rules(self, family: int) -> list[Rule]:
        return self._once(("rules", family), lambda: self._read_rules(family))

    def neighbours(self, family: int, index: int) -> list[Neighbour]:
        """ARP (AF_INET), NDP (AF_INET6) or FDB (AF_BRIDGE) entries of device `index`."""
        return self._once(("neighbours", family, index), lambda: self._read_neighbours(family, index))

    def route_get(self, dst, src=None, iif: int | None = None) -> Lookup:
        raise NotImplementedError

    def _read_links(self) -> list[Link]:
        raise NotImplementedError

    def _read_addrs(self, family: int) -> list[Addr]:
        raise NotImplementedError

    def _read_routes(self, family: int) -> list[Route]:
        raise NotImplementedError

    def _read_rules(self, family: int) -> list[Rule]:
        raise NotImplementedError

    def _read_neighbours(self, family: int, index: int) -> list[Neighbour]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class RtnlKernel(Kernel):
    """plugins.pkg.rtnl's raw socket, opened in the namespace current at construction."""

    def __init__(self) -> None:
        super().__init__()
        self.rt = rtnl.Rtnl()

    def _read_links(self) -> list[Link]:
        return [Link(lk.index, lk.name, lk.kind, lk.mtu, lk.mac, lk.up, alias, lk.vxlan)
                for lk, alias in rtnl.links_with_alias(self.rt)]

    def _read_addrs(self, family: int) -> list[Addr]:
        return [Addr(a.index, a.address) for a in self.rt.addrs(family=family)]

    def _read_routes(self, family: int) -> list[Route]:
        return [Route(r.dst, r.gateway, r.oif, r.table, r.type, r.protocol, r.priority,
                      bool(r.flags & RTNH_F_ONLINK), r.multipath) for r in rtnl.routes_all(self.rt, family)]

    def _read_rules(self, family: int) -> list[Rule]:
        return [Rule(*r) for r in rtnl.rules(self.rt, family)]

    def _read_neighbours(self, family: int, index: int) -> list[Neighbour]:
        return [Neighbour(n.index, n.dst, n.lladdr, n.state) for n in self.rt.neighs(family, index)]

    def route_get(self, dst, src=None, iif: int | None = None) -> Lookup:
        try:
            got = rtnl.route_get(self.rt, dst, src, iif)
        except rtnl.NetlinkError as e:
            return Lookup(None, None, e.errno)
        return Lookup(got.oif, got.type, None)

    def close(self) -> None:
        self.rt.close()


def _ip(text: str | None):
    return ipaddress.ip_address(text) if text else None


class Pyroute2Kernel(Kernel):
    """pyroute2's IPRoute (the doctor's, ctx.ipr()), its messages turned into the same values."""

    VXLAN = ("id", "port", "learning", "link", "local", "local6")

    def __init__(self, ipr: Any) -> None:
        super().__init__()
        self.ipr = ipr

    def _read_links(self) -> list[Link]:
        out = []
        for m in self.ipr.get_links():
            info = m.get_attr("IFLA_LINKINFO")
            kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
            data = info.get_attr("IFLA_INFO_DATA") if info is not None and kind == "vxlan" else None
            vx: dict[str, Any] = {}
            for key in self.VXLAN:
                value = data.get_attr(f"IFLA_VXLAN_{key.upper()}") if data is not None else None
                if value is not None:
                    vx[key] = _ip(value) if key.startswith("local") else value
            out.append(Link(m["index"], m.get_attr("IFLA_IFNAME"), kind, m.get_attr("IFLA_MTU") or 0,
                            (m.get_attr("IFLA_ADDRESS") or "").lower(), bool(m["flags"] & 1),
                            m.get_attr("IFLA_IFALIAS") or "", vx))
        return out

    def _read_addrs(self, family: int) -> list[Addr]:
        return [Addr(a["index"], ipaddress.ip_interface(
                    f"{a.get_attr('IFA_LOCAL') or a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"))
                for a in self.ipr.get_addr(family=family)]

    def _read_routes(self, family: int) -> list[Route]:
        zero = "::" if family == socket.AF_INET6 else "0.0.0.0"
        return [Route(ipaddress.ip_network(f"{r.get_attr('RTA_DST') or zero}/{r['dst_len']}", strict=False),
                      _ip(r.get_attr("RTA_GATEWAY")), r.get_attr("RTA_OIF"), r.get_attr("RTA_TABLE") or r["table"],
                      r["type"], r["proto"], r.get_attr("RTA_PRIORITY") or 0, bool(r["flags"] & RTNH_F_ONLINK),
                      tuple(hop["oif"] for hop in r.get_attr("RTA_MULTIPATH") or []))
                for r in self.ipr.route("dump", family=family)]

    def _read_rules(self, family: int) -> list[Rule]:
        def net(attr: str, plen: int):
            return ipaddress.ip_network(f"{r.get_attr(attr)}/{plen}", strict=False) if plen else None
        out = []
        for r in self.ipr.get_rules(family=family):
            out.append(Rule(r.get_attr("FRA_PRIORITY") or 0, r.get_attr("FRA_TABLE") or r["table"], r["action"],
                            net("FRA_SRC", r["src_len"]), net("FRA_DST", r["dst_len"]), r["tos"],
                            frozenset(name for name in rtnl.FRA_SELECTORS.values()
                                      if r.get_attr(f"FRA_{name.upper()}") is not None)))
        return out

    def _read_neighbours(self, family: int, index: int) -> list[Neighbour]:
        return [Neighbour(n["ifindex"], _ip(n.get_attr("NDA_DST")), (n.get_attr("NDA_LLADDR") or "").lower() or None,
                          n["state"])
                for n in self.ipr.get_neighbours(family=family, ifindex=index) if n["ifindex"] == index]

    def route_get(self, dst, src=None, iif: int | None = None) -> Lookup:
        kw: dict[str, Any] = {"dst": str(dst), "family": socket.AF_INET6 if ipaddress.ip_address(dst).version == 6
                              else socket.AF_INET}
        if src is not None:
            kw["src"] = str(src)
        if iif is not None:
            kw["iif"] = iif
        try:
            msgs = self.ipr.route("get", **kw)
        except Exception as e:  # noqa: BLE001 - NetlinkError: the kernel's answer (EXDEV, EHOSTUNREACH ...)
            code = getattr(e, "code", None)
            if not isinstance(code, int):
                raise
            return Lookup(None, None, code)
        if not msgs:
            return Lookup(None, None, None)
        return Lookup(msgs[0].get_attr("RTA_OIF"), msgs[0]["type"], None)
