"""dp-steering figures, written into bench/dp_steering.md (or $PYCNI_BENCH_OUT/) between its markers.

    sudo .venv/bin/python bench/dp_steering.py [--seconds 3] [--runs 10] [--no-iperf] [--before DIR]

1. iperf3 TCP throughput host -> pod and pod -> host, in one run: a pod on the Go bridge
   alone, a pod steered in tap mode and one steered inline, both with the reference dp
   (pycni-dp) reading vth. Ratios against the plain bridge pod.
2. Plugin wall time: dp-steering ADD and DEL exec'd as a runtime does (prevResult on
   stdin), interleaved with the Go bridge's own ADD and DEL of the same pods, --runs
   rounds (--rounds is its older name). With
   `--before DIR` (a checkout of an older commit: `git archive REV | tar -x -C DIR`), that
   code's dp-steering runs too, interleaved (PYTHONPATH=DIR, same venv), as a row of its own.
Everything happens in scratch namespaces that are removed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import benchout  # noqa: E402
from tests.kit.dp_steering import World  # noqa: E402
from tests.kit.netns import NetNS  # noqa: E402


def iperf(w: World, pod, seconds: float, reverse: bool) -> float:
    """Gbit/s of one iperf3 TCP run from the host netns to the pod (or back with -R)."""
    server = subprocess.Popen(["ip", "netns", "exec", pod.ns.name, "iperf3", "-s", "-1", "-p", "5201"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        argv = ["ip", "netns", "exec", w.host.name, "iperf3", "-c", pod.ip, "-p", "5201", "-t", str(seconds),
                "-J"] + (["-R"] if reverse else [])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.kill()
        server.wait()


def throughput(w: World, dp, seconds: float) -> list[tuple[str, float, float, float]]:
    """(pod, Gbit/s in, Gbit/s out, GB the dp counted for that pod) per pod kind."""
    plain = w.add("plain", steer=False)
    tap = w.add("tap", mode="tap")
    inline = w.add("inline")
    rows = []
    for name, pod in (("Go bridge alone", plain), ("dp-steering tap", tap), ("dp-steering inline", inline)):
        before = seen(w, dp, pod)
        gin, gout = iperf(w, pod, seconds, False), iperf(w, pod, seconds, True)
        rows.append((name, gin, gout, (seen(w, dp, pod) - before) / 1e9))
    for pod, steer in ((inline, True), (tap, True), (plain, False)):
        w._on("del", pod, w.conflist(steer, mode="tap" if pod is tap else "inline"))
    return rows


def seen(w: World, dp, pod) -> int:
    """Bytes the dp counted for the pod (0 for a pod it does not steer)."""
    try:
        mac = w.record(pod)["mac"]
    except OSError:
        return 0
    return dp.stats()["pods"].get(mac, {}).get("allowed_bytes", 0)


def timed(argv, conf: dict, env: dict) -> tuple[float, dict]:
    """(wall ms, stdout JSON) of one plugin exec."""
    t = time.perf_counter()
    p = subprocess.run(argv, input=json.dumps(conf), env=env, capture_output=True, text=True)
    ms = (time.perf_counter() - t) * 1000
    if p.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {p.stdout} {p.stderr}")
    return ms, json.loads(p.stdout) if p.stdout.strip() else {}


def plugin_times(w: World, rounds: int, variants: dict[str, dict]) -> dict[str, list[float]]:
    """Exec the Go bridge, then dp-steering chained after it, ADD and DEL, per pod; one pod
    per variant (label -> extra environment) and round, interleaved."""
    from plugins.pkg import ns
    times: dict[str, list[float]] = {"bridge ADD": [], "bridge DEL": []}
    bridge = {"cniVersion": w.version, "name": "dpnet", **w.bridge()}
    steering = [os.path.join(ROOT, ".venv", "bin", "dp-steering")]
    for i in range(rounds + 2):
        for label, extra in variants.items():
            pod_ns = w.netns_factory("t")
            env = {"CNI_CONTAINERID": f"t{i}", "CNI_NETNS": pod_ns.path, "CNI_IFNAME": "eth0",
                   "CNI_PATH": "/usr/lib/cni", "PATH": os.environ["PATH"], **extra}
            with ns.enter(w.host.path):             # the bridge's host side goes to the host netns
                b_add, result = timed(["/usr/lib/cni/bridge"], bridge, {**env, "CNI_COMMAND": "ADD"})
                steer = {"cniVersion": w.version, "name": "dpnet", **w.steer, "prevResult": result}
                s_add, _ = timed(steering, steer, {**env, "CNI_COMMAND": "ADD"})
                s_del, _ = timed(steering, steer, {**env, "CNI_COMMAND": "DEL"})
                b_del, _ = timed(["/usr/lib/cni/bridge"], {**bridge, "prevResult": result},
                                 {**env, "CNI_COMMAND": "DEL"})
            pod_ns.close()
            if i >= 2:                              # two warm-up rounds
                for key, ms in ((f"{label} ADD", s_add), (f"{label} DEL", s_del),
                                ("bridge ADD", b_add), ("bridge DEL", b_del)):
                    times.setdefault(key, []).append(ms)
    return times


def main() -> int:
    ap = benchout.options(__doc__, runs=10)
    ap.add_argument("--rounds", dest="runs", type=int, default=argparse.SUPPRESS, metavar="N",
                    help="the same as --runs")
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--no-iperf", action="store_true", help="only the ADD/DEL figures")
    ap.add_argument("--before", metavar="DIR", help="also time the dp-steering of the checkout in DIR")
    opts = ap.parse_args()
    variants: dict[str, dict[str, str]] = {"dp-steering (inline)": {}}
    if opts.before:
        variants[f"dp-steering (inline), {os.path.basename(opts.before.rstrip('/'))}"] = {"PYTHONPATH": opts.before}
    made: list[NetNS] = []

    def netns(tag="ns"):
        made.append(NetNS(tag))
        return made[-1]

    tmp = tempfile.mkdtemp(prefix="bench-dpst-")
    load_before = os.getloadavg()[0]
    env_line = f"{os.cpu_count()} CPUs, kernel {platform.release()}, Go bridge from containernetworking-plugins 1.1.1"
    try:
        w = World(netns, tmp, dpSocket=os.path.join(tmp, "dp.sock"))
        with w.dp() as dp:
            if not opts.no_iperf:
                rows = throughput(w, dp, opts.seconds)
                base_in, base_out = rows[0][1], rows[0][2]
                table = ["| pod | host -> pod Gbit/s | pod -> host Gbit/s | vs bridge (in) | vs bridge (out) "
                         "| through the dp, GB |", "|---|---:|---:|---:|---:|---:|"]
                table += [f"| {n} | {a:.2f} | {b:.2f} | {a / base_in:.3f}x | {b / base_out:.3f}x | {gb:.2f} |"
                          for n, a, b, gb in rows]
                table.append(f"\nRun {time.strftime('%Y-%m-%d %H:%M')}: iperf3 TCP, {opts.seconds:g} s per run, "
                             f"one run each, same machine and moment; datapath auto (eBPF here); load average "
                             f"before/after {load_before:.2f} / {os.getloadavg()[0]:.2f}; {env_line}.")
                text = "\n".join(table)
                print(text)
                print(f"written to {benchout.write_section('dp_steering', 'iperf', text)}")
            load_addel = os.getloadavg()[0]
            times = plugin_times(w, opts.runs, variants)
        med = {k: statistics.median(v) for k, v in times.items()}
        add, dele = med["bridge ADD"], med["bridge DEL"]
        table = ["| plugin | ADD median ms | DEL median ms | ADD / bridge | DEL / bridge |",
                 "|---|---:|---:|---:|---:|",
                 f"| Go bridge (+host-local) | {add:.1f} | {dele:.1f} | 1.0x | 1.0x |"]
        table += [f"| {v} | {med[v + ' ADD']:.1f} | {med[v + ' DEL']:.1f} | {med[v + ' ADD'] / add:.1f}x "
                  f"| {med[v + ' DEL'] / dele:.1f}x |" for v in variants]
        table.append(f"\nRun {time.strftime('%Y-%m-%d %H:%M')}: {opts.runs} interleaved rounds after 2 warm-up "
                     f"rounds, a dp running; load average before/after {load_addel:.2f} / "
                     f"{os.getloadavg()[0]:.2f}; {env_line}.")
        text = "\n".join(table)
        print(text)
        print(f"written to {benchout.write_section('dp_steering', 'addel', text)}")
    finally:
        for n in reversed(made):
            n.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
