"""Which backend holds the rules, and the read-plan-apply step every command shares.

`backend: auto` picks what the node already uses, in this order:
  1. where our own rules are: table `ip edgemesh` -> nftables; chain EDGE-MESH in the
     nat table -> iptables (so ADD and DEL always agree with earlier ADDs);
  2. iptables-save shows any rule or user chain (kube-proxy, docker, portmap...) -> iptables;
  3. nft lists a table that iptables-nft does not manage (a native ruleset) -> nftables;
  4. an empty node: iptables when its tools are installed, else nftables.
"""
from __future__ import annotations

import logging

from libcni_py.errors import CNIError
from plugins.pkg import iptables, nft

from . import backend_iptables, backend_nft
from . import rules as R

NO_BACKEND = 142
log = logging.getLogger("pycni.edgemesh")
BACKENDS = {"iptables": backend_iptables.Backend, "nftables": backend_nft.Backend}


def for_add(choice: str):
    """The one backend an ADD writes to."""
    if choice != "auto":
        return _explicit(choice)
    found = footprints()
    if found:
        if len(found) > 1:
            log.warning("edgemesh rules found in both iptables and nftables; using %s", found[0].name)
        return found[0]
    return _guess()


def holding_rules(choice: str, strict: bool = True) -> list:
    """Backends that hold our rules (DEL, GC, CHECK, sync); explicit choice: just that one
    (not strict: none when its tools are missing, for a DEL that must succeed)."""
    if choice != "auto":
        if not strict and not BACKENDS[choice].available():
            return []
        return [_explicit(choice)]
    return footprints()


def footprints() -> list:
    found = []
    if nft.available() and ("ip", backend_nft.TABLE) in _nft_tables():
        found.append(backend_nft.Backend())
    ipt = backend_iptables.Backend()
    if ipt.available() and any(c in ipt.read() for c in R.CHAINS):
        found.append(ipt)
    return found


def converge(backend, **plan_args) -> R.Plan:
    """Read the backend, plan the change, apply it in one transaction; return the plan."""
    current = backend.read()
    plan = R.plan(current, backend.render, **plan_args)
    if not plan.empty():
        backend.apply(plan, current)
    return plan


def _explicit(choice: str):
    backend = BACKENDS[choice]()
    if not backend.available():
        raise CNIError(NO_BACKEND, f"backend {choice} requested but its tools are not installed",
                       "install iptables (iptables-save/iptables-restore) or nftables (nft), or use backend: auto")
    return backend


def _guess():
    ipt, nf = backend_iptables.Backend(), backend_nft.Backend()
    if ipt.available() and _iptables_in_use():
        return ipt
    if nf.available():
        native = set(_nft_tables()) - _safe(nft.iptables_managed_tables)
        if native:
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


def _nft_tables() -> list[tuple[str, str]]:
    return _safe(nft.list_tables) or []


def _safe(fn):
    try:
        return fn()
    except nft.NftError as e:
        log.warning("%s", e)
        return set()
