"""Which backend holds the rules, and the read-plan-apply step every command shares.

`backend: auto` picks what the node already uses, in this order:
  1. where our own rules are: table `ip edgemesh` or `ip6 edgemesh` -> nftables; chain
     EDGE-MESH in the iptables or ip6tables nat table -> iptables (so ADD and DEL always
     agree with earlier ADDs);
  2. iptables-save shows any rule or user chain (kube-proxy, docker, portmap...) -> iptables;
  3. nft lists a table iptables-nft would not have made (another family than ip/ip6, or a
     name that is not an iptables table name: filter nat mangle raw security) -> nftables;
     iptables-nft leaves empty `ip nat` etc. behind and marks nothing, hence the names;
  4. an empty node: iptables when its tools are installed, else nftables.

The seam is one type registry, name -> backend class (as flannel's backend.Register and
portmap's PortMapper): `register()` adds one, `get()` makes one by name ("nft" is an alias of
"nftables"), and an unknown name is code 142 listing the known ones. A backend has `name`,
`available()`, `read()` -> {logical chain: [Entry]}, `render(item)` and `apply(plan, current)`;
one instance holds one family's rules (`family` "4" or "6", `for_family(f)` the other's, `label`
for messages): the plugin converges every family of the config with its own instance.
"""
from __future__ import annotations

from libcni_py.errors import CNIError
from plugins.pkg import iptables, nft
from plugins.pkg.log import get_logger

from . import backend_iptables, backend_nft
from . import rules as R
from .errors import NO_BACKEND

TYPE_CHECKING = False          # typing stays off the exec path; mypy reads the block below
if TYPE_CHECKING:
    from collections.abc import Callable

log = get_logger("pycni.edgemesh")
FAMILIES = ("4", "6")
REGISTRY: dict[str, Callable] = {}
ALIASES = {"nft": "nftables"}


def register(name: str, factory) -> None:
    """Make backend `name` known; `factory()` returns a Backend."""
    REGISTRY[name] = factory


register("iptables", backend_iptables.Backend)
register("nftables", backend_nft.Backend)


def known() -> list[str]:
    return ["auto", *REGISTRY, *ALIASES]


def get(name: str, family: str = "4"):
    """The backend named `name` (an alias resolved) for `family`; CNIError(142) naming the known ones."""
    factory = REGISTRY.get(ALIASES.get(name, name))
    if factory is None:
        raise CNIError(NO_BACKEND, f"unknown backend {str(name)[:40]!r}", "known: " + ", ".join(known()))
    backend = factory()
    return backend if family == "4" else backend.for_family(family)


def family_view(backend, family: str):
    """The instance of `backend`'s kind for `family`; CNIError(142) when its tools are missing
    (ip6tables-save/-restore for IPv6 with iptables)."""
    view = backend if getattr(backend, "family", "4") == family else backend.for_family(family)
    if not view.available():
        raise CNIError(NO_BACKEND, f"backend {view.name} for IPv{family}: {view.label} is not installed",
                       "install it, or use another backend")
    return view


def for_add(choice: str):
    """The one backend an ADD writes to (its IPv4 instance; family_view() gives the others)."""
    if choice != "auto":
        return _explicit(choice)
    found = footprints()
    if found:
        if len({b.name for b in found}) > 1:
            log.warning("edgemesh rules found in both iptables and nftables; using %s", found[0].name)
        return get(found[0].name)
    return _guess()


def holding_rules(choice: str, families: tuple[str, ...] = FAMILIES) -> list:
    """Backend instances (one per family) that hold our rules (DEL, GC, CHECK, sync): with an
    explicit choice, that one's (a DEL must succeed even where its tools are missing)."""
    return [b for b, _ in holding_rules_read(choice, families)]


def holding_rules_read(choice: str, families: tuple[str, ...] = FAMILIES) -> list[tuple]:
    """holding_rules, each with what its read() gave when finding out (iptables-legacy: the rules,
    read once) or None (nftables: found from the table list; iptables-nft: from the chain list;
    read it when needed)."""
    if choice == "auto":
        return _footprints(families=families)
    tables: list = []
    out = []
    for b in (get(choice, f) for f in families):
        if not b.available():
            continue
        if b.name == "nftables" and not tables:
            tables = [_nft_tables()]                # one `nft list tables` for both families
        held, current = _held(b, tables[0] if tables else None)
        if held:
            out.append((b, current))
    return out


def footprints(skip: tuple[tuple[str, str], ...] = (), families: tuple[str, ...] = FAMILIES) -> list:
    """The backend instances holding our rules, nftables first (its table is a footprint
    iptables-nft cannot leave behind), IPv4 before IPv6; the (name, family) pairs in `skip`
    are not looked at."""
    return [b for b, _ in _footprints(skip, families)]


def _footprints(skip: tuple[tuple[str, str], ...] = (), families: tuple[str, ...] = FAMILIES) -> list[tuple]:
    """footprints, each with its read() as _held gave it."""
    out, tables = [], None
    for name in ("nftables", "iptables"):
        for family in families:
            b = get(name, family)
            if (b.name, family) in skip or not b.available():
                continue
            if b.name == "nftables" and tables is None:
                tables = _nft_tables()              # one `nft list tables` for both families
            held, current = _held(b, tables)
            if held:
                out.append((b, current))
    return out


def rules_left(choice: str, emptied: list) -> bool:
    """After a teardown of every backend holding_rules(choice) gave (`emptied`), under the lock:
    does some backend still hold our rules? With auto, holding_rules looked at every backend
    already; with an explicit choice, the others are looked at now."""
    if choice == "auto":
        return False
    return bool(footprints(skip=tuple((b.name, b.family) for b in emptied)))


def _held(backend, tables: list | None = None) -> tuple[bool, dict | None]:
    """(does `backend` hold our rules, its read() when that was how we found out): nftables by
    its table in `tables` (`nft list tables`), iptables by one read of its nat table, unless the
    kernel's chain list says none of ours is there (no iptables-save for a family without rules)."""
    if backend.name == "nftables":
        return (backend.table_family, backend_nft.TABLE) in (_nft_tables() if tables is None else tables), None
    if backend.none_of_ours():
        return False, None
    if backend.chain_names is not None:
        return True, None                    # the kernel's list names ours: read them when needed
    current = backend.read()
    return any(c in current for c in R.CHAINS), current


def converge(backend, current: dict | None = None, **plan_args) -> R.Plan:
    """Read the backend (unless `current` is what it holds), plan the change, apply it in one
    transaction; return the plan."""
    if current is None:
        current = backend.read()
    plan = R.plan(current, backend.render, **plan_args)
    if not plan.empty():
        backend.apply(plan, current)
    return plan


def _explicit(choice: str):
    backend = get(choice)
    if not backend.available():
        raise CNIError(NO_BACKEND, f"backend {choice} requested but its tools are not installed",
                       "install iptables (iptables-save/iptables-restore) or nftables (nft), or use backend: auto")
    return backend


def _guess():
    ipt, nf = get("iptables"), get("nftables")
    if ipt.available() and _iptables_in_use():
        return ipt
    if nf.available() and any(_native(fam, name) for fam, name in _nft_tables()):
        return nf
    if ipt.available():
        return ipt
    if nf.available():
        return nf
    raise CNIError(NO_BACKEND, "neither iptables nor nft is installed", "install iptables or nftables")


def _iptables_in_use() -> bool:
    """Any rule, or any chain that is not built in, in any iptables table."""
    try:
        text = iptables.save_all()
    except iptables.IptablesError as e:
        log.warning("%s", e)
        return False
    return any(line.startswith("-A ") or (line.startswith(":") and " - " in line)
               for line in text.splitlines())


def _native(family: str, name: str) -> bool:
    return not (family in ("ip", "ip6") and name in (backend_nft.TABLE, *iptables.TABLES))


def _nft_tables() -> list[tuple[str, str]]:
    try:
        return nft.tables()             # a netlink dump; `nft list tables` when the kernel will not answer so
    except nft.NftError as e:
        log.warning("%s", e)
        return []
