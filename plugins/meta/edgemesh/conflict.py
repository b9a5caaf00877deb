"""Networks that share the node's edgemesh chains must share their config.

The chains (root jumps, services, proxies) are node-wide; only the pods' rules in the mesh chain
are per network, and their comments ("edgemesh net=<net> id=<cid>") say which networks have pods
there. Each network's ADD leaves a record, `<stateDir>/networks/<net>.json`, of the config keys
that shape the shared chains (NetConf.shared()); before an ADD, CHECK or `edgemesh sync` writes the
shared chains, every other network with pods in them is compared with it:

- recorded and equal: fine (the same config on two networks works as on one);
- recorded and different: code 147 naming the other network and the keys that differ;
- not recorded (another stateDir, or a release before the records): code 147 as soon as this
  config would change the shared chains, since whatever they hold is that network's.

A record of a network without pods is ignored, and its last DEL (or GC) removes it.
"""
from __future__ import annotations

import os

from libcni_py import records
from libcni_py.errors import CNIError

from . import rules as R
from .config import NetConf, parse_pod_comment
from .errors import CONFIG_CONFLICT


def networks_in(current: dict[str, list[R.Entry]], drop=lambda comment: False) -> set[str]:
    """Networks with pod rules in the mesh chain (leaving out those `drop` selects)."""
    out = set()
    for e in current.get("mesh", []):
        parsed = parse_pod_comment(e.comment)
        if parsed and not drop(e.comment):
            out.add(parsed[0])
    return out


def check(conf: NetConf, backend, current: dict[str, list[R.Entry]], shared: dict[str, list[R.Item]]) -> None:
    """CNIError(147) when another network with pods in `backend`'s chains applied another config."""
    mine = conf.shared()
    for other in sorted(networks_in(current) - {conf.network}):
        theirs = _recorded(conf, other)
        if theirs is None:
            plan = R.plan(current, backend.render, shared=shared)
            if not plan.empty():
                raise CNIError(
                    CONFIG_CONFLICT,
                    f"network {other!r} has pods in this node's edgemesh chains ({backend.name}) and no "
                    f"record of its config in {conf.records_dir}: the config of {conf.network!r} would "
                    "rewrite them",
                    (R.describe(plan, backend.render)[:1200] + "; give every network on the node the same "
                     "stateDir and the same edgemesh config, or remove that network's pods first"))
            continue
        if theirs != mine:
            diff = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
            text = "; ".join(f"{k}: {other!r} has {theirs.get(k)!r}, {conf.network!r} has {mine.get(k)!r}"
                             for k in diff)
            raise CNIError(
                CONFIG_CONFLICT,
                f"network {other!r} applied a different edgemesh config to this node's shared chains "
                f"({backend.name}); refusing to rewrite them for {conf.network!r}",
                text[:1500] + ". fix: " + CONFIG_CONFLICT.fix)


def _recorded(conf: NetConf, network: str) -> dict | None:
    try:
        rec = records.read_or(conf.record_path(network))
    except (records.RecordError, OSError):
        return None                     # unreadable: as good as unknown
    shared = rec.get("shared") if isinstance(rec, dict) else None
    return shared if isinstance(shared, dict) else None


def record(conf: NetConf, backend) -> None:
    """Remember the shared config this network applied (written only when it changed)."""
    want = {"network": conf.network, "backend": backend.name, "shared": conf.shared()}
    path = conf.record_path(conf.network)
    try:
        if records.read_or(path) == want:
            return
    except records.RecordError:
        pass                            # replaced below
    os.makedirs(conf.records_dir, mode=0o700, exist_ok=True)
    records.write(path, want)


def forget(conf: NetConf) -> None:
    """This network has no pod left on the node: drop its record (and the temp files of writers
    killed mid-write, so a crashed ADD's DEL or GC leaves no file behind)."""
    records.remove(conf.record_path(conf.network))
    records.clean_stale(conf.records_dir)
