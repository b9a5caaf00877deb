"""rp_filter and forwarding: IPv4 forwarding off on a device that carries a pod route or the overlay
(pods cannot reach beyond this node, nor be reached), and reverse-path filtering that drops pod or
overlay traffic: the kernel is asked (RTM_GETROUTE from a pod's address, arriving on the device it
comes in by) and refuses with EXDEV when strict rp_filter finds the route back leaves elsewhere.
Strict rp_filter on a symmetric path drops nothing and is not reported. Values are read in
/proc/sys/net of the namespace being checked."""
from __future__ import annotations

import errno
import ipaddress
import os
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
    findings += _reverse_path(ctx, view, pods)
    return findings


# what the kernel answers a route lookup that fails reverse-path validation: EXDEV from
# fib_validate_source, EINVAL where newer kernels treat it as a martian source (6.x)
REFUSED = (errno.EXDEV, errno.EINVAL)


def _reverse_path(ctx: Context, view: View, pods: list) -> list[Finding]:
    """Packets from this node's pods (arriving on their bridge or veth) to the overlay, and from
    remote pods (arriving on the overlay device) to this node's pods: does the kernel take them?"""
    local = [r for r in pods if r.kind != "vxlan"]
    remote = [r for r in pods if r.kind == "vxlan"]
    p = ctx.ns.prefix()
    rp_all = conf("all", "rp_filter") or 0
    findings = []
    for sources, dests, who in ((local, remote, "pod"), (remote, local, "remote pod")):
        for src in sources:
            s = view.sample(src.dst)
            d = next((a for a in (view.sample(q.dst) for q in dests) if a is not None), None)
            if s is None or d is None:
                continue
            view.route_get(d, s, src.oif)
            refused = view.last_errno
            if refused not in REFUSED:
                continue
            back, _ = view.route_get(s)
            rp = max(rp_all, conf(src.dev, "rp_filter") or 0)
            if rp == 0 or back == src.oif:      # refused for another reason: not rp_filter's doing
                continue
            fixes = [Fix(f"make reverse-path filtering loose on {src.dev} (or route {src.dst} back by {src.dev})",
                         f"{p}sysctl -w net.ipv4.conf.{src.dev}.rp_filter=2")]
            if rp_all == 1:
                fixes.append(Fix("and on `all`, which the kernel also applies (the larger value wins)",
                                 f"{p}sysctl -w net.ipv4.conf.all.rp_filter=2"))
            findings.append(Finding(
                NAME, "error", ctx.ns.label, ctx.ns.path,
                f"rp_filter={rp} on {src.dev} drops packets from {who} {s} ({src.dst}) arriving on {src.dev}: "
                f"the route back to {s} leaves by {view.dev(back)} (kernel's answer: {os.strerror(refused)})",
                "strict reverse-path filtering drops a packet unless the route back to its source leaves by the "
                "device it came in on; here it does not (direct routing on one side, a more specific route, a "
                "policy route), so this traffic is dropped without a trace",
                fixes))
    return findings
