"""Start-up cost of a plugin exec: pycni-passthrough VERSION and ADD as the PyInstaller
binary and as the venv console script (also with our modules lacking bytecode), against the
Go bridge plugin's VERSION, all in one run, interleaved, median of 30. Also the floors the
time stands on and an import profile.

    ./build.sh bench                                        # builds dist/cni first
    .venv/bin/python bench/foundation_startup.py [--runs 30] # uses an existing ./build.sh bin

The bundle is $PYCNI_DIST (default dist/cni, where ./build.sh bin puts it). Prints the
figures and writes them to bench/foundation.md (or $PYCNI_BENCH_OUT/). Needs no root (ADD of
the pass-through plugin touches no netns; CNI_NETNS is this process's own).
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench import benchout  # noqa: E402

WARMUP, PROFILE_RUNS = 3, 15
DIST = os.environ.get("PYCNI_DIST") or os.path.join(ROOT, "dist", "cni")
BIN = os.path.join(DIST, "bin", "pycni-passthrough")
BUNDLE = os.path.join(DIST, "pycni", "pycni")
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")
VENV_SCRIPT = os.path.join(ROOT, ".venv", "bin", "pycni-passthrough")
GO_BRIDGE = "/usr/lib/cni/bridge"

VERSION_IN = b'{"cniVersion": "1.0.0"}'
ADD_IN = json.dumps({
    "cniVersion": "1.0.0", "name": "bench", "type": "pycni-passthrough",
    "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/proc/self/ns/net"}],
                   "ips": [{"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 0}],
                   "routes": [{"dst": "0.0.0.0/0"}]}}).encode()
ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bench1", "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
VERSION_ENV = {"CNI_COMMAND": "VERSION"}

# A copy of our sources without __pycache__, run with PYTHONDONTWRITEBYTECODE=1 (as this
# environment sets it): what every exec pays when the install was not byte-compiled.
NOPYC = os.path.join(tempfile.gettempdir(), f"pycni-bench-nopyc-{os.getpid()}")
NOPYC_ENV = {"PYTHONPATH": NOPYC, "PYTHONDONTWRITEBYTECODE": "1"}

# (key, what, argv, env, stdin, expected exit status)
CASES = [
    ("go-version", "Go bridge VERSION", [GO_BRIDGE], VERSION_ENV, VERSION_IN, 0),
    ("bin-version", "binary VERSION", [BIN], VERSION_ENV, VERSION_IN, 0),
    ("bin-add", "binary ADD", [BIN], ADD_ENV, ADD_IN, 0),
    ("venv-version", "venv script VERSION", [VENV_SCRIPT], VERSION_ENV, VERSION_IN, 0),
    ("venv-add", "venv script ADD", [VENV_SCRIPT], ADD_ENV, ADD_IN, 0),
    ("nopyc-add", "venv script ADD, our modules without bytecode", [VENV_SCRIPT], {**ADD_ENV, **NOPYC_ENV},
     ADD_IN, 0),
    # floors
    ("py-bare", "venv python -I -S -c pass (interpreter only)", [VENV_PY, "-I", "-S", "-c", "pass"], {}, b"", 0),
    ("py-site", "venv python -c pass (+ site, .pth files)", [VENV_PY, "-c", "pass"], {}, b"", 0),
    ("py-isolated", "venv python -I -c pass", [VENV_PY, "-I", "-c", "pass"], {}, b"", 0),
    ("bin-bare", "bundle, no plugin (bootloader + interpreter + runtime hooks)", [BUNDLE], {}, b"", 2),
]


def timed(argv, env, stdin, rc) -> float:
    start = time.perf_counter()
    p = subprocess.run(argv, env=env, input=stdin, capture_output=True)
    took = time.perf_counter() - start
    if p.returncode != rc:
        raise SystemExit(f"{argv}: exit {p.returncode}, wanted {rc}\n{p.stdout.decode()}{p.stderr.decode()}")
    return took * 1000


def measure(runs: int) -> dict[str, list[float]]:
    """Interleaved rounds, so load from elsewhere on the machine hits every case alike."""
    samples: dict[str, list[float]] = defaultdict(list)
    for rnd in range(WARMUP + runs):
        for key, _, argv, env, stdin, rc in CASES:
            ms = timed(argv, env, stdin, rc)
            if rnd >= WARMUP:
                samples[key].append(ms)
    return samples


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_profile(env, stdin) -> list[tuple[str, float]]:
    """Median cumulative import time (ms) of each top-level import of the venv script."""
    per_module: dict[str, list[float]] = defaultdict(list)
    for _ in range(PROFILE_RUNS):
        p = subprocess.run([VENV_PY, "-X", "importtime", VENV_SCRIPT], env=env, input=stdin,
                           capture_output=True)
        for line in p.stderr.decode().splitlines():
            m = _IMPORT_LINE.match(line)
            if m and len(m.group(3)) == 1:
                per_module[m.group(4)].append(int(m.group(2)) / 1000)
    rows = [(name, statistics.median(v)) for name, v in per_module.items()]
    return sorted(rows, key=lambda r: -r[1])


def versions() -> dict[str, str]:
    def out(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True)
            return (p.stdout + p.stderr).strip()
        except OSError:
            return "?"
    return {
        "python": out([VENV_PY, "-c", "import sys; print(sys.version.split()[0])"]),
        "pyinstaller": out([VENV_PY, "-c", "import PyInstaller; print(PyInstaller.__version__)"]),
        "go bridge": out([GO_BRIDGE]).splitlines()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, kernel {platform.release()}",
        "bundle": bundle_size(os.path.dirname(BUNDLE)),
    }


def bundle_size(top: str) -> str:
    files = [os.path.join(d, f) for d, _, names in os.walk(top) for f in names]
    size = sum(os.lstat(f).st_size for f in files)
    where = os.path.relpath(top, ROOT) if top.startswith(ROOT + os.sep) else top
    return f"{where}: {len(files)} files, {size / 2**20:.0f} MiB (onedir, one for every plugin)"


def report(samples, runs, profiles, env_info, load) -> str:
    med = {k: statistics.median(v) for k, v in samples.items()}
    go = med["go-version"]
    lines = [
        "# Foundation bench: plugin start-up",
        "",
        "Reproduce: `./build.sh bench` (builds `dist/cni`, then runs every bench script), or "
        "`./build.sh bin && .venv/bin/python bench/foundation_startup.py`.",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M')}, one run, cases interleaved, {WARMUP} warm-up rounds, "
        f"then median of {runs} (wall time of fork+exec+wait from Python, so ~1 ms of the Go figure is "
        f"the harness). Load average before/after: {load[0]} / {load[1]}.",
        "",
        *(f"- {k}: {v}" for k, v in env_info.items()),
        "",
        "| pycni-passthrough | median ms | min ms | x Go bridge VERSION |",
        "|---|---:|---:|---:|",
    ]
    for key, what, *_ in CASES[:6]:
        lines.append(f"| {what} | {med[key]:.1f} | {min(samples[key]):.1f} | {med[key] / go:.1f} |")
    lines += ["", "What the time stands on (same run):", "",
              "| floor | median ms |", "|---|---:|"]
    for key, what, *_ in CASES[6:]:
        lines.append(f"| {what} | {med[key]:.1f} |")
    lines += ["", f"Derived: site + .pth = {med['py-site'] - med['py-bare']:.1f} ms; our modules for VERSION "
              f"(venv) = {med['venv-version'] - med['py-site']:.1f} ms; ADD over VERSION (validation, "
              f"prevResult decode, result) = {med['venv-add'] - med['venv-version']:.1f} ms (venv), "
              f"{med['bin-add'] - med['bin-version']:.1f} ms (binary); compiling our modules at every exec "
              f"(no bytecode) = {med['nopyc-add'] - med['venv-add']:.1f} ms; bundle start before any plugin "
              f"code = {med['bin-bare']:.1f} ms.", ""]
    for verb, rows in profiles.items():
        lines += [f"Import profile of the venv script, {verb} (`python -X importtime`, top-level imports, "
                  f"median cumulative of {PROFILE_RUNS}; importtime itself inflates them):", "",
                  "| module | ms |", "|---|---:|"]
        lines += [f"| {name} | {ms:.1f} |" for name, ms in rows[:8]]
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    runs = benchout.options(__doc__, runs=30).parse_args().runs
    for path in (BIN, VENV_SCRIPT, GO_BRIDGE):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"missing {path}: run ./build.sh bin (and ./build.sh test for the Go plugins)")
    load_before = os.getloadavg()[0]
    for top in ("libcni_py", "plugins", "conf"):
        shutil.copytree(os.path.join(ROOT, top), os.path.join(NOPYC, top),
                        ignore=shutil.ignore_patterns("__pycache__"))
    try:
        samples = measure(runs)
    finally:
        shutil.rmtree(NOPYC)
    profiles = {"VERSION": import_profile(VERSION_ENV, VERSION_IN), "ADD": import_profile(ADD_ENV, ADD_IN)}
    load_after = os.getloadavg()[0]
    text = report(samples, runs, profiles, versions(), (f"{load_before:.2f}", f"{load_after:.2f}"))
    out = benchout.write("foundation", text + NOTES)
    print(text)
    print(f"written to {out}")
    return 0


NOTES = """
## Where the time goes, and what was done about it

- **Interpreter start** is the floor of any Python plugin: ~8 ms to bring up CPython
  (`-I -S -c pass`), about 3x a whole Go plugin exec. Nothing in pycni can lower it.
- **site**: the default editable install (setuptools' import-hook finder in a `.pth`) cost ~10 ms at
  every start (it imports pathlib, importlib.util and more). `build.sh` installs with
  `editable_mode=compat`, a plain path `.pth`: site now costs ~2-3 ms. `-I` changes nothing measurable
  (it only drops environment variables, user site and cwd); `-S` would drop the venv's site-packages
  (pyroute2, jsonschema), so the venv scripts cannot use it; the bundle runs without site anyway.
- **Bytecode**: with `PYTHONDONTWRITEBYTECODE=1` (this environment sets it) or a read-only tree, a
  module without a `__pycache__` entry is compiled again at every exec: 8 ms for this plugin, 14-18 ms
  for vxlan and edgemesh (row "without bytecode" above). `build.sh` now byte-compiles `libcni_py` and
  `plugins` after installing (`python -m compileall`), and again whatever changed before test, bench
  and demo; the bundle is compiled by PyInstaller.
- **What every exec imports now** (`-X importtime` above): json (which pulls re, enum, functools:
  ~6-7 ms, needed to read the config), skel (<1 ms), the result types (~1.5 ms with ipaddress, ADD
  only) and the schema module (<1 ms). Gone from the exec path:
  - **jsonschema** (~55 ms of imports: referencing, rpds, attrs, jsonschema_specifications loading the
    meta-schemas, format checkers). `plugins/pkg/schema.py` is the one validation path of every
    plugin: a quick checker implementing the keywords our schemas use (type, enum, const, pattern,
    ranges, lengths, required, properties, additionalProperties, items, minItems, uniqueItems, local
    `$ref`) accepts a valid config; any problem, or any other keyword, goes to jsonschema, which
    decides and words the error (tests/unit/test_pkg_schema.py holds the two to the same verdict on
    every schema, its example configs and mutations of each rule). Passthrough and edgemesh ADD drop
    ~55 ms; vxlan and dp-steering already used the quick checker.
  - **dataclasses** (imports inspect, ast, dis, tokenize: ~8 ms, plus an `exec` per class ~0.4 ms):
    skel's CmdArgs/Plugin and the five result types are plain classes (`types._Record` gives them
    field-wise == and repr). Passthrough -11 ms; vxlan/edgemesh -1 to -3 ms, as their own modules
    still import dataclasses.
  - **logging** (~3-6 ms with traceback, string, threading, weakref): skel sets the "pycni" handlers
    up at once only for a config with logFile/logLevel or when logging is already imported; otherwise
    on the first record, through `plugins/pkg/log.py` loggers, which import logging only to emit.
  - **hashlib** (OpenSSL's `_hashlib`, ~3.5 ms): `names.short_hash` loads CPython's `_sha256` (~1 ms)
    and only when a hash is made. vxlan VERSION -2 ms.
  - **interpreter teardown** (~5 ms; ~10 ms once jsonschema was loaded): `skel.plugin_main` flushes
    the answer, stderr and a logFile, then leaves with `os._exit` (edgemesh VERSION -8 ms).
- Measured while doing it (same interleaved run, load ~5, venv, CPU-bound so wall ~ CPU), passthrough
  VERSION / ADD, ms: start 36 / 100; os._exit 32 / 88; logging deferred 32 / 86; one schema path
  32 / 32; no dataclasses 21 / 21; passthrough imports the result types in ADD only 19 / 21.
- **The PyInstaller binary** (onedir: nothing is unpacked at start) pays the bootloader, which
  execs itself once more after putting the bundle's lib dir on LD_LIBRARY_PATH (~2-3 ms), loading
  `libpython3.11.so` from the bundle, PyInstaller's bootstrap modules (ctypes for its own use, ~3 ms)
  and its default runtime hooks. Three of those cost ~30 ms at every start and serve nothing here,
  so `pycni.spec` drops them: `pyi_rth_inspect` (imports inspect and zipfile and reads
  base_library.zip so `inspect.getsource` works on frozen code), `pyi_rth_multiprocessing`
  (imports multiprocessing, subprocess, socket, pickle for spawn/forkserver children; our plugins
  use fork or threads) and `pyi_rth_pkgutil` (imports pkgutil and typing so `pkgutil.iter_modules`
  sees bundled modules; nothing we run lists modules). A test fails if bundled code starts to need
  one of them. `noarchive=True` keeps the .pyc files as files instead of a PYZ archive unpacked by
  PyInstaller's Python-level importer: a few ms per start.
- A frozen plugin restores LD_LIBRARY_PATH and drops PyInstaller's `_PYI_*` variables before it
  runs anything (plugins/entrypoints.py), so iptables, nft, ip, IPAM plugins and our own binaries
  start with the host's environment, not the bundle's libraries.

Left for the plugins' own modules (figures from -X importtime of vxlan ADD): dataclasses in
vxlan, edgemesh and dp-steering modules (~6-8 ms), `import logging` at their top instead of
`plugins.pkg.log` (~3-6 ms), `hashlib` in vxlan's lease.py (`names.sha256` does it, ~2.5 ms),
`typing` in vxlan's registry/base.py, edgemesh's rules.py and plugins/pkg/rtnl.py (~2 ms).
"""

if __name__ == "__main__":
    sys.exit(main())
