"""Installing 1000 ignored services: one iptables-restore (what edgemesh does) against one
`iptables` call per rule (what edgemesh's old proxier did through EnsureRule), same run.
Root: runs in a scratch netns it removes.

    sudo .venv/bin/python bench/edgemesh_ignored.py [--services 1000] [--runs 5]

Rows: the plugin's first ADD with 1000 inline ignoredServices (end to end: exec, config,
one restore of 1000+ rules); the bare restore of the same 1000 RETURN rules; 1000
`iptables -t nat -A` calls. Each round starts from an empty nat table. Writes the table
into bench/edgemesh.md (or $PYCNI_BENCH_OUT/), section "ignored".
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench import benchout  # noqa: E402
from plugins.meta.edgemesh import backend_iptables as ipt  # noqa: E402
from plugins.meta.edgemesh import rules as R  # noqa: E402
from plugins.pkg import iptables  # noqa: E402
from plugins.pkg.ns import enter  # noqa: E402

EDGEMESH = os.path.join(ROOT, ".venv", "bin", "edgemesh")


def services(n: int) -> list[dict]:
    return [{"ip": f"10.96.{i // 250}.{i % 250 + 1}", "name": f"bench/svc-{i}"} for i in range(n)]


def clean() -> None:
    text = iptables.save("nat")
    ours = [c for c in ipt.NAMES.values() if f":{c} " in text and c not in ("PREROUTING", "OUTPUT")]
    lines = [line.replace("-A ", "-D ", 1) for line in text.splitlines()
             if line.startswith(("-A PREROUTING", "-A OUTPUT")) and "EDGE-MESH" in line]
    iptables.restore("nat", lines + [f"-F {c}" for c in ours] + [f"-X {c}" for c in ours])


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> int:
    ap = benchout.options(__doc__, runs=5)
    ap.add_argument("--services", type=int, default=1000, help="ignored services (default 1000)")
    args = ap.parse_args()
    n, rounds = args.services, args.runs
    load_before = os.getloadavg()[0]
    name = f"embench{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    path, tmp = f"/run/netns/{name}", tempfile.mkdtemp(prefix="edgemesh-bench-")
    svcs = services(n)
    conf = {"cniVersion": "1.0.0", "name": "bench", "type": "edgemesh", "serviceCIDR": "10.96.0.0/12",
            "backend": "iptables", "stateDir": tmp, "ignoredServices": svcs,
            "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": path}],
                           "ips": [{"address": "10.22.0.5/24", "interface": 0}]}}
    env = dict(os.environ, CNI_COMMAND="ADD", CNI_CONTAINERID="c1", CNI_NETNS=path, CNI_IFNAME="eth0",
               CNI_PATH="/usr/lib/cni")
    returns = [ipt._line("-A", "EDGE-MESH-SVC", ipt.render(R.Ignore(s["ip"], f"ignore {s['name']} service")))
               for s in svcs]
    times: dict[str, list[float]] = {"plugin ADD": [], "one restore": [], "one call per rule": []}
    try:
        with enter(path):
            for _ in range(rounds):
                times["plugin ADD"].append(timed(lambda: subprocess.run(
                    [EDGEMESH], input=json.dumps(conf).encode(), env=env, check=True, capture_output=True)))
                assert iptables.save("nat").count("-j RETURN") == n
                clean()
                times["one restore"].append(timed(lambda: iptables.restore(
                    "nat", [":EDGE-MESH-SVC - [0:0]"] + returns)))
                clean()
                iptables.restore("nat", [":EDGE-MESH-SVC - [0:0]"])
                argvs = [["iptables", "-w", "-t", "nat"] + _argv(line) for line in returns]
                times["one call per rule"].append(timed(
                    lambda argvs=argvs: [subprocess.run(a, check=True) for a in argvs]))
                assert iptables.save("nat").count("-j RETURN") == n
                clean()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(times["one restore"])
    rows = [f"| {n} ignored services | median ms | / one restore |", "|---|---:|---:|"]
    for key, vals in times.items():
        m = statistics.median(vals)
        rows.append(f"| {key} | {m:.0f} | {m / base:.1f}x |")
    text = "\n".join(rows) + f"\n\nRun {time.strftime('%Y-%m-%d %H:%M')}: {rounds} rounds, each from an empty " \
        f"nat table; load average before/after {load_before:.2f} / {os.getloadavg()[0]:.2f}; {os.cpu_count()} " \
        f"CPUs, kernel {os.uname().release}, {_version()}.\n"
    print(text)
    print(f"written to {benchout.write_section('edgemesh', 'ignored', text)}")
    return 0


def _argv(line: str) -> list[str]:
    return shlex.split(line)


def _version() -> str:
    return subprocess.run(["iptables", "--version"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
