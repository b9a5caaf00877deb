"""vxlan-agent on a real etcd at 10..5000 simulated peers, vs `ip -batch` + `bridge -batch`, same run.

    sudo .venv/bin/python bench/vxlan_etcd_scale.py [--peers 10,100,1000,5000] [--runs 3]
        [--pod-peers 10,100,1000]

Root. One etcd member in its own test netns (temp data dir, always stopped), one test host netns
with the agent. Peers are leases put straight into etcd (unreachable public IPs on the underlay
range: kernel entries only, nobody answers). For each size, interleaved with `ip -batch` +
`bridge -batch` programming the same entries in a fresh netns:
- from empty: agent exec to every peer's FDB entry and route in the kernel (interpreter, etcd
  list, the whole reconcile); the same three entries a peer by `ip`/`bridge -batch` (device too);
- one peer added / removed: etcd put (delete) returned to its FDB entry present (gone);
- the agent's VmRSS (/proc) once everything is programmed.
Then pod ADD and DEL (libcni, Go host-local) with a live agent at each --pod-peers size, for the
file and the etcd registry. Figures into bench/vxlan_etcd_scale.md (or $PYCNI_BENCH_OUT/), a PNG
beside it (matplotlib, Agg).
"""
from __future__ import annotations

import ipaddress
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import benchout  # noqa: E402
from plugins.main.vxlan.registry import open_registry  # noqa: E402
from plugins.main.vxlan.registry.base import Lease  # noqa: E402
from plugins.main.vxlan.registry.etcd import EtcdRegistry  # noqa: E402
from plugins.pkg import ns as nsmod  # noqa: E402
from plugins.pkg.rtnl import Rtnl  # noqa: E402
from tests.kit.etcd import EtcdCluster  # noqa: E402
from tests.kit.netns import NetNS  # noqa: E402
from tests.kit.vxlan_hosts import Cluster  # noqa: E402
from tests.kit.vxlan_pods import Pod, Pods  # noqa: E402

NAME = "vxlan_etcd_scale"
NETWORK = "10.64.0.0/10"
DEV = "vxlan.1"


def fake_leases(first: int, count: int) -> dict[str, Lease]:
    out = {}
    for i in range(first, first + count):
        out[f"peer{i:05d}"] = Lease(f"peer{i:05d}", ipaddress.IPv4Network(f"10.{64 + (i + 10) // 250}."
                                                                          f"{(i + 10) % 250}.0/24"),
                                    ipaddress.IPv4Address(f"198.18.{8 + i // 250}.{1 + i % 250}"),
                                    f"02:aa:00:00:{i // 256:02x}:{i % 256:02x}", 1)
    return out


def put_leases(reg, leases: dict[str, Lease], batch: int = 25) -> None:
    """In transactions of `batch` leases (etcd takes at most 128 operations in one)."""
    items = sorted(leases.items())
    for i in range(0, len(items), batch):
        chunk = dict(items[i:i + batch])
        reg.update(lambda d, chunk=chunk: d.leases.update(chunk))


def wait_for(predicate, what: str, timeout: float, step: float = 0.01) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"not within {timeout}s: {what}")
        time.sleep(step)
    return time.perf_counter() - start


class Kernel:
    """The host's FDB entries and routes, read over netlink from inside its netns."""

    def __init__(self, path: str):
        with nsmod.enter(path):
            self.rt = Rtnl()

    def fdb_macs(self) -> set[str]:
        link = self.rt.link(DEV)
        return {n.lladdr for n in self.rt.neighs(socket.AF_BRIDGE, link.index) if n.lladdr} if link else set()

    def routes(self) -> set[str]:
        link = self.rt.link(DEV)
        return {str(r.dst) for r in self.rt.routes() if link and r.oif == link.index}

    def has_all(self, leases: dict[str, Lease]) -> bool:
        macs = self.fdb_macs()
        if not all(lz.vtep_mac in macs for lz in leases.values()):
            return False
        routes = self.routes()
        return all(str(lz.subnet) in routes for lz in leases.values())

    def close(self) -> None:
        self.rt.close()


def fdb_has(ns_name: str, mac: str) -> bool:
    """One FDB entry looked up by the kernel (`bridge fdb get`, ~3 ms whatever the table size): the
    latency polls cost the same at 10 and at 5000 peers, unlike a dump of every entry."""
    return subprocess.run(["bridge", "-n", ns_name, "fdb", "get", mac, "dev", DEV, "self"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def ip_from_empty(leases: dict[str, Lease]) -> float:
    """A fresh netns: the vxlan device and the peers' ARP, FDB and route entries by -batch."""
    ns = NetNS("vxipb")
    try:
        ns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        ns.run("ip", "addr", "add", "198.18.0.1/15", "dev", "eth0")
        ns.run("ip", "link", "set", "eth0", "up")
        vals = leases.values()
        neigh = "".join(f"neigh replace {lz.subnet.network_address} lladdr {lz.vtep_mac} dev {DEV} nud permanent\n"
                        for lz in vals)
        fdb = "".join(f"fdb append {lz.vtep_mac} dev {DEV} dst {lz.public_ip} self permanent\n" for lz in vals)
        route = "".join(f"route replace {lz.subnet} via {lz.subnet.network_address} dev {DEV} onlink\n"
                        for lz in vals)
        start = time.perf_counter()
        ns.run("ip", "link", "add", DEV, "type", "vxlan", "id", "1", "dstport", "8472", "dev", "eth0",
               "local", "198.18.0.1", "nolearning")
        ns.run("ip", "link", "set", DEV, "up")
        for tool, text in (("ip", neigh), ("bridge", fdb), ("ip", route)):
            ns.run(tool, "-batch", "-", input=text)
        took = time.perf_counter() - start
        if len(ns.run("ip", "route", "show", "dev", DEV).stdout.splitlines()) != len(leases):
            raise RuntimeError("ip -batch did not program every route")
        return took
    finally:
        ns.close()


class World:
    def __init__(self, tmp: str):
        self.tmp = tmp
        self.nss: list[NetNS] = []
        self.cluster = Cluster(self._ns, tmp, segments=[0], network_name="vxs")
        self.host = self.cluster.hosts[0]
        self.etcd = EtcdCluster(tmp, members=1, switch=self.cluster.switch)
        self.regs: dict[int, EtcdRegistry] = {}

    def _ns(self, tag: str) -> NetNS:
        ns = NetNS(tag)
        self.nss.append(ns)
        return ns

    def network(self, n: int) -> str:
        return f"vxs{n}"

    def etcd_peers(self, n: int) -> dict[str, Lease]:
        """Network vxs<n> in etcd holds `n` peer leases (put once)."""
        leases = fake_leases(0, n)
        if n not in self.regs:
            with self.etcd.inside():
                self.regs[n] = EtcdRegistry(self.etcd.options(self.network(n)))
                put_leases(self.regs[n], leases)
        return leases

    def file_peers(self, n: int) -> tuple[str, dict[str, Lease]]:
        path = os.path.join(self.tmp, "file-registry", f"vxs{n}.json")
        leases = fake_leases(0, n)
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open_registry("file", path).update(lambda d: d.leases.update(leases))
        return path, leases

    def configure(self, n: int, registry: dict) -> None:
        """The host on network vxs<n> with `registry`, from a clean slate (no device, no state)."""
        h = self.host
        h.run("ip", "link", "del", DEV, check=False)
        shutil.rmtree(os.path.join(self.tmp, "state"), ignore_errors=True)
        self.cluster.network_name = self.network(n)
        h.conf.update(name=self.network(n), network=NETWORK, registry=registry)

    def close(self) -> None:
        for reg in self.regs.values():
            with self.etcd.inside():
                reg.close()
        self.etcd.close()
        for ns in reversed(self.nss):
            ns.close()


def scale_round(w: World, n: int, res: dict) -> None:
    """One agent from empty at `n` peers, its reaction to one added and one removed peer, its RSS."""
    leases = w.etcd_peers(n)
    w.configure(n, w.etcd.registry_conf(ttl=30))
    kernel = Kernel(w.host.path)
    start = time.perf_counter()
    agent = w.host.start_agent("--resync", "600", "--log-level", "warning")
    try:
        wait_for(lambda: kernel.has_all(leases), f"{n} peers programmed", timeout=60 + n / 20, step=0.005)
        res["empty"].append(time.perf_counter() - start)
        time.sleep(0.3)                                          # the reconcile's tail (state file)
        res["rss"].append(rss_kib(agent.proc.pid) / 1024)
        extra = fake_leases(n + 100, 1)
        (name, lz), = extra.items()
        reg = w.regs[n]
        # the clock starts when the write has returned (committed); the write itself (one txn on
        # the writer's known view, no list) is timed apart as "put call"
        begin = time.perf_counter()
        with w.etcd.inside():
            put_leases(reg, extra)
        start = time.perf_counter()
        res["put_call"].append(start - begin)
        wait_for(lambda: fdb_has(w.host.name, lz.vtep_mac), "added peer", timeout=10, step=0)
        res["add_one"].append(time.perf_counter() - start)
        with w.etcd.inside():
            reg.update(lambda d: d.leases.pop(name))
        start = time.perf_counter()
        wait_for(lambda: not fdb_has(w.host.name, lz.vtep_mac), "removed peer", timeout=10, step=0)
        res["remove_one"].append(time.perf_counter() - start)
        if agent.proc.poll() is not None:
            raise RuntimeError(f"the agent exited: {agent.text()}")
    finally:
        agent.kill()
        kernel.close()
    res["ip_empty"].append(ip_from_empty(leases))


def pod_round(w: World, n: int, registry: str, runs: int, res: dict) -> None:
    """A live agent on `registry` at `n` peers; `runs` pod ADDs and DELs, each timed."""
    if registry == "etcd":
        leases = w.etcd_peers(n)
        w.configure(n, w.etcd.registry_conf(ttl=30))
    else:
        path, leases = w.file_peers(n)
        w.configure(n, {"type": "file", "path": path})
    kernel = Kernel(w.host.path)
    agent = w.host.start_agent("--resync", "600")              # info: wait_ready reads "ready"
    pods = Pods(w.cluster, w._ns, w.tmp)
    try:
        agent.wait_ready(timeout=60 + n / 20)
        wait_for(lambda: kernel.has_all(leases), f"{n} peers programmed", timeout=60 + n / 20, step=0.02)
        for k in range(runs):
            pod = Pod(w.host, f"{registry}{n}k{k}", w._ns("pod"))    # its netns made before the clock
            start = time.perf_counter()
            pod.result = pods._on(w.host, "add", pod)
            res["add"].append(time.perf_counter() - start)
            start = time.perf_counter()
            pods.delete(pod)
            res["del"].append(time.perf_counter() - start)
            pod.ns.close()
            w.nss.remove(pod.ns)
        if agent.proc.poll() is not None:
            raise RuntimeError(f"the agent exited: {agent.text()}")
    finally:
        agent.kill()
        kernel.close()


def fit(xs: list[int], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b x: (a, b, r^2)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    a = my - b * mx
    ss = sum((y - my) ** 2 for y in ys)
    r2 = 1 - sum((y - a - b * x) ** 2 for x, y in zip(xs, ys)) / ss if ss else 1.0
    return a, b, r2


def plot(path: str, sizes: list[int], scale: dict, pods: dict, pod_sizes: list[int]) -> str:
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed: no plot"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(sizes, [scale[n]["empty"] for n in sizes], "o-", label="vxlan-agent from empty (exec to all entries)")
    ax1.plot(sizes, [scale[n]["ip_empty"] for n in sizes], "s-", label="ip -batch + bridge -batch")
    ax1.plot(sizes, [scale[n]["add_one"] for n in sizes], "^--", label="one peer added: etcd put to FDB entry")
    ax1.plot(sizes, [scale[n]["remove_one"] for n in sizes], "v--", label="one peer removed")
    ax1.set_xlabel("peers")
    ax1.set_ylabel("median ms")
    ax1.set_title("programming peers (log-log)")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.legend(fontsize=7)
    for reg, style in (("file", "o-"), ("etcd", "s-")):
        ax2.plot(pod_sizes, [pods[(reg, n)]["add"] for n in pod_sizes], style, label=f"pod ADD, {reg} registry")
        ax2.plot(pod_sizes, [pods[(reg, n)]["del"] for n in pod_sizes], style.replace("-", "--"),
                 label=f"pod DEL, {reg} registry")
    ax2.set_xscale("log")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("peers")
    ax2.set_ylabel("median ms")
    ax2.set_title("per-pod ADD / DEL with a live agent")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return os.path.basename(path)


def report(sizes, pod_sizes, runs, scale, pods, load, png) -> str:
    a, b, r2 = fit(sizes, [scale[n]["empty"] for n in sizes])
    ia, ib, ir2 = fit(sizes, [scale[n]["ip_empty"] for n in sizes])
    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M')}: medians of {runs} interleaved runs; {os.cpu_count()} CPUs, "
             f"kernel {platform.release()}; etcd {etcd_version()}, one member; load average before/after "
             f"{load[0]:.2f} / {load[1]:.2f}.", "",
             "| peers | agent from empty (ms) | ip/bridge -batch (ms) | ratio | agent per peer (ms) | "
             "ip per peer (ms) | one added (ms) | one removed (ms) | put call (ms) | agent VmRSS (MiB) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in sizes:
        s = scale[n]
        lines.append(f"| {n} | {s['empty']:.1f} | {s['ip_empty']:.1f} | {s['empty'] / s['ip_empty']:.2f}x | "
                     f"{(s['empty'] - a) / n:.3f} | {(s['ip_empty'] - ia) / n:.3f} | {s['add_one']:.1f} | "
                     f"{s['remove_one']:.1f} | {s['put_call']:.1f} | {s['rss']:.1f} |")
    lines += ["", f"Linear fit, agent from empty: {a:.1f} ms + {b:.3f} ms a peer, r^2 {r2:.4f}; "
              f"ip/bridge -batch: {ia:.1f} ms + {ib:.3f} ms a peer, r^2 {ir2:.4f}. Per-peer cost = "
              "(median - fitted intercept) / peers; the intercept of the agent is its exec (interpreter, "
              "imports, etcd connection), that of ip the device and the three execs.",
              f"**Linear: {'yes' if r2 >= 0.98 else 'no'}** (r^2 >= 0.98 asked of the agent's fit).", "",
              "| registry | peers | pod ADD (ms) | pod DEL (ms) | ADD / ADD at fewest | DEL / DEL at fewest |",
              "|---|---:|---:|---:|---:|---:|"]
    verdict = []
    for reg in ("file", "etcd"):
        base = pods[(reg, pod_sizes[0])]
        for n in pod_sizes:
            p = pods[(reg, n)]
            lines.append(f"| {reg} | {n} | {p['add']:.1f} | {p['del']:.1f} | {p['add'] / base['add']:.2f}x | "
                         f"{p['del'] / base['del']:.2f}x |")
        last = pods[(reg, pod_sizes[-1])]
        flat = last["add"] <= 1.25 * base["add"] + 5 and last["del"] <= 1.25 * base["del"] + 5
        verdict.append(f"{reg}: {'flat' if flat else 'NOT flat'}")
    lines += ["", f"**Per-pod ADD/DEL flat** (at {pod_sizes[-1]} peers within 1.25x + 5 ms of {pod_sizes[0]}): "
              f"{'; '.join(verdict)}.", "", f"Plot: {png}" if png.endswith(".png") else f"Plot: {png}"]
    if png.endswith(".png"):
        lines[-1] = f"![vxlan-agent on etcd, scale]({png})"
    return "\n".join(lines)


def etcd_version() -> str:
    p = subprocess.run(["/usr/bin/etcd", "--version"], capture_output=True, text=True)
    first = (p.stdout or "").splitlines()[:1]
    return first[0].split()[-1] if first else "?"


def main() -> int:
    ap = benchout.options(__doc__, runs=3)
    ap.add_argument("--peers", default="10,100,1000,5000", help="peer counts, comma separated")
    ap.add_argument("--pod-peers", default="10,100,1000", help="peer counts of the per-pod ADD/DEL rounds")
    args = ap.parse_args()
    sizes = sorted({int(x) for x in args.peers.split(",")})
    pod_sizes = sorted({int(x) for x in args.pod_peers.split(",")})
    load_before = os.getloadavg()[0]
    tmp = tempfile.TemporaryDirectory(prefix="pycni-bench-etcd")
    w = World(tmp.name)
    try:
        raw = {n: {k: [] for k in ("empty", "ip_empty", "add_one", "remove_one", "put_call", "rss")} for n in sizes}
        for n in sizes:                                         # the puts, once (not timed)
            w.etcd_peers(n)
        for _ in range(args.runs):
            for n in sizes:
                scale_round(w, n, raw[n])
        praw = {(reg, n): {"add": [], "del": []} for reg in ("file", "etcd") for n in pod_sizes}
        for n in pod_sizes:
            for reg in ("file", "etcd"):                         # interleaved registries
                pod_round(w, n, reg, args.runs, praw[(reg, n)])
    finally:
        w.close()
        tmp.cleanup()
    scale = {n: {k: statistics.median(v) * (1 if k == "rss" else 1000) for k, v in raw[n].items()} for n in sizes}
    pods = {key: {k: statistics.median(v) * 1000 for k, v in d.items()} for key, d in praw.items()}
    target = benchout.target(NAME)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    png = plot(os.path.join(os.path.dirname(target), f"{NAME}.png"), sizes, scale, pods, pod_sizes)
    text = report(sizes, pod_sizes, args.runs, scale, pods, (load_before, os.getloadavg()[0]), png)
    print(text)
    print(f"written to {benchout.write_section(NAME, 'scale', text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
