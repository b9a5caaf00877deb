"""Dual-stack and IPv6-only test hosts for the vxlan overlay (tests/kit/vxlan_hosts.py, with IPv6).

    cluster = DualCluster(netns, tmp_path, underlays=["dual", "dual", "v4"])
    cluster.hosts[0].conf                 # "network" + "ipv6Network" (drop either to test one family)

The switch's segment bridges hold 198.18.<seg>.254/24 and fd00:198:18:<seg>::fe/64 and forward
both families; host i is eth0 198.18.<seg>.<i+1>/24 and/or fd00:198:18:<seg>::<i+1>/64 (nodad)
with default routes via the router, as its underlay says ("dual", "v4", "v6").
Plus ping / TCP echo / TCP exchange over either family with the signatures these tests use
(plugins.pkg.probe does the work).
"""
from __future__ import annotations

import ipaddress

from plugins.pkg import probe
from tests.kit.vxlan_hosts import Cluster, Host

NETWORK6 = "fd00:10:244::/48"


def underlay6(segment: int, index: int) -> ipaddress.IPv6Interface:
    return ipaddress.IPv6Interface(f"fd00:198:18:{segment}::{index + 1}/64")


class DualCluster(Cluster):
    def __init__(self, netns_factory, tmp_path, underlays=("dual", "dual", "dual"), segments=None,
                 network_name: str = "vxtest"):
        self.underlays = list(underlays)
        self._v6_segments: set[int] = set()
        super().__init__(netns_factory, tmp_path, segments or [0] * len(self.underlays), network_name)
        self.switch.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")

    def _add_host(self, index: int, segment: int) -> Host:
        stack = self.underlays[index]
        h = Host(self, index, segment)
        h.stack = stack
        h.ip6 = underlay6(segment, index)
        h.router6 = f"fd00:198:18:{segment}::fe"
        port = f"p{index}"
        self.switch.run("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.name)
        self.switch.run("ip", "link", "set", port, "master", f"seg{segment}", "up")
        if stack in ("dual", "v6") and segment not in self._v6_segments:
            self.switch.run("ip", "addr", "add", f"{h.router6}/64", "dev", f"seg{segment}", "nodad")
            self._v6_segments.add(segment)
        h.run("ip", "link", "set", "eth0", "up")
        if stack in ("dual", "v4"):
            h.run("ip", "addr", "add", str(h.ip), "dev", "eth0")
            h.run("ip", "route", "add", "default", "via", h.router, "dev", "eth0")
        if stack in ("dual", "v6"):
            h.run("ip", "-6", "addr", "add", str(h.ip6), "dev", "eth0", "nodad")
            h.run("ip", "-6", "route", "add", "default", "via", h.router6, "dev", "eth0")
            h.conf["ipv6Network"] = NETWORK6
        if stack == "v6":
            del h.conf["network"]
        return h


def dumps6(host, dev: str = "vxlan-v6.1") -> dict[str, list[str]]:
    """`ip -6 route`, `ip -6 neigh ... nud permanent` and `bridge fdb` of the IPv6 device."""
    def lines(*argv):
        return sorted(line.strip() for line in host.run(*argv).stdout.splitlines() if line.strip())
    return {"route": lines("ip", "-6", "route", "show", "table", "main"),
            "neigh": lines("ip", "-6", "neigh", "show", "dev", dev, "nud", "permanent"),
            "fdb": lines("bridge", "fdb", "show", "dev", dev)}


def ping(ns_path: str, dst, tries: int = 3, timeout: float = 1.0) -> bool:
    """One ICMP (IPv4) or ICMPv6 echo answered out of `tries`."""
    return any(probe.ping(ns_path, str(dst), count=1, timeout=timeout) for _ in range(tries))


def TCPEcho(ns_path: str) -> probe.TCPEcho:
    """A dual-stack TCP server in a namespace ([::], IPv4 mapped) answering with what it read, reversed."""
    return probe.TCPEcho(ns_path, addr="::")


def tcp_exchange(ns_path: str, dst, port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    return probe.tcp_exchange(ns_path, str(dst), port, payload, timeout)
