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
   depend on the load; with bpf(2) loads, records written and the netlink requests that wait for
   RCU), where cProfile sees the time go, and the wall ms by part without cProfile (the RCU-waiting
   requests, records, eBPF, the pull's pieces, ...); with `--before DIR`, that checkout's code too,
   interleaved.
4. `--pods`: dp-steering ADD and DEL of one pod with N pods already on its vbr/vth pair (N = 1, 30,
   100; tap + failOpen, no dp), in-process as pycni-node's worker runs it: the files it opens under
   stateDir (other pods' records among them), what it asks the kernel of vbr's filters, the fsyncs
   (counts that do not depend on the load) and the median wall ms; with `--before DIR`, that
   checkout's code too.
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
    if len(sys.argv) == 4 and sys.argv[1] == "--pods-child":
        pods_child(int(sys.argv[2]), sys.argv[3])
        return 0
    ap = benchout.options(__doc__, runs=10)
    ap.add_argument("--rounds", dest="runs", type=int, default=argparse.SUPPRESS, metavar="N",
                    help="the same as --runs")
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--no-iperf", action="store_true", help="only the ADD/DEL figures")
    ap.add_argument("--before", metavar="DIR", help="also time the dp-steering of the checkout in DIR")
    ap.add_argument("--work", action="store_true",
                    help="only dp-steering's own run in a pycni-node worker: counts and cProfile by category")
    ap.add_argument("--pods", action="store_true",
                    help="only ADD/DEL with N pods already on the pair: files read, vbr's filters, ms")
    opts = ap.parse_args()
    if opts.pods:
        text = pods_bench(max(opts.runs, 3), opts.before)
        print(text)
        print(f"written to {benchout.write_section('dp_steering', 'pods', text)}")
        return 0
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
        t = time.perf_counter()
        try:
            return batch(self, msgs)
        finally:       # a netns move or a link deletion waits for RCU (>= ~10 ms); the rest < 1 ms
            counts["netlink requests waiting >= 5 ms (RCU: the floor)"] += time.perf_counter() - t >= 0.005

    def c_get(self, kind, body):
        counts["netlink round trips"] += 1
        counts["netlink gets (one link)"] += 1
        return get(self, kind, body)
    R.__init__, R.dump, R.batch, R.get = c_init, c_dump, c_batch, c_get
    from libcni_py import records
    from plugins.meta.dp_steering import bpfasm
    load, write = bpfasm.load_sched_cls, records.write

    def c_load(*a, **k):
        counts["bpf(2) program loads"] += 1
        return load(*a, **k)

    def c_write(*a, **k):
        counts["records written"] += 1
        return write(*a, **k)
    bpfasm.load_sched_cls, records.write = c_load, c_write
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


# The timed rounds' wall ms by part (inclusive, nested parts overlap), wrapped at module level
# (every caller looks them up there): the one netlink request that waits for RCU is its own row.
PARTS = (("the RCU-waiting requests (the floor)", None, None),
         ("records written (pod journal/record, pair record)", "libcni_py.records", "write"),
         ("config read (config.load)", "plugins.meta.dp_steering.config", "load"),
         ("datapath auto -> a name", "plugins.meta.dp_steering.steering", "resolve_datapath"),
         ("pull: snapshot (3 dumps)", "plugins.meta.dp_steering.triad", "snapshot"),
         ("pull: the pod's veth made", "plugins.pkg.link", "create_veth"),
         ("ports up with IPv6 off (quiet_up)", "plugins.meta.dp_steering.triad", "quiet_up"),
         ("pull, whole", "plugins.meta.dp_steering.triad", "pull"),
         ("pair joined (made, its record written)", "plugins.meta.dp_steering.enforcer", "acquire"),
         ("settle (dp told/awaited)", "plugins.meta.dp_steering.steering", "settle"),
         ("eBPF: programs assembled", "plugins.meta.dp_steering.datapath_ebpf", "program"),
         ("eBPF: bpf(2) loads", "plugins.meta.dp_steering.bpfasm", "load_sched_cls"),
         ("filters installed, whole", "plugins.meta.dp_steering.steering", "_install"),
         ("link lookups (index_of/find)", "plugins.pkg.link", "index_of"),
         ("DEL: filters deleted", "plugins.meta.dp_steering.steering", "_remove_rules"),
         ("DEL: restore, whole", "plugins.meta.dp_steering.triad", "restore"),
         ("DEL: pair released", "plugins.meta.dp_steering.enforcer", "release"))


def _time_parts(parts: dict) -> None:
    from importlib import import_module
    from plugins.pkg import rtnl

    def timing(row, f):
        def timed_part(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                parts[row] = parts.get(row, 0.0) + (time.perf_counter() - t) * 1000
        return timed_part
    for row, module, name in PARTS:
        if module is None:
            continue
        m = import_module(module)
        if hasattr(m, name):
            setattr(m, name, timing(row, getattr(m, name)))
    batch = rtnl.Rtnl.batch

    def c_batch(self, msgs):
        t = time.perf_counter()
        try:
            return batch(self, msgs)
        finally:
            ms = (time.perf_counter() - t) * 1000
            if ms >= 5:
                parts[PARTS[0][0]] = parts.get(PARTS[0][0], 0.0) + ms
    rtnl.Rtnl.batch = c_batch


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


def _in_fork(runtime_ns: str, body, failed: list) -> list:
    """Fork as pycni-node does, enter the runtime's netns there, and run `body()`: its JSON-able
    list back to the parent (`failed` with the exception's repr at [1] when it raised)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            from plugins.pkg import ns
            fd = os.open(runtime_ns, os.O_RDONLY)
            ns._setns(fd)
            os.close(fd)
            os.write(w, json.dumps(body()).encode())
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            failed = list(failed)
            failed[1] = repr(e)
            os.write(w, json.dumps(failed).encode())
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


def _preload() -> None:
    """The modules pycni-node's main imports before it forks its workers."""
    from importlib import import_module
    from plugins.node import daemon
    for module in list(daemon.PLUGIN_MODULES.values()) + list(daemon.PRELOAD):
        try:
            import_module(module)
        except ImportError:
            pass


def _worker(env: dict, stdin: bytes, runtime_ns: str, instrument: bool, prof: str | None) -> list:
    """Run the plugin in a fork as pycni-node's worker does: [status, stdout, ms, counts, execs, parts]."""
    def body() -> list:
        import collections
        import cProfile
        import io
        counts: collections.Counter = collections.Counter()
        execs: list[str] = []
        parts: dict = {}
        if instrument:
            _instrument(counts, execs)
        elif not prof:
            _time_parts(parts)
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
        return [status, out.getvalue() + err.getvalue(), ms, counts, execs, parts]
    return _in_fork(runtime_ns, body, [99, "", 0, {}, [], {}])


def work_child(case: str, rounds: int, out_path: str) -> None:
    """One code version, one case: `rounds` pods ADDed and DELed in the worker (the first counted,
    the rest profiled); results as JSON to out_path."""
    _preload()
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
                    status, text, ms, counts, execs, parts = _worker({**env, "CNI_COMMAND": verb}, stdin,
                                                                     w.host.path, i == 0, prof)
                    if status != 0:
                        raise RuntimeError(f"{case} {verb}: status {status}: {text}")
                    if i == 0:
                        res[verb]["counts"], res[verb]["execs"] = counts, execs
                    elif prof:
                        res[verb]["cat"].append(_categories(prof))
                    else:
                        res[verb]["ms"].append(ms)
                        res[verb].setdefault("parts", []).append(parts)
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
                        g.setdefault("parts", []).extend(r[verb].get("parts", []))
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
                  "(the run line gives the load)\n",
                  "| where | " + " | ".join(f"{c}, {lb}" for c, lb in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for cat in cats:
            lines.append(f"| {cat} | " + " | ".join(
                f"{statistics.median(x[cat] for x in got[(c, lb, verb)]['cat']):.1f}" for c, lb in cols) + " |")
        lines.append("| in the worker without cProfile | " + " | ".join(
            f"{statistics.median(got[(c, lb, verb)]['ms']):.1f}" for c, lb in cols) + " |")
        lines += [f"\n{verb}: where the wall time goes without cProfile, median ms by part (inclusive: a "
                  "\"whole\" row holds the rows above it)\n",
                  "| part | " + " | ".join(f"{c}, {lb}" for c, lb in cols) + " |", "|---|" + "---:|" * len(cols)]
        for row, _, _ in PARTS:
            vals = [[p.get(row, 0.0) for p in got[(c, lb, verb)].get("parts", [])] for c, lb in cols]
            if any(v and statistics.median(v) >= 0.05 for v in vals):
                lines.append(f"| {row} | " + " | ".join(f"{statistics.median(v):.1f}" if v else "-" for v in vals)
                             + " |")
        lines.append("| in the worker, whole | " + " | ".join(
            f"{statistics.median(got[(c, lb, verb)]['ms']):.1f}" for c, lb in cols) + " |")
        def rest(g) -> float:        # each run's ms less its own RCU-waiting requests
            return statistics.median(ms - p.get(PARTS[0][0], 0.0) for ms, p in zip(g["ms"], g["parts"]))
        lines.append("| in the worker, less its RCU-waiting requests (per run) | " + " | ".join(
            f"{rest(got[(c, lb, verb)]):.1f}" for c, lb in cols) + " |")
    lines.append(f"\nRun {time.strftime('%Y-%m-%d %H:%M')}: {batches} batches of {rounds} pods per case and code, "
                 f"interleaved (child processes), forked from a process with pycni-node's preloads as its worker "
                 f"is; load average before/after {load:.2f} / {os.getloadavg()[0]:.2f} (other jobs ran: "
                 f"the ms are noisy, the counts are not); {os.cpu_count()} CPUs, kernel {platform.release()}.")
    return "\n".join(lines)


# ---- --pods: ADD and DEL with N pods already on the pair ---------------------------------------------
# Each other pod is a veth (its peer in the host netns) steered by an in-process ADD; the timed pod is
# ADDed and DELed `rounds` times in the worker's fork. Counted in the fork: every file opened under
# stateDir (os.open: libcni_py.records reads and writes through it), those under stateDir/pods that are
# not the timed pod's own (other pods' records), the filter entries tc.filters parsed and the priorities
# tc.pref_taken asked about (vbr's filters: for priorities a filter not ours holds), the fsyncs.

PAIR_PODS = (1, 30, 100)
PODS_ROWS = ("files opened under stateDir", "of them other pods' records", "fsync",
             "filters parsed (tc.filters dumps)", "priorities asked of the kernel (tc.pref_taken)",
             "ms asking the kernel for vbr's filters (first round)", "netlink dump answers (messages)")


def _veth_pod(host, netns, k: int) -> tuple:
    """A pod netns whose eth0 (peer in `host`) has 10.45.<k // 250>.<k % 250 + 2>/16: (netns, prevResult)."""
    pod = netns("pp")
    ip = f"10.45.{k // 250}.{k % 250 + 2}"
    host.run("ip", "link", "add", f"hp{k}", "type", "veth", "peer", "name", "eth0", "netns", pod.name)
    pod.run("ip", "addr", "add", f"{ip}/16", "dev", "eth0")
    pod.run("ip", "link", "set", "eth0", "up")
    mac = json.loads(pod.run("ip", "-j", "link", "show", "eth0").stdout)[0]["address"]
    return pod, {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "mac": mac, "sandbox": pod.path}],
                 "ips": [{"address": f"{ip}/16", "interface": 0}]}


def _count_state(counts, state_dir: str, own: str) -> None:
    """In the fork: count opens under state_dir, other pods' records among them, tc.filters entries."""
    from plugins.pkg import tc
    osopen, filters, fsync = os.open, tc.filters, os.fsync
    pods = os.path.join(state_dir, "pods") + "/"

    def c_open(path, flags, *a, **k):
        p = os.fsdecode(path) if isinstance(path, (str, bytes)) else ""
        if p.startswith(state_dir + "/") and not p.endswith("/lock"):
            counts["files opened under stateDir"] += 1
            if p.startswith(pods) and not p[len(pods):].startswith(own + "/"):
                counts["of them other pods' records"] += 1
        return osopen(path, flags, *a, **k)

    def c_filters(rt, index, *a, **k):
        t = time.perf_counter()
        got = filters(rt, index, *a, **k)
        counts["ms asking the kernel for vbr's filters (first round)"] += (time.perf_counter() - t) * 1000
        counts["filters parsed (tc.filters dumps)"] += len(got)
        return got

    def c_fsync(fd):
        counts["fsync"] += 1
        fsync(fd)
    os.open, tc.filters, os.fsync = c_open, c_filters, c_fsync
    from plugins.pkg import rtnl
    dump = rtnl.Rtnl.dump

    def c_dump(self, kind, body, *a, **k):
        got = dump(self, kind, body, *a, **k)
        counts["netlink dump answers (messages)"] += len(got)
        return got
    rtnl.Rtnl.dump = c_dump
    taken = getattr(tc, "pref_taken", None)           # not in the code before it
    if taken is not None:
        def c_taken(rt, index, pref, *a, **k):
            t = time.perf_counter()
            got = taken(rt, index, pref, *a, **k)
            counts["ms asking the kernel for vbr's filters (first round)"] += (time.perf_counter() - t) * 1000
            counts["priorities asked of the kernel (tc.pref_taken)"] += 1
            return got
        tc.pref_taken = c_taken


def _pods_run(env: dict, stdin: bytes, runtime_ns: str, state_dir: str, own: str) -> list:
    """One verb in a fork, as pycni-node's worker runs it: [status, output, [ms, cpu ms], counts]."""
    def body() -> list:
        import collections
        import io
        import resource
        counts: collections.Counter = collections.Counter()
        _count_state(counts, state_dir, own)
        os.environ.clear()
        os.environ.update(env)
        from libcni_py import skel
        from plugins.meta.dp_steering.cmd import PLUGIN
        out, err = io.StringIO(), io.StringIO()
        t, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        status = skel.run(PLUGIN, os.environ, io.BytesIO(stdin), out, err)
        ms, r1 = (time.perf_counter() - t) * 1000, resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) * 1000
        return [status, out.getvalue() + err.getvalue(), [ms, cpu], counts]
    return _in_fork(runtime_ns, body, [99, "", [0, 0], {}])


def pods_child(rounds: int, out_path: str) -> None:
    """One code version: for each N of PAIR_PODS, fill the pair to N pods, then ADD and DEL one more
    pod `rounds` times (the first round's counts, every round's ms); JSON to out_path."""
    _preload()
    made: list[NetNS] = []

    def netns(tag="ns"):
        made.append(NetNS(tag))
        return made[-1]
    tmp = tempfile.mkdtemp(prefix="bench-dpst-pods-")
    res: dict = {}
    try:
        w = World(netns, tmp, mode="tap", failOpen=True)
        state_dir = w.state_dir

        def run(verb: str, cid: str, prev: dict, pod_ns) -> tuple[list, dict]:
            env = {"CNI_CONTAINERID": cid, "CNI_NETNS": pod_ns.path, "CNI_IFNAME": "eth0", "CNI_COMMAND": verb,
                   "CNI_PATH": "/usr/lib/cni", "PATH": os.environ["PATH"], "PYCNI_NODE_SOCKET": "off"}
            stdin = json.dumps({"cniVersion": "1.0.0", "name": "dpnet", **w.steer, "prevResult": prev}).encode()
            status, text, ms, counts = _pods_run(env, stdin, w.host.path, state_dir, cid)
            if status != 0:
                raise RuntimeError(f"{verb} {cid}: status {status}: {text}")
            return ms, counts
        probe_ns, probe_prev = _veth_pod(w.host, netns, 0)
        on_pair = 0
        for n in PAIR_PODS:
            while on_pair < n:
                on_pair += 1
                pod_ns, prev = _veth_pod(w.host, netns, on_pair)
                run("ADD", f"o{on_pair}", prev, pod_ns)
            got: dict = {"ADD": {"ms": [], "cpu": []}, "DEL": {"ms": [], "cpu": []}}
            for i in range(rounds):
                for verb in ("ADD", "DEL"):
                    (ms, cpu), counts = run(verb, "probe", probe_prev, probe_ns)
                    got[verb]["ms"].append(ms)
                    got[verb]["cpu"].append(cpu)
                    if i == 0:
                        got[verb]["counts"] = counts
            res[str(n)] = got
    finally:
        for ns_ in reversed(made):
            ns_.close()
        shutil.rmtree(tmp, ignore_errors=True)
    with open(out_path, "w") as f:
        json.dump(res, f)


def pods_bench(rounds: int, before: str | None, batches: int = 2) -> str:
    codes = {"now": None, **({"before": before} if before else {})}
    got: dict = {}
    tmp = tempfile.mkdtemp(prefix="bench-dpst-pods-out-")
    load = os.getloadavg()[0]
    order = list(codes.items())
    try:
        for batch in range(batches):        # now, before; then before, now: each code early and late
            for label, code in order if batch % 2 == 0 else order[::-1]:
                out = os.path.join(tmp, f"{label}.json")
                env = dict(os.environ, **({"PYCNI_BENCH_CODE": code} if code else {}))
                subprocess.run([sys.executable, os.path.abspath(__file__), "--pods-child", str(rounds), out],
                               env=env, check=True, timeout=1800)
                with open(out) as f:
                    r = json.load(f)
                if label not in got:
                    got[label] = r
                    continue
                for n in r:
                    for verb in r[n]:
                        for key in ("ms", "cpu"):
                            got[label][n][verb][key] += r[n][verb][key]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cols = [(n, label) for n in PAIR_PODS for label in codes]
    lines = []
    for verb in ("ADD", "DEL"):
        keys = [k for k in PODS_ROWS if any(k in got[lb][str(n)][verb]["counts"] for n, lb in cols)]
        lines += [f"\n{verb} of one pod with N pods already on its pair (counts: none depends on the load)\n",
                  "| count | " + " | ".join(f"N={n}, {lb}" for n, lb in cols) + " |", "|---|" + "---:|" * len(cols)]
        for k in keys:
            vals = [got[lb][str(n)][verb]["counts"].get(k, 0) for n, lb in cols]
            lines.append(f"| {k} | " + " | ".join(f"{v:.1f}" if k.startswith("ms") else str(v) for v in vals) + " |")
        for key, what in (("cpu", "median CPU ms (user + sys) of the worker"),
                          ("ms", "median wall ms in the worker")):
            lines.append(f"| {what} | " + " | ".join(
                f"{statistics.median(got[lb][str(n)][verb][key]):.1f}" for n, lb in cols) + " |")
    lines.append(f"\nRun {time.strftime('%Y-%m-%d %H:%M')}: {batches} batches of {rounds} ADD+DEL rounds per N and "
                 f"code, tap + failOpen without a dp, eBPF/tc-pedit as `auto` picks; the code versions in child "
                 f"processes one after the other, in turns (now, before; before, now); load average "
                 f"before/after {load:.2f} / {os.getloadavg()[0]:.2f} (other jobs "
                 f"ran: the ms are noisy, the counts are not); {os.cpu_count()} CPUs, kernel {platform.release()}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
