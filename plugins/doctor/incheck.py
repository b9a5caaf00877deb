"""pycni-doctor's diagnoses inside vxlan's CHECK (policy-route-steals-replies, overlay-drift,
rp-filter-forwarding): run in-process in the namespace the plugin runs in (the host's), with the
plugin's config as the only --conf; the first finding of severity "error" is CHECK's error.

vxlan's CHECK loads pyroute2 anyway (those diagnoses ask the kernel through it), so this uses the
runner's Context; dp-steering's and edgemesh's CHECKs stay lighter with checkctx.py. Imported by
cmd_check only: ADD, DEL, GC, STATUS and VERSION never load the doctor. A diagnosis that cannot
finish (a tool missing, netlink refusing) comes back as `failed` text to be logged: the doctor's
limits are not the pod's problem.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from .finding import Finding


def run_here(checks: list, confs: list | None = None) -> tuple[list[tuple[str, Finding]], list[str]]:
    """((kind, finding), failed texts) of `checks` in the current namespace, taken as the host's;
    kind is what a check's diagnose() says (overlay-drift: device, peer, lease, agent, registry),
    else the check's NAME."""
    from .finding import Namespace
    from .runner import Context
    ctx = Context(Namespace("/proc/self/ns/net", own=True), confs=confs)
    found: list[tuple[str, Finding]] = []
    failed: list[str] = []
    try:
        for c in checks:
            ctx.errors = []
            try:
                diag = getattr(c, "diagnose", None)
                found += diag(ctx) if diag is not None else [(c.NAME, f) for f in c.check(ctx)]
            except Exception as e:  # noqa: BLE001 - the doctor's failure is the caller's to log
                ctx.errors.append(f"{type(e).__name__}: {e}")
            failed += [f"{c.NAME}: {t}" for t in ctx.errors]
    finally:
        ctx.close()
    return found, failed


def naming(*devices: str) -> Callable[[Finding], bool]:
    """A filter for findings whose `what` names one of `devices` as a whole word (cni0, not cni01)."""
    pattern = re.compile("|".join(rf"(?<![\w.-]){re.escape(d)}(?![\w.-])" for d in devices if d) or r"(?!)")
    return lambda f: bool(pattern.search(f.what))


def text(f: Finding) -> tuple[str, str]:
    """(msg, details) of a CNI error carrying the finding: what; why and the fixes with their commands."""
    fixes = "; or ".join(fix.how + (f": `{fix.command}`" if fix.command else "") for fix in f.fixes)
    return f"CHECK: {f.what} (pycni-doctor {f.check})", f.why + (f"; fix: {fixes}" if fixes else "")
