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
3. `--work`: only dp-steering's own run as pycni-node's worker runs it (forked from a process
   with the daemon's preloads, skel.run in-process), per case (tap + failOpen without a dp as in
   the CRI chain, inline with the reference dp, tap dual-stack): what it asks of the kernel
   (netlink round trips, sockets, setns, execs, fsyncs, sysctl writes, sleeps: counts that do not
   depend on the load) and where cProfile sees the time go; with `--before DIR`, that checkout's
   code too, interleaved.
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
if os.environ.get("PYCNI_BENCH_CODE"):       # --work --before: that checkout's code in the child
    sys.path.insert(0, os.environ["PYCNI_BENCH_CODE"])

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
    if len(sys.argv) == 5 and sys.argv[1] == "--work-child":
        work_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return 0
    ap = benchout.options(__doc__, runs=10)
    ap.add_argument("--rounds", dest="runs", type=int, default=argparse.SUPPRESS, metavar="N",
                    help="the same as --runs")
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--no-iperf", action="store_true", help="only the ADD/DEL figures")
    ap.add_argument("--before", metavar="DIR", help="also time the dp-steering of the checkout in DIR")
    ap.add_argument("--work", action="store_true",
                    help="only dp-steering's own run in a pycni-node worker: counts and cProfile by category")
    opts = ap.parse_args()
    if opts.work:
        text = work(max(opts.runs, 2), opts.before)
        print(text)
        print(f"written to {benchout.write_section('dp_steering', 'work', text)}")
        return 0
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



# ---- --work: dp-steering's own run, as pycni-node's worker runs it ---------------------------------
# The worker is forked from a process that imported the plugins (pycni-node's preloads) and runs
# skel.run with the request's environment and stdin in the runtime's netns. Here: the same fork, the
# same skel.run, counted (netlink round trips, sockets, setns, execs, fsyncs, sysctl writes, sleeps,
# /proc/net/packet reads: none depends on the load) and timed with cProfile by category.

CASES = {"tap": ({"mode": "tap", "failOpen": True}, False),             # the CRI chain's: no dp
         "inline": ({"mode": "inline"}, False),                         # with the reference dp
         "tap, dual-stack": ({"mode": "tap", "failOpen": True}, True)}


def _instrument(counts, execs) -> None:
    import builtins
    import fcntl
    from plugins.pkg import ns, rtnl
    R = rtnl.Rtnl
    init, dump, batch, get = R.__init__, R.dump, R.batch, R.get

    def c_init(self, *a, **k):
        counts["netlink sockets"] += 1
        init(self, *a, **k)

    def c_dump(self, kind, body, attempts=3):
        counts["netlink round trips"] += 1
        counts["netlink dumps"] += 1
        return dump(self, kind, body, attempts)

    def c_batch(self, msgs):
        counts["netlink round trips"] += (len(msgs) + R.CHUNK - 1) // R.CHUNK
        counts["netlink messages sent"] += len(msgs)
        return batch(self, msgs)

    def c_get(self, kind, body):
        counts["netlink round trips"] += 1
        counts["netlink gets (one link)"] += 1
        return get(self, kind, body)
    R.__init__, R.dump, R.batch, R.get = c_init, c_dump, c_batch, c_get
    setns = ns._setns

    def c_setns(fd, nstype=ns.CLONE_NEWNET):
        counts["setns"] += 1
        setns(fd, nstype)
    ns._setns = c_setns
    popen = subprocess.Popen.__init__

    def c_popen(self, args, *a, **k):
        execs.append(os.path.basename(str(list(args)[0])))
        popen(self, args, *a, **k)
    subprocess.Popen.__init__ = c_popen
    sleep, fsync, flock, bopen = time.sleep, os.fsync, fcntl.flock, builtins.open

    def c_sleep(s):
        counts["sleeps"] += 1
        sleep(s)

    def c_fsync(fd):
        counts["fsync"] += 1
        fsync(fd)

    def c_flock(fd, op):
        counts["flock"] += bool(op & fcntl.LOCK_EX)
        flock(fd, op)

    def c_open(file, mode="r", *a, **k):
        if isinstance(file, str) and file.startswith("/proc/sys/") and "w" in mode:
            counts["sysctl writes"] += 1
        if isinstance(file, str) and file.endswith("/net/packet"):
            counts["/proc/net/packet reads"] += 1
        return bopen(file, mode, *a, **k)
    time.sleep, os.fsync, fcntl.flock, builtins.open = c_sleep, c_fsync, c_flock, c_open


def _categories(path: str) -> dict[str, float]:
    """ms of a cProfile run by where it went; the first rows add up to the total."""
    import pstats
    st = pstats.Stats(path).stats           # (file, line, func) -> (cc, nc, tt, ct, callers)
    total = max(ct for _, _, _, ct, _ in st.values())
    out = dict.fromkeys(("kernel: netlink requests", "kernel: fsync of records", "kernel: bpf(2) loads",
                         "the dp's control socket", "child processes (exec and wait)"), 0.0)
    for (file, _, func), (_, _, tt, ct, callers) in st.items():
        if func.startswith("<method 's") or func.startswith("<method 'recv"):      # send, sendall, recv
            for (cfile, _, _), (_, _, ctt, _) in callers.items():
                where = os.path.basename(cfile)
                if where == "rtnl.py":
                    out["kernel: netlink requests"] += ctt
                elif where == "dpctl.py":
                    out["the dp's control socket"] += ctt
        elif func == "<built-in method posix.fsync>":
            out["kernel: fsync of records"] += tt
        elif os.path.basename(file) == "bpfasm.py" and func == "_bpf":
            out["kernel: bpf(2) loads"] += ct
        elif os.path.basename(file) == "subprocess.py" and func == "run":
            out["child processes (exec and wait)"] += ct
    out = {k: v * 1000 for k, v in out.items()}
    out["the rest (Python)"] = max(total * 1000 - sum(out.values()), 0.0)
    out["total under cProfile"] = total * 1000
    resolve = [ct for (file, _, func), (_, _, _, ct, _) in st.items()
               if os.path.basename(file) == "steering.py" and func == "resolve_datapath"]
    out["of the total: datapath auto -> a name"] = sum(resolve) * 1000
    return out


def _worker(env: dict, stdin: bytes, runtime_ns: str, instrument: bool, prof: str | None) -> list:
    """Fork as pycni-node does and run the plugin there: [status, stdout, ms, counts, execs]."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            import collections
            import cProfile
            import io
            from plugins.pkg import ns
            fd = os.open(runtime_ns, os.O_RDONLY)
            ns._setns(fd)
            os.close(fd)
            counts: collections.Counter = collections.Counter()
            execs: list[str] = []
            if instrument:
                _instrument(counts, execs)
            os.environ.clear()
            os.environ.update(env)
            from libcni_py import skel
            from plugins.meta.dp_steering.cmd import PLUGIN
            out, err = io.StringIO(), io.StringIO()
            profile = cProfile.Profile() if prof else None
            t = time.perf_counter()
            if profile:
                profile.enable()
            status = skel.run(PLUGIN, os.environ, io.BytesIO(stdin), out, err)
            if profile:
                profile.disable()
                profile.dump_stats(prof)
            ms = (time.perf_counter() - t) * 1000
            os.write(w, json.dumps([status, out.getvalue() + err.getvalue(), ms, counts, execs]).encode())
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            os.write(w, json.dumps([99, repr(e), 0, {}, []]).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


def work_child(case: str, rounds: int, out_path: str) -> None:
    """One code version, one case: `rounds` pods ADDed and DELed in the worker (the first counted,
    the rest profiled); results as JSON to out_path."""
    from importlib import import_module
    from plugins.node import daemon
    for module in list(daemon.PLUGIN_MODULES.values()) + list(daemon.PRELOAD):
        try:
            import_module(module)
        except ImportError:
            pass
    steer, dual = CASES[case]
    made: list[NetNS] = []

    def netns(tag="ns"):
        made.append(NetNS(tag))
        return made[-1]
    tmp = tempfile.mkdtemp(prefix="bench-dpst-work-")
    if steer["mode"] == "inline":
        steer = {**steer, "dpSocket": os.path.join(tmp, "dp.sock")}
    res: dict = {"ADD": {"ms": [], "cat": []}, "DEL": {"ms": [], "cat": []}}
    try:
        w = World(netns, tmp, **steer)
        bridge = {"cniVersion": w.version, "name": "dpnet", **w.bridge()}
        if dual:
            bridge["ipam"]["ranges"].append([{"subnet": "fd44::/64", "gateway": "fd44::1"}])
            bridge["ipam"]["routes"].append({"dst": "::/0"})
        dp = w.dp().start() if steer["mode"] == "inline" else None
        try:
            for i in range(rounds + 1):
                pod_ns = netns("w")
                env = {"CNI_CONTAINERID": f"w{i}", "CNI_NETNS": pod_ns.path, "CNI_IFNAME": "eth0",
                       "CNI_PATH": "/usr/lib/cni", "PATH": os.environ["PATH"], "PYCNI_NODE_SOCKET": "off"}
                from plugins.pkg import ns
                with ns.enter(w.host.path):
                    _, result = timed(["/usr/lib/cni/bridge"], bridge, {**env, "CNI_COMMAND": "ADD"})
                stdin = json.dumps({"cniVersion": w.version, "name": "dpnet", **w.steer, "prevResult": result}).encode()
                for verb in ("ADD", "DEL"):
                    prof = os.path.join(tmp, f"{verb}.prof") if i % 2 else None
                    status, text, ms, counts, execs = _worker({**env, "CNI_COMMAND": verb}, stdin, w.host.path,
                                                              i == 0, prof)
                    if status != 0:
                        raise RuntimeError(f"{case} {verb}: status {status}: {text}")
                    if i == 0:
                        res[verb]["counts"], res[verb]["execs"] = counts, execs
                    elif prof:
                        res[verb]["cat"].append(_categories(prof))
                    else:
                        res[verb]["ms"].append(ms)
                with ns.enter(w.host.path):
                    timed(["/usr/lib/cni/bridge"], {**bridge, "prevResult": result}, {**env, "CNI_COMMAND": "DEL"})
                pod_ns.close()
                made.remove(pod_ns)
        finally:
            if dp is not None:
                dp.stop()
    finally:
        for n in reversed(made):
            n.close()
        shutil.rmtree(tmp, ignore_errors=True)
    with open(out_path, "w") as f:
        json.dump(res, f)


def work(rounds: int, before: str | None, batches: int = 3) -> str:
    """Every case, the code of this tree (and of `before`), in interleaved child processes."""
    codes = {"now": None, **({"before": before} if before else {})}
    if before and not os.path.exists(os.path.join(before, ".venv")):
        os.symlink(os.path.join(ROOT, ".venv"), os.path.join(before, ".venv"))     # its kit's pycni-dp
    got: dict = {}
    tmp = tempfile.mkdtemp(prefix="bench-dpst-work-out-")
    load = os.getloadavg()[0]
    try:
        for _ in range(batches):
            for case in CASES:
                for label, code in codes.items():
                    out = os.path.join(tmp, "r.json")
                    env = dict(os.environ, **({"PYCNI_BENCH_CODE": code} if code else {}))
                    subprocess.run([sys.executable, os.path.abspath(__file__), "--work-child", case, str(rounds), out],
                                   env=env, check=True, timeout=600)
                    with open(out) as f:
                        r = json.load(f)
                    for verb in ("ADD", "DEL"):
                        g = got.setdefault((case, label, verb), {"ms": [], "cat": [], "counts": r[verb]["counts"],
                                                                 "execs": r[verb]["execs"]})
                        g["ms"] += r[verb]["ms"]
                        g["cat"] += r[verb]["cat"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    keys = sorted({k for g in got.values() for k in g["counts"]})
    cols = [(case, label) for case in CASES for label in codes]
    lines = []
    for verb in ("ADD", "DEL"):
        lines += [f"\n{verb}: counts (one pod, the only one on its pair; none depends on the load)\n",
                  "| count | " + " | ".join(f"{c}, {lb}" for c, lb in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for k in keys + ["execs"]:
            vals = [(" ".join(got[(c, lb, verb)]["execs"]) or "none") if k == "execs"
                    else str(got[(c, lb, verb)]["counts"].get(k, 0)) for c, lb in cols]
            lines.append(f"| {k} | " + " | ".join(vals) + " |")
        cats = list(got[cols[0] + (verb,)]["cat"][0])
        lines += [f"\n{verb}: where the time goes, median ms under cProfile "
                  "(measured under load)\n",
                  "| where | " + " | ".join(f"{c}, {lb}" for c, lb in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for cat in cats:
            lines.append(f"| {cat} | " + " | ".join(
                f"{statistics.median(x[cat] for x in got[(c, lb, verb)]['cat']):.1f}" for c, lb in cols) + " |")
        lines.append("| in the worker without cProfile | " + " | ".join(
            f"{statistics.median(got[(c, lb, verb)]['ms']):.1f}" for c, lb in cols) + " |")
    lines.append(f"\nRun {time.strftime('%Y-%m-%d %H:%M')}: {batches} batches of {rounds} pods per case and code, "
                 f"interleaved (child processes), forked from a process with pycni-node's preloads as its worker "
                 f"is; load average before/after {load:.2f} / {os.getloadavg()[0]:.2f} (other jobs ran: "
                 f"the ms are noisy, the counts are not); {os.cpu_count()} CPUs, kernel {platform.release()}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
