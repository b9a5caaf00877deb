"""A vxlan node's life: join, leave, rejoin with another subnet; STATUS (1.1.0) saying whether the
node can serve a new pod. Leave removes what the node made once no pod uses it; a node whose subnet
changed re-addresses its bridge (or says 117 while pods use the old subnet)."""
import json
import os
import time

import pytest

from libcni_py.errors import CNIError
from plugins.main.vxlan import errors as codes
from plugins.main.vxlan.registry import open_registry
from plugins.pkg import ns, probe
from tests.kit.vxlan_hosts import Cluster
from tests.kit.vxlan_pods import Pods

pytestmark = pytest.mark.root


def _bridge_addrs(host) -> list[str]:
    out = host.run("ip", "-4", "-o", "addr", "show", "dev", "cni0", check=False).stdout
    return sorted(line.split()[3] for line in out.splitlines())


def _lease_copy(host) -> str:
    return os.path.join(host.conf["stateDir"], "lease.json")


def _status(pods, host):
    with ns.enter(host.path):
        pods.cni(host).get_status_network_list(pods.conflist(host))


def _drop_lease(cluster, node: str) -> None:
    """What a TTL expiry (or a registry restored from an old copy) does to a node's lease."""
    reg = open_registry("file", cluster.registry_path)
    reg.update(lambda draft: draft.leases.pop(node, None))


def test_leave_removes_what_the_node_made_and_rejoin_with_another_subnet_works(netns, tmp_path):
    c = Cluster(netns, tmp_path, segments=[0, 0, 0])
    a, b, newcomer = c.hosts
    pods = Pods(c, netns, tmp_path)
    pb = pods.add(b, "cb")
    pa = pods.add(a, "ca")
    old = pa.gateway
    pods.delete(pa)
    a.leave()
    assert _bridge_addrs(a) == [] and "cni0" not in a.run("ip", "-o", "link").stdout
    assert "vxlan.1" not in a.run("ip", "-o", "link").stdout
    assert not os.path.exists(_lease_copy(a))
    assert a.node not in c.registry()["leases"]
    newcomer.ensure()                                   # takes a's old subnet (lowest free)
    assert c.registry()["leases"][newcomer.node]["subnet"].startswith(old.rsplit(".", 1)[0] + ".")
    pa2 = pods.add(a, "ca2")                            # a rejoins: another subnet, and ADD works
    assert pa2.gateway != old and _bridge_addrs(a) == [f"{pa2.gateway}/24"]
    b.ensure()
    assert any(probe.ping(pa2.ns.path, pb.ip, count=1, timeout=1.0) for _ in range(3))
    for p in (pa2, pb):
        pods.delete(p)


def test_leave_with_a_pod_attached_is_refused_and_removes_nothing(netns, tmp_path):
    c = Cluster(netns, tmp_path, segments=[0])
    h = c.hosts[0]
    pods = Pods(c, netns, tmp_path)
    pod = pods.add(h, "c1")
    before = (_bridge_addrs(h), h.run("ip", "-o", "link").stdout, c.registry()["leases"])
    with pytest.raises(CNIError) as e:
        h.leave()
    assert e.value.code == codes.PODS_ATTACHED and "c1/eth0" in e.value.msg
    assert (_bridge_addrs(h), h.run("ip", "-o", "link").stdout, c.registry()["leases"]) == before
    agent = h.start_agent("--leave")
    assert agent.wait() == 1 and "c1/eth0" in agent.text()
    pods.delete(pod)
    agent = h.start_agent("--leave")
    assert agent.wait() == 0
    assert h.node not in c.registry()["leases"] and _bridge_addrs(h) == []


def test_subnet_taken_while_away_bridge_is_repaired_or_117_while_pods_use_it(netns, tmp_path):
    """No leave: the lease expired and another node took the subnet. ADD on the old bridge address
    used to fail with 108 ("a route we did not create") on the new owner's route."""
    c = Cluster(netns, tmp_path, segments=[0, 0])
    a, other = c.hosts
    pods = Pods(c, netns, tmp_path)
    keep = pods.add(a, "keep")
    old = keep.gateway
    _drop_lease(c, a.node)
    other.ensure()                                      # the old subnet is the other node's now
    with pytest.raises(CNIError) as e:
        pods.add(a, "new1")
    assert e.value.code == codes.SUBNET_IN_USE and "keep/eth0" in e.value.msg and old in e.value.msg
    assert _bridge_addrs(a) == [f"{old}/24"]           # nothing changed under the running pod
    with pytest.raises(CNIError) as e:
        _status(Pods(c, netns, tmp_path, version="1.1.0"), a)
    assert e.value.code == 50 and "keep/eth0" in e.value.msg
    pods.delete(keep)
    new = pods.add(a, "new2")
    assert new.gateway != old and _bridge_addrs(a) == [f"{new.gateway}/24"]
    a.check()
    pods.check(new)
    pods.delete(new)


def test_rejoin_with_another_subnet_len_readdresses_the_bridge(netns, tmp_path):
    c = Cluster(netns, tmp_path, segments=[0])
    h = c.hosts[0]
    pods = Pods(c, netns, tmp_path)
    pods.delete(pods.add(h, "c1"))
    os.remove(c.registry_path)                          # a new registry; the node comes back with /26
    pods26 = Pods(c, netns, tmp_path, subnetLen=26)
    pod = pods26.add(h, "c2")
    assert _bridge_addrs(h) == [f"{pod.gateway}/26"]
    pods26.check(pod)
    pods26.delete(pod)


def test_status_says_whether_the_node_can_serve_a_new_pod(netns, tmp_path):
    c = Cluster(netns, tmp_path, segments=[0])
    h = c.hosts[0]
    pods = Pods(c, netns, tmp_path, version="1.1.0", registry={"type": "file", "path": c.registry_path,
                                                               "ttl": 30})
    with pytest.raises(CNIError) as e:
        _status(pods, h)
    assert e.value.code == 50 and "holds no lease" in e.value.msg and "vxlan-agent" in e.value.details
    pod = pods.add(h, "c1")
    _status(pods, h)
    h.run("ip", "link", "set", "vxlan.1", "down")
    with pytest.raises(CNIError) as e:
        _status(pods, h)
    assert e.value.code == 50 and "vxlan.1 is down" in e.value.msg
    h.run("ip", "link", "del", "vxlan.1")
    with pytest.raises(CNIError) as e:
        _status(pods, h)
    assert e.value.code == 50 and "vxlan.1 missing" in e.value.msg
    h.ensure(registry={"type": "file", "path": c.registry_path, "ttl": 30})
    _status(pods, h)
    doc = c.registry()                                  # nobody renewed it: 5 s of 30 left
    doc["leases"][h.node]["expires"] = time.time() + 5
    doc["revision"] += 1
    with open(c.registry_path, "w") as f:
        json.dump(doc, f)
    with pytest.raises(CNIError) as e:
        _status(pods, h)
    assert e.value.code == 50 and "not being renewed" in e.value.msg
    pods.delete(pod)
