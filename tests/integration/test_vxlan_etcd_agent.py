"""vxlan-agent with an etcd registry: three test hosts, a real three-member etcd 3.4, nothing mocked.

The etcd members sit on bridge `etcd0` in the hosts' switch netns (tests/kit/etcd.py with
`switch=`), so the hosts (198.18.0.x) reach them (198.19.250.x) routed by that switch. The per-pod
plugin never opens etcd: ADD, CHECK and STATUS read the agent's state file in stateDir.
"""
from __future__ import annotations

import ipaddress
import os
import re
import signal
import time

import pytest

from libcni_py.errors import CNIError, PLUGIN_NOT_AVAILABLE, TRY_AGAIN_LATER
from plugins.main.vxlan import lease
from plugins.main.vxlan.registry.base import Lease
from plugins.main.vxlan.registry.etcd import EtcdRegistry
from plugins.pkg import ns as nsmod
from plugins.pkg import probe
from tests.kit.etcd import EtcdCluster
from tests.kit.vxlan_hosts import Cluster, ContinuousPing
from tests.kit.vxlan_pods import Pods

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.skipif(not os.path.exists("/usr/bin/etcd"),
                                 reason="etcd-server is not installed (./build.sh test installs it)")]

TTL = 3
OUTAGE = 10.0


def wait_for(predicate, what: str, timeout: float = 5.0, step: float = 0.02) -> float:
    """Seconds until `predicate()` held; AssertionError naming `what` after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(step)
    return time.monotonic() - start


def removals(log: str) -> list[str]:
    """The agent's log lines of reconciles that removed peer entries."""
    return [line for line in log.splitlines() if re.search(r"peer entries added, [1-9]\d* removed", line)]


def has_route(host, subnet) -> bool:
    return any(r.startswith(f"{subnet} ") for r in host.run("ip", "route", "show", "table", "main")
               .stdout.splitlines())


@pytest.fixture
def world(netns, tmp_path):
    """Three hosts on one segment and three etcd members behind the same switch; hosts use etcd."""
    c = Cluster(netns, tmp_path, segments=[0, 0, 0], network_name="vxetcd")
    with EtcdCluster(tmp_path, members=3, switch=c.switch) as etcd:
        for h in c.hosts:
            h.conf["registry"] = etcd.registry_conf(ttl=TTL)
        yield c, etcd


def reader(etcd) -> EtcdRegistry:
    with etcd.inside():
        return EtcdRegistry(etcd.options("vxetcd"))


def snapshot(etcd, reg: EtcdRegistry):
    with etcd.inside():
        return reg.snapshot()


def assert_add_del_stay_off_etcd(host, netns) -> None:
    """ADD and DEL of the plugin itself, in a fresh interpreter: neither the HTTP client nor ssl
    (nothing that could talk to etcd) is imported, with the agent alive."""
    import json
    import subprocess
    import sys
    from tests.kit.vxlan_pods import CNI_PATH, ROOT
    pod_ns = netns("pod")
    code = ("import io, os, sys; from libcni_py import skel; from plugins.main.vxlan import cmd\n"
            "conf = sys.stdin.buffer.read()\n"
            "for verb in ('ADD', 'DEL'):\n"
            "    out = io.StringIO()\n"
            "    assert skel.run(cmd.PLUGIN, {**os.environ, 'CNI_COMMAND': verb}, io.BytesIO(conf), out, sys.stderr)"
            " == 0, out.getvalue()\n"
            "print(sorted(m for m in sys.modules if m in ('http.client', 'ssl', 'urllib.request', 'etcd3gw',"
            " 'requests')))\n")
    env = dict(os.environ, CNI_CONTAINERID="offetcd", CNI_NETNS=pod_ns.path, CNI_IFNAME="eth0",
               CNI_PATH=":".join(CNI_PATH))
    with nsmod.enter(host.path):
        p = subprocess.run([sys.executable, "-c", code], input=json.dumps(host.conf), env=env,
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_add_without_agent_is_11_status_50_then_agent_serves_pods(world, netns, tmp_path):
    c, etcd = world
    h = c.hosts[0]
    pods = Pods(c, netns, tmp_path, version="1.1.0")
    with pytest.raises(CNIError) as e:
        pods.add(h, "early")
    assert e.value.code == TRY_AGAIN_LATER and "vxlan-agent" in (e.value.msg + (e.value.details or ""))
    assert not os.listdir(os.path.join(h.conf["stateDir"], "attachments")) \
        if os.path.isdir(os.path.join(h.conf["stateDir"], "attachments")) else True
    with nsmod.enter(h.path), pytest.raises(CNIError) as e:
        pods.cni(h).get_status_network_list(pods.conflist(h))
    assert e.value.code == PLUGIN_NOT_AVAILABLE
    agent = h.start_agent()
    try:
        agent.wait_ready()
        doc, why = lease.agent_state(h.conf["stateDir"])
        assert doc is not None and doc["pid"] > 0 and doc["node"] == h.node, why
        with nsmod.enter(h.path):
            pods.cni(h).get_status_network_list(pods.conflist(h))
        pod = pods.add(h, "c0")
        assert_add_del_stay_off_etcd(h, netns)
        assert ipaddress.ip_interface(pod.cidr).network.subnet_of(ipaddress.ip_network(doc["lease"]["subnet"]))
        pods.check(pod)
        pods.delete(pod)
        pods.assert_gone(pod)
        # --leave: the lease keys go at once and the etcd lease is revoked (no TTL wait)
        reg = reader(etcd)
        try:
            snapshot(etcd, reg)
            lease_id = reg._kvs[reg.lease_key(h.node)].lease
            assert lease_id
            assert agent.stop() == 0
            assert h.start_agent("--leave").wait() == 0
            assert h.node not in snapshot(etcd, reg).leases and not [k for k in reg._kvs if "/subnets/" in k]
            with etcd.inside():
                assert int(reg.client.call("lease/timetolive", {"ID": lease_id}).get("TTL", 0)) == -1
        finally:
            with etcd.inside():
                reg.close()
        assert lease.agent_state(h.conf["stateDir"])[0] is None
        with pytest.raises(CNIError) as e:
            pods.add(h, "after-leave")
        assert e.value.code == TRY_AGAIN_LATER
    finally:
        agent.kill()


def test_pods_across_hosts_late_join_within_1s_and_sigkill_expiry(world, netns, tmp_path):
    c, etcd = world
    pods = Pods(c, netns, tmp_path)
    reg = reader(etcd)
    agents = {h.node: h.start_agent() for h in c.hosts[:2]}
    try:
        for a in agents.values():
            a.wait_ready()
        attached = [pods.add(h, f"c{h.index}") for h in c.hosts[:2]]
        assert probe.ping(attached[0].ns.path, attached[1].ip) == [0]
        srv = probe.TCPEcho(attached[1].ns.path)
        try:
            assert probe.tcp_exchange(attached[0].ns.path, attached[1].ip, srv.port, b"ab") == b"ba"
        finally:
            srv.close()

        # host2 joins later: both others program it within 1 s of its lease appearing in etcd
        late = c.hosts[2]
        agents[late.node] = late.start_agent()
        wait_for(lambda: late.node in snapshot(etcd, reg).leases, "host2's lease in etcd", timeout=15)
        seen = time.monotonic()
        subnet = snapshot(etcd, reg).leases[late.node].subnet
        for h in c.hosts[:2]:
            wait_for(lambda h=h: has_route(h, subnet), f"{h.node} routes {subnet}", timeout=5)
        assert time.monotonic() - seen < 1.0, f"{time.monotonic() - seen:.2f}s from lease to both kernels"
        agents[late.node].wait_ready()
        p2 = pods.add(late, "c2")
        assert probe.ping(attached[0].ns.path, p2.ip) == [0] and probe.ping(p2.ns.path, attached[1].ip) == [0]

        # SIGKILL host2's agent: after its TTL its entries vanish on the other hosts
        agents[late.node].stop(signal.SIGKILL)
        gone = wait_for(lambda: all(not has_route(h, subnet) for h in c.hosts[:2]),
                        "host2's routes removed after its TTL", timeout=TTL + 4)
        assert gone > TTL / 3, "removed before any TTL could expire"
        for h in c.hosts[:2]:
            d = h.dumps()
            assert not any(lease.vtep_mac("vxetcd", late.node) in line for line in d["neigh"] + d["fdb"])
        # no fresh agent state on host2 now: a new pod waits (11) rather than going out unreachable
        wait_for(lambda: lease.agent_state(late.conf["stateDir"])[0] is None, "host2's agent state stale",
                 timeout=lease.STALE_AFTER * lease.HEARTBEAT + 2, step=0.2)
        with pytest.raises(CNIError) as e:
            pods.add(late, "c3")
        assert e.value.code == TRY_AGAIN_LATER
        # it comes back: same subnet (local lease copy), its pod keeps its address and is reached again
        agents[late.node] = late.start_agent()
        agents[late.node].wait_ready()
        assert snapshot(etcd, reg).leases[late.node].subnet == subnet
        for h in c.hosts[:2]:
            wait_for(lambda h=h: has_route(h, subnet), f"{h.node} routes {subnet} again", timeout=5)
        # what is promised: the restarted agent is ready once its own entries are programmed, and a
        # peer programs ARP and FDB before the route; so with the routes back the path is whole both
        # ways, and one ping goes through (no polling)
        assert probe.ping(attached[0].ns.path, p2.ip) == [0] and probe.ping(p2.ns.path, attached[0].ip) == [0]
        for pod in [*attached, p2]:
            pods.check(pod)
        # the live agents kept their leases all along: host0 and host1 removed entries once only
        # (host2's expiry). An agent whose keepalive never ran let its lease expire every TTL, and
        # the peers dropped and re-added its entries each time (pings lost, CHECK finding an ARP
        # entry missing mid-flap)
        for h in c.hosts[:2]:
            assert len(removals(agents[h.node].text())) == 1, agents[h.node].text()
        assert not removals(agents[late.node].text()), agents[late.node].text()
    finally:
        for a in agents.values():
            a.kill()
        with etcd.inside():
            reg.close()


def test_agent_keeps_its_etcd_lease_past_many_ttls(world, netns, tmp_path):
    """The keepalive runs every ttl/3 beside the full reconciles (also every ttl/3, which renew
    nothing with etcd): the node's keys keep one etcd lease and never expire while the agent lives."""
    c, etcd = world
    reg = reader(etcd)
    agent = c.hosts[0].start_agent()
    try:
        agent.wait_ready()
        seen, start = [], time.monotonic()
        while time.monotonic() - start < 3 * TTL:
            snapshot(etcd, reg)
            kv = reg._kvs.get(reg.lease_key("host0"))
            assert kv is not None and kv.lease, f"host0's lease gone after {time.monotonic() - start:.1f}s"
            with etcd.inside():
                left = int(reg.client.call("lease/timetolive", {"ID": kv.lease}).get("TTL", -1))
            assert left > 0, f"host0's etcd lease not renewed: {left} s left"
            seen.append((kv.lease, kv.mod))
            time.sleep(0.2)
        assert len(set(seen)) == 1, f"host0's lease was written again: {sorted(set(seen))}"
        assert not removals(agent.text()) and "acquiring it again" not in agent.text(), agent.text()
    finally:
        agent.kill()
        with etcd.inside():
            reg.close()


def test_etcd_down_pods_keep_pinging_kernel_unchanged_then_change_applied(world, netns, tmp_path):
    c, etcd = world
    pods = Pods(c, netns, tmp_path)
    agents = [h.start_agent() for h in c.hosts]
    pingers: list[ContinuousPing] = []
    try:
        for a in agents:
            a.wait_ready()
        attached = [pods.add(h, f"c{h.index}") for h in c.hosts]
        for h in c.hosts:         # every host has routes to both others
            wait_for(lambda h=h: sum(r.startswith("10.244.") and "onlink" in r
                                     for r in h.dumps()["route"]) == 2, f"{h.node} has both peers")
        etcd.kill(1)              # one member gone: nothing changes for the pods
        assert probe.ping(attached[0].ns.path, attached[2].ip) == [0]
        before = [h.dumps() for h in c.hosts]
        pingers = [ContinuousPing(attached[i].ns.path, attached[(i + 1) % 3].ip, interval=0.1)
                   for i in range(3)]
        for p in pingers:
            p.start()
        etcd.kill(0)
        etcd.kill(2)              # all members down for 10 s, longer than the TTL
        time.sleep(OUTAGE)
        during = [h.dumps() for h in c.hosts]
        p_new = pods.add(c.hosts[0], "during")    # the agent lives: a new pod is served from its state
        pods.delete(p_new)
        pods.assert_gone(p_new)
        for i in range(3):
            etcd.members[i].start()
        etcd.wait_healthy()
        for a in agents:
            wait_for(lambda a=a: "registry reachable again" in a.text(), f"{a.node} back on etcd", timeout=10)
        sent_lost = [p.stop() for p in pingers]
        pingers = []
        assert during == before, "the kernel changed while etcd was down"
        assert all(lost == 0 and sent > 20 for sent, lost in sent_lost), sent_lost
        for a in agents:
            text = a.text()
            assert text.count("WARNING registry unreachable") == 1 and text.count("registry reachable again") == 1, text
        assert [h.dumps() for h in c.hosts] == before
        # a lease change made after etcd returns is applied
        ghost = Lease("ghost", ipaddress.IPv4Network("10.244.200.0/24"), ipaddress.IPv4Address("198.18.0.77"),
                      "02:00:00:00:00:77", 1)
        with etcd.inside():
            reg = EtcdRegistry(etcd.options("vxetcd"))
            try:
                reg.update(lambda d: d.leases.__setitem__("ghost", ghost))
                for h in c.hosts:
                    wait_for(lambda h=h: has_route(h, ghost.subnet), f"{h.node} routes the new lease")
                reg.update(lambda d: d.leases.pop("ghost"))
                for h in c.hosts:
                    wait_for(lambda h=h: not has_route(h, ghost.subnet), f"{h.node} drops it again")
            finally:
                reg.close()
        assert probe.ping(attached[0].ns.path, attached[1].ip) == [0]
    finally:
        for p in pingers:
            p.stop()
        for a in agents:
            a.kill()


def fake_leases(first: int, count: int) -> dict[str, Lease]:
    """`count` peer leases (unreachable public IPs on the underlay range: kernel entries only)."""
    out = {}
    for i in range(first, first + count):
        out[f"peer{i:04d}"] = Lease(f"peer{i:04d}", ipaddress.IPv4Network(f"10.{64 + (i + 10) // 250}."
                                                                         f"{(i + 10) % 250}.0/24"),
                                    ipaddress.IPv4Address(f"198.18.{8 + i // 250}.{1 + i % 250}"),
                                    f"02:aa:00:00:{i // 256:02x}:{i % 256:02x}", 1)
    return out


def put_leases(reg: EtcdRegistry, leases: dict[str, Lease], batch: int = 25) -> None:
    """In transactions of `batch` leases (etcd takes at most 128 operations in one)."""
    items = sorted(leases.items())
    for i in range(0, len(items), batch):
        chunk = dict(items[i:i + batch])
        reg.update(lambda d, chunk=chunk: d.leases.update(chunk))


def test_add_with_a_live_agent_does_not_touch_peers_and_stays_flat_to_1000_peers(world, netns, tmp_path):
    c, etcd = world
    h = c.hosts[0]
    h.conf.update(network="10.64.0.0/10", registry=etcd.registry_conf(ttl=30))
    pods = Pods(c, netns, tmp_path)
    agent = h.start_agent("--resync", "30")
    try:
        agent.wait_ready()
        with etcd.inside():
            reg = EtcdRegistry(etcd.options("vxetcd"))
        try:
            def add_time(n: int) -> float:
                times = []
                for k in range(3):
                    start = time.monotonic()
                    pod = pods.add(h, f"n{n}k{k}")
                    times.append(time.monotonic() - start)
                    pods.delete(pod)
                return sorted(times)[1]

            def routes() -> int:
                return sum(" onlink" in r for r in h.dumps()["route"])
            with etcd.inside():
                put_leases(reg, fake_leases(0, 10))
            wait_for(lambda: routes() == 10, "10 peers programmed", timeout=10, step=0.1)
            t10 = add_time(10)
            # ADD reconciles nothing: a peer route removed behind the agent's back stays removed
            # (the agent is stopped meanwhile, its heartbeat still fresh); only the agent's full
            # resync (every --resync s, 30 here: not within this test) would put it back
            victim = next(r for r in h.dumps()["route"] if " onlink" in r).split()[0]
            agent.proc.send_signal(signal.SIGSTOP)
            try:
                h.run("ip", "route", "del", victim)
                pods.delete(pods.add(h, "untouched"))
                assert not has_route(h, victim), "a pod ADD reprogrammed the overlay"
            finally:
                agent.proc.send_signal(signal.SIGCONT)
            with etcd.inside():
                put_leases(reg, fake_leases(10, 990))
            took = wait_for(lambda: routes() == 999, "1000 peers programmed", timeout=60, step=0.2)
            t1000 = add_time(1000)
            print(f"ADD median with 10 peers {t10 * 1000:.0f} ms, with 1000 peers {t1000 * 1000:.0f} ms; "
                  f"990 peers programmed in {took:.1f} s")
            assert t1000 < 1.5 * t10 + 0.05, (t10, t1000)
        finally:
            with etcd.inside():
                reg.close()
    finally:
        agent.kill()


def test_compaction_past_the_agents_revision_lists_again_and_converges(world, netns, tmp_path):
    c, etcd = world
    h = c.hosts[0]
    h.conf.update(registry=etcd.registry_conf(ttl=30))
    agent = h.start_agent("--resync", "60")          # no full resync: only the watch can catch up
    try:
        agent.wait_ready()
        with etcd.inside():
            reg = EtcdRegistry(etcd.options("vxetcd"))
        try:
            first = fake_leases(0, 3)
            with etcd.inside():
                put_leases(reg, first)
            for lz in first.values():
                wait_for(lambda lz=lz: has_route(h, lz.subnet), f"{lz.node} programmed")
            agent.proc.send_signal(signal.SIGSTOP)      # behind: its watch stream is cut meanwhile
            try:
                for i in range(3):
                    etcd.kill(i)
                for i in range(3):
                    etcd.members[i].start()
                etcd.wait_healthy()
                later = fake_leases(3, 2)
                with etcd.inside():
                    reg.update(lambda d: [d.leases.pop(n) for n in ("peer0000", "peer0001")])
                    put_leases(reg, later)
                    rev = reg.snapshot().revision
                    reg.compact(rev)
            finally:
                agent.proc.send_signal(signal.SIGCONT)
            want_gone = [first["peer0000"].subnet, first["peer0001"].subnet]
            want = [first["peer0002"].subnet, *(lz.subnet for lz in later.values())]
            wait_for(lambda: all(has_route(h, s) for s in want) and not any(has_route(h, s) for s in want_gone),
                     "converged after the compaction", timeout=10)
            assert "compacted past revision" in agent.text(), agent.text()
            assert sum(" onlink" in r for r in h.dumps()["route"]) == 3
        finally:
            with etcd.inside():
                reg.close()
    finally:
        agent.kill()


def test_tls_client_certs_and_a_wrong_ca_is_a_clear_error_not_a_hang(netns, tmp_path):
    from tests.kit.etcd import TLS
    c = Cluster(netns, tmp_path, segments=[0, 0], network_name="vxetcd")
    pods = Pods(c, netns, tmp_path)
    with EtcdCluster(tmp_path, members=3, switch=c.switch, tls=True) as etcd:
        good, bad = c.hosts
        good.conf["registry"] = etcd.registry_conf(ttl=TTL)
        other = TLS(str(tmp_path / "other-ca"), ["198.19.250.1"], name="other")
        bad.conf["registry"] = etcd.registry_conf(ttl=TTL, caFile=other.ca)
        agents = [good.start_agent(), bad.start_agent()]
        try:
            agents[0].wait_ready()
            pod = pods.add(good, "tls")
            pods.delete(pod)
            wait_for(lambda: "registry unreachable" in agents[1].text(), "the wrong CA reported", timeout=10)
            text = agents[1].text()
            assert "TLS: unable to get local issuer certificate" in text and "registry.caFile" in text, text
            assert agents[1].proc.poll() is None and "ready" not in text      # retrying, not exited
            with pytest.raises(CNIError) as e:
                pods.add(bad, "wrong-ca")
            assert e.value.code == TRY_AGAIN_LATER and "vxlan-agent" in e.value.details
        finally:
            for a in agents:
                a.kill()
