"""ADD and DEL wall time of each of our plugins exec'd in-process and through pycni-node, against
the Go bridge + host-local, same run, interleaved, medians. Root: scratch netns it removes.

    sudo .venv/bin/python bench/node_daemon.py [--runs 20] [--bundle DIST]

Every exec is what a runtime does (env + config on stdin) from a scratch "host" netns (a veth
eth0 with a default route, the vxlan underlay), the venv's launchers (or with --bundle the
PyInstaller build's bin/, as ./build.sh bin makes it: what an install runs); the daemon is a
pycni-node on a socket in a temp dir, started once (its start is not timed). Per round, for
each mode: Go bridge+host-local ADD (its result is dp-steering's prevResult), dp-steering
(tap) ADD, edgemesh (first pod: chains and jumps, iptables) ADD, pycni-passthrough ADD, vxlan
(file registry; a pod netns of its own) ADD, then the DELs in reverse.
Writes bench/node_daemon.md (or $PYCNI_BENCH_OUT/).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench import benchout  # noqa: E402
from plugins.pkg.ns import enter  # noqa: E402

VENV_BIN = os.path.join(ROOT, ".venv", "bin")
BIN = VENV_BIN          # our executables: the venv's, or --bundle's DIST/bin
FLOOR = [os.path.join(VENV_BIN, "python"), "-c", "pass"]     # an interpreter start, as the launchers' shebang
GO = "/usr/lib/cni"
OURS = ("vxlan", "dp-steering", "edgemesh", "pycni-passthrough")
MODES = ("in-process", "daemon")


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def run(plugin: str, command: str, conf: dict, netns: str, sock: str,
        execs: dict | None = None) -> tuple[float, bytes]:
    """ms and stdout of one exec; `execs` gets {client pid: (start, end)} (time.monotonic, the
    clock of pycni-node's "accepted at")."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": "c1", "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": f"{BIN}:{GO}",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default", "PYCNI_NODE_SOCKET": sock}
    path = os.path.join(GO if plugin == "bridge" else BIN, plugin)
    data = json.dumps(conf).encode()
    t0 = time.monotonic()
    p = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err = p.communicate(data, timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise
    t1 = time.monotonic()
    if execs is not None:
        execs[p.pid] = (t0, t1)
    if p.returncode != 0:
        raise RuntimeError(f"{plugin} {command}: {out!r} {err!r}")
    return (t1 - t0) * 1000, out


def proc_usage(pid: int) -> dict:
    """VmRSS (KiB), own CPU and reaped children's CPU (s) of a process."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return {"rss": rss, "cpu": (int(fields[11]) + int(fields[12])) / tick,
            "children": (int(fields[13]) + int(fields[14])) / tick, "t": time.monotonic()}


def wait_agent(state_dir: str, daemon: subprocess.Popen, log_path: str, within: float = 30) -> None:
    """Until the vxlan agent pycni-node runs has written its live state (the node's lease and
    device): from then on a vxlan ADD reads it instead of reconciling the node."""
    from plugins.main.vxlan import lease
    deadline = time.monotonic() + within
    while lease.agent_state(state_dir)[0] is None:
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"pycni-node's vxlan agent never became ready: see {log_path}")
        time.sleep(0.05)


def wait_listening(daemon: subprocess.Popen, sock: str, log_path: str, within: float = 60) -> None:
    """Until pycni-node has made its socket; RuntimeError if it exits or takes longer."""
    deadline = time.monotonic() + within
    while not os.path.exists(sock):
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"pycni-node did not start: see {log_path}")
        time.sleep(0.05)


def worker_times(log_path: str) -> dict[str, list[float]]:
    """Each plugin's own run in its worker, ms by "plugin VERB", from pycni-node's debug log."""
    out: dict[str, list[float]] = {}
    with open(log_path) as f:
        for line in f:
            m = re.match(r"pycni-node: served (\S+) (\S+) pid \d+: status \d+ in ([\d.]+) ms", line)
            if m:
                out.setdefault(f"{m.group(1)} {m.group(2)}", []).append(float(m.group(3)))
    return out


# pycni-node's debug line per request: the phases of plugins/node/daemon.py's PHASES, in three
# parts: the daemon's dispatch (its own work around the plugin), the client's time between the
# frames (the worker waits: the hello after connect, the request after OK) and the plugin's run.
DISPATCH = ("start", "check", "mntns", "netns", "ok", "setup", "output")
CLIENT_WAIT = ("hello", "request")
_SERVED = re.compile(r"pycni-node: served (\S+) (\S+) pid (\d+): status -?\d+ in [\d.]+ ms; accepted at ([\d.]+); "
                     r"(.*?); mntns (\w+); faults (\d+) \+ (\d+) \+ (\d+); imported \d+ ?([^;\s]*)")


def served_requests(log_path: str) -> list[dict]:
    """Each request's phases (ms), accept time (monotonic s), faults and the modules the plugin
    imported, from pycni-node's debug log."""
    out = []
    with open(log_path, errors="replace") as f:
        for line in f:
            m = _SERVED.match(line)
            if not m:
                continue
            ph = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)", m.group(5))}
            out.append({"key": f"{m.group(1)} {m.group(2)}", "pid": int(m.group(3)), "accepted": float(m.group(4)),
                        "phases": ph, "dispatch": sum(ph.get(k, 0.0) for k in DISPATCH),
                        "client_wait": sum(ph.get(k, 0.0) for k in CLIENT_WAIT), "plugin": ph.get("plugin", 0.0),
                        "mntns": m.group(6), "faults_path": int(m.group(8)), "faults_run": int(m.group(9)),
                        "imported": [x for x in m.group(10).split(",") if x]})
    return out


def breakdown(requests: list[dict], execs: dict | None = None) -> dict[str, dict[str, float]]:
    """Medians per "plugin VERB": the daemon's dispatch, the client's waits, the plugin's run,
    faults on the path and in the run; with `execs` ({pid: (start, end)}) also the client's exec
    up to its connect and the time from the plugin's end to the client's exit."""
    by: dict[str, list[dict]] = {}
    for r in requests:
        by.setdefault(r["key"], []).append(r)
    out: dict[str, dict[str, float]] = {}
    for key, rs in by.items():
        if execs is not None:
            rs = [r for r in rs if r["pid"] in execs]           # the timed rounds only
            if not rs:
                continue
        row = {k: statistics.median(r[k] for r in rs) for k in ("dispatch", "client_wait", "plugin", "faults_path",
                                                                "faults_run")}
        row["imported"] = max(len(r["imported"]) for r in rs)
        if execs:
            known = [(r, execs[r["pid"]]) for r in rs if r["pid"] in execs]
            if known:
                row["connect"] = statistics.median((r["accepted"] - t0) * 1000 for r, (t0, _) in known)
                row["after"] = statistics.median(
                    (t1 - r["accepted"]) * 1000 - sum(r["phases"].values()) for r, (_, t1) in known)
        out[key] = row
    return out


def imported(requests: list[dict]) -> dict[str, list[str]]:
    """The modules each "plugin VERB" imported in its worker (the daemon could preload them)."""
    out: dict[str, set] = {}
    for r in requests:
        out.setdefault(r["key"], set()).update(r["imported"])
    return {k: sorted(v) for k, v in out.items() if v}


def service_pids(log_path: str) -> dict[str, int]:
    """The services pycni-node runs (its vxlan agent, the fail-open watcher), name -> the pid of the
    last start its log names."""
    import re
    with open(log_path, errors="replace") as f:
        return {m.group(1): int(m.group(2)) for m in re.finditer(r"service (\S+) started \(pid (\d+)\)", f.read())}


def private_mib(pid: int) -> float:
    """Private memory of a process (MiB: Private_Clean + Private_Dirty): what it does not share with
    pycni-node's main after the fork (its VmRSS counts the shared pages too)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean:", "Private_Dirty:"))) / 1024


def spare_memory(pid: int, services: tuple[int, ...] = ()) -> list[float]:
    """private_mib of each child of `pid` but `services` (pycni-node's spare workers waiting in
    accept(), when no request runs)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in services:
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                if int(f.read().rpartition(")")[2].split()[1]) != pid:
                    continue
            out.append(private_mib(int(d)))
        except (OSError, ValueError, IndexError):
            continue
    return out


def breakdown_table(bd: dict[str, dict[str, float]], keys: list[str]) -> list[str]:
    rows = ["| through pycni-node (medians) | client exec to connect ms | client between frames ms | "
            "daemon dispatch ms | plugin in the worker ms | reply to client exit ms | faults on the path | "
            "faults in the run | modules imported |", "|---|" + "---:|" * 8]
    for key in keys:
        b = bd.get(key)
        if b is None:
            continue
        cells = [f"{b[k]:.1f}" if k in b else "-" for k in ("connect", "client_wait")]
        cells += [f"{b['dispatch']:.2f}", f"{b['plugin']:.1f}", f"{b['after']:.1f}" if "after" in b else "-",
                  f"{b['faults_path']:.0f}", f"{b['faults_run']:.0f}", f"{b['imported']:.0f}"]
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    return rows


BREAKDOWN_NOTE = (
    "Read from pycni-node's debug line per request (plugins/node/daemon.py PHASES, CLOCK_MONOTONIC, so "
    "comparable with the exec's start and end here): *client exec to connect* is the exec's start to the "
    "worker's accept (interpreter start, the client's imports, connect); *client between frames* the worker "
    "waiting for the client's hello after the connect and for its request and stdin after OK; *daemon dispatch* "
    "the daemon's own work on the path (a spare's wake-up, SO_PEERCRED and the hello check, setns of the mount "
    "namespace when it differs and of the network namespace, OK, the exec's process state, collecting stdout); "
    "*plugin in the worker* skel.run with the cmd_* work and its children; *reply to client exit* the reply "
    "frame, the client writing it out and exiting, and the wait of this process. Faults are the worker's "
    "minor page faults (copy-on-write after the fork) after its accept up to the plugin, and in the plugin's "
    "run; modules imported the ones the plugin imported that the daemon had not preloaded.")


def stop(daemon: subprocess.Popen) -> None:
    """SIGTERM (requests in flight finish), 30 s, then SIGKILL to its session."""
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(daemon.pid, signal.SIGKILL)


def main() -> int:
    global BIN, FLOOR
    ap = benchout.options(__doc__, runs=20)
    ap.add_argument("--no-agent", action="store_true",
                    help="pycni-node without --conf: no vxlan agent, so every vxlan ADD reconciles the node itself")
    ap.add_argument("--bundle", metavar="DIST", help="our plugins and pycni-node from this PyInstaller build "
                    "(DIST/bin, as ./build.sh bin makes it) instead of the venv's launchers")
    args = ap.parse_args()
    if args.bundle:
        BIN = os.path.join(os.path.abspath(args.bundle), "bin")
        python = os.path.join(os.path.abspath(args.bundle), "pycni", "bin", "python3")
        if os.path.exists(python):                          # the bundle launchers' interpreter
            FLOOR = [python, "-IS", "-c", "pass"]
    subprocess.run([sys.executable, "-m", "compileall", "-q", "libcni_py", "plugins"], cwd=ROOT, check=True)
    tag = f"ndb{os.getpid() % 100000}"
    names = {k: f"{tag}{k}" for k in ("h", "p", "e", "q")}
    tmp = tempfile.mkdtemp(prefix="node-daemon-bench-")
    os.chmod(tmp, 0o700)
    sock = os.path.join(tmp, "node.sock")
    daemon = None
    times: dict[str, list[float]] = {}
    start_ms: list[float] = []
    worker: dict[str, list[float]] = {}
    execs: dict[int, tuple[float, float]] = {}       # the timed daemon-mode execs: pid -> (start, end)
    spares: list[float] = []
    load_before = os.getloadavg()[0]
    try:
        for n in names.values():
            sh("ip", "netns", "add", n)
        host, pod, enf, pod2 = (f"/run/netns/{names[k]}" for k in ("h", "p", "e", "q"))
        for argv in (["link", "set", "lo", "up"], ["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"],
                     ["addr", "add", "198.18.0.1/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
                     ["route", "add", "default", "via", "198.18.0.254", "dev", "eth0"]):
            sh("ip", "-n", names["h"], *argv)
        bridge = {"cniVersion": "1.0.0", "name": "bench", "type": "bridge", "bridge": "cni-b0", "isGateway": True,
                  "ipam": {"type": "host-local", "dataDir": os.path.join(tmp, "ipam"),
                           "ranges": [[{"subnet": "10.44.0.0/24", "gateway": "10.44.0.1"}]]}}
        steer = {"cniVersion": "1.0.0", "name": "bench", "type": "dp-steering", "enforcerNetns": enf,
                 "stateDir": os.path.join(tmp, "dp"), "vbrName": "vbr", "vthName": "vth", "mode": "tap"}
        em = {"cniVersion": "1.0.0", "name": "bench", "type": "edgemesh", "serviceCIDR": "10.96.0.0/12",
              "backend": "iptables", "stateDir": os.path.join(tmp, "em")}
        pt = {"cniVersion": "1.0.0", "name": "bench", "type": "pycni-passthrough"}
        ptp = "pycni-passthrough"
        vx = {"cniVersion": "1.0.0", "name": "bench", "type": "vxlan", "network": "10.244.0.0/16",
              "registry": {"type": "file", "path": os.path.join(tmp, "registry.json")},
              "stateDir": os.path.join(tmp, "vx"), "nodeName": "n1"}
        node_conf = []
        if not args.no_agent:              # a node as deployed: pycni-node --conf runs the vxlan agent
            node_conf = ["--conf", os.path.join(tmp, "vxlan.conf")]
            with open(node_conf[1], "w") as f:
                json.dump(vx, f)
        with open(os.path.join(tmp, "node.log"), "ab") as log, enter(host):
            daemon = subprocess.Popen([os.path.join(BIN, "pycni-node"), "--socket", sock, "--log-level", "debug",
                                       *node_conf], stdout=log, stderr=log, start_new_session=True)
        wait_listening(daemon, sock, f"{tmp}/node.log")
        if node_conf:
            wait_agent(str(vx["stateDir"]), daemon, f"{tmp}/node.log")
        services = service_pids(f"{tmp}/node.log")
        time.sleep(1.0)
        idle = proc_usage(daemon.pid)                      # after start-up, before any request
        time.sleep(5.0)
        idle_after = proc_usage(daemon.pid)
        with enter(host):
            for i in range(args.runs + 2):
                for mode in MODES:
                    s = sock if mode == "daemon" else os.path.join(tmp, "none", "node.sock")
                    t: dict[str, float] = {}
                    ex = execs if mode == "daemon" and i >= 2 else None
                    t["bridge ADD"], out = run("bridge", "ADD", bridge, pod, s)
                    prev = json.loads(out)
                    t["dp-steering ADD"], _ = run("dp-steering", "ADD", {**steer, "prevResult": prev}, pod, s, ex)
                    t["edgemesh ADD"], _ = run("edgemesh", "ADD", {**em, "prevResult": prev}, pod, s, ex)
                    t["pycni-passthrough ADD"], _ = run(ptp, "ADD", {**pt, "prevResult": prev}, pod, s, ex)
                    t["vxlan ADD"], _ = run("vxlan", "ADD", vx, pod2, s, ex)
                    t["vxlan DEL"], _ = run("vxlan", "DEL", vx, pod2, s, ex)
                    t["pycni-passthrough DEL"], _ = run(ptp, "DEL", {**pt, "prevResult": prev}, pod, s, ex)
                    t["edgemesh DEL"], _ = run("edgemesh", "DEL", {**em, "prevResult": prev}, pod, s, ex)
                    t["dp-steering DEL"], _ = run("dp-steering", "DEL", {**steer, "prevResult": prev}, pod, s, ex)
                    t["bridge DEL"], _ = run("bridge", "DEL", bridge, pod, s)
                    if mode == "daemon":                          # the floor: an interpreter start
                        t0 = time.perf_counter()
                        subprocess.run(FLOOR, check=True)
                        start_ms.append((time.perf_counter() - t0) * 1000)
                    if i >= 2:                                    # two warm-up rounds are dropped
                        for key, ms in t.items():
                            plugin, verb = key.rsplit(" ", 1)
                            label = "Go bridge+host-local" if plugin == "bridge" else f"{plugin}, {mode}"
                            times.setdefault(f"{label} {verb}", []).append(ms)
        busy = proc_usage(daemon.pid)                       # workers reaped: their CPU is in cutime/cstime
        worker = worker_times(os.path.join(tmp, "node.log"))   # the worker's own time per request
        requests = served_requests(os.path.join(tmp, "node.log"))
        spares = spare_memory(daemon.pid, tuple(services.values()))
    finally:
        if daemon is not None:
            stop(daemon)
        for n in names.values():
            subprocess.run(["ip", "netns", "del", n], check=False, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    go_add, go_del = med["Go bridge+host-local ADD"], med["Go bridge+host-local DEL"]
    rows = ["| plugin, mode | ADD median ms | DEL median ms | ADD / Go | DEL / Go |", "|---|---:|---:|---:|---:|"]
    labels = ["Go bridge+host-local"] + [f"{p}, {m}" for p in OURS for m in MODES]
    for label in labels:
        a, d = med[f"{label} ADD"], med[f"{label} DEL"]
        rows.append(f"| {label} | {a:.1f} | {d:.1f} | {a / go_add:.2f}x | {d / go_del:.2f}x |")
    speed = ["| plugin | ADD in-process / daemon | DEL in-process / daemon | ADD in the worker ms | "
             "DEL in the worker ms |", "|---|---:|---:|---:|---:|"]
    for p in OURS:
        ia, da = med[f"{p}, in-process ADD"], med[f"{p}, daemon ADD"]
        idl, dd = med[f"{p}, in-process DEL"], med[f"{p}, daemon DEL"]
        wa, wd = (statistics.median(worker[f"{p} {v}"]) for v in ("ADD", "DEL"))
        speed.append(f"| {p} | {ia / da:.2f}x | {idl / dd:.2f}x | {wa:.1f} | {wd:.1f} |")
    bd = breakdown(requests, execs)
    where = breakdown_table(bd, [f"{p} {v}" for p in OURS for v in ("ADD", "DEL")])
    lazy = imported(requests)
    floor = statistics.median(start_ms)
    floor_cmd = " ".join([os.path.relpath(FLOOR[0], ROOT), *FLOOR[1:]])
    served = sum(len(v) for v in worker.values())
    idle_s = idle_after["t"] - idle["t"]
    usage = ["| pycni-node | value |", "|---|---:|",
             f"| VmRSS idle (MiB) | {idle['rss'] / 1024:.1f} |",
             f"| CPU while idle over {idle_s:.0f} s (ms; clock ticks of {1000 / os.sysconf('SC_CLK_TCK'):.0f} ms) | "
             f"{1000 * (idle_after['cpu'] - idle['cpu']):.0f} |",
             f"| VmRSS after {served} requests (MiB) | {busy['rss'] / 1024:.1f} |",
             f"| main process CPU per request (ms) | {1000 * (busy['cpu'] - idle_after['cpu']) / served:.2f} |",
             f"| workers' CPU per request (ms) | {1000 * (busy['children'] - idle_after['children']) / served:.1f} |",
             f"| spare workers waiting after the run | {len(spares)} |",
             f"| private memory of a spare (MiB, median) | "
             f"{statistics.median(spares) if spares else 0.0:.1f} |"]
    text = ("# pycni-node: each plugin's ADD/DEL in-process and through the daemon, against Go bridge+host-local\n\n"
            + "\n".join(rows) + "\n\n" + "\n".join(speed) + "\n\n" + "\n".join(where) + "\n\n"
            + BREAKDOWN_NOTE + " Modules imported in a worker: "
            + ("; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(lazy.items())) or "none") + ".\n\n"
            + "\n".join(usage)
            + f"\n\nThe floor of an exec through the daemon: `{floor_cmd}`, "
            f"{floor:.1f} ms median in the same rounds (the interpreter the launchers start). "
            "\"In the worker\" is the plugin's own run "
            "inside the daemon (after the request arrived: skel.run, the cmd_* work, its children); the rest of "
            "a daemon exec is the client's interpreter start, the daemon's dispatch and the socket round trips "
            "(the breakdown above). Workers' CPU "
            "includes what they run (iptables, tc, host-local); a pod is one request per plugin and verb. "
            "Spare workers are forked ahead of requests (a request meets one already waiting in accept()): "
            "their fork and set-up are in the workers' CPU, not on an exec's path. "
            + ("pycni-node ran without --conf (--no-agent): no vxlan agent, so each vxlan ADD reconciled the node "
               "itself, in both modes." if args.no_agent else
               "pycni-node ran as a node runs it, `--conf` with the vxlan conf: its vxlan agent keeps the node's "
               "lease, device and peers, so a vxlan ADD reads the agent's state instead of reconciling the node (in "
               "both modes: an in-process vxlan sees the same live agent); the agent's own process is not counted in "
               "the figures above (bench/cri_pod.md reports it).")
            + f"\n\nRun {time.strftime('%Y-%m-%d %H:%M')}: {args.runs} interleaved rounds after 2 warm-up rounds "
            f"(both modes and the Go pair in every round); load average before/after {load_before:.2f} / "
            f"{os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs, kernel {os.uname().release}; our plugins: "
            + (f"the PyInstaller bundle {args.bundle}" if args.bundle else
               f"the venv's launchers (python {sys.version.split()[0]})")
            + ", Go plugins from containernetworking-plugins.\n")
    print(text)
    print(f"written to {benchout.write('node_daemon', text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
