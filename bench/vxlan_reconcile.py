"""Reconcile cost at 1000 remote leases: ours vs `ip -batch` + `bridge -batch`, same run.

    sudo .venv/bin/python bench/vxlan_reconcile.py [--leases 1000] [--runs 7]

Root; everything in one throw-away netns. Prints the figures and writes them into
bench/vxlan_reconcile.md (or $PYCNI_BENCH_OUT/), section "reconcile".
"""
from __future__ import annotations

import ipaddress
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import benchout  # noqa: E402
from plugins.main.vxlan.lease import vtep_mac  # noqa: E402
from plugins.main.vxlan.overlay import ensure_applied, ensure_node, follow_change, node_config  # noqa: E402
from plugins.main.vxlan.registry import Lease, NetworkRecord, open_registry  # noqa: E402
from plugins.pkg import ns  # noqa: E402

NETWORK = ipaddress.IPv4Network("10.0.0.0/8")


def sh(*argv, netns=None, input=None):
    cmd = (["ip", "netns", "exec", netns] if netns else []) + list(argv)
    subprocess.run(cmd, check=True, capture_output=True, text=True, input=input)


def remote_leases(n: int, moved: int | None = None) -> list[Lease]:
    out = []
    for i in range(n):
        subnet = ipaddress.IPv4Network(f"10.{(i + 2) // 256}.{(i + 2) % 256}.0/24")
        ip = ipaddress.IPv4Address("198.18.1.0") + i + (50000 if i == moved else 0)
        out.append(Lease(f"peer{i}", subnet, ip, vtep_mac("bench", f"peer{i}"), 1))
    return out


def publish(reg, leases) -> None:
    def mutate(draft):
        draft.network = NetworkRecord(NETWORK, 24, 1)
        keep = draft.leases.get("me")
        draft.leases = {lease.node: lease for lease in leases}
        if keep:
            draft.leases["me"] = keep
    reg.update(mutate)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ip_batches(leases, dev: str) -> tuple[str, str, str]:
    neigh = "".join(f"neigh replace {lease.subnet.network_address} lladdr {lease.vtep_mac} dev {dev} "
                    f"nud permanent\n" for lease in leases)
    fdb = "".join(f"fdb replace {lease.vtep_mac} dev {dev} dst {lease.public_ip} self permanent\n"
                  for lease in leases)
    route = "".join(f"route replace {lease.subnet} via {lease.subnet.network_address} dev {dev} onlink\n"
                    for lease in leases)
    return neigh, fdb, route


def run_ip(neigh: str, fdb: str, route: str) -> None:
    """The three batches in the per-lease order (ARP, FDB, route); run inside the bench netns."""
    for tool, text in (("ip", neigh), ("bridge", fdb), ("ip", route)):
        if text:
            sh(tool, "-batch", "-", input=text)


def main() -> int:
    ap = benchout.options(__doc__, runs=7)
    ap.add_argument("--leases", type=int, default=1000)
    args = ap.parse_args()
    name = f"pycni-bench-vx{os.getpid()}"
    sh("ip", "netns", "add", name)
    tmp = tempfile.TemporaryDirectory()
    try:
        sh("ip", "link", "set", "lo", "up", netns=name)
        sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1", netns=name)
        sh("ip", "addr", "add", "198.18.0.1/15", "dev", "eth0", netns=name)
        sh("ip", "link", "set", "eth0", "up", netns=name)
        conf = {"name": "bench", "network": str(NETWORK), "nodeName": "me", "iface": "eth0",
                "stateDir": os.path.join(tmp.name, "state"),
                "registry": {"type": "file", "path": os.path.join(tmp.name, "registry.json")}}
        cfg = node_config(conf)
        reg = open_registry("file", cfg.registry_path)
        full, changed = remote_leases(args.leases), remote_leases(args.leases, moved=args.leases // 2)
        load_before = os.getloadavg()[0]
        res: dict[str, list[float]] = {k: [] for k in (
            "ours_empty", "ours_noop", "ours_one", "agent_one", "ours_exec_one", "ours_remove", "ip_empty", "ip_one")}
        exec_argv = ["ip", "netns", "exec", name, sys.executable, "-c",
                     f"import sys, json; sys.path.insert(0, {ROOT!r}); from plugins.main.vxlan.overlay import "
                     "ensure_node, node_config; ensure_node(node_config(json.loads(sys.argv[1])))",
                     json.dumps(conf)]
        dev = cfg.device_name
        neigh, fdb, route = ip_batches(full, dev)
        one = ip_batches([changed[args.leases // 2]], dev)
        with ns.enter(f"/run/netns/{name}"):
            for _ in range(args.runs):        # ours and ip interleaved, so both see the same machine load
                publish(reg, [])
                ensure_node(cfg)                                   # device up, no peer entries
                publish(reg, full)
                res["ours_empty"].append(timed(lambda: ensure_node(cfg)))
                res["ours_noop"].append(timed(lambda: ensure_node(cfg)))
                publish(reg, changed)
                res["ours_one"].append(timed(lambda: ensure_node(cfg)))
                publish(reg, full)
                applied = ensure_applied(cfg)
                publish(reg, changed)
                res["agent_one"].append(timed(             # registry read (the watch) + delta
                    lambda applied=applied: follow_change(cfg, applied, reg.snapshot())))
                publish(reg, full)
                res["ours_exec_one"].append(timed(lambda: subprocess.run(exec_argv, check=True)))
                publish(reg, [])
                res["ours_remove"].append(timed(lambda: ensure_node(cfg)))
                sh("ip", "link", "del", dev)                     # empty device for ip (not timed)
                sh("ip", "link", "add", dev, "type", "vxlan", "id", "1", "dstport", "8472", "dev", "eth0",
                   "local", "198.18.0.1", "nolearning")
                sh("ip", "link", "set", dev, "up")
                res["ip_empty"].append(timed(lambda: run_ip(neigh, fdb, route)))
                res["ip_one"].append(timed(lambda: run_ip("", one[1], "")))
                sh("ip", "link", "del", dev)
            publish(reg, full)
            res["agent_react"] = agent_reaction(conf, tmp.name, reg, full, changed, args.runs)
        text = report(args.leases, args.runs, {k: statistics.median(v) * 1000 for k, v in res.items()},
                      (load_before, os.getloadavg()[0]))
        print(text)
        print(f"written to {benchout.write_section('vxlan_reconcile', 'reconcile', text)}")
    finally:
        sh("ip", "netns", "del", name)
        tmp.cleanup()
    return 0


def agent_reaction(conf: dict, tmp: str, reg, full, changed, runs: int) -> list[float]:
    """Seconds from a registry write to the changed FDB entry in the kernel, with vxlan-agent running."""
    import socket
    from plugins.pkg.rtnl import Rtnl
    path = os.path.join(tmp, "agent.conf")
    with open(path, "w") as f:
        json.dump({**conf, "cniVersion": "1.0.0", "type": "vxlan"}, f)
    agent = subprocess.Popen([os.path.join(ROOT, ".venv", "bin", "vxlan-agent"), "--conf", path,
                              "--log-level", "warning"])
    moved = changed[len(changed) // 2]
    out = []
    try:
        with Rtnl() as rt:
            def fdb_dst():
                link = rt.link("vxlan.1")
                return link and {n.lladdr: n.dst for n in rt.neighs(socket.AF_BRIDGE, link.index)}.get(moved.vtep_mac)
            deadline = time.monotonic() + 30
            while fdb_dst() is None and time.monotonic() < deadline:     # agent up and programmed
                time.sleep(0.05)
            for i in range(runs):
                want = (changed if i % 2 == 0 else full)[len(full) // 2].public_ip
                start = time.perf_counter()
                publish(reg, changed if i % 2 == 0 else full)
                while fdb_dst() != want and time.perf_counter() - start < 10:
                    time.sleep(0.002)
                out.append(time.perf_counter() - start)
    finally:
        agent.terminate()
        agent.wait(10)
    return out


def report(n: int, runs: int, ms: dict[str, float], load: tuple[float, float]) -> str:
    rows = [
        (f"program {n} leases ({3 * n} entries) from empty: ensure_node", "ours_empty", "ip_empty"),
        (f"apply one change (a new public IP) at {n}: agent delta (follow_change)", "agent_one", "ip_one"),
        (f"apply one change at {n}: full diff (ensure_node, as in ADD)", "ours_one", "ip_one"),
    ]
    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M')}: medians of {runs} interleaved runs, {n} leases; "
             f"{os.cpu_count()} CPUs, kernel {platform.release()}; load average before/after "
             f"{load[0]:.2f} / {load[1]:.2f}.", "",
             "| case | pycni (ms) | ip/bridge -batch (ms) | ratio |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | {ms[ours]:.1f} | {ms[theirs]:.1f} | {ms[ours] / ms[theirs]:.2f}x |"
              for label, ours, theirs in rows]
    lines += ["", f"Other medians (ms): no-op ensure_node at {n}: {ms['ours_noop']:.1f}; remove {n} leases: "
              f"{ms['ours_remove']:.1f}; one change in a fresh process (interpreter + imports + full diff): "
              f"{ms['ours_exec_one']:.1f}; **vxlan-agent, registry write to the new FDB entry in the kernel: "
              f"{ms['agent_react']:.1f}** (the \"within 1 s\" goal, with {n} leases)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
