"""edgemesh hijack health (the KubeEdge article on edgemesh hijacking service traffic with iptables):
service traffic DNATed by edgemesh's rules (iptables and ip6tables chains
EDGE-MESH-TCP/EDGE-MESH-UDP, nft tables `ip edgemesh` and `ip6 edgemesh` chains proxy_tcp/proxy_udp)
to a listen address and port where nothing listens in that namespace: every hijacked connection is
refused (TCP) or lost (UDP). The kernel is asked through sock_diag (pyroute2's DiagSocket, AF_INET
and AF_INET6) in the namespace being checked, and a socket counts as the kernel's lookup counts it:
bound to the address itself, to the family's wildcard, or (IPv4) an AF_INET6 socket bound to `::`
without IPV6_V6ONLY or to the IPv4-mapped address (`::ffff:a.b.c.d`). And iptables-legacy and
iptables-nft (or ip6tables-legacy and ip6tables-nft) both holding rules: the kernel runs both rule
sets, each tool shows only its own, and an operator (or edgemesh, kube-proxy) reading one never sees
what the other does to the same packets."""
from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import socket

from .finding import Finding, Fix
from .nfqueue import save_tools

TYPE_CHECKING = False          # typing stays off the plugins' CHECK path (checkctx.py)
if TYPE_CHECKING:
    from .runner import Context

NAME = "edgemesh-hijack"
PER_NAMESPACE = True
XT_CHAINS = {"EDGE-MESH-TCP": "tcp", "EDGE-MESH-UDP": "udp"}
NFT_TABLE, NFT_CHAINS = ("ip", "edgemesh"), {"proxy_tcp": "tcp", "proxy_udp": "udp"}
NFT_TABLES = (NFT_TABLE, ("ip6", "edgemesh"))
TCP_LISTEN = 10
WHY_DNAT = ("edgemesh rewrites the destination of every hijacked service connection to its proxy's listen "
            "address; with no socket there the kernel answers TCP with a reset (connection refused) and "
            "drops UDP, so every service call from the mesh's pods fails")
WHY_BOTH = ("the kernel runs the legacy (x_tables) and the nf_tables rule sets one after the other; each "
            "iptables binary shows only its own, so rules in the other one (a stale kube-proxy's, a second "
            "edgemesh's, a DNAT or DROP) act on the packets unseen: edgemesh users hit this when "
            "the host and a container image use different iptables backends")


def target(spec: str) -> tuple[str, int] | None:
    """`a.b.c.d:port` or `[v6]:port` (iptables' --to-destination) -> (address, port)."""
    if spec.startswith("["):
        addr, _, rest = spec[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        addr, _, port = spec.partition(":")
    return (addr, int(port)) if addr and port.isdigit() else None


def endpoint(addr: str, port: int) -> str:
    """addr:port as a user writes it: [v6]:port."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def xt_dnats(save_output: str) -> list[tuple[str, str, str, int]]:
    """(chain, proto, address, port) of every DNAT in edgemesh's iptables (or ip6tables) chains."""
    out = []
    for line in save_output.splitlines():
        if not line.startswith("-A "):
            continue
        tokens = shlex.split(line)
        chain = tokens[1]
        if chain not in XT_CHAINS or "--to-destination" not in tokens:
            continue
        to = target(tokens[tokens.index("--to-destination") + 1])
        if to is not None:
            out.append((chain, XT_CHAINS[chain], *to))
    return out


def nft_dnats(ruleset: dict, table: tuple[str, str] = NFT_TABLE) -> list[tuple[str, str, str, int]]:
    """(chain, proto, address, port) of every dnat in nft table `table` (ip or ip6 edgemesh)'s proxy chains."""
    out = []
    for item in ruleset.get("nftables", []):
        rule = item.get("rule")
        if not rule or (rule.get("family"), rule.get("table")) != table or rule.get("chain") not in NFT_CHAINS:
            continue
        for expr in rule.get("expr", []):
            d = expr.get("dnat") if isinstance(expr, dict) else None
            if isinstance(d, dict) and isinstance(d.get("addr"), str) and isinstance(d.get("port"), int):
                out.append((rule["chain"], NFT_CHAINS[rule["chain"]], d["addr"], d["port"]))
    return out


def listening(proto: str) -> set[tuple[str, int]]:
    """(address, port) of the sockets of both families that accept `proto` traffic in this
    namespace (TCP in LISTEN, UDP bound and not connected), asked of the kernel through sock_diag; an AF_INET6
    socket is given as the addresses it accepts (see accepting())."""
    from pyroute2 import DiagSocket
    out: set[tuple[str, int]] = set()
    with DiagSocket() as ds:
        ds.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            if proto == "tcp":
                msgs = ds.get_sock_stats(family=family, protocol=socket.IPPROTO_TCP, states=1 << TCP_LISTEN)
            else:
                msgs = ds.get_sock_stats(family=family, protocol=socket.IPPROTO_UDP)
            for m in msgs:
                if proto == "udp" and m["idiag_dport"]:
                    continue            # a connected UDP socket takes datagrams from its peer only
                if family == socket.AF_INET:
                    out.add((m["idiag_src"], m["idiag_sport"]))
                else:
                    out |= accepting(m["idiag_src"], m["idiag_sport"], bool(m.get_attr("INET_DIAG_SKV6ONLY")))
    return out


def accepting(addr: str, port: int, v6only: bool) -> set[tuple[str, int]]:
    """What an AF_INET6 socket bound to addr:port accepts, as the kernel's lookups match it
    (inet_lookup_listener, udp4_lib_lookup: an AF_INET6 socket is an IPv4 candidate unless
    IPV6_V6ONLY, by its IPv4 receive address: 0.0.0.0 for `::`, a.b.c.d for ::ffff:a.b.c.d):
    `::` -> (::, port), and (0.0.0.0, port) without V6ONLY; ::ffff:a.b.c.d -> (a.b.c.d, port)
    only (it takes no native IPv6 packet); any other address -> itself."""
    ip = ipaddress.IPv6Address(addr)
    if ip.ipv4_mapped is not None:
        return {(str(ip.ipv4_mapped), port)}
    if ip.is_unspecified and not v6only:
        return {("::", port), ("0.0.0.0", port)}
    return {(str(ip), port)}


def accepts(socks: set[tuple[str, int]], addr: str, port: int) -> bool:
    if ":" in addr:
        addr = str(ipaddress.IPv6Address(addr))        # as sock_diag and /proc give it: compressed
        return (addr, port) in socks or ("::", port) in socks
    return (addr, port) in socks or ("0.0.0.0", port) in socks


def _local(ctx: Context, addr: str) -> bool:
    """Is `addr` an address of this namespace? edgemesh's own answer (its CHECK asks the same; the
    FIB read from /proc, so edgemesh CHECK pays no pyroute2 import for the wording of a finding)."""
    from plugins.meta.edgemesh.listen import address_is_local
    return address_is_local(addr)


def rule_count(save_output: str) -> dict[str, int]:
    """table -> number of rules (`-A` lines) in an iptables-save output."""
    out: dict[str, int] = {}
    table = ""
    for line in save_output.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A "):
            out[table] = out.get(table, 0) + 1
    return out


def active_backend(family: str = "iptables") -> str | None:
    """'nft' or 'legacy': what the plain `iptables` command on PATH is."""
    path = shutil.which(family)
    if path is None:
        return None
    real = os.path.basename(os.path.realpath(path))
    return "legacy" if "legacy" in real else "nft" if "nft" in real else None


def _read(ctx: Context) -> tuple[dict[str, str], list[tuple[str, str, str, str, int]]]:
    """(save tool -> its output, edgemesh DNATs as (where the rule is, chain, proto, addr, port))."""
    saves: dict[str, str] = {}
    dnats: list[tuple[str, str, str, str, int]] = []
    for save, tool in save_tools():
        p = ctx.run([save])
        if p.returncode != 0:
            ctx.error(f"{save} failed: {p.stderr.strip()[:300]}")
            continue
        saves[tool] = p.stdout
        dnats += [(f"{tool} -t nat", *d) for d in xt_dnats(p.stdout)]       # iptables and ip6tables
    if shutil.which("nft"):
        for table in NFT_TABLES:
            p = ctx.run(["nft", "-j", "list", "table", *table])
            if p.returncode == 0:
                dnats += [(f"nft table {' '.join(table)}", *d) for d in nft_dnats(json.loads(p.stdout or "{}"), table)]
            elif "No such file or directory" not in p.stderr:
                ctx.error(f"nft -j list table {' '.join(table)} failed: {p.stderr.strip()[:300]}")
    return saves, dnats


def dnats(ctx: Context) -> list[tuple[str, str, str, str, int]]:
    """edgemesh's DNATs in the namespace this thread is in."""
    return _read(ctx)[1]


def check(ctx: Context, listening=listening) -> list[Finding]:
    """`listening`: how the namespace's listeners are read (edgemesh CHECK: checkctx.listening_proc)."""
    findings: list[Finding] = []
    saves, found = _read(ctx)
    socks: dict[str, set[tuple[str, int]]] = {}
    for where, chain, proto, addr, port in found:
        if proto not in socks:
            socks[proto] = listening(proto)
        if accepts(socks[proto], addr, port):
            continue
        local = _local(ctx, addr)
        extra = "" if local else f" ({addr} is not even an address of this namespace)"
        findings.append(Finding(
            NAME, "error", ctx.ns.label, ctx.ns.path,
            f"{where} chain {chain} DNATs {proto} service traffic to {endpoint(addr, port)}, where nothing "
            f"listens in this namespace{extra}: hijacked {proto} service connections fail", WHY_DNAT,
            [Fix(f"start the mesh proxy in {ctx.ns.label}, listening on {endpoint(addr, port)} ({proto})"
                 + ("" if local else f"; {addr} must be on a device here (edgemesh ensureListenDevice)"), None),
             Fix("or remove edgemesh from the pods' network config (its last DEL removes the hijack)", None)]))
    for fam in ("iptables", "ip6tables"):
        legacy, nft = saves.get(f"{fam}-legacy"), saves.get(f"{fam}-nft")
        if legacy is None or nft is None:
            continue
        lc, nc = rule_count(legacy), rule_count(nft)
        if not lc or not nc:
            continue
        active = active_backend(fam) or "nft"
        other = "legacy" if active == "nft" else "nft"
        stale = lc if other == "legacy" else nc
        desc = "; ".join(f"{b}: " + ", ".join(f"{t} {n} rule(s)" for t, n in sorted(c.items()))
                         for b, c in (("legacy", lc), ("nft", nc)))
        edgemesh = [b for b, text in (("legacy", legacy), ("nft", nft)) if "EDGE-MESH" in text]
        where_em = f"; edgemesh's chains are in {' and '.join(edgemesh)}" if edgemesh else ""
        fixes = [Fix(f"keep one backend: `{fam}` here is {fam}-{active}; recreate what the {other} rules do "
                     f"with {fam}-{active} (or make the component that writes them use it), then remove the "
                     f"{other} rules, table by table", None)]
        fixes += [Fix(f"flush {fam}-{other}'s {t} table (then `-X` its chains)",
                      f"{ctx.ns.prefix()}{fam}-{other} -t {t} -F") for t in sorted(stale)]
        findings.append(Finding(
            NAME, "warning" if not edgemesh else "error", ctx.ns.label, ctx.ns.path,
            f"{fam}-legacy and {fam}-nft both hold rules in this namespace ({desc}){where_em}",
            WHY_BOTH, fixes))
    return findings

