"""pycni-doctor overlay-drift against a real vxlan overlay (tests/kit/vxlan_hosts.py: test hosts on an
underlay switch, one file registry, pods attached through libcni with the real Go host-local): each
drift made for real (an FDB, ARP or route entry deleted, a peer vanished, MTU wrong, learning on, the
agent killed), found by `pycni-doctor --json --conf FILE`, fixed with the command it prints, gone, and
pods talking across hosts again. A healthy overlay gives zero findings (every check). vxlan's CHECK runs
diagnoses 3, 5 and 8 too: it fails with the finding (110 an FDB entry, 11 a dead etcd agent, 116 a policy route
stealing the pods' traffic) and passes once the printed fix is applied."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time

import pytest

from libcni_py.errors import CNIError
from tests.conftest import VENV_BIN
from tests.kit.vxlan_hosts import Cluster, reaches
from tests.kit.vxlan_pods import Pods

pytestmark = pytest.mark.root
DOCTOR = os.path.join(VENV_BIN, "pycni-doctor")
DEV = "vxlan.1"


def write_conf(host, tmp_path) -> str:
    path = os.path.join(str(tmp_path), f"{host.node}.conflist")
    with open(path, "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": host.conf["name"], "plugins": [host.conf]}, f)
    return path


def doctor(host, conf: str, check: str | None = "overlay-drift") -> tuple[int, dict]:
    argv = [DOCTOR, "--json", "--conf", conf, "--netns", host.path] + (["--check", check] if check else [])
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in p.stderr, p.stderr
    out = json.loads(p.stdout)
    assert out["errors"] == [], out["errors"]
    assert p.returncode == (1 if out["findings"] else 0), (p.returncode, out)
    return p.returncode, out


def findings(host, conf: str) -> list[dict]:
    _, out = doctor(host, conf)
    assert all(f["check"] == "overlay-drift" and f["netns"] == host.path for f in out["findings"]), out
    return out["findings"]


def apply(command: str) -> None:
    """Run a fix exactly as printed (argv from the text, no shell)."""
    subprocess.run(shlex.split(command), check=True, capture_output=True, text=True, timeout=60)


def one(found: list[dict], *words: str) -> dict:
    hits = [f for f in found if all(w in f["what"] for w in words)]
    assert len(hits) == 1, (words, [f["what"] for f in found])
    return hits[0]


@pytest.fixture
def overlay(netns, tmp_path):
    """Two hosts, a pod on each, every host reconciled once both joined; ping works both ways."""
    cluster = Cluster(netns, tmp_path, segments=[0, 0])
    pods = Pods(cluster, netns, tmp_path)
    a, b = pods.add(cluster.hosts[0], "ca"), pods.add(cluster.hosts[1], "cb")
    cluster.ensure_all()
    assert reaches(a.ns.path, b.ip) and reaches(b.ns.path, a.ip)
    yield cluster, pods, a, b
    for pod in (a, b):
        pods.delete(pod)


def lease_of(cluster, node: str) -> dict:
    return cluster.registry()["leases"][node]


def test_healthy_overlay_gives_zero_findings(overlay, tmp_path):
    cluster, _, _, _ = overlay
    for host in cluster.hosts:
        rc, out = doctor(host, write_conf(host, tmp_path), check=None)      # every diagnosis
        assert rc == 0 and out["findings"] == [] and out["healthy"], out
        assert "overlay-drift" in out["checks"]
    # a network whose node is not in this namespace is none of its business
    assert findings(cluster.hosts[1], write_conf(cluster.hosts[0], tmp_path)) == []


def test_missing_fdb_arp_and_route_found_fixed_and_traffic_flows(overlay, tmp_path):
    cluster, _, a, b = overlay
    h0, h1 = cluster.hosts
    conf = write_conf(h0, tmp_path)
    peer = lease_of(cluster, "host1")
    anchor = peer["subnet"].split("/")[0]
    h0.run("bridge", "fdb", "del", peer["vtepMAC"], "dev", DEV, "dst", peer["publicIP"], "self")
    h0.run("ip", "neigh", "del", anchor, "dev", DEV)
    h0.run("ip", "route", "del", peer["subnet"], "dev", DEV)
    assert not reaches(a.ns.path, b.ip, tries=1)
    found = findings(h0, conf)
    assert len(found) == 3, [f["what"] for f in found]
    prefix = f"ip netns exec {h0.name} "
    fdb = one(found, "FDB", peer["vtepMAC"], "missing")
    arp = one(found, "ARP", anchor, "missing")
    route = one(found, "route", peer["subnet"], "missing")
    for f in (fdb, arp, route):
        assert f["severity"] == "error" and f["where"] == f"netns {h0.name}"
        assert "peer host1" in f["what"] and "vxtest" in f["what"] and "dropped" in f["why"]
    assert fdb["fixes"][0]["command"] == (f"{prefix}bridge fdb append {peer['vtepMAC']} dev {DEV} "
                                          f"dst {peer['publicIP']} self permanent")
    assert arp["fixes"][0]["command"] == (f"{prefix}ip neigh replace {anchor} lladdr {peer['vtepMAC']} "
                                          f"dev {DEV} nud permanent proto 118")
    assert route["fixes"][0]["command"] == (f"{prefix}ip route replace {peer['subnet']} via {anchor} dev {DEV} "
                                            "onlink proto 118")
    for f in (arp, fdb, route):
        apply(f["fixes"][0]["command"])
    assert findings(h0, conf) == []
    assert reaches(a.ns.path, b.ip) and reaches(b.ns.path, a.ip)
    h0.check()           # the plugin's own view agrees: the entries are its own again (protocol 118)


def test_wrong_fdb_destination_found_and_replaced(overlay, tmp_path):
    cluster, _, a, b = overlay
    h0 = cluster.hosts[0]
    conf = write_conf(h0, tmp_path)
    peer = lease_of(cluster, "host1")
    h0.run("bridge", "fdb", "replace", peer["vtepMAC"], "dev", DEV, "dst", "198.18.0.77", "self", "permanent")
    assert not reaches(a.ns.path, b.ip, tries=1)
    [f] = findings(h0, conf)
    assert f"FDB {peer['vtepMAC']} dst {peer['publicIP']} on {DEV} is dst 198.18.0.77" in f["what"]
    assert f["fixes"][0]["command"].endswith(f"bridge fdb replace {peer['vtepMAC']} dev {DEV} "
                                             f"dst {peer['publicIP']} self permanent")
    apply(f["fixes"][0]["command"])
    assert findings(h0, conf) == []
    assert reaches(a.ns.path, b.ip)


def test_entries_of_a_vanished_peer_are_stale(netns, tmp_path):
    """host2 dies and its lease is removed from the registry (an operator, or the TTL): host0 still holds
    its route, ARP and FDB entries, each reported with its removal."""
    from plugins.main.vxlan.lease import release
    from plugins.main.vxlan.overlay import _registry
    cluster = Cluster(netns, tmp_path, segments=[0, 0, 0])
    cluster.ensure_all()
    cluster.ensure_all()
    h0, h2 = cluster.hosts[0], cluster.hosts[2]
    conf = write_conf(h0, tmp_path)
    assert findings(h0, conf) == []
    gone = lease_of(cluster, "host2")
    release(_registry(h2.cfg()), h2.cfg())
    found = findings(h0, conf)
    assert sorted(f["severity"] for f in found) == ["warning"] * 3, [f["what"] for f in found]
    route = one(found, "stale route", gone["subnet"])
    arp = one(found, "stale ARP", gone["subnet"].split("/")[0])
    fdb = one(found, "stale FDB", gone["vtepMAC"], gone["publicIP"])
    assert all("no node holds a lease" in f["what"] or "no lease has" in f["what"] for f in found)
    assert route["fixes"][0]["command"] == f"ip netns exec {h0.name} ip route del {gone['subnet']} dev {DEV} proto 118"
    for f in (route, fdb, arp):           # the plugin's order of removal: route, FDB, ARP
        apply(f["fixes"][0]["command"])
    assert findings(h0, conf) == []
    h0.check()


def test_wrong_mtu_and_learning_on_found_and_fixed(overlay, tmp_path):
    cluster, _, a, b = overlay
    h0 = cluster.hosts[0]
    conf = write_conf(h0, tmp_path)
    h0.run("ip", "link", "set", "dev", DEV, "mtu", "1400")
    h0.run("ip", "link", "set", "dev", DEV, "type", "vxlan", "learning")
    found = findings(h0, conf)
    assert len(found) == 2, [f["what"] for f in found]
    mtu = one(found, "MTU 1400", "want 1450", "eth0 1500 - 50")
    learning = one(found, "learning on")
    assert mtu["fixes"][0]["command"] == f"ip netns exec {h0.name} ip link set dev {DEV} mtu 1450"
    assert learning["fixes"][0]["command"] == f"ip netns exec {h0.name} ip link set dev {DEV} type vxlan nolearning"
    for f in (mtu, learning):
        apply(f["fixes"][0]["command"])
    assert findings(h0, conf) == []
    assert reaches(a.ns.path, b.ip) and reaches(b.ns.path, a.ip)
    h0.check()


def test_killed_agent_is_found_and_its_restart_clears_it(overlay, tmp_path):
    """vxlan-agent on host0 (file registry) is killed; its state goes stale (the heartbeat is moved
    back past lease.STALE_AFTER heartbeats instead of waiting for it): reported with the restart;
    the agent run again as the fix says: gone."""
    from libcni_py import records
    from plugins.main.vxlan import lease
    cluster, _, a, b = overlay
    h0 = cluster.hosts[0]
    conf = write_conf(h0, tmp_path)
    agent = h0.start_agent()
    try:
        agent.wait_ready()
        assert findings(h0, conf) == []
        agent.stop(signal.SIGKILL)
        path = lease.agent_path(h0.conf["stateDir"])
        doc = records.read(path)
        doc["heartbeat"] = time.time() - (lease.STALE_AFTER + 2) * doc["interval"]
        records.write(path, doc)
        [f] = findings(h0, conf)
        assert f["severity"] == "warning" and "vxlan-agent stopped" in f["what"] and "is stale" in f["what"]
        assert f["fixes"][0]["command"] == "systemctl restart vxlan-agent"
        assert f["fixes"][1]["command"] == f"ip netns exec {h0.name} vxlan-agent --conf CONFLIST"
        agent = h0.start_agent()            # the second fix, CONFLIST the network's file
        agent.wait_ready()
        assert findings(h0, conf) == []
        assert reaches(a.ns.path, b.ip)
    finally:
        agent.kill()


def test_vxlan_check_fails_with_the_finding_and_passes_when_fixed(overlay):
    cluster, pods, a, _ = overlay
    h0 = cluster.hosts[0]
    pods.check(a)                                   # healthy: CHECK passes
    peer = lease_of(cluster, "host1")
    h0.run("bridge", "fdb", "del", peer["vtepMAC"], "dev", DEV, "dst", peer["publicIP"], "self")
    with pytest.raises(CNIError) as e:
        pods.check(a)
    assert e.value.code == 110, e.value
    text = f"{e.value.msg} {e.value.details}"
    assert f"FDB {peer['vtepMAC']} dst {peer['publicIP']} on {DEV} missing" in text
    assert f"bridge fdb append {peer['vtepMAC']} dev {DEV} dst {peer['publicIP']} self permanent" in text
    apply(f"ip netns exec {h0.name} bridge fdb append {peer['vtepMAC']} dev {DEV} dst {peer['publicIP']} "
          "self permanent")
    pods.check(a)


@pytest.mark.skipif(not os.path.exists("/usr/bin/etcd"), reason="etcd-server is not installed (./build.sh test)")
def test_etcd_agent_killed_is_an_error_and_vxlan_check_fails_with_it(netns, tmp_path):
    """With an etcd registry the agent is the only keeper of the node: killed (its state stale), the
    doctor reports an error from the agent's state files alone (it never talks to etcd) and the pod's
    CHECK fails with it (11); the agent started again: no finding, CHECK passes, pods talk."""
    from libcni_py import records
    from plugins.main.vxlan import lease
    from tests.kit.etcd import EtcdCluster
    cluster = Cluster(netns, tmp_path, segments=[0, 0], network_name="vxetcd")
    with EtcdCluster(tmp_path, members=1, switch=cluster.switch) as etcd:
        for h in cluster.hosts:
            h.conf["registry"] = etcd.registry_conf(ttl=30)
        agents = [h.start_agent() for h in cluster.hosts]
        try:
            for agent in agents:
                agent.wait_ready()
            h0 = cluster.hosts[0]
            conf = write_conf(h0, tmp_path)
            pods = Pods(cluster, netns, tmp_path)
            a, b = pods.add(h0, "ea"), pods.add(cluster.hosts[1], "eb")
            deadline = time.monotonic() + 10
            while not reaches(a.ns.path, b.ip, tries=1) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert findings(h0, conf) == []
            pods.check(a)
            agents[0].stop(signal.SIGKILL)
            path = lease.agent_path(h0.conf["stateDir"])
            doc = records.read(path)
            doc["heartbeat"] = time.time() - (lease.STALE_AFTER + 2) * doc["interval"]
            records.write(path, doc)
            [f] = findings(h0, conf)
            assert f["severity"] == "error" and "vxlan-agent is not running" in f["what"], f
            assert "code 11" in f["why"] and f["fixes"][0]["command"] == "systemctl restart vxlan-agent"
            with pytest.raises(CNIError) as e:
                pods.check(a)
            assert e.value.code == 11 and "vxlan-agent is not running" in e.value.msg
            assert "systemctl restart vxlan-agent" in e.value.details
            agents[0] = h0.start_agent()
            agents[0].wait_ready()
            assert findings(h0, conf) == []
            pods.check(a)
            assert reaches(a.ns.path, b.ip)
            pods.delete(a)
            pods.delete(b)
        finally:
            for agent in agents:
                agent.kill()


def test_vxlan_check_fails_with_a_policy_route_stealing_the_pods_traffic(overlay):
    """Diagnosis 3 inside vxlan's CHECK: a rule sends everything from this node's pod subnet out of
    eth0, so pod a's packets to host1's pods never enter the overlay: CHECK fails (116) with the
    doctor's finding and its narrow fix; applied as printed, CHECK passes and the pods talk."""
    cluster, pods, a, b = overlay
    h0 = cluster.hosts[0]
    mine, peer = lease_of(cluster, "host0")["subnet"], lease_of(cluster, "host1")["subnet"]
    h0.run("ip", "route", "add", "default", "via", h0.router, "dev", "eth0", "table", "100")
    h0.run("ip", "rule", "add", "from", mine, "lookup", "100", "pref", "100")
    assert not reaches(a.ns.path, b.ip, tries=1)
    with pytest.raises(CNIError) as e:
        pods.check(a)
    assert e.value.code == 116, e.value
    assert f"ip rule 100 `from {mine} lookup 100`" in e.value.msg and "policy-route-steals-replies" in e.value.msg
    fix = f"ip rule add from {mine} to {peer} lookup main pref 99"
    assert fix in e.value.details
    h0.run(*shlex.split(fix))
    pods.check(a)
    assert reaches(a.ns.path, b.ip)


def test_deleted_device_found_by_the_nodes_public_ip_and_the_agent_recreates_it(overlay, tmp_path):
    """The device (and with it every peer entry) is gone: the namespace is still known as this node's by
    its lease's public IP; the fix, vxlan-agent run there, makes the device and the entries again."""
    cluster, _, a, b = overlay
    h0 = cluster.hosts[0]
    conf = write_conf(h0, tmp_path)
    h0.run("ip", "link", "del", DEV)
    [f] = findings(h0, conf)
    assert f["severity"] == "error" and f"device {DEV} missing" in f["what"]
    assert [x["command"] for x in f["fixes"]] == ["systemctl restart vxlan-agent",
                                                  f"ip netns exec {h0.name} vxlan-agent --conf CONFLIST"]
    assert findings(cluster.hosts[1], conf) == []          # host1 is not host0's node
    agent = h0.start_agent()
    try:
        agent.wait_ready()
        assert findings(h0, conf) == []
        assert reaches(a.ns.path, b.ip) and reaches(b.ns.path, a.ip)
    finally:
        agent.kill()


@pytest.mark.parametrize("stacks", [("dual", "dual"), ("v6", "v6")], ids=["dual-stack", "ipv6-only"])
def test_ipv6_overlay_entries_found_and_fixed(netns, tmp_path, stacks):
    """The IPv6 half (vxlan-v6.1 over the IPv6 underlay): healthy gives nothing; its NDP, FDB and
    route entries of a peer deleted are found with IPv6 commands, applied as printed: gone, the peer's
    IPv6 overlay address answers again, and the plugin's own CHECK agrees."""
    from tests.kit.vxlan_dual import DualCluster, ping
    cluster = DualCluster(netns, tmp_path, underlays=list(stacks))
    cluster.ensure_all()
    cluster.ensure_all()
    h0 = cluster.hosts[0]
    conf = write_conf(h0, tmp_path)
    assert findings(h0, conf) == []
    peer = lease_of(cluster, "host1")
    subnet6 = peer["ipv6Subnet"]
    anchor6 = subnet6.split("/")[0]
    dev6 = "vxlan-v6.1"
    assert ping(h0.path, anchor6)
    h0.run("bridge", "fdb", "del", peer["vtepMAC"], "dev", dev6, "dst", peer["publicIPv6"], "self")
    h0.run("ip", "-6", "neigh", "del", anchor6, "dev", dev6)
    h0.run("ip", "-6", "route", "del", subnet6, "dev", dev6)
    found = findings(h0, conf)
    assert len(found) == 3, [f["what"] for f in found]
    prefix = f"ip netns exec {h0.name} "
    assert one(found, "NDP", anchor6, "missing")["fixes"][0]["command"] == (
        f"{prefix}ip neigh replace {anchor6} lladdr {peer['vtepMAC']} dev {dev6} nud permanent proto 118")
    assert one(found, "FDB", peer["publicIPv6"], "missing")["fixes"][0]["command"] == (
        f"{prefix}bridge fdb append {peer['vtepMAC']} dev {dev6} dst {peer['publicIPv6']} self permanent")
    assert one(found, "route", subnet6, "missing")["fixes"][0]["command"] == (
        f"{prefix}ip route replace {subnet6} via {anchor6} dev {dev6} onlink proto 118")
    for f in found:
        apply(f["fixes"][0]["command"])
    assert findings(h0, conf) == []
    assert ping(h0.path, anchor6)
    h0.check()


def test_device_with_the_wrong_port_is_recreated_by_the_agent(overlay, tmp_path):
    """Our device (mark, MAC) made again by hand with UDP port 4789 and learning on: the port cannot be
    changed in place, so the fix is the agent, which deletes and recreates it as the config says."""
    cluster, _, a, b = overlay
    h0 = cluster.hosts[0]
    conf = write_conf(h0, tmp_path)
    mac = lease_of(cluster, "host0")["vtepMAC"]
    h0.run("ip", "link", "del", DEV)
    h0.run("ip", "link", "add", DEV, "address", mac, "type", "vxlan", "id", "1", "dstport", "4789", "dev", "eth0",
           "local", str(h0.ip.ip))
    h0.run("ip", "link", "set", DEV, "alias", "pycni-vxlan network=vxtest", "up")
    found = findings(h0, conf)
    port = one(found, "uses UDP port 4789", "the config says 8472")
    assert port["fixes"][0]["command"] == "systemctl restart vxlan-agent" and "cannot be changed in place" in \
        port["fixes"][0]["how"]
    one(found, "learning on")
    assert any("ARP" in f["what"] for f in found)           # the peer entries went with the old device
    agent = h0.start_agent()
    try:
        agent.wait_ready()
        assert findings(h0, conf) == []
        assert reaches(a.ns.path, b.ip) and reaches(b.ns.path, a.ip)
    finally:
        agent.kill()


def test_lost_lease_found_where_the_device_is_and_the_agent_takes_it_again(overlay, tmp_path):
    """host0's lease removed from the registry (an operator's cleanup, or a TTL): the node is still found
    by its device (mark and VTEP MAC), the lost lease is an error, vxlan CHECK fails with 111; the agent
    takes the lease again (same subnet, from the local copy): clean, CHECK passes."""
    from plugins.main.vxlan.lease import release
    from plugins.main.vxlan.overlay import _registry
    cluster, pods, a, b = overlay
    h0 = cluster.hosts[0]
    conf = write_conf(h0, tmp_path)
    subnet = lease_of(cluster, "host0")["subnet"]
    release(_registry(h0.cfg()), h0.cfg())
    [f] = findings(h0, conf)
    assert f["severity"] == "error" and "this node holds no lease in registry" in f["what"], f
    with pytest.raises(CNIError) as e:
        pods.check(a)
    assert e.value.code == 111 and "holds no lease" in e.value.msg
    agent = h0.start_agent()
    try:
        agent.wait_ready()
        assert lease_of(cluster, "host0")["subnet"] == subnet
        assert findings(h0, conf) == []
        pods.check(a)
    finally:
        agent.kill()
