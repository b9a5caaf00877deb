"""A pod's network start and stop as kubelet drives it: containerd 1.6 CRI RunPodSandbox, then
StopPodSandbox + RemovePodSandbox, with our chain (vxlan + dp-steering + edgemesh + Go portmap,
conf/runtime-chain.conflist) in-process and through pycni-node, against Go bridge + host-local +
portmap; the same chains' ADD and DEL alone (libcni_py, as a runtime execs them); pycni-node's
resident memory and CPU while idle and per pod. Same run, interleaved, medians. Root.

    sudo .venv/bin/python bench/cri_pod.py [--runs 10]

Three containerd instances run side by side in one test host (tests/kit/runtimes.py: a private
mount namespace each, the test host's netns, the pause image from busybox-static): one with our
chain and PYCNI_NODE_SOCKET=off (every plugin in-process), one with our chain and the socket of a
pycni-node started in the test host, one with the Go chain. Every round runs, for each mode in
turn (the order rotates), a pod through CRI (a hostPort mapping, so portmap works) and one ADD
and DEL of the same chain through libcni_py from the test host. One warm-up round is dropped.
Writes bench/cri_pod.md and bench/cri_pod.png (or $PYCNI_BENCH_OUT/).
"""
from __future__ import annotations

import collections
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
from bench.node_daemon import (BREAKDOWN_NOTE, breakdown, breakdown_table, imported, private_mib,  # noqa: E402
                               proc_usage, served_requests, service_pids, spare_memory, stop, wait_agent,
                               wait_listening, worker_times)
from libcni_py.api import CNIConfig, RuntimeConf  # noqa: E402
from libcni_py.conf import conflist_from_dict  # noqa: E402
from plugins.node import protocol as P  # noqa: E402
from plugins.pkg.ns import enter  # noqa: E402
from tests.kit import runtimes  # noqa: E402
from tests.kit.netns import PREFIX, NetNS  # noqa: E402

MODES = ("Go bridge+host-local+portmap", "ours, in-process", "ours, daemon")
SHORT = {"Go bridge+host-local+portmap": "go", "ours, in-process": "inproc", "ours, daemon": "daemon"}
STEPS = ("chain ADD", "chain DEL", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "Stop+Remove")
WARMUP = 1
IDLE_S = 10.0


def go_conflist(tmp: str) -> dict:
    return {"cniVersion": "1.0.0", "name": "gonet", "plugins": [
        {"type": "bridge", "bridge": "cni-go0", "isGateway": True,
         "ipam": {"type": "host-local", "dataDir": os.path.join(tmp, "go-ipam"),
                  "ranges": [[{"subnet": "10.45.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]}


def q(v: list[float], p: int) -> float:
    return statistics.quantiles(v, n=10, method="inclusive")[0 if p == 10 else -1] if len(v) >= 2 else v[0]


def plot(med: dict, samples: dict, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = ("chain ADD", "chain DEL", "RunPodSandbox", "Stop+Remove")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(MODES)
    for i, mode in enumerate(MODES):
        xs = [j + (i - 1) * width for j in range(len(steps))]
        ys = [med[(mode, s)] for s in steps]
        lo = [med[(mode, s)] - q(samples[(mode, s)], 10) for s in steps]
        hi = [q(samples[(mode, s)], 90) - med[(mode, s)] for s in steps]
        bars = ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=mode)
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
    ax.set_xticks(range(len(steps)))
    ax.set_xticklabels(steps)
    ax.set_ylabel("ms (median, p10-p90)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = benchout.options(__doc__, runs=10)
    ap.add_argument("--bundle", metavar="DIST", help="our plugins and pycni-node from this PyInstaller build "
                    "(DIST/bin, as ./build.sh bin makes it) instead of the venv's console scripts")
    ap.add_argument("--no-agent", action="store_true",
                    help="pycni-node without --conf: no vxlan agent, so every vxlan ADD reconciles the node itself")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("cri_pod: run as root (network namespaces, containerd)")
    missing = runtimes.missing_binaries()
    if missing:
        sys.exit(f"cri_pod: missing {' '.join(missing)} (./build.sh test installs them)")
    subprocess.run([sys.executable, "-m", "compileall", "-q", "libcni_py", "plugins"], cwd=ROOT, check=True)
    load_before = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="cri-pod-bench-")
    os.chmod(tmp, 0o755)
    made: list[NetNS] = []

    def netns(tag: str) -> NetNS:
        ns = NetNS(tag)
        made.append(ns)
        return ns

    cds: dict[str, runtimes.Containerd] = {}
    parents = {m: f"/{PREFIX}cri-{SHORT[m]}" for m in MODES}
    daemon = None
    samples: dict[tuple[str, str], list[float]] = {(m, s): [] for m in MODES for s in STEPS}
    saved_env = os.environ.get(P.SOCKET_ENV)
    left: list[str] = []
    worker: dict[str, list[float]] = {}
    requests: list[dict] = []
    spares: list[float] = []
    bare: dict[str, list[float]] = {"ADD": [], "DEL": []}      # Go bridge + host-local, no portmap
    try:
        chain, host, _client = runtimes.test_hosts(netns, tmp)
        node_exe = os.path.join(runtimes.VENV_BIN, "pycni-node")
        if args.bundle:                                    # the chain's bin dir: the bundle's names
            bindir = os.path.join(os.path.abspath(args.bundle), "bin")
            for name in runtimes.OUR_PLUGINS:
                os.unlink(os.path.join(chain.bin_dir, name))
                os.symlink(os.path.join(bindir, name), os.path.join(chain.bin_dir, name))
            node_exe = os.path.join(bindir, "pycni-node")
        sockdir = os.path.join(tmp, "node")
        os.makedirs(sockdir, mode=0o700)
        sock = os.path.join(sockdir, "node.sock")
        # the chains for libcni_py, outside the sandboxes: the enforcer by its own path
        ours = chain.conflist()
        for plugin in ours["plugins"]:
            if plugin["type"] == "dp-steering":
                plugin["enforcerNetns"] = chain.enforcer.path
        node_conf = []
        if not args.no_agent:              # a node as deployed: pycni-node --conf runs the vxlan agent
            node_conf = ["--conf", os.path.join(sockdir, "node.conflist")]
            with open(node_conf[1], "w") as f:
                json.dump(ours, f)
        with open(os.path.join(tmp, "node.log"), "ab") as log, enter(host.path):
            daemon = subprocess.Popen([node_exe, "--socket", sock, "--log-level", "debug", *node_conf],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        wait_listening(daemon, sock, f"{tmp}/node.log")
        if node_conf:
            try:
                wait_agent(chain.vxlan_state, daemon, f"{tmp}/node.log")
            except RuntimeError as e:
                sys.exit(f"cri_pod: {e}")
        images = runtimes.build_images(tmp)
        envs = {MODES[0]: "off", MODES[1]: "off", MODES[2]: sock}
        for mode in MODES:
            sub = os.path.join(tmp, SHORT[mode])
            os.makedirs(sub)
            cd = runtimes.Containerd(chain, sub, parents[mode])
            if mode == MODES[0]:
                for old in os.listdir(cd.conf_dir):
                    os.unlink(os.path.join(cd.conf_dir, old))
                with open(os.path.join(cd.conf_dir, "10-gonet.conflist"), "w") as out:
                    json.dump(go_conflist(sub), out)
            os.environ[P.SOCKET_ENV] = envs[mode]           # containerd passes its environment on
            cds[mode] = cd
            cd.start()
            cd.load_images(images)
        lists = {MODES[0]: conflist_from_dict(go_conflist(os.path.join(tmp, "direct"))),
                 MODES[1]: conflist_from_dict(ours), MODES[2]: conflist_from_dict(ours)}
        go_bare = go_conflist(os.path.join(tmp, "direct"))
        go_bare["plugins"] = go_bare["plugins"][:1]
        no_portmap = conflist_from_dict(go_bare)
        cni = CNIConfig([chain.bin_dir], cache_dir=os.path.join(tmp, "cache"), check_versions=False)
        pod_ns = netns("pod")
        time.sleep(1.0)
        services = service_pids(f"{tmp}/node.log")
        idle = proc_usage(daemon.pid)
        svc_idle = {name: proc_usage(pid) for name, pid in services.items()}
        svc_private = {name: private_mib(pid) for name, pid in services.items()}
        time.sleep(IDLE_S)
        idle_after = proc_usage(daemon.pid)
        svc_after = {name: proc_usage(pid) for name, pid in services.items()}
        daemon_pods = 0
        for rnd in range(WARMUP + args.runs):
            order = MODES[rnd % 3:] + MODES[:rnd % 3]
            for k, mode in enumerate(order):
                t: dict[str, float] = {}
                port = 20000 + 10 * rnd + MODES.index(mode)
                os.environ[P.SOCKET_ENV] = envs[mode]
                rt = RuntimeConf(container_id=f"crib{rnd}{SHORT[mode]}", netns=pod_ns.path, ifname="eth0",
                                 args=[("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default"),
                                       ("K8S_POD_NAME", f"direct{rnd}")],
                                 capability_args={"portMappings": [{"hostPort": port + 5, "containerPort": 80,
                                                                    "protocol": "tcp"}]})
                with enter(host.path):
                    t0 = time.perf_counter()
                    cni.add_network_list(lists[mode], rt)
                    t["chain ADD"] = (time.perf_counter() - t0) * 1000
                    t0 = time.perf_counter()
                    cni.del_network_list(lists[mode], rt)
                    t["chain DEL"] = (time.perf_counter() - t0) * 1000
                    if mode == MODES[0]:                      # portmap's share: the Go chain without it
                        t0 = time.perf_counter()
                        cni.add_network_list(no_portmap, rt)
                        extra_t = {"ADD": (time.perf_counter() - t0) * 1000}
                        t0 = time.perf_counter()
                        cni.del_network_list(no_portmap, rt)
                        extra_t["DEL"] = (time.perf_counter() - t0) * 1000
                        if rnd >= WARMUP:
                            for verb, ms in extra_t.items():
                                bare[verb].append(ms)
                cd = cds[mode]
                cfg = cd.sandbox_config(f"b{rnd}{SHORT[mode]}", f"uid-b{rnd}-{k}-{SHORT[mode]}",
                                        port_mappings=[(80, port)])
                os.makedirs(cfg.log_directory, exist_ok=True)
                t0 = time.perf_counter()
                pod_id = cd.run_pod(cfg)
                t["RunPodSandbox"] = (time.perf_counter() - t0) * 1000
                t0 = time.perf_counter()
                cd.stop_pod(pod_id)
                t["StopPodSandbox"] = (time.perf_counter() - t0) * 1000
                t0 = time.perf_counter()
                cd.remove_pod(pod_id)
                t["RemovePodSandbox"] = (time.perf_counter() - t0) * 1000
                t["Stop+Remove"] = t["StopPodSandbox"] + t["RemovePodSandbox"]
                if mode == MODES[2]:
                    daemon_pods += 2                       # one through CRI, one through libcni_py
                if rnd >= WARMUP:
                    for s, ms in t.items():
                        samples[(mode, s)].append(ms)
        busy = proc_usage(daemon.pid)
        worker = worker_times(os.path.join(tmp, "node.log"))   # each plugin's own run in its worker
        requests = served_requests(os.path.join(tmp, "node.log"))
        spares = spare_memory(daemon.pid, tuple(services.values()))
        svc_busy = {name: proc_usage(pid) for name, pid in services.items()}
        for mode in MODES[1:]:
            left += chain.leftovers(cds[mode].cni_cache)
    finally:
        for cd in cds.values():
            cd.close()
        for parent in parents.values():
            left += runtimes.remove_cgroups(parent)
        if daemon is not None:
            stop(daemon)
        for ns in reversed(made):
            ns.close()
        if saved_env is None:
            os.environ.pop(P.SOCKET_ENV, None)
        else:
            os.environ[P.SOCKET_ENV] = saved_env
        shutil.rmtree(tmp, ignore_errors=True)
    if left:
        print(f"cri_pod: left behind: {left}", file=sys.stderr)
        return 1
    med = {key: statistics.median(v) for key, v in samples.items()}
    go = MODES[0]
    rows = ["| mode | " + " | ".join(f"{s} ms" for s in STEPS) + " |", "|---|" + "---:|" * len(STEPS)]
    for mode in MODES:
        rows.append(f"| {mode} | " + " | ".join(f"{med[(mode, s)]:.1f}" for s in STEPS) + " |")
    spread = ["| mode, p10-p90 ms | " + " | ".join(STEPS) + " |", "|---|" + "---:|" * len(STEPS)]
    for mode in MODES:
        spread.append(f"| {mode} | " + " | ".join(f"{q(samples[(mode, s)], 10):.0f}-{q(samples[(mode, s)], 90):.0f}"
                                                  for s in STEPS) + " |")
    ratios = ["| ours / Go | chain ADD | chain DEL | RunPodSandbox | Stop+Remove |", "|---|---:|---:|---:|---:|"]
    for mode in MODES[1:]:
        ratios.append(f"| {mode} | " + " | ".join(f"{med[(mode, s)] / med[(go, s)]:.2f}x" for s in
                                                  ("chain ADD", "chain DEL", "RunPodSandbox", "Stop+Remove")) + " |")
    tick = 1000 / os.sysconf("SC_CLK_TCK")
    idle_s = idle_after["t"] - idle["t"]
    cpu_main = 1000 * (busy["cpu"] - idle_after["cpu"]) / daemon_pods
    cpu_workers = 1000 * (busy["children"] - idle_after["children"]) / daemon_pods
    usage = ["| pycni-node | value |", "|---|---:|",
             f"| VmRSS idle (MiB) | {idle['rss'] / 1024:.1f} |",
             f"| CPU while idle over {idle_s:.0f} s (ms; clock ticks of {tick:.0f} ms) | "
             f"{1000 * (idle_after['cpu'] - idle['cpu']):.0f} |",
             f"| VmRSS after {daemon_pods} pods (MiB) | {busy['rss'] / 1024:.1f} |",
             f"| main process CPU per pod (ms) | {cpu_main:.1f} |",
             f"| workers' CPU per pod (ms, with what they run) | {cpu_workers:.1f} |",
             f"| spare workers waiting after the run | {len(spares)} |",
             f"| private memory of a spare (MiB, median) | {statistics.median(spares) if spares else 0.0:.1f} |"]
    for name in sorted(services):             # its own processes: counted apart from the main above
        label = name.split("[")[0]
        usage += [f"| {label} (a service of pycni-node): private memory idle (MiB) | {svc_private[name]:.1f} |",
                  f"| {label}: CPU while idle over {idle_s:.0f} s (ms) | "
                  f"{1000 * (svc_after[name]['cpu'] - svc_idle[name]['cpu']):.0f} |",
                  f"| {label}: CPU per pod (ms) | "
                  f"{1000 * (svc_busy[name]['cpu'] - svc_after[name]['cpu']) / daemon_pods:.1f} |"]
    where = ["| ours, daemon: where the chain's time goes | ADD ms | DEL ms |", "|---|---:|---:|"]
    inner = {"ADD": 0.0, "DEL": 0.0}
    ours = ("vxlan", "dp-steering", "edgemesh")
    for plugin in ours:
        cells = []
        for verb in ("ADD", "DEL"):
            got = worker.get(f"{plugin} {verb}") or [0.0]
            inner[verb] += statistics.median(got)
            cells.append(f"{statistics.median(got):.1f}")
        where.append(f"| {plugin}, its run in the worker (median) | " + " | ".join(cells) + " |")
    bd = breakdown(requests)
    side = {(v, k): sum(bd.get(f"{p} {v}", {}).get(k, 0.0) for p in ours)
            for v in ("ADD", "DEL") for k in ("dispatch", "client_wait")}
    portmap = {v: med[(go, f"chain {v}")] - statistics.median(bare[v]) for v in ("ADD", "DEL")}
    rest = {v: med[(MODES[2], f"chain {v}")] - inner[v] - portmap[v] - side[(v, "dispatch")]
            - side[(v, "client_wait")] for v in ("ADD", "DEL")}
    where.append(f"| pycni-node's dispatch around the 3 plugins (sum of medians) | {side[('ADD', 'dispatch')]:.1f} | "
                 f"{side[('DEL', 'dispatch')]:.1f} |")
    where.append(f"| the 3 clients between their frames (hello after connect, request after OK) | "
                 f"{side[('ADD', 'client_wait')]:.1f} | {side[('DEL', 'client_wait')]:.1f} |")
    where.append(f"| Go portmap (the Go chain with it minus without it, same rounds) | {portmap['ADD']:.1f} | "
                 f"{portmap['DEL']:.1f} |")
    where.append(f"| the rest: 3 client execs up to connect and after the reply, libcni_py's 4 execs | "
                 f"{rest['ADD']:.1f} | {rest['DEL']:.1f} |")
    cri_del: dict[str, list[list[float]]] = {p: [[], []] for p in ours}     # CRI's DELs: at Stop, at Remove
    seen: collections.Counter = collections.Counter()
    for r in sorted(requests, key=lambda r: r["accepted"]):
        plugin, verb = r["key"].split(" ", 1)
        if verb == "DEL" and r["mntns"] == "entered" and plugin in cri_del:   # containerd's, not libcni_py's
            cri_del[plugin][seen[plugin] % 2].append(r["plugin"])
            seen[plugin] += 1
    for i, step in enumerate(("StopPodSandbox", "RemovePodSandbox")):
        runs = [statistics.median(cri_del[p][i]) if cri_del[p][i] else 0.0 for p in ours]
        where.append(f"| containerd's DEL at {step}: the 3 plugins' runs in the worker (medians: "
                     + ", ".join(f"{p} {c:.1f}" for p, c in zip(ours, runs)) + f") | - | {sum(runs):.1f} |")
    where.append(f"| chain through the daemon (median, as above) | {med[(MODES[2], 'chain ADD')]:.1f} | "
                 f"{med[(MODES[2], 'chain DEL')]:.1f} |")
    per_request = breakdown_table(bd, [f"{p} {v}" for p in ours for v in ("ADD", "DEL")])
    rounds = WARMUP + args.runs                # each: one CRI pod and one libcni_py ADD + DEL of the chain
    served = collections.Counter(r["key"] for r in requests)
    per_cri = ", ".join(f"{key} {served[key] / rounds - 1:g}" for key in sorted(served))
    lazy = imported(requests)
    d_run = med[(MODES[2], "RunPodSandbox")] / med[(go, "RunPodSandbox")]
    d_stop = med[(MODES[2], "Stop+Remove")] / med[(go, "Stop+Remove")]
    verdict = "met" if max(d_run, d_stop) <= 1.5 else "not met"
    load_after = os.getloadavg()[0]
    what_bin = f"the PyInstaller bundle {args.bundle}" if args.bundle else "the venv's console scripts"
    title = (f"containerd CRI pod and chain, {args.runs} interleaved rounds, load {load_before:.1f}/{load_after:.1f}")
    plot_path = os.path.join(os.path.dirname(benchout.target("cri_pod")), "cri_pod.png")
    os.makedirs(os.path.dirname(plot_path), exist_ok=True)
    plot(med, samples, plot_path, title)
    text = ("# containerd CRI: a pod with our chain (in-process, through pycni-node) against the Go chain\n\n"
            + "\n".join(rows) + "\n\n" + "\n".join(ratios) + "\n\n"
            + f"**Goal, through pycni-node within 1.5x of Go: {verdict}** (RunPodSandbox {d_run:.2f}x, "
              f"Stop+Remove {d_stop:.2f}x)\n\n"
            + "\n".join(spread) + "\n\n" + "\n".join(where) + "\n\n" + "\n".join(per_request) + "\n\n"
            + f"Requests pycni-node served per CRI pod (RunPodSandbox, then StopPodSandbox and RemovePodSandbox; "
              f"the libcni_py chain's one ADD and one DEL per plugin taken off): {per_cri}.\n\n"
            + BREAKDOWN_NOTE + " Here the execs come from containerd and libcni_py (no exec times to match): "
              "the request rows have no client columns. Modules imported in a worker: "
            + ("; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(lazy.items())) or "none") + ".\n\n"
            + "\n".join(usage)
            + "\n\n![containerd CRI pod times](cri_pod.png)\n\n"
            + "Our chain is vxlan + dp-steering (tap, failOpen: no dp) + edgemesh (iptables) + Go portmap "
              "(conf/runtime-chain.conflist made local by tests/kit/runtimes.py); the Go chain is bridge + "
              "host-local + portmap. Every pod has a hostPort. \"chain ADD/DEL\" is libcni_py's "
              "add/del_network_list from the test host into a scratch netns (what the runtime's CNI part costs "
              "without the runtime); RunPodSandbox includes the pause container (runc) and containerd's own "
              "loopback plugin exec. The daemon's CPU per pod counts both the CRI pod and the libcni_py one of "
              "each daemon round (workers are forked per request and reaped: their CPU, with the iptables, tc "
              "and host-local they run, is in the daemon's cutime/cstime). "
            + ("pycni-node ran without --conf (--no-agent): no vxlan agent, so each vxlan ADD reconciled the node "
               "(lease, device, peers) itself, in both of our modes." if args.no_agent else
               "pycni-node ran as a node runs it, `--conf` with the chain's conflist: its vxlan agent keeps the "
               "node's lease, device and peers, so a vxlan ADD reads the agent's state instead of reconciling "
               "the node (in both of our modes: the in-process plugins see the same live agent), and its "
               "fail-open watcher looks after dp-steering's pods; the rows named after them are their own "
               "processes, apart from the main's.")
            + "\n\n"
            + f"Run {time.strftime('%Y-%m-%d %H:%M')}: {args.runs} rounds after {WARMUP} warm-up (the mode order "
              f"rotates each round); load average before/after {load_before:.2f} / {load_after:.2f} (other "
              f"tests ran on the machine); {os.cpu_count()} CPUs, kernel {os.uname().release}, "
              f"{containerd_version()}, python {sys.version.split()[0]}; our plugins: {what_bin}.\n")
    print(text)
    print(f"written to {benchout.write('cri_pod', text)} and {plot_path}")
    return 0


def containerd_version() -> str:
    p = subprocess.run(["containerd", "--version"], capture_output=True, text=True, timeout=30)
    parts = p.stdout.split()
    return f"containerd {parts[2]}" if len(parts) >= 3 else "containerd ?"


if __name__ == "__main__":
    sys.exit(main())
