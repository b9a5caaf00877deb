"""vxlan-agent: follows the registry, survives restarts without disturbing the datapath."""
import signal
import subprocess
import sys
import time

import pytest

from tests.kit.vxlan_hosts import VENV_BIN, Cluster, ContinuousPing, reaches

pytestmark = pytest.mark.root
BOUND = 5.0     # generous: the agent reacts on inotify, well under a second


def wait_for(predicate, what: str, timeout: float = BOUND):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def has_route(host, subnet) -> bool:
    return any(r.startswith(f"{subnet} ") for r in host.dumps()["route"])


def test_agent_follows_joins_and_leaves(netns, tmp_path):
    c = Cluster(netns, tmp_path)
    agents = [h.start_agent() for h in c.hosts[:2]]
    try:
        for a in agents:
            a.wait_ready()
        joined = c.hosts[2].ensure()
        for h in c.hosts[:2]:
            wait_for(lambda h=h: has_route(h, joined.subnet), f"{h.node} programs {joined.subnet}")
            h.check()
            assert reaches(h.path, joined.subnet.network_address)
        c.hosts[2].leave()
        for h in c.hosts[:2]:
            wait_for(lambda h=h: not has_route(h, joined.subnet), f"{h.node} forgets {joined.subnet}")
            d = h.dumps()
            assert not any(joined.vtep_mac in line for line in d["neigh"] + d["fdb"])
    finally:
        for a in agents:
            a.kill()


def test_agent_restart_loses_at_most_one_ping_and_changes_nothing(netns, tmp_path):
    c = Cluster(netns, tmp_path, segments=[0, 0])
    c.ensure_all()
    infos = c.ensure_all()
    agents = [h.start_agent() for h in c.hosts]
    pinger = None
    try:
        for a in agents:
            a.wait_ready()
        before = [h.dumps() for h in c.hosts]
        pinger = ContinuousPing(c.hosts[0].path, infos[1].subnet.network_address, interval=0.1)
        pinger.start()
        time.sleep(0.5)
        agents[0].stop(signal.SIGKILL)                 # killed outright
        assert agents[1].stop(signal.SIGTERM) == 0     # asked to stop: exits 0, datapath stays
        time.sleep(0.5)
        agents = [h.start_agent() for h in c.hosts]
        for a in agents:
            a.wait_ready()
        time.sleep(0.5)
        sent, lost = pinger.stop()
        pinger = None
        assert sent >= 10 and lost <= 1, (sent, lost)
        assert [h.dumps() for h in c.hosts] == before  # adopted as it was: nothing recreated
        for a in agents:
            assert "entries changed" not in a.text()
    finally:
        if pinger is not None:
            pinger.stop()
        for a in agents:
            a.kill()


def test_agent_leave_gives_lease_back_and_removes_device(netns, tmp_path):
    c = Cluster(netns, tmp_path, segments=[0])
    h = c.hosts[0]
    h.ensure()
    a = h.start_agent("--leave")
    assert a.wait() == 0, a.text()
    assert "host0" not in c.registry()["leases"]
    assert h.run("ip", "link", "show", "vxlan.1", check=False).returncode != 0


def test_python_dash_m_runs_the_agent(tmp_path):
    p = subprocess.run([sys.executable, "-m", "plugins.main.vxlan", "--help"], capture_output=True, text=True,
                       cwd=VENV_BIN + "/../..")
    assert p.returncode == 0 and "--conf" in p.stdout
    bad = tmp_path / "bad.conf"
    bad.write_text('{"cniVersion": "1.0.0", "name": "n", "type": "vxlan", "network": "10.244.0.0/16",'
                   ' "registry": {"type": "zookeeper"}}')
    p = subprocess.run([VENV_BIN + "/vxlan-agent", "--conf", str(bad)], capture_output=True, text=True)
    assert p.returncode == 1 and "unknown registry type 'zookeeper'" in p.stderr


def test_follow_change_leaves_what_a_full_reconcile_would(netns, tmp_path):
    from plugins.main.vxlan.overlay import ensure_applied, ensure_node, follow_change
    from plugins.main.vxlan.registry import open_registry
    from plugins.pkg import ns
    c = Cluster(netns, tmp_path)
    c.ensure_all()
    c.ensure_all()
    h0 = c.hosts[0]
    reg = open_registry("file", c.registry_path)

    def follow(applied):
        with ns.enter(h0.path):
            applied = follow_change(h0.cfg(), applied, reg.snapshot())
            assert ensure_node(h0.cfg()).changes == 0      # a full diff finds nothing left to do
        h0.check()
        return applied

    with ns.enter(h0.path):
        applied = ensure_applied(h0.cfg())
    c.hosts[2].set_address("198.18.0.33/24")
    c.hosts[2].ensure()
    applied = follow(applied)
    assert applied.info.changes == 1                        # the FDB entry, nothing else
    c.hosts[1].leave()
    applied = follow(applied)
    assert applied.info.changes == 3
    stale = applied
    c.hosts[1].ensure()
    h0.ensure()                                             # e.g. an ADD programmed the rejoin already
    follow(stale)                                           # route EEXIST -> falls back to a full reconcile
    assert reaches(h0.path, c.hosts[1].ensure().subnet.network_address)
