"""vxlan under hostile configs and environments (issue 9): a `deviceName` or `bridge` naming a link
that is not ours is refused and left alone; IPAM delegating to ourselves ends with 7; a repeated ADD
of a live attachment leaves it intact; a nodeName or subnetLen change on a running node is refused
before the registry or the kernel changes; the host's own netns as a pod's is 4; ADD records its
attachment under the node lock."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from libcni_py.api import CNIConfig
from libcni_py.errors import CNIError
from plugins.main.vxlan import errors as codes
from plugins.pkg import ns
from tests.kit.vxlan_hosts import Cluster, reaches
from tests.kit.vxlan_pods import CNI_PATH, ROOT, Pod, Pods

pytestmark = pytest.mark.root
VXLAN = os.path.join(ROOT, ".venv", "bin", "vxlan")
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")


@pytest.fixture
def cluster(netns, tmp_path):
    return Cluster(netns, tmp_path, segments=[0])


def kernel(host) -> dict:
    """What an ADD can change on a host: links (with alias and attributes), addresses, routes,
    neighbours, FDB, nat rules."""
    def out(*argv):
        return host.run(*argv, check=False).stdout
    def steady(obj):                       # bridge timers and carrier state move by themselves
        if isinstance(obj, dict):
            return {k: steady(v) for k, v in obj.items()
                    if not k.endswith("_timer") and k not in ("operstate", "linkmode", "carrier_changes")}
        return [steady(v) for v in obj] if isinstance(obj, list) else obj
    links = [json.dumps(steady(lk), sort_keys=True) for lk in json.loads(out("ip", "-d", "-j", "link", "show"))]
    return {"links": links, "addr": out("ip", "-o", "addr"), "route": out("ip", "route", "show", "table", "all"),
            "neigh": out("ip", "neigh", "show", "nud", "permanent"), "fdb": out("bridge", "fdb", "show"),
            "nat": [line for line in out("iptables-save", "-t", "nat").splitlines() if not line.startswith("#")]}


def registry_text(cluster) -> str:
    try:
        with open(cluster.registry_path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def lease_copy(host) -> str:
    try:
        with open(os.path.join(host.conf["stateDir"], "lease.json")) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def records(host) -> list[str]:
    d = os.path.join(host.conf["stateDir"], "attachments")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def with_path(pods: Pods, host, *dirs: str) -> None:
    """Run this host's CNI with `dirs` first on CNI_PATH."""
    pods._cni[host.node] = CNIConfig(path=[*dirs, *CNI_PATH], cache_dir=os.path.join(pods.tmp, "cache", host.node))


# ---- 2: deviceName / bridge naming a link that is not ours --------------------------------------

def test_device_name_of_the_pod_bridge_is_refused_and_the_bridge_stays(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path)
    pod = pods.add(host, "live")
    before, reg = kernel(host), registry_text(cluster)
    with pytest.raises(CNIError) as e:               # the report's config: deviceName = the bridge
        pods.add(host, "c2", deviceName="cni0")
    assert e.value.code == 7 and "deviceName and bridge" in e.value.msg
    with pytest.raises(CNIError) as e:               # another network's bridge name
        pods.add(host, "c3", deviceName="cni0", bridge="cni1")
    assert e.value.code == codes.DEVICE_FAILED and "'cni0' names a bridge link" in e.value.msg
    assert kernel(host) == before and registry_text(cluster) == reg
    assert reaches(pod.ns.path, pod.gateway)
    pods.delete(pod)


def test_device_name_of_the_uplink_is_refused_and_the_default_route_stays(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path)
    before = kernel(host)
    with pytest.raises(CNIError) as e:
        pods.add(host, "c1", deviceName="eth0")
    assert e.value.code == codes.DEVICE_FAILED and "'eth0' names a veth link" in e.value.msg
    assert "holding addresses" in e.value.msg and "deviceName" in e.value.details
    assert kernel(host) == before and "default via 198.18.0.254 dev eth0" in before["route"]
    assert registry_text(cluster) == "" and records(host) == []
    with ns.enter(host.path):                         # leave under that config does not delete it either
        from plugins.main.vxlan.overlay import leave_node
        leave_node(host.cfg(deviceName="eth0"), remove_device=True)
    assert kernel(host) == before


def test_another_networks_device_and_a_foreign_vxlan_device_are_left_alone(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    host.run("ip", "link", "add", "vx.other", "type", "vxlan", "id", "1", "dstport", "8472", "dev", "eth0",
             "local", "198.18.0.1", "nolearning")
    host.run("ip", "link", "set", "vx.other", "alias", "pycni-vxlan network=other")
    host.run("ip", "link", "add", "vx.hand", "type", "vxlan", "id", "2", "dstport", "8472", "dev", "eth0",
             "local", "198.18.0.9")
    before = kernel(host)
    for name, vni, what in (("vx.other", 1, "marked 'pycni-vxlan network=other'"),
                            ("vx.hand", 2, "unmarked vxlan device with other attributes and MAC")):
        with pytest.raises(CNIError) as e:
            host.ensure(deviceName=name, vni=vni)
        assert e.value.code == codes.DEVICE_FAILED and what in e.value.msg, e.value.msg
        assert kernel(host) == before and registry_text(cluster) == "" and lease_copy(host) == ""


def test_unmarked_device_with_our_attributes_is_adopted_and_marked(cluster):
    """A device of the version before marks, or one whose ADD was killed between the create and
    the mark: same ifindex afterwards, now marked; CHECK wants the mark."""
    host = cluster.hosts[0]
    info = host.ensure()
    host.run("ip", "link", "set", "vxlan.1", "alias", "")
    index = json.loads(host.run("ip", "-j", "link", "show", "vxlan.1").stdout)[0]["ifindex"]
    with pytest.raises(CNIError) as e:
        host.check()
    assert e.value.code == codes.DEVICE_DRIFT and "alias" in e.value.msg
    assert host.ensure().vtep_mac == info.vtep_mac
    link = json.loads(host.run("ip", "-j", "link", "show", "vxlan.1").stdout)[0]
    assert (link["ifindex"], link.get("ifalias")) == (index, "pycni-vxlan network=vxtest")
    host.check()


def test_bridge_naming_a_link_that_is_no_bridge_is_refused_before_anything(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    host.ensure()
    pods = Pods(cluster, netns, tmp_path, ipMasq=True)
    host.run("ip", "link", "add", "vx.br", "type", "vxlan", "id", "9", "dstport", "4789", "dev", "eth0")
    before, reg = kernel(host), registry_text(cluster)
    for name, kind in (("eth0", "veth"), ("vx.br", "vxlan")):
        with pytest.raises(CNIError) as e:
            pods.add(host, "c1", bridge=name)
        assert e.value.code == codes.BRIDGE_CONFLICT and f"names a {kind} link" in e.value.msg
        assert kernel(host) == before and registry_text(cluster) == reg and records(host) == []
    with pytest.raises(CNIError) as e:                # our own device as the bridge
        pods.add(host, "c1", bridge="vxlan.1")
    assert e.value.code == 7 and "deviceName and bridge are both 'vxlan.1'" in e.value.msg


# ---- 3: IPAM delegating to ourselves ----------------------------------------------------------

@pytest.mark.parametrize("how", ["name", "agent-name", "symlink", "wrapper"])
def test_ipam_that_runs_vxlan_again_is_7_and_leaves_nothing(cluster, netns, tmp_path, how):
    host = cluster.hosts[0]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    ipam_type = {"name": "vxlan", "agent-name": "vxlan-agent"}.get(how, "loop-ipam")
    if how == "symlink":
        os.symlink(VXLAN, bindir / ipam_type)
    if how == "wrapper":      # not our file: found only once it runs (the mark our IPAM call sets)
        (bindir / ipam_type).write_text(f"#!{PYTHON}\nimport os\nos.execv({VXLAN!r}, [{VXLAN!r}])\n")
        (bindir / ipam_type).chmod(0o755)
    pods = Pods(cluster, netns, tmp_path, ipMasq=True, ipam={"type": ipam_type})
    with_path(pods, host, str(bindir))
    pod = Pod(host, "c1", netns("pod"))
    with pytest.raises(CNIError) as e:
        pods._on(host, "add", pod)
    assert e.value.code == 7 and "ipam.type" in e.value.msg and "vxlan" in e.value.msg, e.value
    assert records(host) == [] and pod.veth not in host.run("ip", "-o", "link").stdout
    assert "id=c1 " not in host.run("iptables-save", "-t", "nat").stdout
    if how != "wrapper":                                 # refused by config.load: nothing at all
        assert not os.path.exists(host.conf["stateDir"]) and registry_text(cluster) == ""
    pods._on(host, "del", pod)                             # DEL of it succeeds and delegates nothing


def test_a_ring_vxlan_cannot_see_ends_at_the_delegation_depth_bound(cluster, netns, tmp_path):
    """A wrapper that hides what vxlan would recognise (our mark, the container ID): libcni_py's
    invoke refuses the ninth exec (PYCNI_DELEGATION_DEPTH) and every level answers 7 and undoes
    its own attachment; no process is left."""
    host = cluster.hosts[0]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    marker = f"PYCNI_TEST_RING_{os.getpid()}"
    (bindir / "ring-ipam").write_text(
        f"#!{PYTHON}\nimport os\n"
        "env = {k: v for k, v in os.environ.items() if k != 'PYCNI_VXLAN_IPAM_OF'}\n"
        "env['CNI_CONTAINERID'] += '-' + env.get('PYCNI_DELEGATION_DEPTH', '')\n"
        f"env[{marker!r}] = '1'\n"
        f"os.execve({VXLAN!r}, [{VXLAN!r}], env)\n")
    (bindir / "ring-ipam").chmod(0o755)
    pods = Pods(cluster, netns, tmp_path, ipam={"type": "ring-ipam"})
    with_path(pods, host, str(bindir))
    pod = Pod(host, "ring", netns("pod"))
    started = time.monotonic()
    with pytest.raises(CNIError) as e:
        pods._on(host, "add", pod)
    assert e.value.code == 7 and "levels deep" in e.value.msg, e.value
    assert time.monotonic() - started < 60
    assert records(host) == []
    assert "veth" not in host.run("ip", "-o", "link").stdout

    def ring_processes():
        out = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if marker.encode() + b"=" in f.read():
                        out.append(pid)
            except OSError:
                pass
        return out
    assert ring_processes() == []
    pods._on(host, "del", pod)


# ---- 6: a repeated ADD of a live attachment --------------------------------------------------

def test_repeated_add_of_a_live_attachment_fails_and_leaves_it_intact(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, version="1.1.0", ipMasq=True)
    live = pods.add(host, "live")
    record = os.path.join(host.conf["stateDir"], "attachments", live.veth + ".json")
    with open(record) as f:
        saved = f.read()
    before = kernel(host)
    for pod_ns in (live.ns, netns("again")):         # same sandbox, and a new one
        with pytest.raises(CNIError) as e:
            pods._on(host, "add", Pod(host, "live", pod_ns))
        assert e.value.code == codes.VETH_EXISTS and "live/eth0 already exists" in e.value.msg
    assert kernel(host) == before
    with open(record) as f:
        assert f.read() == saved
    assert pods.allocations(host) == [live.ip] and reaches(live.ns.path, live.gateway)
    pods.check(live)
    lst = pods.conflist(host)
    with ns.enter(host.path):
        pods.cni(host).gc_network_list(lst, valid_attachments=[{"containerID": "live", "ifname": "eth0"}])
    assert os.path.exists(record) and pods.allocations(host) == [live.ip]
    assert reaches(live.ns.path, live.gateway)
    shutil.rmtree(os.path.join(str(tmp_path), "cache"))      # only our record knows it now
    with ns.enter(host.path):
        pods.cni(host).gc_network_list(lst, valid_attachments=[])
    pods.assert_gone(live)


# ---- 7: nodeName / subnetLen change on a running node ----------------------------------------

def _frozen(cluster, host):
    return kernel(host), registry_text(cluster), lease_copy(host), records(host)


def test_node_name_change_on_a_running_node_is_refused_before_anything_changes(netns, tmp_path):
    c = Cluster(netns, tmp_path, segments=[0, 0])
    host, other = c.hosts
    pods = Pods(c, netns, tmp_path)
    pod, peer = pods.add(host, "live"), pods.add(other, "peer")
    host.ensure()
    before = _frozen(c, host)
    with pytest.raises(CNIError) as e:
        pods.add(host, "c2", nodeName="renamed")
    assert e.value.code == codes.NODE_RENAMED == 117
    assert "already holds a lease as 'host0'" in e.value.msg and "local lease copy" in e.value.msg
    assert "public IP 198.18.0.1" in e.value.msg and "nodeName back to 'host0'" in e.value.details
    assert _frozen(c, host) == before
    os.remove(os.path.join(host.conf["stateDir"], "lease.json"))      # the stateDir was lost too
    with pytest.raises(CNIError) as e:
        host.ensure(nodeName="renamed")
    assert e.value.code == 117 and "public IP" in e.value.msg and "carries its VTEP MAC" in e.value.msg
    assert (kernel(host), registry_text(c)) == before[:2]
    assert reaches(pod.ns.path, peer.ip)
    pods.delete(pod)
    pods.delete(peer)


def test_subnet_len_change_while_pods_use_the_old_subnet_is_refused_before_anything_changes(
        cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path)
    pod = pods.add(host, "live")
    before = _frozen(cluster, host)
    with pytest.raises(CNIError) as e:
        pods.add(host, "c2", subnetLen=26)
    assert e.value.code == codes.SUBNET_IN_USE and "live/eth0" in e.value.msg
    assert _frozen(cluster, host) == before
    assert reaches(pod.ns.path, pod.gateway)
    pods.delete(pod)
    moved = pods.add(host, "c3", subnetLen=26)            # no pod left on the old subnet: it moves
    assert moved.cidr.endswith("/26")
    pods.delete(moved, subnetLen=26)


# ---- 8: the host's own namespace as a pod's ---------------------------------------------------

class _Path:
    def __init__(self, path: str):
        self.path = path


def test_the_hosts_own_netns_as_a_pods_is_4_and_nothing_is_created(cluster, netns, tmp_path):
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path)
    sleeper = subprocess.Popen(["ip", "netns", "exec", host.name, "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        pid = None
        while pid is None and time.monotonic() < deadline:       # the sleep, exec'd in the host netns
            for p in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if os.readlink(f"/proc/{p}/exe").endswith("/sleep") and \
                            open(f"/proc/{p}/cmdline").read() == "sleep\x0060\x00" and \
                            os.stat(f"/proc/{p}/ns/net").st_ino == os.stat(host.path).st_ino:
                        pid = p
                except OSError:
                    pass
            time.sleep(0.05)
        assert pid is not None
        before = kernel(host)
        for path in ("/proc/self/ns/net", f"/proc/{pid}/ns/net", host.path):   # host.path: a bind mount
            with pytest.raises(CNIError) as e:
                pods._on(host, "add", Pod(host, "c1", _Path(path)))
            assert e.value.code == 4 and "host's network namespace" in e.value.msg, (path, e.value)
            assert kernel(host) == before
            assert not os.path.exists(host.conf["stateDir"]) and registry_text(cluster) == ""
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- the race: ADD records its attachment under the node lock --------------------------------

def test_add_records_its_attachment_while_holding_the_node_lock(cluster):
    """ensure_node(hold=...) runs `hold` with the node lock held: another locker is refused there."""
    host = cluster.hosts[0]
    from plugins.main.vxlan.overlay import ensure_node
    seen = []

    def hold(rt, info):
        fd = os.open(os.path.join(host.conf["stateDir"], "node.lock"), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            os.close(fd)
    with ns.enter(host.path):
        ensure_node(host.cfg(), hold=hold)
    assert seen == ["held"]


def test_leave_during_an_add_sees_the_new_pod(cluster, netns, tmp_path):
    """An ADD stopped in IPAM (a slow IPAM plugin) has recorded its pod: leave is refused (118)."""
    host = cluster.hosts[0]
    bindir, gate = tmp_path / "bin", tmp_path / "gate"
    bindir.mkdir()
    (bindir / "slow-host-local").write_text(
        f"#!{PYTHON}\nimport os, time\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
        "os.execv('/usr/lib/cni/host-local', ['host-local'])\n")
    (bindir / "slow-host-local").chmod(0o755)
    subnet = str(host.ensure().subnet)
    pods = Pods(cluster, netns, tmp_path, ipam={"type": "slow-host-local", "ranges": [[{"subnet": subnet}]],
                                                "dataDir": str(tmp_path / "ipam")})
    with_path(pods, host, str(bindir))
    pod = Pod(host, "slow", netns("pod"))
    done: list = []
    t = threading.Thread(target=lambda: done.append(pods._on(host, "add", pod)))
    t.start()
    try:
        deadline = time.monotonic() + 20
        while not records(host) and time.monotonic() < deadline:
            time.sleep(0.05)
        agent = host.start_agent("--leave")
        assert agent.wait() == 1 and "slow/eth0" in agent.text()
    finally:
        gate.write_text("go")
        t.join(60)
    assert done and done[0].ips
    assert host.node in cluster.registry()["leases"]
    pods._on(host, "del", pod)


def test_del_and_gc_remove_temp_files_of_killed_writers(cluster, netns, tmp_path):
    """An ADD killed while writing its record leaves `<veth>.json.tmp<pid>` (issue 9.10): DEL and GC
    remove it; a temp file of a live writer stays."""
    host = cluster.hosts[0]
    pods = Pods(cluster, netns, tmp_path, version="1.1.0")
    pod = pods.add(host, "c1")
    dead = subprocess.Popen(["true"])
    dead.wait()
    att = os.path.join(host.conf["stateDir"], "attachments")
    stale = [os.path.join(att, f"{pod.veth}.json.tmp{dead.pid}"),
             os.path.join(host.conf["stateDir"], f"lease.json.tmp{dead.pid}")]
    alive = os.path.join(att, f"other.json.tmp{os.getpid()}")
    for path in (*stale, alive):
        with open(path, "w") as f:
            f.write("{")
    pods.delete(pod)
    assert not any(os.path.exists(p) for p in stale) and os.path.exists(alive)
    with open(stale[0], "w") as f:
        f.write("{")
    with ns.enter(host.path):
        pods.cni(host).gc_network_list(pods.conflist(host), valid_attachments=[])
    assert not os.path.exists(stale[0]) and os.path.exists(alive)
    os.remove(alive)
