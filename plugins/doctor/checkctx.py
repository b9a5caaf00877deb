"""The doctor's diagnoses inside a plugin's CHECK, kept light (vxlan's, dp-steering's and edgemesh's
CHECKs stay off typing, logging and pyroute2: tests/unit/test_vxlan_edgemesh_imports.py,
tests/integration/test_check_runs_doctor.py and test_dp_steering_netlink.py guard it).

PluginContext is what a diagnosis is given: the namespace, its tools' answers (each argv run once,
without a fork where the answer is known to be empty), the kernel's netlink answers through
plugins.pkg.rtnl (netlink.RtnlKernel), the plugin's config as confs, error notes. runner.Context,
the doctor's own, is a PluginContext whose kernel is read through pyroute2.
run_in()/diagnoses_in() run diagnoses in one netns by path, in-process; first_error(), text() and
cni_error() turn a finding into a CHECK error; naming() filters findings by device; listening_proc()
answers edgemesh_hijack's "who listens here" from /proc instead of sock_diag.
Imported inside cmd_check only."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

from .finding import Finding, Namespace

TYPE_CHECKING = False          # typing stays off the plugins' CHECK path
if TYPE_CHECKING:
    from collections.abc import Callable

    from .netlink import Kernel

TOOL_TIMEOUT = 20.0
RUN_DIR = "/run/netns"
LEGACY_TABLE_NAMES = {"iptables-legacy-save": "ip_tables_names", "ip6tables-legacy-save": "ip6_tables_names"}
NFT_FAMILY = {"iptables-nft-save": "ip", "ip6tables-nft-save": "ip6"}     # where iptables-nft keeps its tables
NFT_RULESET = ("nft", "-j", "list", "ruleset")


class PluginContext:
    """What a diagnosis gets (ns, kernel_release, confs, errors, run, kernel, error), for the
    namespace the calling thread is in."""

    def __init__(self, ns: Namespace, kernel_release: str | None = None, confs: list | None = None):
        self.ns, self.kernel_release = ns, kernel_release
        self.confs: list = confs or []          # our plugins' configs: each with name, cniVersion
        self.errors: list[str] = []
        self._kernel: Kernel | None = None
        self._ran: dict = {}
        self.tool_s: dict[str, float] = {}      # seconds spent in each tool (argv[0]), for --profile

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        """The tool's answer; the same argv is run once per namespace (the diagnoses share
        iptables-save and nft listings: read-only, one look)."""
        key = tuple(argv)
        if key in self._ran:
            return self._ran[key]
        known = self._known(argv)
        if known is not None:
            self._ran[key] = known
            return known
        start = time.monotonic()
        try:
            self._ran[key] = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._ran[key] = subprocess.CompletedProcess(argv, 124, "", f"timed out after {TOOL_TIMEOUT:.0f} s")
        except OSError as e:            # a tool gone between shutil.which() and here
            self._ran[key] = subprocess.CompletedProcess(argv, 127, "", str(e))
        tool = os.path.basename(argv[0])
        self.tool_s[tool] = self.tool_s.get(tool, 0.0) + time.monotonic() - start
        return self._ran[key]

    def _known(self, argv: list[str]) -> subprocess.CompletedProcess | None:
        """The answer of a tool run we need not fork for (each fork costs a namespace ~5-8 ms):
        a legacy iptables-save where the namespace has no legacy table (it prints the tables
        /proc/net/ip{,6}_tables_names lists: nothing), an iptables-nft-save where the nft ruleset
        holds no table of its family (ip, ip6: nothing either), and `nft -j list table F T` once
        the whole ruleset was listed (that table's objects from it, or nft's own "No such file")."""
        tool = os.path.basename(argv[0])
        if _no_legacy_table(argv):
            return subprocess.CompletedProcess(argv, 0, "", "")
        if len(argv) == 1 and tool in NFT_FAMILY:
            import shutil               # not at the top: bz2 and lzma come with it (~5 ms of a CHECK)
            items = self._nft_items(self.run(list(NFT_RULESET)) if shutil.which("nft") else None)
            if items is not None and not any(isinstance(i, dict) and isinstance(i.get("table"), dict)
                                             and i["table"].get("family") == NFT_FAMILY[tool] for i in items):
                return subprocess.CompletedProcess(argv, 0, "", "")   # no table of its family: it prints nothing
            return None
        if tool == "nft" and argv[1:4] == ["-j", "list", "table"] and len(argv) == 6:
            items = self._nft_items(self._ran.get(NFT_RULESET))
            if items is None:
                return None
            family, table = argv[4], argv[5]
            kept, found = [], False
            for item in items:
                kind, obj = next(iter(item.items())) if isinstance(item, dict) and item else ("", {})
                if kind == "metainfo":
                    kept.append(item)
                elif kind == "table" and obj.get("family") == family and obj.get("name") == table:
                    kept.append(item)
                    found = True
                elif isinstance(obj, dict) and obj.get("family") == family and obj.get("table") == table:
                    kept.append(item)
            if not found:
                return subprocess.CompletedProcess(argv, 1, "", "Error: No such file or directory\n")
            return subprocess.CompletedProcess(argv, 0, json.dumps({"nftables": kept}), "")
        return None

    @staticmethod
    def _nft_items(listed: subprocess.CompletedProcess | None) -> list | None:
        """The objects of a successful `nft -j list ruleset` (None: not listed, failed, unreadable)."""
        if listed is None or listed.returncode != 0:
            return None
        try:
            items = json.loads(listed.stdout or "{}").get("nftables", [])
        except (ValueError, AttributeError):
            return None
        return items if isinstance(items, list) else None

    def kernel(self) -> Kernel:
        """This namespace's links, addresses, routes, rules, neighbours and route lookups
        (netlink.py), through plugins.pkg.rtnl: no pyroute2 on a plugin's exec path."""
        if self._kernel is None:
            from .netlink import RtnlKernel
            self._kernel = RtnlKernel()
        return self._kernel

    def error(self, text: str) -> None:
        self.errors.append(text)

    def close(self) -> None:
        if self._kernel is not None:
            self._kernel.close()
            self._kernel = None


def _no_legacy_table(argv: list[str]) -> bool:
    """A legacy iptables-save where this netns has no legacy table prints nothing: no fork for it
    (/proc/net/ip{,6}_tables_names lists the tables, gone when x_tables is not loaded)."""
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


def diagnoses_in(path: str | None, checks: list, kernel_release: str | None = None, confs: list | None = None,
                 **kw) -> tuple[list[tuple[str, Finding]], list[str]]:
    """((kind, finding), errors) of `checks` in the netns at `path` (None: this one, taken as the
    host's), with `confs` as the plugin configs they read. kind is what a check's diagnose(ctx) says
    (overlay-drift: device, peer, lease, agent, registry), else the check's NAME (check(ctx, **kw)).
    A diagnosis that cannot finish (a tool missing, netlink refusing) is an error text for the
    caller to log, not a finding: the doctor's limits are not the pod's problem."""
    found: list[tuple[str, Finding]] = []
    ctx = PluginContext(namespace(path), kernel_release, confs)

    def run_all() -> None:
        nonlocal found
        for c in checks:
            before = len(ctx.errors)
            try:
                diagnose = getattr(c, "diagnose", None)
                found += diagnose(ctx) if diagnose is not None else [(c.NAME, f) for f in c.check(ctx, **kw)]
            except Exception as e:  # noqa: BLE001 - the doctor's failure is the caller's to log
                ctx.error(f"{type(e).__name__}: {e}")
            if len(checks) > 1:         # which one could not finish
                ctx.errors[before:] = [f"{c.NAME}: {t}" for t in ctx.errors[before:]]
    try:
        if path is None:
            run_all()
        else:
            from plugins.pkg import ns
            with ns.enter(path):
                run_all()
    finally:
        ctx.close()
    return found, ctx.errors


def run_in(path: str | None, checks: list, kernel_release: str | None = None, **kw
           ) -> tuple[list[Finding], list[str]]:
    """The findings of `checks` (each check(ctx, **kw)) in the netns at `path` (None: this one),
    and the errors of those that could not finish."""
    found, failed = diagnoses_in(path, checks, kernel_release, **kw)
    return [f for _, f in found], failed


def first_error(findings: list[Finding]) -> Finding | None:
    """The finding that fails a CHECK: the first of severity error (warnings do not)."""
    return next((f for f in findings if f.severity == "error"), None)


def text(f: Finding, where: bool = True) -> str:
    """A finding as a CHECK error's message: where (unless the caller says it), what, then each fix
    with its command."""
    fixes = "; ".join(fx.how + (f": `{fx.command}`" if fx.command else "") for fx in f.fixes)
    return (f"{f.where}: " if where else "") + f"{f.what} (pycni-doctor {f.check}); fix: {fixes}"


def cni_error(f: Finding) -> tuple[str, str]:
    """(msg, details) of a CNI error carrying the finding: what; why and the fixes with their commands."""
    fixes = "; or ".join(fix.how + (f": `{fix.command}`" if fix.command else "") for fix in f.fixes)
    return f"CHECK: {f.what} (pycni-doctor {f.check})", f.why + (f"; fix: {fixes}" if fixes else "")


def naming(*devices: str) -> Callable[[Finding], bool]:
    """A filter for findings whose `what` names one of `devices` as a whole word (cni0, not cni01)."""
    pattern = re.compile("|".join(rf"(?<![\w.-]){re.escape(d)}(?![\w.-])" for d in devices if d) or r"(?!)")
    return lambda f: bool(pattern.search(f.what))


def listening_proc(proto: str) -> set[tuple[str, int]]:
    """(address, port) of the sockets of both families that accept `proto` traffic in this
    thread's netns (TCP in LISTEN, UDP bound and not connected), from /proc/thread-self/net/{tcp,udp,tcp6,udp6}:
    what edgemesh_hijack.listening asks sock_diag, without pyroute2's import (~130-250 ms). An
    AF_INET6 socket is given as the addresses it accepts (edgemesh_hijack.accepting); /proc does
    not show IPV6_V6ONLY, so for a socket on `::` it is asked of sock_diag by inode (v6only())."""
    from .edgemesh_hijack import accepting
    out: set[tuple[str, int]] = set()
    wild6: list[tuple[int, int]] = []           # (inode, port) of AF_INET6 sockets on ::
    for name, size in ((proto, 4), (f"{proto}6", 16)):
        try:
            with open(f"/proc/thread-self/net/{name}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:                         # no IPv6 in this kernel: no tcp6
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or (proto == "tcp" and cols[3] != "0A"):      # 0A: TCP_LISTEN
                continue
            if proto == "udp" and not cols[2].endswith(":0000"):
                continue                        # a connected UDP socket takes datagrams from its peer only
            hexaddr, _, hexport = cols[1].partition(":")
            port = int(hexport, 16)
            raw = bytes.fromhex(hexaddr)        # the kernel prints each 32-bit word in host order
            packed = b"".join(int.from_bytes(raw[i:i + 4], "big").to_bytes(4, sys.byteorder)
                              for i in range(0, size, 4))
            if size == 4:
                out.add((socket.inet_ntop(socket.AF_INET, packed), port))
            elif not any(packed):
                wild6.append((int(cols[9]), port))
            else:
                out |= accepting(socket.inet_ntop(socket.AF_INET6, packed), port, True)
    if wild6:
        only = v6only(proto)
        default = _sysctl("net/ipv6/bindv6only") == "1"
        for inode, port in wild6:
            out |= accepting("::", port, only.get(inode, default))
    return out


SOCK_DIAG_BY_FAMILY, NETLINK_SOCK_DIAG, INET_DIAG_SKV6ONLY = 20, 4, 11


def v6only(proto: str) -> dict[int, bool]:
    """inode -> IPV6_V6ONLY of this netns' AF_INET6 `proto` sockets, from one sock_diag
    (inet_diag) dump over a raw netlink socket: the kernel puts INET_DIAG_SKV6ONLY on every
    AF_INET6 socket it reports. {} when sock_diag cannot answer (the caller then takes the
    netns' net.ipv6.bindv6only, the default of a socket that did not set it)."""
    import struct
    number = socket.IPPROTO_TCP if proto == "tcp" else socket.IPPROTO_UDP
    states = 1 << 10 if proto == "tcp" else 0xFFFFFFFF
    req = struct.pack("=BBBBI48x", socket.AF_INET6, number, 0, 0, states)
    msg = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, 0x301, 1, 0) + req  # REQUEST|DUMP
    out: dict[int, bool] = {}
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as s:
            s.settimeout(2.0)
            s.sendto(msg, (0, 0))
            while True:
                data, off = s.recv(65536), 0
                while off + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, off)
                    if kind == 3 or kind == 2 or length < 16:       # NLMSG_DONE, NLMSG_ERROR
                        return out
                    body = data[off + 16:off + length]
                    if len(body) >= 72:
                        inode = struct.unpack_from("=I", body, 68)[0]
                        at = 72
                        while at + 4 <= len(body):
                            alen, atype = struct.unpack_from("=HH", body, at)
                            if alen < 4:
                                break
                            if atype == INET_DIAG_SKV6ONLY and alen >= 5:
                                out[inode] = bool(body[at + 4])
                            at += (alen + 3) & ~3
                    off += (length + 3) & ~3
    except OSError:
        return {}


def _sysctl(name: str) -> str:
    try:
        with open(f"/proc/sys/{name}") as f:
            return f.read().strip()
    except OSError:
        return ""
