"""`edgemesh sync --config FILE [--netns PATH]`: re-read the ignored services, fix the rules.

Every family of the config (serviceCIDR) that holds rules is converged, each with its own
ignored services; an IPv6 line names its table (ip6tables, nftables ip6 edgemesh).

Run by whatever rewrites ignoredServicesFile. It converges the node-wide rules to the
config (in practice: adds and removes RETURN rules), never touches a pod's rules, and
does nothing when no pod is attached. FILE is the network's .conflist or the plugin's
own config. Exit status 0 on success, 1 with the error on stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

from libcni_py.errors import CNIError, INVALID_CONFIG
from plugins.pkg.lock import locked

from . import backends, config, conflict
from . import rules as R
from .errors import translate


def load(path: str) -> dict:
    """The edgemesh entry of a conflist (with the list's name and version), or a plain config."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CNIError(INVALID_CONFIG, f"cannot read {path}", str(e)) from None
    if not isinstance(data, dict):
        raise CNIError(INVALID_CONFIG, f"{path}: not a JSON object")
    if "plugins" in data:
        found = [p for p in data["plugins"] if isinstance(p, dict) and p.get("type") == "edgemesh"]
        if not found:
            raise CNIError(INVALID_CONFIG, f"{path}: no plugin of type edgemesh in the list")
        data = dict(found[0], name=data.get("name"), cniVersion=data.get("cniVersion"))
    from plugins.pkg.schema import validate
    validate(data, "edgemesh")
    return data


def sync(conf: config.NetConf) -> list[str]:
    """Converge every backend holding our rules; one summary line per backend. Refused (147)
    when another network with pods there applied another config (see conflict.py)."""
    ignored = conf.all_ignored()
    out = []
    with locked(conf.lock_path):
        for b in backends.holding_rules(conf.backend, conf.families):
            shared = R.shared_items(conf, ignored, b.family)
            current = b.read()
            conflict.check(conf, b, current, shared)
            plan = backends.converge(b, current, shared=shared)
            if conf.network in conflict.networks_in(current):
                conflict.record(conf, b)
            added, removed = len(plan.prepend) + len(plan.append), len(plan.delete)
            out.append(f"{b.name if b.family == '4' else b.label}: {added} added, {removed} removed"
                       + (f" ({R.describe(plan, b.render)})" if not plan.empty() else ""))
    return out or ["no pod attached: nothing to sync"]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="edgemesh sync", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="the .conflist (or plugin config) file")
    ap.add_argument("--netns", help="run in this network namespace (a path), default: here")
    opts = ap.parse_args(argv)
    try:
        conf = config.load(load(opts.config), "ADD")
        with _netns(opts.netns):
            lines = sync(conf)
    except Exception as e:  # noqa: BLE001 - an error line and status 1, never a traceback
        err = e if isinstance(e, CNIError) else translate(e)
        if err is None:
            raise                            # our bug
        print(f"edgemesh sync: error {err.code}: {err}" + (f": {err.details}" if err.details else ""),
              file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _netns(path: str | None):
    if not path:
        return contextlib.nullcontext()
    from plugins.pkg.ns import enter
    return enter(path)
