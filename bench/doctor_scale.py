"""pycni-doctor on a node of 100 network namespaces: the whole run's time, the time per namespace,
and where it goes (fork and setns, each iptables-save, nft, netlink and parsing), at 1, 2, 4 and 8
namespaces checked at once. Root: scratch namespaces only, all removed.

    sudo .venv/bin/python bench/doctor_scale.py [--namespaces 100] [--runs 5] [--parallel 1,2,4,8]

The node: one "host" namespace with a bridge, forwarding on, kube-proxy-like nat chains (a
service DNAT, KUBE-MARK-MASQ setting 0x4000 and KUBE-POSTROUTING reading it) and an nft table,
and N-1 pods, each a namespace behind a veth on the bridge with an address, a default route, a
few filter rules (iptables-nft), and in every fourth pod an nft table of its own. Healthy: every
run must give zero findings and zero errors, or the script fails. Each run is the venv's
`pycni-doctor --json --profile --netns ...` (every namespace named, so the machine's other
namespaces do not count), timed from exec to exit. Writes bench/doctor_scale.md (or
$PYCNI_BENCH_OUT/).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench import benchout  # noqa: E402

DOCTOR = os.path.join(ROOT, ".venv", "bin", "pycni-doctor")
PY = os.path.join(ROOT, ".venv", "bin", "python")
GOAL_S = 5.0
PREFIX = f"dscale{os.getpid() % 100000}-"

NODE_NAT = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SVC-BENCH - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j KUBE-SVC-BENCH
-A KUBE-SVC-BENCH ! -s 10.77.0.0/24 -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j KUBE-MARK-MASQ
-A KUBE-SVC-BENCH -p tcp -m tcp -j DNAT --to-destination 10.77.0.2:53
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -j MASQUERADE
COMMIT
"""
POD_FILTER = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p tcp -m tcp --dport 22 -j REJECT --reject-with icmp-port-unreachable
-A OUTPUT -d 169.254.169.254/32 -j DROP
COMMIT
"""
NFT_TABLE = """table inet benchfw {
    chain input {
        type filter hook input priority 0; policy accept;
        ct state invalid drop
        tcp dport 2222 counter drop
    }
}
"""


def sh(*argv: str, ns: str | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    return subprocess.run(cmd, check=True, capture_output=True, text=True, input=input, timeout=60)


def build(n: int) -> list[str]:
    """The node: its namespace first, then n-1 pods. Returns the namespace names."""
    node = PREFIX + "node"
    names = [node] + [f"{PREFIX}p{i}" for i in range(1, n)]
    for name in names:
        sh("ip", "netns", "add", name)
    sh("ip", "-n", node, "-batch", "-", input="\n".join([
        "link set lo up", "link add br0 type bridge", "addr add 10.77.0.1/24 dev br0", "link set br0 up",
        *[f"link add vp{i} type veth peer name eth0 netns {names[i]}" for i in range(1, n)],
        *[f"link set vp{i} master br0 up" for i in range(1, n)]]) + "\n")
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=node)
    sh("iptables-restore", ns=node, input=NODE_NAT)
    sh("nft", "-f", "-", ns=node, input=NFT_TABLE)
    for i in range(1, n):
        pod = names[i]
        sh("ip", "-n", pod, "-batch", "-", input=(
            f"link set lo up\nlink set eth0 up\naddr add 10.77.{i // 250}.{i % 250 + 1}/16 dev eth0\n"
            "route add default via 10.77.0.1\n") if n > 250 else (
            f"link set lo up\nlink set eth0 up\naddr add 10.77.0.{i + 1}/24 dev eth0\n"
            "route add default via 10.77.0.1\n"))
        sh("iptables-restore", ns=pod, input=POD_FILTER)
        if i % 4 == 0:
            sh("nft", "-f", "-", ns=pod, input=NFT_TABLE)
    return names


def remove(names: list[str]) -> None:
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=60)


def run_doctor(names: list[str], parallel: int) -> tuple[float, dict]:
    argv = [DOCTOR, "--json", "--profile", "--parallel", str(parallel)]
    for name in names:
        argv += ["--netns", f"/run/netns/{name}"]
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout is not None
    stdout = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)          # its rusage holds the children it reaped: forks, tools
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    out = json.loads(stdout)
    if p.returncode != 0 or out["findings"] or out["errors"] or len(out["namespaces"]) != len(names):
        raise SystemExit(f"doctor did not find the bench node healthy (exit {p.returncode}): "
                         f"{json.dumps(out['findings'] + out['errors'])[:2000]}")
    out["profile"]["cpu_s"] = usage.ru_utime + usage.ru_stime
    return wall, out["profile"]


def startup_ms(argv: list[str], rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, timeout=60)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def breakdown(profile: dict) -> dict[str, float]:
    """Mean ms per namespace of each part of its child's time."""
    per_ns = [t for t in profile["namespaces"] if "wall_s" in t]
    parts: dict[str, float] = {"fork and setns": 0.0}
    for t in per_ns:
        parts["fork and setns"] += t["enter_s"] + max(0.0, t["wall_s"] - t["child_s"])
        tools = 0.0
        for tool, s in t["tools_s"].items():
            key = "nft" if tool == "nft" else tool
            parts[key] = parts.get(key, 0.0) + s
            tools += s
        parts["netlink, /proc and parsing (checks minus tools)"] = (
            parts.get("netlink, /proc and parsing (checks minus tools)", 0.0)
            + max(0.0, sum(t["checks_s"].values()) - tools))
        parts["child in all"] = parts.get("child in all", 0.0) + t["wall_s"]
    return {k: v * 1000 / len(per_ns) for k, v in parts.items()}


def main() -> int:
    ap = benchout.options(__doc__, runs=5)
    ap.add_argument("--namespaces", type=int, default=100, help="namespaces on the node (default 100)")
    ap.add_argument("--parallel", default="1,2,4,8", help="namespaces at once, comma-separated (default 1,2,4,8)")
    args = ap.parse_args()
    n, rounds = args.namespaces, args.runs
    levels = [int(x) for x in args.parallel.split(",")]
    default = 4 if 4 in levels else levels[0]
    load_before = os.getloadavg()
    names: list[str] = []
    try:
        t0 = time.perf_counter()
        names = build(n)
        built_s = time.perf_counter() - t0
        run_doctor(names, default)                         # warm: page cache, modules
        results: dict[int, list[tuple[float, dict]]] = {p: [] for p in levels}
        for _ in range(rounds):                            # interleaved: load moves all alike
            for p in levels:
                results[p].append(run_doctor(names, p))
        start_list = startup_ms([DOCTOR, "--list-checks"])
        start_py = startup_ms([PY, "-c", "pass"])
        start_pyroute2 = startup_ms([PY, "-c", "import pyroute2"])
    finally:
        remove(names)
    load_after = os.getloadavg()

    rows = ["| parallel | total s | per namespace ms | CPU s | of the 5 s goal |", "|---|---:|---:|---:|---:|"]
    medians, cpus = {}, {}
    for p in levels:
        total = statistics.median(w for w, _ in results[p])
        cpu = statistics.median(prof["cpu_s"] for _, prof in results[p])
        medians[p], cpus[p] = total, cpu
        rows.append(f"| {p} | {total:.2f} | {total * 1000 / n:.1f} | {cpu:.2f} | {total / GOAL_S:.2f} |")
    runs_at = sorted(results[default], key=lambda r: r[0])
    wall, profile = runs_at[len(runs_at) // 2]                # the median run's profile
    parts = breakdown(profile)
    part_rows = ["| in each namespace's child | mean ms |", "|---|---:|"]
    order = ["fork and setns"] + sorted(k for k in parts if k.endswith("-save")) + ["nft"] + [
        "netlink, /proc and parsing (checks minus tools)", "child in all"]
    part_rows += [f"| {k} | {parts[k]:.1f} |" for k in order if k in parts]
    checks: dict[str, float] = {}
    per_ns = [t for t in profile["namespaces"] if "wall_s" in t]
    for t in per_ns:
        for k, v in t["checks_s"].items():
            checks[k] = checks.get(k, 0.0) + v
    check_rows = ["| check | mean ms a namespace |", "|---|---:|"]
    check_rows += [f"| {k} | {v * 1000 / len(per_ns):.1f} |" for k, v in sorted(checks.items(), key=lambda kv: -kv[1])]
    verdict = ("met" if medians[default] < GOAL_S else "NOT met") if n >= 100 else f"not judged at {n} namespaces"
    text = f"""# pycni-doctor on a node of {n} namespaces

`sudo .venv/bin/python bench/doctor_scale.py --namespaces {n} --runs {rounds} --parallel {args.parallel}`
(this file is that run's output). Run {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, kernel
{platform.release()}, {os.cpu_count()} CPUs, load average {load_before[0]:.2f} / {load_after[0]:.2f}
(before/after); the node ({n} namespaces: one host with a bridge, kube-proxy-like nat rules and an nft
table, {n - 1} pods behind veths, each with filter rules, every fourth with an nft table) took
{built_s:.1f} s to build. Median of {rounds} runs of `pycni-doctor --json --profile --netns ...` (every
namespace named; every check), timed from exec to exit, the parallel levels interleaved.
Every run found the node healthy (zero findings, zero errors).

| parallel | total s | per namespace ms | CPU s | of the 5 s goal |
|---|---:|---:|---:|---:|
""" + "\n".join(rows[2:]) + f"""

**Goal: well under 5 s at 100 namespaces: {verdict}** ({medians[default]:.2f} s at {n} namespaces,
the default of {default} at a time).

"CPU s" is the user + system time of the doctor and every process it ran (its forked children, the
tools), from the rusage of its exit: what the run costs whatever the load. With {os.cpu_count()} CPUs the
run cannot take less than CPU / {os.cpu_count()} ({cpus[default] / (os.cpu_count() or 1):.2f} s at {default}
at a time); what the wall time holds beyond that is waiting for CPUs other work was using (load
average {load_before[0]:.1f} at the start).

Where the time goes, in the median run at {default} at a time ({wall:.2f} s); each namespace is
checked in a forked child that enters it, and these are that child's times, a mean over the
{len(per_ns)} namespaces ("fork and setns": from the fork to the child inside the namespace, plus what
the parent waited beyond the child's own time):

""" + "\n".join(part_rows) + """

""" + "\n".join(check_rows) + f"""

Before any namespace: the doctor's start-up (`pycni-doctor --list-checks`: interpreter, argparse,
the diagnoses' modules) {start_list:.0f} ms, of which the bare interpreter {start_py:.0f} ms; pyroute2's
import, done once before forking so no child pays it, {start_pyroute2 - start_py:.0f} ms more.
Discovery of the {n} `--netns` paths: {profile['discover_s'] * 1000:.0f} ms.
"""
    path = benchout.write("doctor_scale", text)
    print(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
