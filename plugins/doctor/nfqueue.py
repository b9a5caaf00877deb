"""NFQUEUE with no reader (the report of NFQUEUE being per network namespace: a pod's queued packets
dropped, the reader in init_net): NFQUEUE is per network namespace. A rule that queues packets
to queue N in a namespace where no process has bound queue N there drops them, unless the rule
fails open (`--queue-bypass`, nft `bypass`). A reader bound in another namespace (the host's)
does not count: /proc/net/netfilter/nfnetlink_queue is read inside each namespace."""
from __future__ import annotations

import json
import re
import shlex
import shutil

from .finding import Finding, Fix

TYPE_CHECKING = False          # typing stays off the plugins' CHECK path (checkctx.py)
if TYPE_CHECKING:
    from .runner import Context

NAME = "nfqueue-no-reader"
PER_NAMESPACE = True
QUEUES = "/proc/thread-self/net/netfilter/nfnetlink_queue"
WHY = ("NFQUEUE hands each matching packet to a userspace reader bound to that queue in this same "
       "network namespace; with none bound and no bypass flag the kernel drops the packet, silently")


def bound_queues(path: str = QUEUES) -> set[int]:
    """Queue numbers bound by some process in the current namespace (first column of each line)."""
    try:
        with open(path) as f:
            return {int(line.split()[0]) for line in f if line.strip()}
    except FileNotFoundError:      # nfnetlink_queue not loaded: nobody can have bound a queue
        return set()


def save_tools() -> list[tuple[str, str]]:
    """(save tool, the tool that edits rules) for every xtables backend installed. iptables-nft's
    rules show in `nft -j` only as opaque xt expressions, so they are read here, not there."""
    out = []
    for fam in ("iptables", "ip6tables"):
        found = False
        for backend in ("nft", "legacy"):
            if shutil.which(f"{fam}-{backend}-save"):
                out.append((f"{fam}-{backend}-save", f"{fam}-{backend}"))
                found = True
        if not found and shutil.which(f"{fam}-save"):
            out.append((f"{fam}-save", fam))
    return out


def queues_of(tokens: list[str]) -> list[int]:
    if "--queue-balance" in tokens:
        a, _, b = tokens[tokens.index("--queue-balance") + 1].partition(":")
        return list(range(int(a), int(b or a) + 1))
    if "--queue-num" in tokens:
        return [int(tokens[tokens.index("--queue-num") + 1])]
    return [0]


def save_rules(save_output: str):
    """(table, chain, index in chain, the rule's tokens from `-A`) of every rule in an iptables-save
    output (the index is what `-R CHAIN N` takes)."""
    table = ""
    count: dict[tuple[str, str], int] = {}
    for line in save_output.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        if not line.startswith("-A "):
            continue
        tokens = shlex.split(line)
        chain = tokens[1]
        count[(table, chain)] = n = count.get((table, chain), 0) + 1
        yield table, chain, n, tokens


def xtables_rules(save_output: str):
    """(table, chain, index in chain, rule tokens after `-A CHAIN`) of every NFQUEUE rule."""
    for table, chain, n, tokens in save_rules(save_output):
        if "-j" in tokens and tokens[tokens.index("-j") + 1] == "NFQUEUE":
            yield table, chain, n, tokens[2:]


def nft_queue_rules(ruleset: dict):
    """(family, table, chain, handle, queue numbers, bypass) of every native nft `queue` statement
    with a constant queue number or range (a map or hash picks the queue at run time: skipped)."""
    for item in ruleset.get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        for expr in rule.get("expr", []):
            q = expr.get("queue") if isinstance(expr, dict) else None
            if q is None:
                continue
            num = q.get("num", 0)
            if isinstance(num, int):
                nums = [num]
            elif isinstance(num, dict) and isinstance(num.get("range"), list):
                a, b = num["range"]
                nums = list(range(int(a), int(b) + 1))
            else:
                continue
            flags = q.get("flags", [])
            flags = [flags] if isinstance(flags, str) else flags
            yield rule["family"], rule["table"], rule["chain"], rule["handle"], nums, "bypass" in flags


_HANDLE_RE = re.compile(r"^\s*(.*?)\s*# handle (\d+)\s*$")


def nft_rule_text(listing: str, family: str, table: str, chain: str, handle: int) -> str | None:
    """The rule's text in `nft -a list ruleset`, for `nft replace rule`."""
    cur_table = cur_chain = None
    for line in listing.splitlines():
        s = line.strip()
        if s.startswith("table "):
            parts = s.split()
            cur_table = (parts[1], parts[2])
        elif s.startswith("chain "):
            cur_chain = s.split()[1]
        else:
            m = _HANDLE_RE.match(line)
            if m and cur_table == (family, table) and cur_chain == chain and int(m.group(2)) == handle:
                return m.group(1)
    return None


def with_bypass(text: str) -> str:
    """nft rule text with the queue statement failing open."""
    if re.search(r"\bqueue flags ", text):
        return re.sub(r"\bqueue flags (\S+)", lambda m: f"queue flags {m.group(1)},bypass", text, count=1)
    if re.search(r"\bqueue\b.*\bbypass\b", text):
        return text
    return re.sub(r"\bqueue\b", "queue flags bypass", text, count=1)


def _reader_fix(ctx: Context, queues: list[int]) -> Fix:
    q = ", ".join(map(str, queues))
    return Fix(f"run the process that reads queue {q} inside {ctx.ns.label}, bound there "
               f"(`{ctx.ns.prefix()}<reader>`): a reader in another namespace, the host's included, "
               f"does not count", None)


def check(ctx: Context) -> list[Finding]:
    bound = bound_queues()
    findings = []
    for save, tool in save_tools():
        p = ctx.run([save])
        if p.returncode != 0:
            ctx.error(f"{save} failed: {p.stderr.strip()[:300]}")
            continue
        for table, chain, index, tokens in xtables_rules(p.stdout):
            if "--queue-bypass" in tokens:
                continue
            missing = [q for q in queues_of(tokens) if q not in bound]
            if not missing:
                continue
            rule = f"{tool} -t {table} -A {chain} {shlex.join(tokens)}"
            matches = tokens[:tokens.index("-j")]
            traffic = f"packets matching `{shlex.join(matches)}`" if matches else "every packet"
            findings.append(Finding(
                NAME, "error", ctx.ns.label, ctx.ns.path,
                f"`{rule}` queues to {_qs(missing)} with no reader bound in this namespace: "
                f"{traffic} through {table}/{chain} is dropped", WHY,
                [_reader_fix(ctx, missing),
                 Fix("or let the rule fail open when no reader is bound (packets then pass unqueued)",
                     f"{ctx.ns.prefix()}{tool} -t {table} -R {chain} {index} {shlex.join(tokens)} "
                     f"--queue-bypass")]))
    if shutil.which("nft"):
        p = ctx.run(["nft", "-j", "list", "ruleset"])
        if p.returncode != 0:
            ctx.error(f"nft -j list ruleset failed: {p.stderr.strip()[:300]}")
            return findings
        rules = [r for r in nft_queue_rules(json.loads(p.stdout or "{}")) if not r[5]]
        listing = ctx.run(["nft", "-a", "list", "ruleset"]).stdout if rules else ""
        for family, table, chain, handle, nums, _ in rules:
            missing = [q for q in nums if q not in bound]
            if not missing:
                continue
            text = nft_rule_text(listing, family, table, chain, handle) or "<the rule>"
            findings.append(Finding(
                NAME, "error", ctx.ns.label, ctx.ns.path,
                f"nft rule `{text}` (table {family} {table}, chain {chain}, handle {handle}) queues to "
                f"{_qs(missing)} with no reader bound in this namespace: its packets are dropped", WHY,
                [_reader_fix(ctx, missing),
                 Fix("or add the bypass flag so the rule fails open when no reader is bound",
                     f"{ctx.ns.prefix()}nft replace rule {family} {table} {chain} handle {handle} "
                     f"{with_bypass(text)}")]))
    return findings


def _qs(queues: list[int]) -> str:
    return ("queue " if len(queues) == 1 else "queues ") + ", ".join(map(str, queues))
