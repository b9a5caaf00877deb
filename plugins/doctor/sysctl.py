"""rp_filter and forwarding: IPv4 forwarding off on a device that carries a pod route or the overlay
(pods cannot reach beyond this node, nor be reached), and reverse-path filtering that drops pod or
overlay traffic: the kernel is asked (RTM_GETROUTE from a pod's address, arriving on the device it
comes in by) and refuses with EXDEV when strict rp_filter finds the route back leaves elsewhere.
Strict rp_filter on a symmetric path drops nothing and is not reported. Values are read in
/proc/sys/net of the namespace being checked.

IPv6: forwarding is net.ipv6.conf.all.forwarding alone (a device's `forwarding` only sets host or
router behaviour; kernels from 6.17 also forward what arrives on a device with `force_forwarding`).
IPv6 has no rp_filter sysctl: reverse-path filtering is a firewall rule, ip6tables' `-m rpfilter`
(raw or mangle PREROUTING, `--invert -j DROP`: firewalld's IPv6_rpfilter) or nft's `fib saddr . iif
oif missing drop` in an ip6 or inet prerouting chain. Those rules are read; each pod and overlay
source is judged as the rule does: strict (the route back to the source must leave by the device the
packet came in on) or loose (`--loose`, or no `. iif`: any route back)."""
from __future__ import annotations

import errno
import json
import os
import shlex

from .finding import Finding, Fix
from .net import AF_INET6, View

TYPE_CHECKING = False          # typing stays off the plugins' CHECK path
if TYPE_CHECKING:
    from .checkctx import PluginContext as Context

NAME = "rp-filter-forwarding"
PER_NAMESPACE = True
CONF = "/proc/sys/net/ipv4/conf"
CONF6 = "/proc/sys/net/ipv6/conf"


def conf(dev: str, key: str, base: str = CONF) -> int | None:
    try:
        with open(f"{base}/{dev}/{key}") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def overlay_devices(view: View) -> dict[int, int | None]:
    """vxlan devices carrying a main route -> their underlay device (VXLAN link, or the device
    holding the vxlan's local address), None when it cannot be told."""
    out: dict[int, int | None] = {}
    routed = {r.oif for r in view.routes}
    for index, link in view.links.items():
        if link.kind != "vxlan" or index not in routed:
            continue
        under = link.vxlan.get("link")
        local = link.vxlan.get("local") or link.vxlan.get("local6")
        if not under and local:
            under = view.local.get(local)
        out[index] = under or None
    return out


def _needed(view: View) -> dict[int, str]:
    """Devices that must forward (pod routes, the overlay and its underlay) and why; empty when
    there is nothing to forward between (one routed device only)."""
    needed = {r.oif: f"it carries the pod route {r.dst}" for r in view.pod_routes()}
    for vx, under in overlay_devices(view).items():
        needed.setdefault(vx, "it is the overlay device")
        if under is not None:
            needed.setdefault(under, f"it carries {view.dev(vx)}'s VXLAN packets")
    routed = {r.oif for r in view.routes} | view.uplinks
    return needed if needed and len(routed | set(needed)) >= 2 else {}


def check(ctx: Context) -> list[Finding]:
    return _check4(ctx, View(ctx)) + _check6(ctx, View(ctx, AF_INET6))


def _check4(ctx: Context, view: View) -> list[Finding]:
    pods = view.pod_routes()
    needed = _needed(view)
    if not needed:
        return []
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


# ---- IPv6 ----

WHY_RPF6 = ("IPv6 has no rp_filter sysctl; this firewall rule does its job: it drops a packet unless the route "
            "back to its source leaves by the device it came in on (strict) or exists at all (loose). Here it "
            "does not (direct routing on one side, a more specific route, a policy route), so this traffic is "
            "dropped without a trace")


def _check6(ctx: Context, view: View) -> list[Finding]:
    needed = _needed(view)
    if not needed:
        return []
    p = ctx.ns.prefix()
    findings = []
    force = [i for i in needed if conf(view.dev(i), "force_forwarding", CONF6) == 1]
    if conf("all", "forwarding", CONF6) == 0 and len(force) < len(needed):
        devs = ", ".join(sorted(view.dev(i) for i in needed if i not in force))
        findings.append(Finding(
            NAME, "error", ctx.ns.label, ctx.ns.path,
            f"IPv6 forwarding is off (net.ipv6.conf.all.forwarding = 0) though IPv6 pods or the overlay route "
            f"through {devs}",
            "with forwarding off the kernel delivers or drops IPv6 packets, never forwards them (a device's own "
            "net.ipv6.conf.<dev>.forwarding does not change that: it only sets host or router behaviour): IPv6 "
            "pods cannot reach other nodes or the outside, and nothing reaches them through this node",
            [Fix("turn IPv6 forwarding on (the node then ignores router advertisements on a device whose "
                 "accept_ra is not 2: set it to 2 on an uplink configured by them)",
                 f"{p}sysctl -w net.ipv6.conf.all.forwarding=1")]))
    findings += _reverse_path6(ctx, view, view.pod_routes())
    return findings


class RpfRule:
    """One IPv6 reverse-path filter rule: where it is, strict or loose, and the loose rewrite."""
    __slots__ = ("where", "strict", "loose_fix")

    def __init__(self, where: str, strict: bool, loose_fix: str | None):
        self.where, self.strict, self.loose_fix = where, strict, loose_fix


def rpf_rules6(ctx: Context) -> list[RpfRule]:
    """ip6tables `-m rpfilter ... --invert -j DROP` in PREROUTING (raw, mangle) of every xtables
    backend, and nft `fib saddr [. iif] oif missing drop` in ip6/inet base chains hooked at prerouting."""
    from .nfqueue import nft_rule_text, save_rules, save_tools
    p = ctx.ns.prefix()
    out = []
    for save, tool in save_tools():
        if not save.startswith("ip6tables"):
            continue
        r = ctx.run([save])
        if r.returncode != 0:
            ctx.error(f"{save} failed: {r.stderr.strip()[:300]}")
            continue
        for table, chain, index, tokens in save_rules(r.stdout):
            rule = tokens[2:]
            if (table not in ("raw", "mangle") or chain != "PREROUTING" or "rpfilter" not in rule
                    or "--invert" not in rule or rule[-2:] != ["-j", "DROP"]):
                continue
            strict = "--loose" not in rule
            at = rule.index("rpfilter") + 1
            loose = rule[:at] + ["--loose"] + rule[at:]
            out.append(RpfRule(f"`{tool} -t {table} -A {chain} {shlex.join(rule)}`", strict,
                               f"{p}{tool} -t {table} -R {chain} {index} {shlex.join(loose)}"))
    if not _has_nft():
        return out
    r = ctx.run(["nft", "-j", "list", "ruleset"])
    if r.returncode != 0:
        ctx.error(f"nft -j list ruleset failed: {r.stderr.strip()[:300]}")
        return out
    try:
        items = json.loads(r.stdout or "{}").get("nftables", [])
    except ValueError:
        return out
    hooked = {(c["family"], c["table"], c["name"]) for c in (i.get("chain") for i in items if isinstance(i, dict))
              if isinstance(c, dict) and c.get("hook") == "prerouting" and c.get("family") in ("ip6", "inet")}
    listing = None
    for rule in (i.get("rule") for i in items if isinstance(i, dict)):
        if not isinstance(rule, dict) or (rule.get("family"), rule.get("table"), rule.get("chain")) not in hooked:
            continue
        flags = _fib_missing_drop(rule.get("expr") or [])
        if flags is None:
            continue
        if listing is None:
            listing = ctx.run(["nft", "-a", "list", "ruleset"]).stdout
        fam, table, chain, handle = rule["family"], rule["table"], rule["chain"], rule.get("handle")
        if not isinstance(handle, int):
            continue
        text = nft_rule_text(listing, fam, table, chain, handle) or "<the rule>"
        strict = "iif" in flags
        fix = (f"{p}nft replace rule {fam} {table} {chain} handle {handle} {text.replace(' . iif', '', 1)}"
               if strict and " . iif" in text else None)
        out.append(RpfRule(f"nft rule `{text}` (table {fam} {table}, chain {chain}, handle {handle})", strict, fix))
    return out


def _has_nft() -> bool:
    import shutil
    return shutil.which("nft") is not None


def _fib_missing_drop(exprs: list) -> list | None:
    """The fib flags of a `fib saddr ... oif missing drop` rule (None for any other rule, and for an
    inet rule limited to IPv4 by `meta nfproto ipv4`)."""
    flags = None
    for e in exprs:
        m = e.get("match") if isinstance(e, dict) else None
        if isinstance(m, dict):
            left = m.get("left")
            if isinstance(left, dict) and left.get("meta", {}).get("key") == "nfproto" and m.get("right") == "ipv4":
                return None
            fib = left.get("fib") if isinstance(left, dict) else None
            if isinstance(fib, dict) and fib.get("result") == "oif" and "saddr" in (fib.get("flags") or []) \
                    and m.get("right") is False and m.get("op") in ("==", "eq"):
                flags = list(fib.get("flags") or [])
    dropped = any(isinstance(e, dict) and "drop" in e for e in exprs)
    return flags if flags is not None and dropped else None


def _reverse_path6(ctx: Context, view: View, pods: list) -> list[Finding]:
    """Packets from this node's IPv6 pods to the overlay and from remote pods to this node's pods:
    would a reverse-path filter rule drop them?"""
    rules = None
    local = [r for r in pods if r.kind != "vxlan"]
    remote = [r for r in pods if r.kind == "vxlan"]
    findings = []
    for sources, dests, who in ((local, remote, "pod"), (remote, local, "remote pod")):
        for src in sources:
            s = view.sample(src.dst)
            if s is None or not any(view.sample(q.dst) is not None for q in dests):
                continue
            if rules is None:
                rules = rpf_rules6(ctx)
                if not rules:
                    return []
            back, _ = view.route_get(s)
            for rule in rules:
                if (back == src.oif) if rule.strict else (back is not None):
                    continue
                how = (f"the route back to {s} leaves by {view.dev(back)}" if back is not None
                       else f"there is no route back to {s}")
                fixes = [Fix(f"route {src.dst} back by {src.dev}", None)]
                if rule.strict and rule.loose_fix:
                    fixes.insert(0, Fix("make the rule loose (any route back will do)", rule.loose_fix))
                findings.append(Finding(
                    NAME, "error", ctx.ns.label, ctx.ns.path,
                    f"{rule.where} ({'strict' if rule.strict else 'loose'} IPv6 reverse-path filter) drops packets "
                    f"from {who} {s} ({src.dst}) arriving on {src.dev}: {how}",
                    WHY_RPF6, fixes))
    return findings
