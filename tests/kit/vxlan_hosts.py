"""Test hosts for the vxlan overlay: netns hosts on an underlay switch.

    cluster = Cluster(netns, tmp_path, segments=[0, 0, 1])   # 3 hosts, 2 L2 segments
    cluster.hosts[0].ensure()             # overlay.ensure_node in that host's netns
    cluster.hosts[0].conf                 # its plugin config (a dict; add pod keys freely)

The switch is its own netns holding one bridge per L2 segment (`seg0`, `seg1`, ...)
with the segment's router address (198.18.<seg>.254/24) and forwarding on, so hosts
on different segments reach each other routed. Host i (0-based) is `eth0`
198.18.<seg>.<i+1>/24 with a default route via its segment's router. All hosts share
one file registry in tmp; each has its own stateDir and nodeName `host<i>`.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import threading
import time

from plugins.pkg import ns as nsmod
from plugins.pkg import probe

NETWORK = "10.244.0.0/16"
VENV_BIN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        ".venv", "bin")


class Host:
    def __init__(self, cluster: Cluster, index: int, segment: int):
        self.index, self.segment = index, segment
        self.node = f"host{index}"
        self.ns = cluster.netns_factory(f"vh{index}-")
        self.name, self.path = self.ns.name, self.ns.path
        self.ip = ipaddress.IPv4Interface(f"198.18.{segment}.{index + 1}/24")
        self.router = f"198.18.{segment}.254"
        self.conf = {
            "cniVersion": "1.0.0", "name": cluster.network_name, "type": "vxlan",
            "network": NETWORK, "registry": {"type": "file", "path": cluster.registry_path},
            "stateDir": os.path.join(cluster.tmp, "state", self.node), "nodeName": self.node,
        }

    def run(self, *argv: str, check: bool = True, timeout: float = 60):
        return self.ns.run(*argv, check=check, timeout=timeout)

    def cfg(self, **overrides):
        from plugins.main.vxlan.overlay import node_config
        return node_config({**self.conf, **overrides})

    def ensure(self, **overrides):
        from plugins.main.vxlan.overlay import ensure_node
        with nsmod.enter(self.path):
            return ensure_node(self.cfg(**overrides))

    def check(self, **overrides) -> None:
        from plugins.main.vxlan.overlay import check_node
        with nsmod.enter(self.path):
            check_node(self.cfg(**overrides))

    def leave(self, remove_device: bool = True) -> None:
        from plugins.main.vxlan.overlay import leave_node
        with nsmod.enter(self.path):
            leave_node(self.cfg(), remove_device=remove_device)

    def dumps(self, dev: str = "vxlan.1") -> dict[str, list[str]]:
        """`ip route`, `ip neigh` and `bridge fdb` of the host, one sorted list each."""
        def lines(*argv):
            return sorted(line.strip() for line in self.run(*argv).stdout.splitlines() if line.strip())
        return {"route": lines("ip", "route", "show", "table", "main"),
                "neigh": lines("ip", "neigh", "show", "dev", dev, "nud", "permanent"),
                "fdb": lines("bridge", "fdb", "show", "dev", dev)}

    def start_agent(self, *extra: str) -> AgentProc:
        """`vxlan-agent` in this host's netns, from a conf file written now."""
        return AgentProc(self, extra)

    def set_address(self, new: str) -> None:
        """Move the underlay address (the public IP changes)."""
        self.run("ip", "addr", "del", str(self.ip), "dev", "eth0")
        self.ip = ipaddress.IPv4Interface(new)
        self.run("ip", "addr", "add", str(self.ip), "dev", "eth0")
        self.run("ip", "route", "replace", "default", "via", self.router, "dev", "eth0")


class AgentProc:
    """A running vxlan-agent; its log in tmp; always killed by stop()/kill()."""

    def __init__(self, host: Host, extra=()):
        base = os.path.join(host.conf["stateDir"] + "-agent")
        os.makedirs(os.path.dirname(base), exist_ok=True)
        self.conf_path, self.log_path = base + ".conf", base + ".log"
        with open(self.conf_path, "w") as f:
            json.dump(host.conf, f)
        self.log = open(self.log_path, "ab")
        argv = ["ip", "netns", "exec", host.name, os.path.join(VENV_BIN, "vxlan-agent"),
                "--conf", self.conf_path, *extra]
        self.offset = self.log.tell()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log)
        self.node = host.node

    def text(self) -> str:
        with open(self.log_path) as f:
            f.seek(self.offset)
            return f.read()

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while f"node {self.node} ready" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"agent on {self.node} not ready:\n{self.text()}")
            time.sleep(0.05)

    def wait(self, timeout: float = 30) -> int:
        """Exit status of an agent that ends by itself (e.g. --leave)."""
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


class Cluster:
    def __init__(self, netns_factory, tmp_path, segments=(0, 0, 0), network_name: str = "vxtest"):
        self.netns_factory = netns_factory
        self.tmp = str(tmp_path)
        self.network_name = network_name
        self.registry_path = os.path.join(self.tmp, "registry", "registry.json")
        os.makedirs(os.path.dirname(self.registry_path), exist_ok=True)
        self.switch = netns_factory("vsw-")
        self.switch.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        for seg in sorted(set(segments)):
            self.switch.run("ip", "link", "add", f"seg{seg}", "type", "bridge")
            self.switch.run("ip", "addr", "add", f"198.18.{seg}.254/24", "dev", f"seg{seg}")
            self.switch.run("ip", "link", "set", f"seg{seg}", "up")
        self.hosts = [self._add_host(i, seg) for i, seg in enumerate(segments)]

    def _add_host(self, index: int, segment: int) -> Host:
        h = Host(self, index, segment)
        port = f"p{index}"
        self.switch.run("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.name)
        self.switch.run("ip", "link", "set", port, "master", f"seg{segment}", "up")
        h.run("ip", "addr", "add", str(h.ip), "dev", "eth0")
        h.run("ip", "link", "set", "eth0", "up")
        h.run("ip", "route", "add", "default", "via", h.router, "dev", "eth0")
        return h

    def registry(self) -> dict:
        with open(self.registry_path) as f:
            return json.load(f)

    def ensure_all(self, **overrides):
        return [h.ensure(**overrides) for h in self.hosts]





def monitor_events(host: Host, during) -> list[str]:
    """The `ip -o monitor neigh route` lines in `host`'s namespace while `during()` runs (the order
    in which the kernel made the entries)."""
    mon = subprocess.Popen(["ip", "netns", "exec", host.name, "ip", "-o", "monitor", "neigh", "route"],
                           stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)                     # let the monitor subscribe
        during()
        time.sleep(0.3)
    finally:
        mon.terminate()
    return [line.strip() for line in mon.communicate(timeout=5)[0].splitlines()]


def reaches(ns_path: str, dst, tries: int = 3, timeout: float = 1.0) -> bool:
    """True when one of `tries` ICMP echoes to `dst` is answered (stops at the first answer)."""
    return any(probe.ping(ns_path, str(dst), count=1, timeout=timeout) for _ in range(tries))


class ContinuousPing(threading.Thread):
    """One echo every `interval` seconds until stop(); counts sent and lost (no reply in 1 s)."""

    def __init__(self, ns_path: str, dst, interval: float = 0.1):
        super().__init__(daemon=True)
        self.ns_path, self.dst = ns_path, str(dst)
        self.interval = interval
        self.sent = self.lost = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            started = time.monotonic()
            self.sent += 1
            self.lost += not probe.ping(self.ns_path, self.dst, count=1, timeout=1.0)
            self._stop_event.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> tuple[int, int]:
        """(sent, lost)"""
        self._stop_event.set()
        self.join(timeout=5)
        return self.sent, self.lost
