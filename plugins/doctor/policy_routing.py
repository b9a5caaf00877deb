"""Policy routing that steals pod replies (the Cilium field report of pod replies lost to `ip rule from
<ip> lookup 100`): an `ip rule` ahead of `main` that selects
traffic by its source (a pod's address or subnet, or a node address replying to pods) and sends it
to a table whose route leaves by another interface than main's route. The kernel is asked
(RTM_GETROUTE with the source, and the pod's device as iif when the source is a pod) where the
packet would really go. IPv4 and IPv6 alike: `ip -6 rule` and the IPv6 main routes are judged the
same way (RTM_GETROUTE for IPv6), and the fix printed is an `ip -6 rule`."""
from __future__ import annotations

import ipaddress

from .finding import Finding, Fix
from .net import AF_INET, AF_INET6, DEFAULT, LOCAL, MAIN, View

TYPE_CHECKING = False          # typing stays off the plugins' CHECK path
if TYPE_CHECKING:
    from .checkctx import PluginContext as Context

NAME = "policy-route-steals-replies"
PER_NAMESPACE = True
FR_ACT_TO_TBL = 1
WHY = ("a rule ahead of `main` matches on the source address only, so the pod's traffic (replies included) "
       "is routed by that table and leaves by the wrong interface: the other end never sees it, and on the "
       "way back rp_filter or a firewall drops what does arrive")


def _rules(view: View):
    """(priority, table, from-prefix, to-prefix or None) of rules ahead of main's; rules that also
    select on something a route lookup cannot reproduce (fwmark, iif, uid ...) are not judged."""
    rules = view.kernel.rules(view.family)
    # where `from all lookup main` is: narrower main rules (the fixes this check prints) do not count
    main_pref = min((r.priority for r in rules if r.table == MAIN and r.src is None and r.dst is None
                     and not r.selectors), default=32766)
    prefs = {r.priority for r in rules}
    out = []
    for r in rules:
        if r.priority >= main_pref or r.action != FR_ACT_TO_TBL or r.table in (MAIN, LOCAL, DEFAULT):
            continue
        if r.src is None or r.selectors or r.tos:
            continue
        out.append((r.priority, r.table, r.src, r.dst))
    return out, prefs


def _free_pref(pref: int, used: set[int]) -> int:
    p = pref - 1
    while p > 0 and p in used:
        p -= 1
    return max(p, 1)


def check(ctx: Context) -> list[Finding]:
    return _check(ctx, View(ctx)) + _check(ctx, View(ctx, AF_INET6))


def _check(ctx: Context, view: View) -> list[Finding]:
    pods = view.pod_routes()
    if not pods:
        return []
    ip = "ip" if view.family == AF_INET else "ip -6"
    rules, used = _rules(view)
    findings = []
    for pref, table, src, to in rules:
        # the source is a pod of this node: behind a bridge or veth (remote pods' subnets on the overlay
        # are destinations, not sources: their traffic is judged on their own node)
        inside = [p for p in pods if p.dst.overlaps(src) and p.kind != "vxlan"]
        sources: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None, str]] = []   # (src, iif, who)
        for p in inside:                    # the source is a pod behind p: its packets arrive on p's device
            net = p.dst if p.dst.prefixlen >= src.prefixlen else src
            s = view.sample(net)
            if s is not None:
                sources.append((s, p.oif, f"pod {s} (behind {p.dev})"))
        if not any(p.dst.overlaps(src) for p in pods):    # a node address or a far host replying to pods
            s = src.network_address if src.prefixlen >= src.max_prefixlen - 1 else src.network_address + 1
            if s in view.local:
                sources.append((s, None, f"{s} (this node)"))
            else:
                back, _ = view.route_get(s)
                if back is not None:
                    sources.append((s, back, f"{s} (arriving on {view.dev(back)})"))
        for s, iif, who in sources:
            for q in pods:
                if s in q.dst or (to is not None and not q.dst.overlaps(to)):
                    continue
                d = view.sample(q.dst)
                if d is None:
                    continue
                got, err = view.route_get(d, s, iif)
                if err is not None or got == q.oif:
                    continue
                findings.append(Finding(
                    NAME, "error", ctx.ns.label, ctx.ns.path,
                    f"{ip} rule {pref} `from {src} lookup {table}` sends traffic from {who} to {q.dst} "
                    f"out of {view.dev(got)} (kernel's route lookup for {d}); main routes {q.dst} via {q.dev}",
                    WHY,
                    [Fix(f"let traffic from {src} to {q.dst} use main, ahead of rule {pref} (the rule stays "
                         f"for everything else)",
                         f"{ctx.ns.prefix()}{ip} rule add from {src} to {q.dst} lookup main "
                         f"pref {_free_pref(pref, used)}")]))
    return findings
