"""A pod pinging a pod on another host while both hosts' vxlan-agents are restarted."""
import signal
import time

import pytest

from tests.kit.vxlan_hosts import Cluster, ContinuousPing
from tests.kit.vxlan_pods import Pods

pytestmark = pytest.mark.root


def test_pod_to_pod_ping_survives_agent_restarts(netns, tmp_path):
    c = Cluster(netns, tmp_path, segments=[0, 0])
    pods = Pods(c, netns, tmp_path)
    a, b = pods.add(c.hosts[0], "pinger"), pods.add(c.hosts[1], "target")
    agents = [h.start_agent() for h in c.hosts]
    pinger = None
    try:
        for agent in agents:
            agent.wait_ready()       # host0 learns host1, which joined after host0's ADD
        before = [h.dumps() for h in c.hosts]
        pinger = ContinuousPing(a.ns.path, b.ip, interval=0.1)
        pinger.start()
        time.sleep(0.5)
        agents[0].stop(signal.SIGKILL)
        assert agents[1].stop(signal.SIGTERM) == 0
        late = pods.add(c.hosts[1], "while-agents-down")     # a pod ADD needs no agent
        time.sleep(0.5)
        agents = [h.start_agent() for h in c.hosts]
        for agent in agents:
            agent.wait_ready()
        time.sleep(0.5)
        sent, lost = pinger.stop()
        pinger = None
        assert sent >= 10 and lost <= 1, (sent, lost)
        assert [h.dumps() for h in c.hosts] == before
        pods.check(a)
        pods.check(late)
    finally:
        if pinger is not None:
            pinger.stop()
        for agent in agents:
            agent.kill()
