"""vxlan-agent on dual-stack hosts: it programs the IPv6 trio too, applies a joining node as a delta
for both families, publishes the IPv6 device, and pods ADDed through its state talk IPv6."""
import json
import os
import time

import pytest

from plugins.main.vxlan import overlay
from plugins.pkg import ns as nsmod
from tests.kit.vxlan_dual import DualCluster, dumps6, ping
from tests.kit.vxlan_pods import Pods

pytestmark = pytest.mark.root


def wait_for(pred, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def v6_peers(host) -> int:
    return len(dumps6(host)["neigh"])


def test_agents_program_both_families_and_follow_a_joining_node(netns, tmp_path):
    c = DualCluster(netns, tmp_path)
    pods = Pods(c, netns, tmp_path)
    agents = [h.start_agent("--resync", "120") for h in c.hosts[:2]]     # changes come as deltas only
    try:
        for agent in agents:
            agent.wait_ready()
        wait_for(lambda: all(v6_peers(h) == 1 for h in c.hosts[:2]), what="one IPv6 peer on host0 and host1")
        for h in c.hosts[:2]:
            doc = json.load(open(os.path.join(h.conf["stateDir"], "agent.json")))
            assert doc["device6"]["name"] == "vxlan-v6.1" and doc["device6"]["mtu"] == 1430
            assert doc["lease"]["ipv6Subnet"].startswith("fd00:10:244:")
            with nsmod.enter(h.path):
                overlay.node_status(h.cfg())          # STATUS: both devices as the lease says
        a, b = pods.add(c.hosts[0], "a"), pods.add(c.hosts[1], "b")     # ADD reads the agents' state
        b6 = next(ip.address.split("/")[0] for ip in b.result.ips if ":" in ip.address)
        assert ping(a.ns.path, b6)
        late = c.hosts[2].start_agent("--resync", "120")
        agents.append(late)
        late.wait_ready()
        wait_for(lambda: all(v6_peers(h) == 2 and len(h.dumps()["neigh"]) == 2 for h in c.hosts),
                 what="every host knowing both peers in both families")
        assert "delta apply failed" not in agents[0].text()
        c3 = pods.add(c.hosts[2], "c")
        c6 = next(ip.address.split("/")[0] for ip in c3.result.ips if ":" in ip.address)
        assert ping(a.ns.path, c6) and ping(b.ns.path, c6)
        for pod in (a, b, c3):
            pods.check(pod)
        for h in c.hosts:
            h.check()
        for pod in (a, b, c3):
            pods.delete(pod)
    finally:
        for agent in agents:
            agent.kill()
