"""libcni_py.api drives the real Go plugins (/usr/lib/cni) and our pass-through plugin.

Every API call runs inside a "host" test namespace (the Go plugins do their host-side
work in the caller's netns; subprocesses inherit it). A transparent recorder sits in
front of each plugin on CNI_PATH, so results and prevResults are compared with exactly
what the plugins printed.
"""
import base64
import json
import os

import pytest

from libcni_py.api import CNIConfig, RuntimeConf
from libcni_py.conf import conflist_from_dict
from libcni_py.errors import CNIError
from plugins.pkg import ns
from tests.conftest import GO_CNI_DIR, VENV_BIN
from tests.golibcni.recorder import Recorder

pytestmark = pytest.mark.root

SUBNET, POD_IP, GW = "10.77.0.0/24", "10.77.0.2/24", "10.77.0.1"
PORTS = [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]
CNI_ARGS = [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default")]


@pytest.fixture
def v4_only_iptables(tmp_path, monkeypatch):
    """PATH with iptables but no ip6tables, for every plugin we start.

    Go portmap 1.1.1 (Debian) CHECKs the container's IPv4 rules in ip6tables too whenever
    ip6tables is usable, and so always fails CHECK there; later releases fixed it. On a
    host whose iptables is IPv4-only its CHECK works, and that is the host we model.
    """
    d = tmp_path / "v4bin"
    d.mkdir()
    for tool in ("iptables", "iptables-save", "iptables-restore"):
        os.symlink(os.path.realpath(f"/usr/sbin/{tool}"), d / tool)
    monkeypatch.setenv("PATH", f"{d}:/usr/bin:/bin")


class World:
    """A host netns, a recorder in front of the plugins, and a CNIConfig using them."""

    def __init__(self, netns, tmp_path):
        self.tmp = tmp_path
        self.host = netns("host")
        self.netns = netns
        self.rec = Recorder(tmp_path / "rec", {
            "bridge": f"{GO_CNI_DIR}/bridge", "portmap": f"{GO_CNI_DIR}/portmap",
            "tuning": f"{GO_CNI_DIR}/tuning", "pycni-passthrough": f"{VENV_BIN}/pycni-passthrough"})
        self.cache = tmp_path / "cache"
        self.cni = CNIConfig(path=[self.rec.bin, VENV_BIN, GO_CNI_DIR], cache_dir=str(self.cache))

    def call(self, verb, *args):
        with ns.enter(self.host.path):
            return getattr(self.cni, verb)(*args)

    def cache_file(self, net, cid, ifname="eth0"):
        return self.cache / "results" / f"{net}-{cid}-{ifname}"

    def bridge(self):
        return {"type": "bridge", "bridge": "cni-t0", "isGateway": True, "ipMasq": False,
                "ipam": {"type": "host-local", "dataDir": str(self.tmp / "ipam"),
                         "ranges": [[{"subnet": SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}]}}

    def ipam_files(self, net):
        d = self.tmp / "ipam" / net
        return sorted(p.name for p in d.iterdir() if p.name[0].isdigit()) if d.exists() else []


@pytest.fixture
def world(netns, tmp_path):
    return World(netns, tmp_path)


def printed(call):
    return json.loads(call["stdout"])


def stdin_of(call):
    return json.loads(call["stdin"])


def pod_addrs(pod):
    links = json.loads(pod.run("ip", "-j", "addr", "show").stdout)
    return {link["ifname"]: [f'{a["local"]}/{a["prefixlen"]}' for a in link.get("addr_info", [])
                             if a["family"] == "inet"] for link in links}


def host_links(host):
    return {link["ifname"] for link in json.loads(host.run("ip", "-j", "link", "show").stdout)}


# ---- (a) bridge + host-local ----

@pytest.mark.parametrize("ver", ["0.4.0", "1.0.0"])
def test_bridge_host_local_add_check_del(world, ver):
    pod = world.netns("pod")
    lst = conflist_from_dict({"cniVersion": ver, "name": "pycni-a", "plugins": [world.bridge()]})
    rt = RuntimeConf(container_id="c1", netns=pod.path, ifname="eth0", args=CNI_ARGS)

    res = world.call("add_network_list", lst, rt)
    (add,) = world.rec.calls("ADD")
    assert res.encode() == printed(add)               # the result is what bridge printed
    assert res.cni_version == ver and res.ips[0].address == POD_IP and res.ips[0].gateway == GW
    assert add["args"] == "IgnoreUnknown=1;K8S_POD_NAMESPACE=default" and add["netns"] == pod.path
    assert stdin_of(add)["name"] == "pycni-a" and "prevResult" not in stdin_of(add)
    assert pod_addrs(pod)["eth0"] == [POD_IP]
    veth = res.interfaces[1].name
    assert {"cni-t0", veth} <= host_links(world.host)
    assert world.ipam_files("pycni-a") == ["10.77.0.2"]

    cached = json.loads(world.cache_file("pycni-a", "c1").read_text())
    assert cached["kind"] == "cniCacheV1" and cached["result"] == printed(add)
    assert (cached["containerId"], cached["ifName"], cached["networkName"], cached["netns"]) == \
        ("c1", "eth0", "pycni-a", pod.path)
    assert base64.b64decode(cached["config"]) == lst.raw
    assert cached["cniArgs"] == [list(a) for a in CNI_ARGS] and "capabilityArgs" not in cached

    world.call("check_network_list", lst, rt)
    (check,) = world.rec.calls("CHECK")
    assert check["rc"] == 0 and stdin_of(check)["prevResult"] == printed(add)

    world.call("del_network_list", lst, rt)
    (dele,) = world.rec.calls("DEL")
    assert dele["rc"] == 0 and stdin_of(dele)["prevResult"] == printed(add)
    assert "eth0" not in pod_addrs(pod) and veth not in host_links(world.host)
    assert world.ipam_files("pycni-a") == [] and not world.cache_file("pycni-a", "c1").exists()

    world.call("del_network_list", lst, rt)            # DEL again: nothing cached, still fine
    again = world.rec.calls("DEL")[-1]
    assert again["rc"] == 0 and "prevResult" not in stdin_of(again)


def test_gc_at_1_0_0_deletes_stale_cached_attachments_and_sends_no_gc(world):
    pods = {cid: world.netns("pod") for cid in ("c1", "c2")}
    lst = conflist_from_dict({"cniVersion": "1.0.0", "name": "pycni-a", "plugins": [world.bridge()]})
    results = {cid: world.call("add_network_list", lst, RuntimeConf(container_id=cid, netns=p.path))
               for cid, p in pods.items()}
    world.rec.clear()

    world.call("gc_network_list", lst, [{"containerID": "c1", "ifname": "eth0"}])
    (dele,) = world.rec.calls("DEL")                   # only the stale one, and no GC at all
    assert not world.rec.calls("GC")
    assert (dele["containerID"], dele["netns"], dele["ifname"]) == ("c2", pods["c2"].path, "eth0")
    assert stdin_of(dele)["prevResult"] == results["c2"].encode()
    assert world.cache_file("pycni-a", "c1").exists() and not world.cache_file("pycni-a", "c2").exists()
    assert world.ipam_files("pycni-a") == ["10.77.0.2"]
    assert pod_addrs(pods["c1"])["eth0"] == [POD_IP] and "eth0" not in pod_addrs(pods["c2"])

    world.rec.clear()
    world.call("get_status_network_list", lst)          # STATUS below 1.1.0: nothing to ask
    assert not world.rec.calls()


def test_a_list_version_a_plugin_does_not_support_is_refused_before_any_add(world):
    pod = world.netns("pod")
    lst = conflist_from_dict({"cniVersion": "1.1.0", "name": "pycni-a", "plugins": [world.bridge()]})
    with pytest.raises(CNIError) as ei:
        world.call("add_network_list", lst, RuntimeConf(container_id="c1", netns=pod.path))
    assert ei.value.code == 1 and "bridge" in ei.value.msg
    assert world.rec.calls("VERSION", "bridge") and not world.rec.calls("ADD")
    assert not world.cache_file("pycni-a", "c1").exists()


# ---- (b) bridge + host-local + portmap + tuning ----

def chain_list(world, ver):
    return conflist_from_dict({"cniVersion": ver, "name": "pycni-b", "plugins": [
        world.bridge(),
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "tuning", "dataDir": str(world.tmp / "tuning"), "sysctl": {"net.core.somaxconn": "512"}},
    ]})


def nat_rules(host):
    return host.run("iptables", "-t", "nat", "-S").stdout


@pytest.mark.parametrize("ver", ["0.4.0", "1.0.0"])
def test_chain_add_check_del(world, v4_only_iptables, ver):
    pod = world.netns("pod")
    lst = chain_list(world, ver)
    rt = RuntimeConf(container_id="c1", netns=pod.path, ifname="eth0", args=CNI_ARGS,
                     capability_args={"portMappings": PORTS, "bandwidth": {"ingressRate": 1}})

    res = world.call("add_network_list", lst, rt)
    adds = world.rec.calls("ADD")
    assert [c["plugin"] for c in adds] == ["bridge", "portmap", "tuning"]
    assert res.encode() == printed(adds[-1])            # what the last plugin printed
    for prev, nxt in zip(adds, adds[1:]):               # prevResult = the previous plugin's output
        assert stdin_of(nxt)["prevResult"] == printed(prev)
    # runtimeConfig only where the capability is declared, only the declared key
    assert stdin_of(adds[1])["runtimeConfig"] == {"portMappings": PORTS}
    assert "runtimeConfig" not in stdin_of(adds[0]) and "runtimeConfig" not in stdin_of(adds[2])
    assert all(stdin_of(c)["cniVersion"] == ver and stdin_of(c)["name"] == "pycni-b" for c in adds)

    rules = nat_rules(world.host)
    assert "--dport 18080 -j DNAT --to-destination 10.77.0.2:80" in rules and 'id: \\"c1\\"' in rules
    assert pod.run("cat", "/proc/sys/net/core/somaxconn").stdout.strip() == "512"
    cached = json.loads(world.cache_file("pycni-b", "c1").read_text())
    assert cached["capabilityArgs"] == rt.capability_args and cached["result"] == printed(adds[-1])

    world.call("check_network_list", lst, rt)
    checks = world.rec.calls("CHECK")
    assert [c["plugin"] for c in checks] == ["bridge", "portmap", "tuning"]
    assert all(c["rc"] == 0 and stdin_of(c)["prevResult"] == printed(adds[-1]) for c in checks)

    world.call("del_network_list", lst, rt)
    dels = world.rec.calls("DEL")
    assert [c["plugin"] for c in dels] == ["tuning", "portmap", "bridge"]      # reverse order
    assert all(c["rc"] == 0 and stdin_of(c)["prevResult"] == printed(adds[-1]) for c in dels)
    assert stdin_of(dels[1])["runtimeConfig"] == {"portMappings": PORTS}
    assert "18080" not in nat_rules(world.host) and "eth0" not in pod_addrs(pod)
    assert world.ipam_files("pycni-b") == [] and not world.cache_file("pycni-b", "c1").exists()

    world.call("del_network_list", lst, rt)
    assert [c["rc"] for c in world.rec.calls("DEL")[3:]] == [0, 0, 0]


def test_plugin_errors_reach_the_caller_as_the_plugin_printed_them(world, tmp_path, monkeypatch):
    """With ip6tables on PATH, Go portmap 1.1.1 fails CHECK; whatever it prints is what we raise."""
    pod = world.netns("pod")
    lst = chain_list(world, "1.0.0")
    rt = RuntimeConf(container_id="c1", netns=pod.path, args=CNI_ARGS, capability_args={"portMappings": PORTS})
    world.call("add_network_list", lst, rt)
    try:
        world.call("check_network_list", lst, rt)
        raised = None
    except CNIError as e:
        raised = e
    portmap_check = world.rec.calls("CHECK", "portmap")[-1]
    if portmap_check["rc"] == 0:
        assert raised is None
    else:
        want = printed(portmap_check)
        assert raised is not None and (raised.code, raised.msg) == (want["code"], want["msg"])
        assert not world.rec.calls("CHECK", "tuning")           # the first failure stops CHECK
    world.call("del_network_list", lst, rt)
    assert "18080" not in nat_rules(world.host)


# ---- GC and STATUS at 1.1.0 (our pass-through plugin supports 1.1.0) ----

def test_gc_and_status_at_1_1_0(world):
    pods = {cid: world.netns("pod") for cid in ("c1", "c2")}
    lst = conflist_from_dict({"cniVersion": "1.1.0", "name": "pycni-p",
                              "plugins": [{"type": "pycni-passthrough"}]})
    for cid, p in pods.items():
        world.call("add_network_list", lst, RuntimeConf(container_id=cid, netns=p.path))
    world.rec.clear()
    valid = [{"containerID": "c1", "ifname": "eth0"}]

    world.call("gc_network_list", lst, valid)
    calls = world.rec.calls()
    assert [(c["command"], c["containerID"]) for c in calls] == [("DEL", "c2"), ("GC", "")]
    assert calls[0]["netns"] == pods["c2"].path and "prevResult" in stdin_of(calls[0])
    gc = stdin_of(calls[1])
    assert gc["cni.dev/valid-attachments"] == valid and (gc["name"], gc["cniVersion"]) == ("pycni-p", "1.1.0")
    assert calls[1]["rc"] == 0 and "prevResult" not in gc
    assert world.cache_file("pycni-p", "c1").exists() and not world.cache_file("pycni-p", "c2").exists()

    world.rec.clear()
    world.call("get_status_network_list", lst)
    (status,) = world.rec.calls()
    assert status["command"] == "STATUS" and status["rc"] == 0 and stdin_of(status)["name"] == "pycni-p"


def test_status_failure_keeps_the_plugin_error_code(world):
    """A plugin's STATUS code reaches the runtime as the plugin answered it: vxlan on a node that holds
    no lease yet answers 50 (the runtime holds pods until the agent or a first ADD joins the node).
    (STATUS is lenient about config values cleanup does not need, so a bad logLevel no longer fails.)"""
    lst = conflist_from_dict({"cniVersion": "1.1.0", "name": "pycni-p", "plugins": [
        {"type": "pycni-passthrough", "logLevel": "loud"},
        {"type": "vxlan", "network": "10.250.0.0/16", "stateDir": str(world.tmp / "vxlan")}]})
    with pytest.raises(CNIError) as ei:
        world.call("get_status_network_list", lst)
    assert ei.value.code == 50 and "holds no lease" in ei.value.msg and "vxlan-agent" in ei.value.details


def test_disable_gc_and_disable_check(world):
    pod = world.netns("pod")
    lst = conflist_from_dict({"cniVersion": "1.1.0", "name": "pycni-p", "disableGC": True, "disableCheck": True,
                              "plugins": [{"type": "pycni-passthrough"}]})
    world.call("add_network_list", lst, RuntimeConf(container_id="c1", netns=pod.path))
    world.rec.clear()
    world.call("check_network_list", lst, RuntimeConf(container_id="c1", netns=pod.path))
    world.call("gc_network_list", lst, [])
    assert not world.rec.calls() and world.cache_file("pycni-p", "c1").exists()
