"""Mark-bit clash (the article «Kubernetes环境中NFQUEUE与MARK机制冲突»: NFQUEUE verdict marks on kube-proxy's
0x8000 drop bit): a rule that sets packet or conntrack mark
bits (iptables `MARK`/`CONNMARK --set-xmark`, which is how iptables-save prints --set-mark and
--or-mark; nft `meta mark set`, `ct mark set`) that another component's rule reads (`-m mark
--mark`, `-m connmark --mark`, nft `meta mark`/`ct mark` matches). The classic: something marks
its traffic with 0x8000, which is kube-proxy's drop bit, and KUBE-FIREWALL drops it, silently.

Who a rule belongs to is told by its chain (KUBE-*, CNI-HOSTPORT-*/CNI-DN-*, cali-*, CILIUM_*,
EDGE-MESH*) or nft table; a setter and a reader of unknown owner are not compared with each other
(one program marking and reading its own bits is no clash). Marks set by an NFQUEUE reader's
verdict, by eBPF or by the routing code are not visible in the rules and are not seen here.

The bits each component uses (defaults; most are configurable):"""
from __future__ import annotations

import json
import shlex
import shutil
from typing import TYPE_CHECKING

from .finding import Finding, Fix
from .nfqueue import save_rules, save_tools

if TYPE_CHECKING:
    from .runner import Context

NAME = "mark-bit-clash"
PER_NAMESPACE = True

# (component, mask, what the bits mean, source)
KNOWN = [
    ("Kubernetes", 0x4000, "kube-proxy's masquerade bit: KUBE-MARK-MASQ sets it, KUBE-POSTROUTING SNATs what "
     "carries it", "kube-proxy --iptables-masquerade-bit, default 14"),
    ("Kubernetes", 0x8000, "the drop bit: KUBE-MARK-DROP sets it, KUBE-FIREWALL drops what carries it",
     "kubelet/kube-proxy --iptables-drop-bit, default 15"),
    ("portmap", 0x2000, "the CNI portmap plugin's masquerade bit (hairpin hostPort traffic)",
     "portmap markMasqBit, default 13"),
    ("Calico", 0xFFFF0000, "Felix's policy and routing marks", "Felix iptablesMarkMask, default 0xffff0000"),
    ("Cilium", 0x0F00, "Cilium's magic marks (to/from proxy, host, encrypt/decrypt)",
     "cilium pkg/datapath/linux/linux_defaults/mark.go: MagicMarkHostMask 0x0F00"),
    ("Cilium", 0xF000, "Cilium's cluster id / IPsec SPI bits", "cilium linux_defaults/mark.go (IPsec: SPI 0xf000)"),
    ("Cilium", 0xFFFF0000, "Cilium's security identity", "cilium linux_defaults/mark.go (identity 0xffff0000)"),
    ("AWS VPC CNI", 0x80, "the AWS VPC CNI's connmark bit", "fwmark registry (github.com/fwmark/registry)"),
    ("pycni", 0x0, "our plugins set no packet or conntrack marks", "plugins/ (no MARK, CONNMARK, meta mark)"),
]
if __doc__ is not None:
    __doc__ += "\n\n" + "\n".join(f"  {c:12} 0x{m:08x}  {w} ({s})" for c, m, w, s in KNOWN)

# free bits to suggest, best first: outside Kubernetes', portmap's and Calico's; 0x1000 is Cilium's
CANDIDATES = [0x1000, 0x40, 0x20, 0x10, 0x8, 0x4, 0x2, 0x1, 0x800, 0x400, 0x200, 0x100]
ALWAYS = {"Kubernetes", "portmap"}         # reserved on any node, whether or not their rules are there yet
XT_TABLES = {"filter", "nat", "mangle", "raw", "security"}
ALL = 0xFFFFFFFF


def owner_of_chain(chain: str) -> str | None:
    for prefix, owner in (("KUBE-", "Kubernetes"), ("CNI-HOSTPORT-", "portmap"), ("CNI-DN-", "portmap"),
                          ("cali-", "Calico"), ("CILIUM_", "Cilium"), ("AWS-", "AWS VPC CNI"),
                          ("EDGE-MESH", "pycni")):
        if chain.startswith(prefix):
            return owner
    return None


def owner_of_table(table: str) -> str | None:
    return {"kube-proxy": "Kubernetes", "calico": "Calico", "cilium": "Cilium", "edgemesh": "pycni"}.get(table)


class Rule:
    """A rule that sets or reads mark bits. kind: 'packet' or 'ct'."""
    __slots__ = ("kind", "value", "mask", "owner", "text", "target", "fix")

    def __init__(self, kind: str, value: int, mask: int, owner: str | None, text: str, target: str,
                 fix: str | None = None):
        self.kind, self.value, self.mask, self.owner = kind, value, mask, owner
        self.text, self.target, self.fix = text, target, fix


def _num(text: str) -> tuple[int, int]:
    v, _, m = text.partition("/")
    return int(v, 0), int(m, 0) if m else ALL


def xt_rules(save_output: str, tool: str) -> tuple[list[Rule], list[Rule]]:
    """(setters, readers) in an iptables-save output. A setter's fix is its `-R` command with
    the value left as __MARK__ to fill in."""
    setters: list[Rule] = []
    readers: list[Rule] = []
    for table, chain, n, tokens in save_rules(save_output):
        owner = owner_of_chain(chain)
        text = f"{tool} -t {table} -A {chain} {shlex.join(tokens[2:])}"
        target = tokens[tokens.index("-j") + 1] if "-j" in tokens else ""
        if target in ("MARK", "CONNMARK") and "--set-xmark" in tokens:
            i = tokens.index("--set-xmark") + 1
            v, m = _num(tokens[i])
            rest = list(tokens[2:])
            rest[i - 2] = "__MARK__"
            fix = f"{tool} -t {table} -R {chain} {n} {shlex.join(rest)}"
            setters.append(Rule("packet" if target == "MARK" else "ct", v, m, owner, text, target, fix))
        for j, t in enumerate(tokens):
            if t == "--mark" and j >= 2 and "-m" in tokens[:j]:
                module = tokens[max(k for k in range(j) if tokens[k] == "-m") + 1]
                if module in ("mark", "connmark"):
                    v, m = _num(tokens[j + 1])
                    readers.append(Rule("packet" if module == "mark" else "ct", v, m, owner, text, target))
    return setters, readers


def _mark_kind(expr) -> str | None:
    """'packet' for nft `meta mark`, 'ct' for `ct mark`, else None."""
    if isinstance(expr, dict):
        for key, kind in (("meta", "packet"), ("ct", "ct")):
            inner = expr.get(key)
            if isinstance(inner, dict) and inner.get("key") == "mark":
                return kind
    return None


def nft_rules(ruleset: dict, skip_tables: set[tuple[str, str]]) -> tuple[list[Rule], list[Rule]]:
    setters: list[Rule] = []
    readers: list[Rule] = []
    for item in ruleset.get("nftables", []):
        rule = item.get("rule")
        if not rule or (rule.get("family"), rule.get("table")) in skip_tables:
            continue
        owner = owner_of_table(rule["table"])
        where = f"nft rule in table {rule['family']} {rule['table']} chain {rule['chain']} handle {rule['handle']}"
        exprs = rule.get("expr", [])
        verdict = next((k for e in exprs if isinstance(e, dict) for k in e
                        if k in ("drop", "accept", "reject", "jump", "goto", "return", "masquerade", "snat",
                                 "dnat", "queue")), "")
        for e in exprs:
            if not isinstance(e, dict):
                continue
            if "mangle" in e:
                kind = _mark_kind(e["mangle"].get("key"))
                val = e["mangle"].get("value")
                if kind is None:
                    continue
                if isinstance(val, int):
                    setters.append(Rule(kind, val, ALL, owner, where, "mangle"))
                elif isinstance(val, dict):
                    for op in ("|", "^"):
                        args = val.get(op)
                        if isinstance(args, list):
                            bits = [a for a in args if isinstance(a, int)]
                            if bits:
                                setters.append(Rule(kind, bits[0], bits[0], owner, where, "mangle"))
            elif "match" in e:
                left, right = e["match"].get("left"), e["match"].get("right")
                if not isinstance(right, int):
                    continue
                kind = _mark_kind(left)
                if kind is not None:
                    readers.append(Rule(kind, right, ALL, owner, where, verdict))
                elif isinstance(left, dict) and isinstance(left.get("&"), list) and len(left["&"]) == 2:
                    a, b = left["&"]
                    kind = _mark_kind(a)
                    if kind is not None and isinstance(b, int):
                        readers.append(Rule(kind, right, b, owner, where, verdict))
    return setters, readers


def meaning(bits: int, owner: str | None) -> str:
    """What the component reading `bits` uses them for, from the table."""
    for c, m, what, _ in KNOWN:
        if c == owner and m & bits:
            return what
    return ""


def free_bit(used: int, present: set[str]) -> int | None:
    reserved = used
    for c, m, _, _ in KNOWN:
        if c in present or c in ALWAYS:
            reserved |= m
    return next((b for b in CANDIDATES if not b & reserved), None)


def _who(owner: str | None) -> str:
    return owner or "an unknown component"


def check(ctx: Context) -> list[Finding]:
    setters: list[Rule] = []
    readers: list[Rule] = []
    managed: set[tuple[str, str]] = set()
    for save, tool in save_tools():
        p = ctx.run([save])
        if p.returncode != 0:
            ctx.error(f"{save} failed: {p.stderr.strip()[:300]}")
            continue
        xs, xr = xt_rules(p.stdout, tool)
        setters += xs
        readers += xr
        if tool.endswith("-nft"):       # its tables show in nft too, as the same rules: read them once
            fam = "ip" if tool.startswith("iptables") else "ip6"
            managed |= {(fam, line[1:].strip()) for line in p.stdout.splitlines()
                        if line.startswith("*") and line[1:].strip() in XT_TABLES}
    if shutil.which("nft"):
        p = ctx.run(["nft", "-j", "list", "ruleset"])
        if p.returncode != 0:
            ctx.error(f"nft -j list ruleset failed: {p.stderr.strip()[:300]}")
        else:
            ns_, nr = nft_rules(json.loads(p.stdout or "{}"), managed)
            setters += ns_
            readers += nr
    used = 0
    for x in setters:
        used |= x.value
    for x in readers:
        used |= x.mask
    present = {x.owner for x in setters + readers if x.owner is not None}
    findings = []
    for s in setters:
        hits = [r for r in readers if r.kind == s.kind and r.owner != s.owner
                and (s.owner is not None or r.owner is not None) and s.value & r.mask]
        if not hits:
            continue
        clash = 0
        for r in hits:
            clash |= s.value & r.mask
        mark = "packet mark" if s.kind == "packet" else "conntrack mark"
        readers_text = "; ".join(
            f"{_who(r.owner)} reads 0x{r.mask:x} (`{r.text}`"
            + (f", -j {r.target}" if r.target and r.target not in r.text else "") + ")"
            + (f": {meaning(s.value & r.mask, r.owner)}" if meaning(s.value & r.mask, r.owner) else "")
            for r in hits)
        breaks = [r for r in hits if r.target.upper() in ("DROP", "REJECT")
                  and (s.value & r.mask) == (r.value & r.mask)]
        effect = (f"its packets match {_who(breaks[0].owner)}'s drop rule and are dropped"
                  if breaks else f"{_who(hits[0].owner)} acts on packets it never marked")
        fixes = []
        bit = free_bit(used, present)
        if bit is not None:
            new_v, new_m = (s.value & ~clash) | bit, (s.mask if s.mask == ALL else (s.mask & ~clash) | bit)
            how = (f"move {_who(s.owner)}'s mark off 0x{clash:x} to a bit nobody here uses (0x{bit:x}), and "
                   "change whatever reads its mark likewise")
            fixes.append(Fix(how, ctx.ns.prefix() + s.fix.replace("__MARK__", f"0x{new_v:x}/0x{new_m:x}")
                             if s.fix else None))
        else:
            fixes.append(Fix("no free mark bit is left here: configure one of the components to use other "
                             "bits (kube-proxy --iptables-masquerade-bit/--iptables-drop-bit, Felix "
                             "iptablesMarkMask, portmap markMasqBit)", None))
        if "Kubernetes" in {r.owner for r in hits}:
            fixes.append(Fix("or move Kubernetes' bit instead: kubelet/kube-proxy --iptables-drop-bit and "
                             "--iptables-masquerade-bit (all nodes alike)", None))
        findings.append(Finding(
            NAME, "error" if breaks else "warning", ctx.ns.label, ctx.ns.path,
            f"`{s.text}` ({_who(s.owner)}) sets {mark} bits 0x{s.value & ALL:x}, overlapping 0x{clash:x} "
            f"that {readers_text}: {effect}",
            "mark bits are one 32-bit field shared by every program on the node; a bit one component sets "
            "for its own reasons means something else to another, which then masquerades, routes or drops "
            "the packet: the NFQUEUE/MARK article's packets vanished in KUBE-FIREWALL this way",
            fixes))
    return findings
