"""What the routing diagnoses share: the namespace's links, addresses and main-table routes, and
which of those routes lead to pods, for one family (View(ctx) IPv4, View(ctx, AF_INET6) IPv6:
link-local and multicast routes left out). Read through ctx.kernel() (netlink.py: pyroute2 in the
doctor, plugins.pkg.rtnl inside a plugin's CHECK)."""
from __future__ import annotations

from .netlink import Link

TYPE_CHECKING = False          # typing stays off the plugins' CHECK path
if TYPE_CHECKING:
    import ipaddress

    from .checkctx import PluginContext

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

    def __init__(self, ctx: PluginContext, family: int = AF_INET):
        self.family = family
        self.last_errno: int | None = None      # errno of the last route_get the kernel refused
        self.kernel = kernel = ctx.kernel()
        self.links: dict[int, Link] = {lk.index: lk for lk in kernel.links()}
        self.local = {a.interface.ip: a.index for a in kernel.addrs(family)}
        self.routes: list[Route] = []
        self.uplinks: set[int] = set()          # devices a default route leaves by, in any table
        for r in kernel.routes(family):         # every table
            if r.oif is None:
                if r.dst.prefixlen == 0:
                    self.uplinks.update(r.multipath)
                continue
            if r.dst.prefixlen == 0:
                self.uplinks.add(r.oif)
                continue
            if r.table != MAIN or r.type != RTN_UNICAST:
                continue
            if family == AF_INET6 and (r.dst.is_link_local or r.dst.is_multicast):   # fe80::/64, ff00::/8: every link
                continue
            link = self.links.get(r.oif)
            self.routes.append(Route(r.dst, r.oif, link.name if link else str(r.oif), link.kind if link else ""))

    def dev(self, index: int | None) -> str:
        if index is None:
            return "?"
        link = self.links.get(index)
        return link.name if link is not None else str(index)

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
        """(output ifindex, error) of the kernel's lookup for a packet dst [from src [arriving on iif]];
        the errno of a refusal is kept in last_errno."""
        got = self.kernel.route_get(dst, src, iif)
        self.last_errno = got.errno
        if got.errno is not None:
            import os
            return None, os.strerror(got.errno)
        if got.type is None:
            return None, "no answer"
        if got.type != RTN_UNICAST:           # local, unreachable, blackhole, prohibit ...: not a way out
            return None, f"route type {got.type}"
        return got.oif, None
