"""The floor of a thin-client exec: how fast can an exec'd plugin that only hands its request to
pycni-node start, as the venv's pip console script and build.sh's launcher (`.venv/bin/python
-IS`), as the PyInstaller bundle's bootloader and its launcher (pycni/bin/python3 with a ._pth),
and where does each millisecond go. All cases in one run, interleaved, medians with spread (p10-p90).

    sudo .venv/bin/python bench/startup_floor.py [--runs 20] [--variants all|quick]

The daemon is a stand-in served from a thread of this script (tests' protocol, plugins/node/
protocol.py): it answers the hello with OK and the request with status 0 at once, so a client
exec's time is the client's own (exec, loader, interpreter, imports, connect, three frames,
exit). The bundle is $PYCNI_DIST (default dist/cni; `./build.sh bin` into a temp dir when it is
missing). Variants of it are built into a temp dir from a minimal entry script (only
plugins.node.client imported, as entrypoints.run would): PyInstaller's archive or not, bytecode
optimize=2, strip, and one with `-X importtime` for the frozen importer's profile. strace -f -ttt
marks the phases of one exec (its overhead inflates syscall-heavy phases: the shares are what to
read). Root (the client only trusts a root-owned socket). Writes bench/startup_floor.md.
"""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench import benchout  # noqa: E402
from plugins.node import protocol as P  # noqa: E402

WARMUP = 2
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")
VENV_LAUNCHER = os.path.join(ROOT, ".venv", "bin", "pycni-passthrough")     # build.sh's launcher
# What pip writes as the console script (build.sh replaces it with the launcher): written into the
# temp dir for the rows that compare both.
PIP_SCRIPT = f"""#!{VENV_PY}
# -*- coding: utf-8 -*-
import re
import sys
from plugins.entrypoints import passthrough
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(passthrough())
"""
GO_BRIDGE = "/usr/lib/cni/bridge"
ADD_IN = json.dumps({
    "cniVersion": "1.0.0", "name": "bench", "type": "pycni-passthrough",
    "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/proc/self/ns/net"}],
                   "ips": [{"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 0}],
                   "routes": [{"dst": "0.0.0.0/0"}]}}).encode()

THIN_ENTRY = '''\
import os
import sys

from plugins.node.client import delegate

delegate(os.path.basename(sys.argv[0]))
sys.exit(3)         # the stand-in daemon refused: a real thin entry would run the plugin here
'''

SPEC = '''\
import os
a = Analysis([{entry!r}], pathex=[{root!r}], excludes=["tkinter", "tests", "pytest", "PyInstaller"],
             noarchive={noarchive}, optimize={optimize})
a.scripts = [s for s in a.scripts if s[0] not in {{"pyi_rth_inspect", "pyi_rth_multiprocessing", "pyi_rth_pkgutil"}}]
pyz = PYZ(a.pure, optimize={optimize})
exe = EXE(pyz, a.scripts, {options}, exclude_binaries=True, name="thin", console=True, strip={strip}, upx=False)
coll = COLLECT(exe, a.binaries, a.datas, name="thin", strip={strip}, upx=False)
'''

# variant: (what, noarchive, optimize, strip, options)
VARIANTS: dict[str, tuple[str, bool, int, bool, list]] = {
    "thin": ("minimal entry, .pyc on disk (noarchive, as build.sh)", True, 0, False, []),
    "thin-pyz": ("minimal entry, modules in the PYZ archive", False, 0, False, []),
    "thin-O2": ("minimal entry, noarchive, optimize=2", True, 2, False, []),
    "thin-strip": ("minimal entry, noarchive, strip", True, 0, True, []),
    "empty": ("an empty entry script: bootloader + interpreter init + bootstrap only", True, 0, False, []),
}
PROFILE_VARIANT = ("thin-importtime", True, 0, False, [("X importtime", None, "OPTION")])
QUICK_VARIANTS = ("thin", "empty")

NOTES = """
## Where a thin-client exec's milliseconds go

Read the phase table as shares (strace stops the process at every syscall; the syscall-heavy
phases are inflated most), the case table for absolute time.

- **exec + the bootloader**: execve of `bin/<plugin>` (a symlink to the onedir `pycni/pycni`),
  ld.so for the bootloader, then the bootloader opens its own executable, reads the cookie and
  TOC of the archive appended to it, sets LD_LIBRARY_PATH and the `_PYI_*` markers, and dlopens
  `_internal/libpython3.11.so.1.0` (onedir: nothing is extracted, no second process).
- **libpython**: mapping and relocating libpython (23 MB unstripped; the thin-strip variant shows
  what stripping buys) and `Py_InitializeFromConfig` up to the first stdlib lookup. The frozen
  interpreter imports no `site` (no .pth scan: PYTHONNOUSERSITE and `-s` change nothing for it),
  and with noarchive there is no base_library.zip (its stat is an ENOENT): the stdlib is .pyc on disk.
- **interpreter init + PyInstaller's bootstrap**: encodings, io, abc... then pyimod01_archive,
  pyimod02_importers (the frozen importer: PyiFrozenImporter on sys.meta_path, which reads the
  PYZ's TOC), pyimod03_ctypes (imports ctypes, for the bundle's library paths), pyiboot01_bootstrap
  and the runtime hooks pycni.spec keeps. Most stat calls happen here and in the next phase:
  the path finder looking modules up in `_internal/`.
- **our imports**: plugins.entrypoints (bundle) and plugins.node.client + protocol (os, sys,
  _socket only); the frozen `-X importtime` table lists them.
- **the round trip**: connect, SO_PEERCRED, the hello with 4 fds by SCM_RIGHTS, the request and
  stdin frames, the reply; the stand-in daemon answers at once (pycni-node forks a worker per
  request: that is in bench/node_daemon.md's "in the worker" column, not here).
- **exit**: the client leaves by os._exit (no interpreter finalization); the `empty` variant
  exits normally and pays finalization, so it is no lower bound on the thin client.

The launchers (build.sh; README "Start-up"): what every per-pod plugin name runs since the
bootloader rows above were the floor. A launcher is a Python script whose shebang is an absolute
interpreter with -I -S: no site (no .pth scan, no pip wrapper's `re`), no bootloader, no
PyInstaller bootstrap; it puts our code on sys.path itself and imports the thin client first.
The venv's runs on the venv python (a shared libpython here: pyenv); the bundle's on
pycni/bin/python3, a copy of a python with libpython linked in (Debian's), whose ._pth makes it
isolated with the bundle's dirs as its whole sys.path. Both end at the interpreter's own start
plus the client's imports and the round trip: the `python -c pass` rows are their floor.

Build options tried (each a PyInstaller onedir of the minimal entry script, timed in the same
rounds): the PYZ archive vs .pyc files on disk (noarchive, what build.sh does), bytecode
optimize=2, strip. UPX is not installed here and would make every exec decompress the libraries:
never for a per-exec binary. What matters is what runs before the entry script: runtime hooks.
pyi_rth_pkgres and pyi_rth_setuptools (etcd3gw's pbr pulls setuptools and pkg_resources into the
analysis) imported pkg_resources at every start, 0.3-0.5 s; pycni.spec drops them (with inspect,
multiprocessing and pkgutil), and tests/integration/test_packaging_bundle.py fails if our code
starts to need them.
"""


class StandIn(threading.Thread):
    """A daemon that accepts everything and answers status 0, {} at once."""

    def __init__(self, path: str):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(64)
        self.served = 0

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                head, anc, _, _ = conn.recvmsg(4, socket.CMSG_SPACE(4 * P.N_FDS))
                for passed in P.unpack_fds(anc):
                    os.close(passed)
                P.recv_exact(conn, int.from_bytes(head, "big"))      # the rest of the hello frame
                P.send_all(conn, P.frame(b"OK"))
                P.recv_frame(conn)
                P.recv_frame(conn)
                P.send_all(conn, P.frame((0).to_bytes(4, "big") + b"{}\n"))
                self.served += 1
            except (OSError, P.ProtocolError):
                pass
            finally:
                conn.close()


def build_variant(tmp: str, name: str, noarchive: bool, optimize: int, strip: bool, options: list) -> str:
    """PyInstaller onedir of the minimal entry; returns a `pycni-passthrough` link to its exe."""
    top = os.path.join(tmp, name)
    os.makedirs(top)
    entry = os.path.join(top, "thin_entry.py")
    with open(entry, "w") as f:
        f.write("" if name == "empty" else THIN_ENTRY)
    spec = os.path.join(top, "thin.spec")
    with open(spec, "w") as f:
        f.write(SPEC.format(entry=entry, root=ROOT, noarchive=noarchive, optimize=optimize, strip=strip,
                            options=options))
    subprocess.run([VENV_PY, "-m", "PyInstaller", "--noconfirm", "--log-level", "ERROR", "--distpath",
                    os.path.join(top, "dist"), "--workpath", os.path.join(top, "work"), spec],
                   check=True, capture_output=True, timeout=600, cwd=top)
    link = os.path.join(top, "bin", "pycni-passthrough")
    os.makedirs(os.path.dirname(link))
    os.symlink(os.path.join(top, "dist", "thin", "thin"), link)
    return link


def timed(argv: list[str], env: dict, rc: int) -> float:
    return timed_cpu(argv, env, rc)[0]


def timed_cpu(argv: list[str], env: dict, rc: int) -> tuple[float, float]:
    """Wall ms of one exec, and its CPU ms (user + system, from the children's rusage: what the
    load on the machine moves least)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=env, input=ADD_IN, capture_output=True, timeout=60)
    ms = (time.perf_counter() - t0) * 1000
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != rc:
        raise SystemExit(f"{argv}: exit {p.returncode}, wanted {rc}\n{p.stdout!r}\n{p.stderr!r}")
    return ms, (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) * 1000


# strace markers: (phase that ends here, regex on a line of strace -f -ttt)
MARKS = [
    ("exec, the bootloader (reads its archive, sets up the environment)", r'openat\(.*libpython3[^"]*\.so'),
    ("libpython loaded and relocated, Py_Initialize up to the stdlib", r'(base_library\.zip|/encodings/__init__|'
     r'encodings\.cpython)'),
    ("interpreter init, bootstrap modules (the frozen importer), site/runtime hooks",
     r'(plugins/node/__init__|plugins/node|plugins/__init__)'),
    ("our imports: plugins.node.client, protocol", r'connect\(\d+, \{sa_family=AF_UNIX'),
    ("connect, hello + fds, request, stdin, reply (the stand-in daemon answers at once)", r'write\(1, "\{\}'),
    ("os._exit (the client skips finalization)", r'exit_group\('),
]


def phases(argv: list[str], env: dict, runs: int, tmp: str) -> tuple[list[tuple[str, float]], dict[str, float]]:
    """Median duration (ms, under strace) of each MARKS phase, and median syscall counts."""
    per: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, list[float]] = defaultdict(list)
    out = os.path.join(tmp, "trace")
    for _ in range(runs):
        subprocess.run(["strace", "-f", "-qq", "-ttt", "-o", out, *argv], env=env, input=ADD_IN,
                       capture_output=True, timeout=60)
        with open(out) as f:
            lines = f.read().splitlines()
        stamps = [float(ln.split()[1]) for ln in lines if len(ln.split()) > 1 and re.match(r"\d+\.\d+$",
                                                                                          ln.split()[1])]
        if not stamps:
            continue
        last, start = stamps[0], stamps[0]
        for label, pat in MARKS:
            hit = next((ln for ln in lines if re.search(pat, ln)), None)
            if hit is None:
                continue
            at = float(hit.split()[1])
            if at < last:
                continue
            per[label].append((at - last) * 1000)
            last = at
        per["total under strace"].append((last - start) * 1000)
        calls = [ln.split(None, 2)[2] for ln in lines if len(ln.split(None, 2)) == 3]
        counts["syscalls"].append(len(calls))
        counts["openat"].append(sum(c.startswith("openat(") for c in calls))
        counts["openat ENOENT"].append(sum(c.startswith("openat(") and "ENOENT" in c for c in calls))
        counts["stat family"].append(sum(bool(re.match(r"(newfstatat|statx|stat|lstat|fstat)\(", c)) for c in calls))
        counts["mmap"].append(sum(c.startswith("mmap(") for c in calls))
        counts["read"].append(sum(c.startswith("read(") for c in calls))
    rows = [(label, statistics.median(per[label])) for label, _ in MARKS if per[label]]
    rows.append(("total under strace", statistics.median(per["total under strace"])))
    return rows, {k: statistics.median(v) for k, v in counts.items()}


_IMPORT = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_profile(argv: list[str], env: dict, runs: int) -> tuple[list[tuple[str, float, float]], float]:
    """Median (self, cumulative) µs → ms of each top-level import, and the sum of all self times."""
    per: dict[str, list[tuple[float, float]]] = defaultdict(list)
    totals = []
    for _ in range(runs):
        p = subprocess.run(argv, env=env, input=ADD_IN, capture_output=True, timeout=60)
        total = 0.0
        for line in p.stderr.decode().splitlines():
            m = _IMPORT.match(line)
            if m:
                total += int(m.group(1)) / 1000
                if len(m.group(3)) == 1:
                    per[m.group(4)].append((int(m.group(1)) / 1000, int(m.group(2)) / 1000))
        totals.append(total)
    rows = [(name, statistics.median(s for s, _ in v), statistics.median(c for _, c in v)) for name, v in per.items()]
    rows.sort(key=lambda r: -r[2])
    return rows, (statistics.median(totals) if totals else 0.0)


def spread(v: list[float]) -> str:
    q = statistics.quantiles(v, n=10, method="inclusive") if len(v) >= 2 else [v[0]] * 9
    return f"{q[0]:.1f}-{q[-1]:.1f}"


def main() -> int:
    ap = benchout.options(__doc__, runs=20)
    ap.add_argument("--variants", choices=("all", "quick"), default="all",
                    help="which bundle variants to build (quick: thin only)")
    ap.add_argument("--old-dist", metavar="DIR", help="also time this older build's bin/pycni-passthrough")
    ap.add_argument("--old-label", default="an older build", help="what --old-dist is, for the table")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("startup_floor: run as root (the client talks only to a root-owned socket)")
    load_before = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="startup-floor-")
    os.chmod(tmp, 0o700)
    try:
        dist = os.environ.get("PYCNI_DIST") or os.path.join(ROOT, "dist", "cni")
        if not os.path.exists(os.path.join(dist, "bin", "pycni-passthrough")):
            dist = os.path.join(tmp, "cni")
            subprocess.run([os.path.join(ROOT, "build.sh"), "bin"], check=True, capture_output=True, timeout=900,
                           env=dict(os.environ, PYCNI_DIST=dist, PYCNI_WORK=os.path.join(tmp, "work")))
        # The bootloader by a link (what every name was before the launchers) and the bundle's
        # launcher (dist/bin/pycni-passthrough, when build.sh could give the bundle its python).
        bundle_bin = os.path.join(tmp, "bootloader", "pycni-passthrough")
        os.makedirs(os.path.dirname(bundle_bin))
        os.symlink(os.path.join(dist, "pycni", "pycni"), bundle_bin)
        bundle_launcher = os.path.join(dist, "bin", "pycni-passthrough")
        bundle_py = os.path.join(dist, "pycni", "bin", "python3")
        has_bundle_launcher = not os.path.islink(bundle_launcher) and os.access(bundle_py, os.X_OK)
        venv_script = os.path.join(tmp, "pip", "pycni-passthrough")
        os.makedirs(os.path.dirname(venv_script))
        with open(venv_script, "w") as f:
            f.write(PIP_SCRIPT)
        os.chmod(venv_script, 0o755)
        names = QUICK_VARIANTS if args.variants == "quick" else tuple(VARIANTS)
        built = {}
        build_s = {}
        for name in names:
            t0 = time.monotonic()
            built[name] = build_variant(tmp, name, *VARIANTS[name][1:])
            build_s[name] = time.monotonic() - t0
        profiled = build_variant(tmp, PROFILE_VARIANT[0], *PROFILE_VARIANT[1:])
        sock = os.path.join(tmp, "node.sock")
        standin = StandIn(sock)
        standin.start()
        base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "floor1",
                "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
        client = {**base, P.SOCKET_ENV: sock}
        inproc = {**base, P.SOCKET_ENV: "off"}
        thin_c = (f"import sys; sys.path.insert(0, {ROOT!r}); from plugins.node.client import delegate; "
                  "delegate('pycni-passthrough'); sys.exit(3)")
        # (key, what, argv, env, exit status)
        cases = [
            ("go", "Go bridge VERSION (reference)", [GO_BRIDGE], {"CNI_COMMAND": "VERSION"}, 0),
            ("py-S", "venv python -S -c pass", [VENV_PY, "-S", "-c", "pass"], {}, 0),
            ("py-IS", "venv python -I -S -c pass", [VENV_PY, "-I", "-S", "-c", "pass"], {}, 0),
            ("py-IS-client", "venv python -I -S, only the client imported, through the daemon",
             [VENV_PY, "-I", "-S", "-c", thin_c], client, 0),
            ("venv-client", "venv pip console script, through the daemon", [venv_script], client, 0),
            ("venv-client-nous", "venv pip console script, PYTHONNOUSERSITE=1, through the daemon", [venv_script],
             {**client, "PYTHONNOUSERSITE": "1"}, 0),
            ("venv-inproc", "venv pip console script, in-process ADD (no daemon)", [venv_script], inproc, 0),
            ("venv-launcher-client", "venv launcher (build.sh, python -IS), through the daemon", [VENV_LAUNCHER],
             client, 0),
            ("venv-launcher-inproc", "venv launcher, in-process ADD (no daemon)", [VENV_LAUNCHER], inproc, 0),
            ("bundle-client", "bundle bootloader (a link to pycni/pycni), through the daemon", [bundle_bin], client, 0),
            ("bundle-inproc", "bundle bootloader, in-process ADD (no daemon)", [bundle_bin], inproc, 0),
        ]
        if has_bundle_launcher:
            cases += [
                ("bundle-py", "bundle's pycni/bin/python3 -c pass (._pth: isolated, no site)",
                 [bundle_py, "-c", "pass"], {}, 0),
                ("bundle-launcher-client", "bundle launcher (bin/<name> on pycni/bin/python3), through the daemon",
                 [bundle_launcher], client, 0),
                ("bundle-launcher-inproc", "bundle launcher, in-process ADD (no daemon)", [bundle_launcher],
                 inproc, 0),
            ]
        if args.old_dist:
            cases.append(("old-client", f"bundle: {args.old_label}, through the daemon",
                          [os.path.join(args.old_dist, "bin", "pycni-passthrough")], client, 0))
        cases += [(f"{n}-client", f"bundle variant {n}: {VARIANTS[n][0]}, through the daemon", [built[n]], client, 0)
                  for n in names if n != "empty"]
        cases.append(("empty", f"bundle variant empty: {VARIANTS['empty'][0]}", [built["empty"]], client, 0))
        samples: dict[str, list[float]] = defaultdict(list)
        cpu: dict[str, list[float]] = defaultdict(list)
        for rnd in range(WARMUP + args.runs):
            for key, _, argv, env, rc in cases:
                ms, cpu_ms = timed_cpu(argv, env, rc)
                if rnd >= WARMUP:
                    samples[key].append(ms)
                    cpu[key].append(cpu_ms)
        prof_runs = max(3, min(args.runs, 10))
        traced = {"bundle-client": [bundle_bin], "thin-client": [built["thin"]],
                  "py-IS-client": [VENV_PY, "-I", "-S", "-c", thin_c], "venv-launcher-client": [VENV_LAUNCHER]}
        if has_bundle_launcher:
            traced["bundle-launcher-client"] = [bundle_launcher]
        ph = {k: phases(argv, client, prof_runs, tmp) for k, argv in traced.items()}
        frozen_imports, frozen_total = import_profile([profiled], client, prof_runs)
        venv_imports, venv_total = import_profile([VENV_PY, "-X", "importtime", venv_script], client, prof_runs)
        launcher_imports, launcher_total = import_profile([VENV_PY, "-I", "-S", "-X", "importtime", VENV_LAUNCHER],
                                                          client, prof_runs)
        served = standin.served
        standin.sock.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    go = med["go"]
    fastest = min((k for k in med if k.endswith("-client") and k != "py-IS-client"), key=lambda k: med[k])
    lines = ["| case | median ms | p10-p90 ms | x Go bridge VERSION | CPU ms (user+sys, median) |",
             "|---|---:|---:|---:|---:|"]
    for key, what, *_ in cases:
        lines.append(f"| {what} | {med[key]:.1f} | {spread(samples[key])} | {med[key] / go:.2f}x "
                     f"| {statistics.median(cpu[key]):.1f} |")
    labels = {"bundle-client": "bundle bootloader", "thin-client": "bundle variant thin",
              "py-IS-client": "venv python -I -S", "venv-launcher-client": "venv launcher",
              "bundle-launcher-client": "bundle launcher"}
    heads = " | ".join(f"{labels[k]} ms" for k in traced)
    phase_rows = [f"| phase (strace -f -ttt, median of {prof_runs}) | {heads} |", "|---|" + "---:|" * len(traced)]
    all_labels = [label for label, _ in MARKS] + ["total under strace"]
    for label in all_labels:
        cells = []
        for k in traced:
            got = dict(ph[k][0])
            cells.append(f"{got[label]:.1f}" if label in got else "-")
        phase_rows.append(f"| {label} | " + " | ".join(cells) + " |")
    count_rows = ["| syscalls per exec (median) | " + " | ".join(labels[k] for k in traced) + " |",
                  "|---|" + "---:|" * len(traced)]
    for c in ("syscalls", "openat", "openat ENOENT", "stat family", "mmap", "read"):
        count_rows.append(f"| {c} | " + " | ".join(f"{ph[k][1].get(c, 0):.0f}" for k in traced) + " |")
    imp = ["| frozen import (thin variant, -X importtime) | self ms | cumulative ms |", "|---|---:|---:|"]
    imp += [f"| {n} | {s:.2f} | {c:.2f} |" for n, s, c in frozen_imports[:12]]
    vimp = ["| venv pip script import (-X importtime) | self ms | cumulative ms |", "|---|---:|---:|"]
    vimp += [f"| {n} | {s:.2f} | {c:.2f} |" for n, s, c in venv_imports[:12]]
    limp = ["| venv launcher import (-X importtime) | self ms | cumulative ms |", "|---|---:|---:|"]
    limp += [f"| {n} | {s:.2f} | {c:.2f} |" for n, s, c in launcher_imports[:12]]
    builds = ", ".join(f"{n} {s:.0f} s" for n, s in build_s.items())
    text = ("# The floor of a thin-client exec: venv script and PyInstaller bundle\n\n"
            + "\n".join(lines)
            + f"\n\nFastest client exec: **{dict((k, w) for k, w, *_ in cases)[fastest]}, {med[fastest]:.1f} ms "
              f"({med[fastest] / go:.2f}x Go bridge VERSION)**; the interpreter alone (`python -I -S -c pass`) "
              f"{med['py-IS']:.1f} ms.\n\n"
            + "\n".join(phase_rows) + "\n\n" + "\n".join(count_rows) + "\n\n"
            + "\n".join(imp) + f"\n\nSum of all frozen imports' self time: {frozen_total:.1f} ms.\n\n"
            + "\n".join(vimp) + f"\n\nSum of all the venv pip script's imports' self time: {venv_total:.1f} ms.\n\n"
            + "\n".join(limp) + f"\n\nSum of all the venv launcher's imports' self time: {launcher_total:.1f} ms.\n\n"
            + f"Run {time.strftime('%Y-%m-%d %H:%M')}: {args.runs} interleaved rounds after {WARMUP} warm-up "
              f"rounds, {served} requests answered by the stand-in daemon; load average before/after "
              f"{load_before:.2f} / {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs, kernel {os.uname().release}, "
              f"python {sys.version.split()[0]}, PyInstaller {pyinstaller_version()}; variant builds: {builds}.\n"
            + NOTES)
    print(text)
    print(f"written to {benchout.write('startup_floor', text)}")
    return 0


def pyinstaller_version() -> str:
    p = subprocess.run([VENV_PY, "-c", "import PyInstaller; print(PyInstaller.__version__)"], capture_output=True,
                       text=True, timeout=60)
    return p.stdout.strip() or "?"


if __name__ == "__main__":
    sys.exit(main())
