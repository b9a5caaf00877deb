"""iptables backend: the nat table, KubeEdge edgemesh's chain names, one iptables-restore per change.

One instance per family: Backend("4") drives iptables-save/-restore, Backend("6") ip6tables-save/
-restore with the same chain names (a pod address /128, the DNAT target [addr]:port).

  PREROUTING, OUTPUT  -m comment --comment "edgemesh root chain" -j EDGE-MESH   (top)
  EDGE-MESH           -s <pod>/32 -m comment --comment "edgemesh net=N id=C" -j EDGE-MESH-SVC
                      (-j RETURN for an excluded namespace; scope node: a last catch-all)
  EDGE-MESH-SVC       -d <ip>/32 -m comment --comment "ignore <ns>/<name> service" -j RETURN
                      -d <cidr> -p tcp -m comment --comment "tcp service proxy" -j EDGE-MESH-TCP
  EDGE-MESH-TCP       -p tcp -j DNAT --to-destination 169.254.96.16:40001

Our root jumps are deleted by their (known, safe) spec; rules in our own chains by
position, highest first, so nothing foreign in PREROUTING/OUTPUT can be hit.

Failures of iptables-save/-restore (IptablesError, XtablesLockError when another program holds
the xtables lock) go up as they are: errors.translate makes them codes 141 and 148.

Rules are compared as iptables-save prints them (token lists), so a rule we already
have is never rewritten and its counters survive. A chain is declared (":NAME") only
when it does not exist: with --noflush a declaration flushes an existing chain.
"""
from __future__ import annotations

import re
import shlex
import shutil

from libcni_py.errors import CNIError
from plugins.pkg import iptables, nft

from . import rules as R
from .errors import RULES_FAILED

TABLE = "nat"
NAMES = {"prerouting": "PREROUTING", "output": "OUTPUT", "mesh": "EDGE-MESH",
         "services": "EDGE-MESH-SVC", "proxy_tcp": "EDGE-MESH-TCP", "proxy_udp": "EDGE-MESH-UDP"}
_LOGICAL = {v: k for k, v in NAMES.items()}
BINARIES = {"4": "iptables", "6": "ip6tables"}
NFT_FAMILIES = {"4": "ip", "6": "ip6"}          # iptables-nft's nat table: an nf_tables table of that family
_DNAT6 = re.compile(r"\[[0-9a-f:]{2,39}\]:[0-9]{1,5}")      # the one token with brackets we write


def _host(addr: str) -> str:
    return f"{addr}/128" if ":" in addr else f"{addr}/32"


def _comment(text: str) -> tuple[str, ...]:
    return ("-m", "comment", "--comment", iptables.check_comment(text))


def render(item: R.Item) -> tuple[str, ...]:
    svc = NAMES["services"]
    if isinstance(item, R.RootJump):
        return _comment(R.ROOT_COMMENT) + ("-j", NAMES["mesh"])
    if isinstance(item, R.PodMatch):
        return ("-s", _host(item.src)) + _comment(item.comment) + ("-j", svc if item.hijack else "RETURN")
    if isinstance(item, R.NodeScope):
        return _comment(R.NODE_COMMENT) + ("-j", svc)
    if isinstance(item, R.Ignore):
        return ("-d", _host(item.ip)) + _comment(item.comment) + ("-j", "RETURN")
    if isinstance(item, R.ProxyJump):
        return ("-d", item.cidr, "-p", item.proto) + _comment(item.comment) + ("-j", NAMES[f"proxy_{item.proto}"])
    if isinstance(item, R.Dnat):
        target = f"[{item.addr}]:{item.port}" if ":" in item.addr else f"{item.addr}:{item.port}"
        return ("-p", item.proto, "-j", "DNAT", "--to-destination", target)
    raise TypeError(item)


class Backend:
    name = "iptables"
    render = staticmethod(render)

    def __init__(self, family: str = "4"):
        self.family = family
        self.binary = BINARIES[family]

    @property
    def label(self) -> str:
        """What a message calls this instance: iptables or ip6tables."""
        return self.binary

    def for_family(self, family: str) -> Backend:
        return Backend(family)

    def available(self) -> bool:
        return shutil.which(f"{self.binary}-restore") is not None and shutil.which(f"{self.binary}-save") is not None

    def none_of_ours(self) -> bool:
        """True when the kernel says no chain of ours exists in this family's nat table (one
        netfilter netlink dump, iptables-nft only): then read() would find nothing of ours either
        (our root jumps go to EDGE-MESH, which a jump keeps from being deleted). False: read it,
        or (`chain_names` not None) know from the list that ours are there."""
        names = self.chain_names = iptables.chains(TABLE, self.binary)
        return names is not None and not any(NAMES[c] in names for c in R.CHAINS)

    chain_names: set[str] | None = None          # what none_of_ours() was told, when the kernel told it

    def remove_quick(self, drop) -> tuple[bool, set[str]] | None:
        """DEL and GC without iptables-save or -restore (iptables-nft, after none_of_ours(): its
        chains are nf_tables ones): whose rules the mesh chain holds from one netfilter netlink
        dump (their comments), then one nf_tables transaction over netlink deleting the rules
        `drop` selects by handle, or, with no pod left, our root jumps (found by comment and
        target in PREROUTING/OUTPUT, as read() finds them) and our chains with their rules (the
        kernel refuses to delete a chain another rule still jumps to: then nothing changes).
        Returns (torn down, networks with pods left), or None when it cannot tell (legacy
        iptables, a rule in the mesh chain not ours by its comment) or the kernel refused: the
        caller then reads and plans as for every other case."""
        names = self.chain_names
        if names is None or NAMES["mesh"] not in names:
            return None
        family, mesh = NFT_FAMILIES[self.family], NAMES["mesh"]
        try:
            gen = nft.generation()           # before the dumps: the teardown's chain flushes hold to them
            held = nft.rules(family, TABLE, mesh)
            found = R.whose([c for _, c, _ in held], drop)
            if found is None:
                return None
            left, dropped = found
            items: list[tuple] = []
            if left:                         # by handle: a rule added since is not among them
                items = [("rule", family, TABLE, mesh, held[i][0]) for i in dropped]
            else:
                ours = [NAMES[c] for c in R.CHAINS if NAMES[c] in names]
                items = [("rule", family, TABLE, NAMES[h], handle) for h in R.HOOKS
                         for handle, comment, jump in nft.rules(family, TABLE, NAMES[h])
                         if comment == R.ROOT_COMMENT and jump == mesh]
                items += [("rules", family, TABLE, c) for c in ours] + [("chain", family, TABLE, c) for c in ours]
            # the teardown flushes whole chains: refused (ERESTART) when anything was committed
            # since the dumps, whoever did it (another stateDir, an admin); then read and plan
            nft.delete(items, None if left else gen)
        except OSError:
            return None
        return not left, left

    def read(self, text: str | None = None) -> dict[str, list[R.Entry]]:
        """Our chains that exist (with their rules) and our jumps in PREROUTING/OUTPUT."""
        if text is None:
            text = self._save()
        current: dict[str, list[R.Entry]] = {"prerouting": [], "output": []}
        for line in text.splitlines():
            if line.startswith(":") and line[1:].split(" ", 1)[0] in _LOGICAL:
                current.setdefault(_LOGICAL[line[1:].split(" ", 1)[0]], [])
            elif line.startswith("-A "):
                chain = line.split(" ", 2)[1]
                if chain not in _LOGICAL:
                    continue
                try:
                    tokens = tuple(shlex.split(line)[2:])
                except ValueError:
                    continue                       # not ours: we never write such quoting
                comment = _comment_of(tokens)
                entries = current.setdefault(_LOGICAL[chain], [])
                if chain in ("PREROUTING", "OUTPUT"):
                    if comment == R.ROOT_COMMENT and tokens[-2:] == ("-j", NAMES["mesh"]):
                        entries.append(R.Entry(key=tokens, comment=comment, ref=tokens))
                else:   # our own chain: delete by position, whatever the rule looks like
                    entries.append(R.Entry(key=tokens, comment=comment, ref=len(entries) + 1))
        return current

    def apply(self, plan: R.Plan, current: dict[str, list[R.Entry]]) -> None:
        lines = self.restore_lines(plan, current)
        if lines:
            iptables.restore(TABLE, lines, binary=self.binary)

    @staticmethod
    def restore_lines(plan: R.Plan, current: dict[str, list[R.Entry]]) -> list[str]:
        if plan.teardown:
            lines = [_line("-D", NAMES[h], e.ref) for h in R.HOOKS for e in current.get(h, [])]
            ours = [NAMES[c] for c in R.CHAINS if c in current]
            return lines + [f"-F {c}" for c in ours] + [f"-X {c}" for c in ours]
        lines = [f":{NAMES[c]} - [0:0]" for c in plan.create]
        lines += [_line("-D", NAMES[c], e.ref) for c, e in plan.delete if c in R.HOOKS]
        by_position = sorted(((c, e.ref) for c, e in plan.delete if c not in R.HOOKS), reverse=True)
        lines += [f"-D {NAMES[c]} {n}" for c, n in by_position]
        lines += [_line("-I", f"{NAMES[c]} 1", render(i)) for c, i in reversed(plan.prepend)]
        lines += [_line("-A", NAMES[c], render(i)) for c, i in plan.append]
        return lines

    def _save(self) -> str:
        return iptables.save(TABLE, binary=self.binary)


def _comment_of(tokens: tuple[str, ...]) -> str:
    for i, t in enumerate(tokens[:-1]):
        if t == "--comment":
            return tokens[i + 1]
    return ""


def _line(op: str, chain: str, tokens) -> str:
    out = []
    for t in tokens:
        if not (iptables.SAFE_TEXT.fullmatch(t) or _DNAT6.fullmatch(t)):     # every token we write
            raise CNIError(RULES_FAILED, "refusing to write an unsafe iptables token", repr(t)[:300])
        out.append(f'"{t}"' if " " in t else t)
    return f"{op} {chain} " + " ".join(out)
