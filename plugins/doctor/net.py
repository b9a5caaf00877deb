"""What the routing diagnoses share: the namespace's links, addresses and main-table routes, and
which of those routes lead to pods (asked of the kernel through pyroute2 in the namespace), for
one family (View(ctx) IPv4, View(ctx, AF_INET6) IPv6: link-local and multicast routes left out)."""
from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import Context

MAIN, LOCAL, DEFAULT = 254, 255, 253
AF_INET, AF_INET6 = 2, 10
RTN_UNICAST = 1
POD_KINDS = ("bridge", "vxlan")


class Route:
    __slots__ = ("dst", "oif", "dev", "kind")

    def __init__(self, dst: ipaddress.IPv4Network | ipaddress.IPv6Network, oif: int, dev: str, kind: str):
        self.dst, self.oif, self.dev, self.kind = dst, oif, dev, kind


class View:
    """One namespace's links, local addresses and main routes of one family (IPv4 by default)."""

    def __init__(self, ctx: Context, family: int = AF_INET):
        self.family = family
        self.last_errno: int | None = None      # errno of the last route_get the kernel refused
        ipr = ctx.ipr()
        self.ipr = ipr
        self.links: dict[int, tuple[str, str, Any]] = {}
        for msg in ipr.get_links():
            info = msg.get_attr("IFLA_LINKINFO")
            kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
            data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
            self.links[msg["index"]] = (msg.get_attr("IFLA_IFNAME"), kind, data)
        self.local = {ipaddress.ip_address(a.get_attr("IFA_ADDRESS")): a["index"]
                      for a in ipr.get_addr(family=family)}
        self.routes: list[Route] = []
        self.uplinks: set[int] = set()          # devices a default route leaves by, in any table
        for r in ipr.route("dump", family=family):        # every table
            table = r.get_attr("RTA_TABLE") or r["table"]
            oif = r.get_attr("RTA_OIF")
            if oif is None:
                if r["dst_len"] == 0:
                    self.uplinks.update(hop["oif"] for hop in r.get_attr("RTA_MULTIPATH") or [])
                continue
            if r["dst_len"] == 0:
                self.uplinks.add(oif)
                continue
            if table != MAIN or r["type"] != RTN_UNICAST:
                continue
            name, kind, _ = self.links.get(oif, (str(oif), "", None))
            dst = ipaddress.ip_network(f"{r.get_attr('RTA_DST')}/{r['dst_len']}", strict=False)
            if family == AF_INET6 and (dst.is_link_local or dst.is_multicast):   # fe80::/64, ff00::/8: every link
                continue
            self.routes.append(Route(dst, oif, name, kind))

    def dev(self, index: int | None) -> str:
        return self.links.get(index, (str(index), "", None))[0] if index is not None else "?"

    def pod_routes(self) -> list[Route]:
        """Main routes towards pods: on a bridge or a vxlan overlay device, or a /32 on a veth
        (point-to-point pods), never on a device a default route leaves by (an uplink)."""
        return [r for r in self.routes if r.oif not in self.uplinks
                and (r.kind in POD_KINDS or (r.kind == "veth" and r.dst.prefixlen == r.dst.max_prefixlen))]

    def sample(self, net):
        """An address in `net` that is not one of this namespace's own (a pod, not the gateway)."""
        if net.prefixlen >= net.max_prefixlen - 1:
            cands = list(net)
        else:
            cands = [net.network_address + i for i in range(1, min(net.num_addresses - 1, 8))]
        for a in cands:
            if a not in self.local:
                return a
        return None

    def route_get(self, dst, src=None, iif: int | None = None) -> tuple[int | None, str | None]:
        """(output ifindex, error) of the kernel's lookup for a packet dst [from src [arriving on iif]]."""
        self.last_errno = None
        kw: dict[str, Any] = {"dst": str(dst), "family": self.family}
        if src is not None:
            kw["src"] = str(src)
        if iif is not None:
            kw["iif"] = iif
        try:
            msgs = self.ipr.route("get", **kw)
        except Exception as e:  # noqa: BLE001 - NetlinkError: the kernel's answer (EXDEV, EHOSTUNREACH ...)
            self.last_errno = getattr(e, "code", None)
            return None, str(e)
        if not msgs:
            return None, "no answer"
        m = msgs[0]
        if m["type"] != RTN_UNICAST:          # local, unreachable, blackhole, prohibit ...: not a way out
            return None, f"route type {m['type']}"
        return m.get_attr("RTA_OIF"), None
