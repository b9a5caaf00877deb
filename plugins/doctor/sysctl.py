"""rp_filter and forwarding: IPv4 forwarding off on a device that carries a pod route or the overlay
(pods cannot reach beyond this node, nor be reached), and strict reverse-path filtering on the
overlay device or its underlay (asymmetric paths, e.g. direct routing on one side, get dropped).
Values are read in /proc/sys/net of the namespace being checked."""
from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from .finding import Finding, Fix
from .net import View

if TYPE_CHECKING:
    from .runner import Context

NAME = "rp-filter-forwarding"
PER_NAMESPACE = True
CONF = "/proc/sys/net/ipv4/conf"


def conf(dev: str, key: str) -> int | None:
    try:
        with open(f"{CONF}/{dev}/{key}") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def overlay_devices(view: View) -> dict[int, int | None]:
    """vxlan devices carrying a main route -> their underlay device (VXLAN link, or the device
    holding the vxlan's local address), None when it cannot be told."""
    out: dict[int, int | None] = {}
    routed = {r.oif for r in view.routes}
    for index, (_, kind, data) in view.links.items():
        if kind != "vxlan" or index not in routed:
            continue
        under = data.get_attr("IFLA_VXLAN_LINK") if data is not None else None
        if not under and data is not None and data.get_attr("IFLA_VXLAN_LOCAL"):
            under = view.local.get(ipaddress.ip_address(data.get_attr("IFLA_VXLAN_LOCAL")))
        out[index] = under or None
    return out


def check(ctx: Context) -> list[Finding]:
    view = View(ctx)
    pods = view.pod_routes()
    overlay = overlay_devices(view)
    needed = {r.oif: f"it carries the pod route {r.dst}" for r in pods}
    for vx, under in overlay.items():
        needed.setdefault(vx, "it is the overlay device")
        if under is not None:
            needed.setdefault(under, f"it carries {view.dev(vx)}'s VXLAN packets")
    routed = {r.oif for r in view.routes} | view.uplinks
    if not needed or len(routed | set(needed)) < 2:
        return []         # nothing to forward between: one routed device only
    p = ctx.ns.prefix()
    findings = []
    if conf("all", "forwarding") == 0:
        devs = ", ".join(sorted(view.dev(i) for i in needed))
        findings.append(Finding(
            NAME, "error", ctx.ns.label, ctx.ns.path,
            f"IPv4 forwarding is off (net.ipv4.ip_forward = 0) though pods or the overlay route through "
            f"{devs}",
            "with forwarding off the kernel delivers or drops packets, never forwards them: pods cannot "
            "reach other nodes or the outside, and nothing reaches the pods through this node",
            [Fix("turn IPv4 forwarding on", f"{p}sysctl -w net.ipv4.ip_forward=1")]))
    else:
        for i, reason in sorted(needed.items()):
            dev = view.dev(i)
            if conf(dev, "forwarding") == 0:
                findings.append(Finding(
                    NAME, "error", ctx.ns.label, ctx.ns.path,
                    f"forwarding is off on {dev} (net.ipv4.conf.{dev}.forwarding = 0); {reason}",
                    f"packets arriving on {dev} are not forwarded: traffic to or from the pods through it stops",
                    [Fix(f"turn forwarding on for {dev}", f"{p}sysctl -w net.ipv4.conf.{dev}.forwarding=1")]))
    rp_all = conf("all", "rp_filter") or 0
    for vx, under in sorted(overlay.items()):
        for i in [d for d in (vx, under) if d is not None]:
            dev = view.dev(i)
            rp = max(rp_all, conf(dev, "rp_filter") or 0)      # the kernel uses the larger of all and dev
            if rp != 1:
                continue
            fixes = [Fix(f"make reverse-path filtering loose on {dev}",
                         f"{p}sysctl -w net.ipv4.conf.{dev}.rp_filter=2")]
            if rp_all == 1:
                fixes.append(Fix("and on `all`, which the kernel also applies (the larger value wins)",
                                 f"{p}sysctl -w net.ipv4.conf.all.rp_filter=2"))
            findings.append(Finding(
                NAME, "warning", ctx.ns.label, ctx.ns.path,
                f"strict rp_filter on {dev} ({needed[i]})",
                f"strict reverse-path filtering drops a packet arriving on {dev} unless the route back to its "
                f"source leaves by {dev}: overlay traffic that comes in by another path (direct routing on one "
                f"side, a policy route, a steering datapath) is dropped without a trace",
                fixes))
    return findings
