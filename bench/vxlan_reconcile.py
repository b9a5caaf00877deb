"""Reconcile cost at 1000 remote leases: ours vs `ip -batch` + `bridge -batch`, same run.

Root; everything in one throw-away netns. Writes the table to stdout (paste it into
bench/vxlan_reconcile.md). Usage: python bench/vxlan_reconcile.py [--leases 1000] [--runs 7]
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from plugins.main.vxlan.lease import vtep_mac  # noqa: E402
from plugins.main.vxlan.overlay import ensure_node, node_config  # noqa: E402
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


def run_ip(netns: str, neigh: str, fdb: str, route: str) -> None:
    for tool, text in (("ip", neigh), ("bridge", fdb), ("ip", route)):
        if text:
            sh(tool, "-batch", "-", netns=netns, input=text)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--leases", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=7)
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
        res: dict[str, list[float]] = {k: [] for k in ("ours_empty", "ours_one", "ours_remove", "ours_noop",
                                                        "ours_exec_one", "ip_empty", "ip_one")}
        exec_argv = ["ip", "netns", "exec", name, sys.executable, "-c",
                     "import sys, json; sys.path.insert(0, %r); from plugins.main.vxlan.overlay import "
                     "ensure_node, node_config; ensure_node(node_config(json.loads(sys.argv[1])))" % ROOT,
                     __import__("json").dumps(conf)]
        with ns.enter(f"/run/netns/{name}"):
            publish(reg, [])
            ensure_node(cfg)                                  # lease + device, no peers
            for _ in range(args.runs):
                publish(reg, full)
                res["ours_empty"].append(timed(lambda: ensure_node(cfg)))
                res["ours_noop"].append(timed(lambda: ensure_node(cfg)))
                publish(reg, changed)
                res["ours_one"].append(timed(lambda: ensure_node(cfg)))
                publish(reg, full)
                res["ours_exec_one"].append(timed(lambda: subprocess.run(exec_argv, check=True)))
                publish(reg, [])
                res["ours_remove"].append(timed(lambda: ensure_node(cfg)))
        dev = cfg.device_name
        neigh, fdb, route = ip_batches(full, dev)
        one = ip_batches([changed[args.leases // 2]], dev)
        for _ in range(args.runs):
            sh("ip", "link", "del", dev, netns=name)         # empty again (not timed)
            sh("ip", "link", "add", dev, "type", "vxlan", "id", "1", "dstport", "8472", "dev", "eth0",
               "local", "198.18.0.1", "nolearning", netns=name)
            sh("ip", "link", "set", dev, "up", netns=name)
            res["ip_empty"].append(timed(lambda: run_ip(name, neigh, fdb, route)))
            res["ip_one"].append(timed(lambda: run_ip(name, "", one[1], "")))
        report(args.leases, {k: statistics.median(v) * 1000 for k, v in res.items()})
    finally:
        sh("ip", "netns", "del", name)
        tmp.cleanup()
    return 0


def report(n: int, ms: dict[str, float]) -> None:
    rows = [
        (f"program {n} leases ({3 * n} entries) from empty", ms["ours_empty"], ms["ip_empty"]),
        (f"apply one change (new public IP) at {n}", ms["ours_one"], ms["ip_one"]),
    ]
    print(f"| case | pycni reconcile (ms) | ip/bridge -batch (ms) | ratio |\n|---|---:|---:|---:|")
    for label, ours, theirs in rows:
        print(f"| {label} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x |")
    print(f"\nother figures (median ms): no-op reconcile at {n}: {ms['ours_noop']:.1f}; "
          f"remove {n} leases: {ms['ours_remove']:.1f}; one change in a fresh process "
          f"(interpreter + imports + reconcile): {ms['ours_exec_one']:.1f}")


if __name__ == "__main__":
    sys.exit(main())
