"""pycni-doctor's diagnoses inside a plugin's CHECK: each plugin's CHECK runs the diagnoses that
concern its pod (vxlan: policy-route-steals-replies, overlay-drift, rp-filter-forwarding) in the
namespace the plugin runs in (the host's), in-process, and fails with the first finding's text.

Imported by a plugin's cmd_check only (pyroute2 with it): ADD, DEL, GC, STATUS and VERSION never
load the doctor. Findings of severity "error" fail CHECK; warnings go to the log. A diagnosis that
cannot finish (a tool missing, netlink refusing) is logged and does not fail CHECK: the doctor's
limits are not the pod's problem.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from plugins.pkg.log import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable

    from .finding import Finding

log = get_logger("pycni.doctor")


def diagnose(conf: dict, checks: list, keep: Callable[[Finding], bool] | None = None
             ) -> list[tuple[str, Finding]]:
    """(kind, finding) of `checks` run here with `conf` as the only config; kind is what a check's
    diagnose() says (overlay-drift: device, peer, lease, agent, registry), else the check's name."""
    from .finding import Namespace
    from .runner import Context
    ctx = Context(Namespace("/proc/self/ns/net", own=True), confs=[conf])
    out: list[tuple[str, Finding]] = []
    try:
        for c in checks:
            ctx.errors = []
            try:
                pairs = c.diagnose(ctx) if hasattr(c, "diagnose") else [(c.NAME, f) for f in c.check(ctx)]
            except Exception as e:  # noqa: BLE001 - the doctor's failure is logged, CHECK goes on
                log.warning("CHECK: diagnosis %s could not finish: %s: %s", c.NAME, type(e).__name__, e)
                continue
            for text in ctx.errors:
                log.warning("CHECK: diagnosis %s could not finish: %s", c.NAME, text)
            for kind, f in pairs:
                if keep is not None and not keep(f):
                    continue
                if f.severity != "error":
                    log.warning("CHECK: %s: %s (%s)", f.check, f.what, f.why)
                    continue
                out.append((kind, f))
    finally:
        ctx.close()
    return out


def names(*devices: str) -> Callable[[Finding], bool]:
    """keep= for findings that name one of `devices` (as a whole word: cni0 is not cni01)."""
    pattern = re.compile("|".join(rf"(?<![\w.-]){re.escape(d)}(?![\w.-])" for d in devices if d))
    return lambda f: bool(pattern.search(f.what))


def message(f: Finding) -> tuple[str, str]:
    """(msg, details) of a CNI error carrying the finding: what, then why and the fixes."""
    fixes = "; or ".join(fix.how + (f": `{fix.command}`" if fix.command else "") for fix in f.fixes)
    return f"CHECK: {f.what} (pycni-doctor {f.check})", f"{f.why}; fix: {fixes}" if fixes else f.why
