"""nftables backend: table `ip edgemesh` (IPv6: `ip6 edgemesh`), the same behaviour as the iptables chains.

One instance per family, one table per family with the same chains (`ip6 saddr`, `dnat to
[addr]:port`). Why not one `inet` table: the IPv4 table stays exactly the one earlier releases
made (their pods' DEL, doctor and people find it where it was), a node never holds the same
pod's rules in two tables hooked at the same priority, and the IPv6 table mirrors ip6tables.

  chain prerouting  type nat hook prerouting priority dstnat - 1   (before kube-proxy's nat)
  chain output      type nat hook output priority -101
      jump mesh comment "edgemesh root chain"
  chain mesh        ip saddr <pod> jump services comment "edgemesh net=N id=C"
  chain services    ip daddr <ip> return comment "ignore <ns>/<name> service"
                    ip daddr <cidr> meta l4proto tcp jump proxy_tcp comment "tcp service proxy"
  chain proxy_tcp   meta l4proto tcp dnat to 169.254.96.16:40001

Rules are compared in the text form `nft list` prints, deleted by handle, and every
change is one `nft -f` transaction. The last pod's DEL deletes the table.
"""
from __future__ import annotations

from libcni_py.errors import CNIError
from plugins.pkg import iptables, nft

from . import rules as R
from .errors import RULES_FAILED

FAMILY, TABLE = "ip", "edgemesh"            # the IPv4 table; FAMILIES maps a family to its table's
FAMILIES = {"4": "ip", "6": "ip6"}
HOOK_SPEC = {"prerouting": "type nat hook prerouting priority dstnat - 1; policy accept;",
             "output": "type nat hook output priority -101; policy accept;"}


def _c(text: str) -> str:
    return f'comment "{iptables.check_comment(text)}"'


def _addr(cidr: str) -> str:
    """nft prints a /32 (/128) as the address."""
    if cidr.endswith("/32") and ":" not in cidr:
        return cidr[:-3]
    return cidr[:-4] if cidr.endswith("/128") else cidr


def _ip(addr: str) -> str:
    return "ip6" if ":" in addr else "ip"


def render(item: R.Item) -> str:
    if isinstance(item, R.RootJump):
        return f"jump mesh {_c(R.ROOT_COMMENT)}"
    if isinstance(item, R.PodMatch):
        return f"{_ip(item.src)} saddr {item.src} {'jump services' if item.hijack else 'return'} {_c(item.comment)}"
    if isinstance(item, R.NodeScope):
        return f"jump services {_c(R.NODE_COMMENT)}"
    if isinstance(item, R.Ignore):
        return f"{_ip(item.ip)} daddr {item.ip} return {_c(item.comment)}"
    if isinstance(item, R.ProxyJump):
        p = item.proto
        return f"{_ip(item.cidr)} daddr {_addr(item.cidr)} meta l4proto {p} jump proxy_{p} {_c(item.comment)}"
    if isinstance(item, R.Dnat):
        target = f"[{item.addr}]" if ":" in item.addr else item.addr
        return f"meta l4proto {item.proto} dnat to {target}:{item.port}"
    raise TypeError(item)


def _comment_of(text: str) -> str:
    head, sep, tail = text.partition(' comment "')
    return tail[:-1] if sep and tail.endswith('"') else ""


class Backend:
    name = "nftables"
    render = staticmethod(render)

    def __init__(self, family: str = "4"):
        self.family = family
        self.table_family = FAMILIES[family]

    @property
    def label(self) -> str:
        """What a message calls this instance: nftables (table ip edgemesh) or its ip6 table."""
        return f"nftables {self.table_family} {TABLE}"

    def for_family(self, family: str) -> Backend:
        return Backend(family)

    @staticmethod
    def available() -> bool:
        return nft.available()

    def read(self) -> dict[str, list[R.Entry]]:
        table = nft.list_table(self.table_family, TABLE)        # NftError: errors.translate makes it 141
        current: dict[str, list[R.Entry]] = {"prerouting": [], "output": []}
        for chain, rules in (table or {}).items():
            current[chain] = [R.Entry(key=text, comment=_comment_of(text), ref=handle)
                              for text, handle in rules]
        return current

    def apply(self, plan: R.Plan, current: dict[str, list[R.Entry]]) -> None:
        lines = self.script(plan, self.table_family)
        if not lines:
            return
        try:
            nft.run(lines)
        except nft.NftInputRefused as e:             # a line nft.run refuses to send
            raise CNIError(RULES_FAILED, "refusing to write an unsafe nft line", str(e)[:2000]) from None

    def remove_quick(self, drop) -> tuple[bool, set[str]] | None:
        """DEL and GC without `nft list table` or `nft -f` (the table is there: tables() said so):
        the mesh chain's rules, handles and comments, from one netfilter netlink dump, then one
        nf_tables transaction over netlink deleting the rules `drop` selects by handle, or the
        table when no pod is left. Returns (torn down, networks with pods left), or None when it
        cannot tell (a rule in the mesh chain not ours by its comment) or the kernel refused (a
        handle gone): the caller then reads and plans."""
        family = self.table_family
        try:
            gen = nft.generation()           # before the dump: the table's delete holds to it
            held = nft.rules(family, TABLE, "mesh")
            found = R.whose([c for _, c, _ in held], drop)
            if found is None:
                return None
            left, dropped = found
            # by handle while pods are left; the table's delete refused (ERESTART) when anything
            # was committed since the dump (a rule added outside our lock): then read and plan
            nft.delete([("rule", family, TABLE, "mesh", held[i][0]) for i in dropped] if left
                       else [("table", family, TABLE)], None if left else gen)
        except OSError:
            return None
        return not left, left

    @staticmethod
    def script(plan: R.Plan, family: str = FAMILY) -> list[str]:
        t = f"{family} {TABLE}"
        if plan.teardown:
            return [f"delete table {t}"]
        lines = []
        if plan.create or any(c in R.HOOKS for c, _ in plan.prepend + plan.append):
            lines.append(f"add table {t}")
            lines += [f"add chain {t} {c}" for c in plan.create]     # before anything jumps there
            lines += [f"add chain {t} {h} {{ {HOOK_SPEC[h]} }}" for h in R.HOOKS]   # idempotent
        lines += [f"delete rule {t} {c} handle {e.ref}" for c, e in plan.delete]
        lines += [f"insert rule {t} {c} {render(i)}" for c, i in reversed(plan.prepend)]
        lines += [f"add rule {t} {c} {render(i)}" for c, i in plan.append]
        return lines

