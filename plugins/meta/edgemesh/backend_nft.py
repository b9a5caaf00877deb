"""nftables backend: table `ip edgemesh`, the same behaviour as the iptables chains.

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

FAMILY, TABLE = "ip", "edgemesh"
HOOK_SPEC = {"prerouting": "type nat hook prerouting priority dstnat - 1; policy accept;",
             "output": "type nat hook output priority -101; policy accept;"}


def _c(text: str) -> str:
    return f'comment "{iptables.check_comment(text)}"'


def _addr(cidr: str) -> str:
    return cidr[:-3] if cidr.endswith("/32") else cidr     # nft prints a /32 as the address


def render(item: R.Item) -> str:
    if isinstance(item, R.RootJump):
        return f"jump mesh {_c(R.ROOT_COMMENT)}"
    if isinstance(item, R.PodMatch):
        return f"ip saddr {item.src} {'jump services' if item.hijack else 'return'} {_c(item.comment)}"
    if isinstance(item, R.NodeScope):
        return f"jump services {_c(R.NODE_COMMENT)}"
    if isinstance(item, R.Ignore):
        return f"ip daddr {item.ip} return {_c(item.comment)}"
    if isinstance(item, R.ProxyJump):
        p = item.proto
        return f"ip daddr {_addr(item.cidr)} meta l4proto {p} jump proxy_{p} {_c(item.comment)}"
    if isinstance(item, R.Dnat):
        return f"meta l4proto {item.proto} dnat to {item.addr}:{item.port}"
    raise TypeError(item)


def _comment_of(text: str) -> str:
    head, sep, tail = text.partition(' comment "')
    return tail[:-1] if sep and tail.endswith('"') else ""


class Backend:
    name = "nftables"
    render = staticmethod(render)

    @staticmethod
    def available() -> bool:
        return nft.available()

    def read(self) -> dict[str, list[R.Entry]]:
        table = nft.list_table(FAMILY, TABLE)        # NftError: errors.translate makes it 141
        current: dict[str, list[R.Entry]] = {"prerouting": [], "output": []}
        for chain, rules in (table or {}).items():
            current[chain] = [R.Entry(key=text, comment=_comment_of(text), ref=handle)
                              for text, handle in rules]
        return current

    def apply(self, plan: R.Plan, current: dict[str, list[R.Entry]]) -> None:
        lines = self.script(plan)
        if not lines:
            return
        try:
            nft.run(lines)
        except nft.NftInputRefused as e:             # a line nft.run refuses to send
            raise CNIError(RULES_FAILED, "refusing to write an unsafe nft line", str(e)[:2000]) from None

    @staticmethod
    def script(plan: R.Plan) -> list[str]:
        t = f"{FAMILY} {TABLE}"
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

