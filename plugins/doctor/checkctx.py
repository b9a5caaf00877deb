"""The doctor's diagnoses inside dp-steering's and edgemesh's CHECK, kept light (those CHECKs stay
off typing, logging and pyroute2: tests/integration/test_dp_steering_netlink.py guards it):
PluginContext is the part of runner.Context a diagnosis uses, without the runner's imports (every
diagnosis, typing); run_in() runs diagnoses in one netns by path, in-process; text() is a finding
as a CHECK error's message; listening_proc() answers edgemesh_hijack's "who listens here" from
/proc instead of sock_diag. (incheck.py is the same for vxlan's CHECK, which loads pyroute2 anyway.)
Imported inside cmd_check only."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

from .finding import Finding, Namespace

TOOL_TIMEOUT = 20.0
RUN_DIR = "/run/netns"
LEGACY_TABLE_NAMES = {"iptables-legacy-save": "ip_tables_names", "ip6tables-legacy-save": "ip6_tables_names"}
NFT_FAMILY = {"iptables-nft-save": "ip", "ip6tables-nft-save": "ip6"}     # where iptables-nft keeps its tables


class PluginContext:
    """What runner.Context gives a diagnosis (ns, kernel_release, confs, errors, run, error, ipr),
    for the namespace the calling thread is in during a plugin's CHECK."""

    def __init__(self, ns: Namespace, kernel_release: str | None = None, confs: list | None = None):
        self.ns, self.kernel_release = ns, kernel_release
        self.confs: list = confs or []
        self.errors: list[str] = []
        self._ipr = None
        self._ran: dict = {}

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        """The tool's answer, once per argv (the diagnoses share iptables-save and nft listings)."""
        key = tuple(argv)
        if key not in self._ran and (_no_legacy_table(argv) or self._no_nft_table(argv)):
            self._ran[key] = subprocess.CompletedProcess(argv, 0, "", "")
        if key not in self._ran:
            try:
                self._ran[key] = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._ran[key] = subprocess.CompletedProcess(argv, 124, "", f"timed out after {TOOL_TIMEOUT:.0f} s")
            except OSError as e:            # a tool gone between shutil.which() and here
                self._ran[key] = subprocess.CompletedProcess(argv, 127, "", str(e))
        return self._ran[key]

    def _no_nft_table(self, argv: list[str]) -> bool:
        """An iptables-nft-save where the nft ruleset (listed once, the diagnoses read it anyway) has
        no table of its family prints nothing: a pod's netns mostly has none, one fork instead of three."""
        family = NFT_FAMILY.get(os.path.basename(argv[0])) if len(argv) == 1 else None
        if family is None or shutil.which("nft") is None:
            return False
        p = self.run(["nft", "-j", "list", "ruleset"])
        try:
            items = json.loads(p.stdout or "{}").get("nftables", []) if p.returncode == 0 else None
        except ValueError:
            items = None
        if not isinstance(items, list):
            return False
        return not any(isinstance(i, dict) and isinstance(i.get("table"), dict) and i["table"].get("family") == family
                       for i in items)

    def ipr(self):
        """pyroute2, only when a diagnosis words a finding with it (never on a healthy CHECK)."""
        if self._ipr is None:
            from pyroute2 import IPRoute
            self._ipr = IPRoute()
        return self._ipr

    def error(self, text: str) -> None:
        self.errors.append(text)

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()


def _no_legacy_table(argv: list[str]) -> bool:
    """A legacy iptables-save where this netns has no legacy table prints nothing: no fork for it
    (as runner.Context; /proc/net/ip{,6}_tables_names lists the tables, gone when x_tables is not loaded)."""
    name = LEGACY_TABLE_NAMES.get(os.path.basename(argv[0])) if len(argv) == 1 else None
    if name is None:
        return False
    try:
        with open(f"/proc/thread-self/net/{name}") as f:
            return not f.read().strip()
    except FileNotFoundError:
        return True
    except OSError:
        return False


def namespace(path: str | None) -> Namespace:
    """How a finding names the netns at `path` (None: the caller's own; /run/netns/X: X)."""
    if path is None:
        return Namespace("/proc/self/ns/net", own=True)
    real = os.path.realpath(path)
    if os.path.dirname(real) == RUN_DIR:
        return Namespace(path, name=os.path.basename(real))
    return Namespace(path)


def run_in(path: str | None, checks: list, kernel_release: str | None = None, **kw
           ) -> tuple[list[Finding], list[str]]:
    """The findings of `checks` (each check(ctx, **kw)) in the netns at `path` (None: this one),
    and the errors of those that could not finish."""
    findings: list[Finding] = []
    ctx = PluginContext(namespace(path), kernel_release)
    try:
        if path is None:
            for c in checks:
                findings += c.check(ctx, **kw)
        else:
            from plugins.pkg import ns
            with ns.enter(path):
                for c in checks:
                    findings += c.check(ctx, **kw)
    finally:
        ctx.close()
    return findings, ctx.errors


def first_error(findings: list[Finding]) -> Finding | None:
    """The finding that fails a CHECK: the first of severity error (warnings do not)."""
    return next((f for f in findings if f.severity == "error"), None)


def text(f: Finding, where: bool = True) -> str:
    """A finding as a CHECK error's message: where (unless the caller says it), what, then each fix
    with its command."""
    fixes = "; ".join(fx.how + (f": `{fx.command}`" if fx.command else "") for fx in f.fixes)
    return (f"{f.where}: " if where else "") + f"{f.what} (pycni-doctor {f.check}); fix: {fixes}"


def listening_proc(proto: str) -> set[tuple[str, int]]:
    """(address, port) of the IPv4 sockets that accept `proto` traffic in this thread's netns
    (TCP in LISTEN, UDP bound), from /proc/thread-self/net/{tcp,udp}: what
    edgemesh_hijack.listening asks sock_diag, without pyroute2's import (~130-250 ms)."""
    out: set[tuple[str, int]] = set()
    try:
        with open(f"/proc/thread-self/net/{proto}") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        cols = line.split()
        if len(cols) < 4 or (proto == "tcp" and cols[3] != "0A"):      # 0A: TCP_LISTEN
            continue
        addr, _, port = cols[1].partition(":")
        out.add((socket.inet_ntoa(int(addr, 16).to_bytes(4, sys.byteorder)), int(port, 16)))
    return out
