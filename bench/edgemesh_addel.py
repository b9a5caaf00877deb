"""ADD and DEL wall time of the edgemesh plugin against the Go portmap plugin (one port
mapping), same run, interleaved, medians. Root: runs in a scratch netns it removes.

    sudo .venv/bin/python bench/edgemesh_addel.py [--runs 30] [--before DIR]

Both plugins are exec'd the way a runtime does (env + config on stdin, a prevResult),
from inside the netns. Scenarios:
  first/last   ADD on a clean node (creates chains and root jumps), DEL of that only pod
               (removes them all); portmap's first ADD likewise creates its chains
  steady       one other pod stays attached: ADD/DEL touch one pod rule only
  +device      first/last with ensureListenDevice (creates/removes edgemesh0 over netlink)
With `--before DIR` (an older tree: `git archive REV | tar -x -C DIR`), that code's edgemesh
runs every scenario too, interleaved (PYTHONPATH=DIR, same venv, its bytecode compiled).
Writes the table into bench/edgemesh.md (or $PYCNI_BENCH_OUT/), section "addel".
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench import benchout  # noqa: E402
from plugins.pkg.ns import enter  # noqa: E402

EDGEMESH = os.path.join(ROOT, ".venv", "bin", "edgemesh")
PORTMAP = "/usr/lib/cni/portmap"


def prev(ip: str, netns: str) -> dict:
    return {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": netns}],
            "ips": [{"address": f"{ip}/24", "gateway": "10.22.0.1", "interface": 0}]}


def run(plugin: str, command: str, conf: dict, cid: str, netns: str, extra_env: dict | None = None) -> float:
    env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=netns, CNI_IFNAME="eth0",
               CNI_PATH="/usr/lib/cni", CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default", **(extra_env or {}))
    data = json.dumps(conf).encode()
    t0 = time.perf_counter()
    p = subprocess.run([plugin], input=data, env=env, capture_output=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{plugin} {command}: {p.stdout!r} {p.stderr!r}")
    return dt * 1000


def main() -> int:
    ap = benchout.options(__doc__, runs=30)
    ap.add_argument("--before", metavar="DIR", help="also time the edgemesh of the tree in DIR, interleaved")
    args = ap.parse_args()
    runs, before = args.runs, args.before and os.path.abspath(args.before)
    variants: dict[str, dict[str, str]] = {"edgemesh": {}}
    if before:
        variants[f"edgemesh {os.path.basename(before.rstrip('/'))}"] = {"PYTHONPATH": before}
    for tree in filter(None, (ROOT, before)):      # without bytecode every exec compiles our modules
        subprocess.run([sys.executable, "-m", "compileall", "-q", "libcni_py", "plugins"], cwd=tree, check=True)
    name = f"embench{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    path, tmp = f"/run/netns/{name}", tempfile.mkdtemp(prefix="edgemesh-bench-")
    em = {"cniVersion": "1.0.0", "name": "bench", "type": "edgemesh", "serviceCIDR": "10.96.0.0/12",
          "backend": "iptables", "stateDir": tmp, "prevResult": prev("10.22.0.5", path)}
    em_dev = dict(em, ensureListenDevice=True)
    em_other = dict(em, prevResult=prev("10.22.0.6", path))
    pm = {"cniVersion": "1.0.0", "name": "bench", "type": "portmap", "capabilities": {"portMappings": True},
          "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
          "prevResult": prev("10.22.0.5", path)}
    times: dict[str, list[float]] = {}
    load_before = os.getloadavg()[0]

    def cycle(key, plugin, conf, cid="c1", extra_env=None):
        a = run(plugin, "ADD", conf, cid, path, extra_env)
        d = run(plugin, "DEL", conf, cid, path, extra_env)
        times.setdefault(f"{key} ADD", []).append(a)
        times.setdefault(f"{key} DEL", []).append(d)

    try:
        with enter(path):
            for i in range(runs + 3):
                for label, extra in variants.items():
                    cycle(f"{label} first/last", EDGEMESH, em, extra_env=extra)
                for label, extra in variants.items():
                    cycle(f"{label} first/last +device", EDGEMESH, em_dev, extra_env=extra)
                run(EDGEMESH, "ADD", em_other, "other", path)
                for label, extra in variants.items():
                    cycle(f"{label} steady", EDGEMESH, em, extra_env=extra)
                run(EDGEMESH, "DEL", em_other, "other", path)
                cycle("portmap", PORTMAP, pm)
                if i < 3:                                  # warm-up rounds are dropped
                    times.clear()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    pm_add, pm_del = (statistics.median(times[f"portmap {v}"]) for v in ("ADD", "DEL"))
    rows = ["| plugin, scenario | ADD median ms | DEL median ms | ADD / portmap | DEL / portmap |",
            "|---|---:|---:|---:|---:|"]
    keys = [f"{label} {scenario}" for label in variants for scenario in ("first/last", "steady", "first/last +device")]
    for key in ("portmap", *keys):
        a, d = statistics.median(times[f"{key} ADD"]), statistics.median(times[f"{key} DEL"])
        rows.append(f"| {key} | {a:.1f} | {d:.1f} | {a / pm_add:.1f}x | {d / pm_del:.1f}x |")
    text = "\n".join(rows) + f"\n\nRun {time.strftime('%Y-%m-%d %H:%M')}: {runs} interleaved rounds after 3 " \
        f"warm-up rounds; load average before/after {load_before:.2f} / {os.getloadavg()[0]:.2f}; " \
        f"{os.cpu_count()} CPUs, kernel {os.uname().release}, Go portmap from containernetworking-plugins 1.1.1.\n"
    print(text)
    print(f"written to {benchout.write_section('edgemesh', 'addel', text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
