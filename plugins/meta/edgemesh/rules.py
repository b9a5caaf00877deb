"""The desired rule set, backend-neutral, and the diff that turns it into a plan.

Logical chains (each backend names them its own way):

  prerouting, output   the node's nat hooks; we own exactly one jump each ("edgemesh root chain")
  mesh                 who is hijacked: one rule per pod address (jump services, or return for an
                       excluded namespace), tagged "edgemesh net=<net> id=<cid>"; with scope
                       node a last catch-all rule sends everything else to services too
  services             one return per ignored service, then per protocol a jump for the
                       service CIDR to proxy_<proto>
  proxy_tcp/proxy_udp  DNAT to the listen address and port

Each family has its own set of these chains (iptables and ip6tables; nft tables `ip edgemesh`
and `ip6 edgemesh`): shared_items() gives one family's, and a backend instance holds one family.

A backend reads its current state as {chain: [Entry]} (entries in order, each with
a canonical key and whatever it needs to delete it) and renders items to keys.
`plan()` compares and returns the minimal change: rules we want and miss, rules we
own and do not want; nothing else is touched, so counters of kept rules survive.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable

from .config import NetConf, family_of, parse_pod_comment

ROOT_COMMENT = "edgemesh root chain"
NODE_COMMENT = "edgemesh node scope"
CHAINS = ("mesh", "services", "proxy_tcp", "proxy_udp")
HOOKS = ("prerouting", "output")


class RootJump:
    """A nat hook's jump to the mesh chain."""
    __slots__ = ()


class PodMatch:
    """One pod address (either family) into services; hijack False: an excluded namespace, the rule returns."""
    __slots__ = ("src", "comment", "hijack")

    def __init__(self, src: str, comment: str, hijack: bool):
        self.src, self.comment, self.hijack = src, comment, hijack


class NodeScope:
    """Scope node: the mesh chain's last rule sends everything else to services."""
    __slots__ = ()


class Ignore:
    """An ignored service: return before the proxy jumps."""
    __slots__ = ("ip", "comment")

    def __init__(self, ip: str, comment: str):
        self.ip, self.comment = ip, comment


class ProxyJump:
    """The service CIDR of one protocol to its proxy chain."""
    __slots__ = ("proto", "cidr")

    def __init__(self, proto: str, cidr: str):
        self.proto, self.cidr = proto, cidr

    @property
    def comment(self) -> str:
        return f"{self.proto} service proxy"


class Dnat:
    """A proxy chain's DNAT to the listen address and port."""
    __slots__ = ("proto", "addr", "port")

    def __init__(self, proto: str, addr: str, port: int):
        self.proto, self.addr, self.port = proto, addr, port


Item = RootJump | PodMatch | NodeScope | Ignore | ProxyJump | Dnat


class Entry:
    """A rule a backend read."""
    __slots__ = ("key", "comment", "ref")

    def __init__(self, key: Hashable, comment: str = "", ref: object = None):
        self.key = key              # canonical form, comparable with Backend.render()
        self.comment = comment      # the rule's comment, "" if none
        self.ref = ref              # what the backend needs to delete it (iptables spec, nft handle)


class Plan:
    """The change plan() computed."""

    def __init__(self) -> None:
        self.create: list[str] = []                      # chains to create
        self.delete: list[tuple[str, Entry]] = []
        self.prepend: list[tuple[str, Item]] = []        # in final order
        self.append: list[tuple[str, Item]] = []
        self.teardown = False                            # remove everything we own

    def empty(self) -> bool:
        return not (self.create or self.delete or self.prepend or self.append or self.teardown)


def shared_items(conf: NetConf, ignored, family: str = "4") -> dict[str, list[Item]]:
    """What every attached pod of one family shares: root jumps, services, proxies (ignores
    first; only the ignored services of that family)."""
    items: dict[str, list[Item]] = {"prerouting": [RootJump()], "output": [RootJump()],
                                    "services": [Ignore(s.ip, s.comment) for s in ignored if s.family == family]}
    items["services"] += [ProxyJump(p, conf.cidr(family)) for p in conf.protocols]
    for p in ("tcp", "udp"):
        items[f"proxy_{p}"] = [Dnat(p, conf.listen(family), conf.listen_port)] if p in conf.protocols else []
    items["mesh"] = [NodeScope()] if conf.scope == "node" else []
    return items


def pod_items(ips: list[str], comment: str, hijack: bool) -> list[PodMatch]:
    return [PodMatch(ip, comment, hijack) for ip in ips]


def by_family(pods: list[PodMatch]) -> dict[str, list[PodMatch]]:
    """A pod's rules split by the family of their address, families with none left out."""
    out: dict[str, list[PodMatch]] = {}
    for m in pods:
        out.setdefault(family_of(m.src), []).append(m)
    return out


def plan(current: dict[str, list[Entry]], render: Callable[[Item], Hashable], *,
         shared: dict[str, list[Item]] | None, pods: list[PodMatch] | tuple[()] = (),
         drop: Callable[[str], bool] = lambda comment: False, teardown_when_empty: bool = False) -> Plan:
    """The change from `current` to: `shared` (None: leave shared rules alone), plus `pods`
    (each pod's rules replace those with the same comment), minus pod rules whose comment
    `drop` selects. With nothing attached left and `teardown_when_empty`: remove it all."""
    p = Plan()
    exists = {c for c in CHAINS if c in current} | {h for h in HOOKS if current.get(h)}
    pod_comments = {m.comment for m in pods}
    kept_pods = [e for e in current.get("mesh", []) if parse_pod_comment(e.comment)
                 and not drop(e.comment) and e.comment not in pod_comments]
    if teardown_when_empty and not pods and not kept_pods:
        p.teardown = bool(exists)
        return p
    if shared is not None:
        wanted_chains = [c for c in CHAINS if c in ("mesh", "services") or shared.get(c)]
        p.create = [c for c in wanted_chains if c not in exists]
        for chain in HOOKS + CHAINS[1:]:
            _converge(p, chain, current.get(chain, []), shared.get(chain, []), render)
    # mesh: the pods' rules, then the node-scope catch-all (kept last).
    mesh = current.get("mesh", [])
    want_pods = {render(m): m for m in pods}
    seen = set()
    for e in mesh:
        if parse_pod_comment(e.comment):
            if drop(e.comment) or (e.comment in pod_comments and (e.key not in want_pods or e.key in seen)):
                p.delete.append(("mesh", e))
            seen.add(e.key)
        elif shared is not None and e.key != render(NodeScope()):
            p.delete.append(("mesh", e))              # not ours to keep in our own chain
    p.prepend += [("mesh", m) for k, m in want_pods.items() if k not in seen]
    if shared is not None:
        wanted = any(isinstance(i, NodeScope) for i in shared.get("mesh", []))
        _converge_node_scope(p, mesh, wanted, render)
    return p


def _converge(p: Plan, chain: str, have: list[Entry], want: list[Item], render) -> None:
    keys = {render(i): i for i in want}
    seen = set()
    for e in have:
        if e.key not in keys or e.key in seen:
            p.delete.append((chain, e))
        seen.add(e.key)
    missing = [i for k, i in keys.items() if k not in seen]
    # Returns go on top (before the proxy jumps), everything else at the end.
    p.prepend += [(chain, i) for i in missing if isinstance(i, (Ignore, RootJump))]
    p.append += [(chain, i) for i in missing if not isinstance(i, (Ignore, RootJump))]


def _converge_node_scope(p: Plan, mesh: list[Entry], wanted: bool, render) -> None:
    key = render(NodeScope())
    have = [e for e in mesh if e.key == key]
    for e in have[1:] if wanted else have:
        p.delete.append(("mesh", e))
    if wanted and not have:
        p.append.append(("mesh", NodeScope()))
    elif wanted and have and mesh[-1].key != key:
        p.delete.append(("mesh", have[0]))            # must stay last: move it
        p.append.append(("mesh", NodeScope()))


def whose(comments, drop: Callable[[str], bool]) -> tuple[set[str], list[int]] | None:
    """Of a mesh chain's rules by their comments (in order): the networks with pods left and the
    positions (0-based) of the rules `drop` selects; None when a rule is neither a pod's nor the
    node-scope catch-all (not ours by its comment: the caller reads and plans instead)."""
    left: set[str] = set()
    dropped: list[int] = []
    for i, comment in enumerate(comments):
        pod = parse_pod_comment(comment)
        if pod and drop(comment):
            dropped.append(i)
        elif pod:
            left.add(pod[0])
        elif comment != NODE_COMMENT:
            return None
    return left, dropped


def describe(p: Plan, render) -> str:
    """A short human summary, for CHECK errors and sync output."""
    parts = [f"create chain {c}" for c in p.create]
    parts += [f"missing in {c}: {render(i)}" for c, i in p.prepend + p.append]
    parts += [f"unexpected in {c}: {e.key}" for c, e in p.delete]
    if p.teardown:
        parts.append("teardown")
    return "; ".join(str(x) for x in parts)
