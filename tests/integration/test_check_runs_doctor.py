"""The plugins' CHECK runs the doctor's diagnoses that concern the pod (issue 11) and fails with the
finding's text: dp-steering nfqueue-no-reader in the pod's and the enforcer netns (137) after its
steering-integrity (127/131, tests/integration/test_doctor_steering.py and the dp-steering tests);
edgemesh edgemesh-hijack in the node's netns (151: a DNAT to a listen address where nothing
listens). Healthy, both pass; the printed fix makes CHECK pass again and traffic flow. vxlan CHECK
runs 3, 5 and 8 (test_doctor_overlay.py has its findings) with no pyroute2 in the exec."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from plugins.meta.dp_steering import errors as dp_errors
from plugins.pkg import probe
from tests.integration.test_doctor import READER
from tests.integration.test_doctor_overlay import lease_of
from tests.integration.test_doctor_overlay import overlay as overlay  # noqa: F401 - the fixture
from tests.integration.test_doctor_steering import apply
from tests.kit.dp_steering import World
from tests.kit.plugin_env import plugin_env

pytestmark = pytest.mark.root


def bind_queue(ns, queue: int) -> subprocess.Popen:
    p = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", READER, str(queue)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "bound", p.stderr and p.stderr.read()
    return p


@pytest.mark.parametrize("where", ["pod", "enforcer"])
def test_dp_steering_check_fails_on_an_nfqueue_rule_without_a_reader(netns, tmp_path, where):
    w = World(netns, tmp_path)
    with w.dp():
        pod = w.add("c1")
        prev = pod.added.encode()
        assert w.plugin("CHECK", pod, prev)[0] == 0                     # healthy
        ns = pod.ns if where == "pod" else w.enf
        ns.run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "NFQUEUE", "--queue-num", "7")
        status, out, _ = w.plugin("CHECK", pod, prev)
        assert status == 1 and out["code"] == dp_errors.NFQUEUE_NO_READER, out
        assert out["msg"].startswith(f"dp-steering CHECK c1/eth0: netns {ns.name}: "), out
        assert "-A INPUT -p tcp -m tcp --dport 9 -j NFQUEUE --queue-num 7` queues to queue 7" in out["msg"], out
        assert "pycni-doctor nfqueue-no-reader" in out["msg"] and "NFQUEUE" in out["details"]
        reader = bind_queue(ns, 7)                                        # the first fix: a reader there
        try:
            assert w.plugin("CHECK", pod, prev)[0] == 0
        finally:
            reader.kill()
            reader.wait()
        status, out, _ = w.plugin("CHECK", pod, prev)
        assert status == 1 and out["code"] == dp_errors.NFQUEUE_NO_READER
        [bypass] = re.findall(r"`([^`]*--queue-bypass)`", out["msg"])      # the second: fail open
        apply(bypass)
        assert w.plugin("CHECK", pod, prev)[0] == 0
        assert probe.ping(w.host.path, pod.ip, count=1, timeout=2) == [0]
        w.delete(pod)


def test_dp_steering_check_with_a_reader_bound_only_in_the_host_still_fails(netns, tmp_path):
    """The article's point: a queue bound in another namespace does not count for the pod's."""
    w = World(netns, tmp_path)
    with w.dp():
        pod = w.add("c1")
        prev = pod.added.encode()
        pod.ns.run("iptables", "-A", "INPUT", "-p", "udp", "-j", "NFQUEUE", "--queue-num", "8")
        reader = bind_queue(w.host, 8)
        try:
            status, out, _ = w.plugin("CHECK", pod, prev)
            assert status == 1 and out["code"] == dp_errors.NFQUEUE_NO_READER and "queue 8" in out["msg"], out
        finally:
            reader.kill()
            reader.wait()
        pod.ns.run("iptables", "-F", "INPUT")
        assert w.plugin("CHECK", pod, prev)[0] == 0
        w.delete(pod)


ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=c1"


@pytest.fixture
def node(netns, tmp_path):
    from tests.integration.test_edgemesh_kit import Node
    n = Node(netns("chkem"), str(tmp_path))
    yield n
    n.stop()


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_edgemesh_check_fails_when_nothing_listens_on_the_listen_address(node, netns, tmp_path, backend):
    from tests.integration.test_edgemesh_kit import SVC, ask, conflist, edgemesh_conf, run_plugin
    conf = edgemesh_conf(tmp_path, backend=backend, checkProxy=True)
    mesh = conflist(tmp_path, edgemesh=conf)
    pod = netns("chkempod")
    prev = node.add(mesh, pod, "c1").encode()
    single = {"cniVersion": mesh["cniVersion"], "name": mesh["name"], **conf, "prevResult": prev}
    try:
        rc, out, _ = run_plugin("CHECK", single, netns=pod.path, inside=node.ns.name, args=ARGS)
        assert rc == 1 and out is not None and out["code"] == 151, out
        chain = "EDGE-MESH-TCP" if backend == "iptables" else "proxy_tcp"
        assert out["msg"].startswith("edgemesh CHECK host: "), out           # the netns the plugin runs in
        assert f"chain {chain} DNATs tcp service traffic to 169.254.96.16:40001, where nothing listens" in out["msg"]
        assert "start the mesh proxy in" in out["msg"] and "pycni-doctor edgemesh-hijack" in out["msg"]
        assert ask(pod, "tcp", SVC).startswith("error")                # it is real: the call fails

        rc, out, err = run_plugin("CHECK", {**single, "checkProxy": False}, netns=pod.path, inside=node.ns.name,
                                  args=ARGS, env=plugin_env(PYTHONPROFILEIMPORTTIME="1", daemon=False))
        assert rc == 0 and "where nothing listens" in err, (out, err)  # without checkProxy: a warning
        imported = {line.rsplit("|", 1)[-1].strip() for line in err.splitlines() if line.startswith("import time:")}
        assert "plugins.doctor.edgemesh_hijack" in imported                  # the doctor ran, lightly:
        assert not {m for m in imported if m.split(".")[0] in ("pyroute2", "typing", "dataclasses")}

        node.serve("--listen", "169.254.96.16:40001")                   # the fix: the proxy there
        rc, out, err = run_plugin("CHECK", single, netns=pod.path, inside=node.ns.name, args=ARGS)
        assert rc == 0 and "nothing listens" not in err, (out, err)
        node.check(mesh, pod, "c1")                                      # through libcni too
        assert ask(pod, "tcp", SVC) == f"orig={SVC}:80"
    finally:
        node.stop()
        node.delete(mesh, pod, "c1")


def test_listeners_from_proc_are_what_sock_diag_says(netns):
    """checkctx.listening_proc (edgemesh CHECK, no pyroute2) against edgemesh_hijack.listening
    (sock_diag, the doctor): TCP in LISTEN and bound UDP, wildcard and exact, one answer."""
    from plugins.doctor import checkctx
    from plugins.doctor import edgemesh_hijack as eh
    from plugins.pkg import ns as nsmod
    n = netns("chklis")
    n.run("ip", "addr", "add", "198.18.7.1/32", "dev", "lo")
    code = ("import socket, time\n"
            "t = socket.socket(); t.bind(('198.18.7.1', 40001)); t.listen()\n"
            "w = socket.socket(); w.bind(('0.0.0.0', 40002)); w.listen()\n"
            "c = socket.socket(); c.bind(('127.0.0.1', 40003))\n"          # bound, not listening: no
            "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('198.18.7.1', 40004))\n"
            "print('ok', flush=True); time.sleep(60)\n")
    p = subprocess.Popen(["ip", "netns", "exec", n.name, sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ok"
        with nsmod.enter(n.path):
            for proto in ("tcp", "udp"):
                assert checkctx.listening_proc(proto) == eh.listening(proto), proto
            assert checkctx.listening_proc("tcp") == {("198.18.7.1", 40001), ("0.0.0.0", 40002)}
            assert checkctx.listening_proc("udp") == {("198.18.7.1", 40004)}
    finally:
        p.kill()
        p.wait()


def exec_vxlan(verb: str, pods, pod, env: dict | None = None) -> tuple[int, dict | None, str]:
    """Exec the vxlan plugin directly (as a runtime does) in its host's netns; (rc, json, stderr)."""
    import json
    import os

    from tests.kit.vxlan_pods import CNI_PATH
    host = pod.host
    conf = {"cniVersion": "1.0.0", "name": pods.cluster.network_name, **host.conf,
            "prevResult": pod.result.encode("1.0.0")}
    env = dict(os.environ, CNI_COMMAND=verb, CNI_CONTAINERID=pod.cid, CNI_NETNS=pod.ns.path, CNI_IFNAME=pod.ifname,
               CNI_ARGS=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod.cid}",
               CNI_PATH=":".join(CNI_PATH), **(env or {}))
    p = subprocess.run(["ip", "netns", "exec", host.name, os.path.join(CNI_PATH[0], "vxlan")], input=json.dumps(conf),
                       env=env, capture_output=True, text=True, timeout=60)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None, p.stderr


def imported(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_vxlan_check_runs_diagnoses_3_5_8_without_pyroute2(overlay):
    """vxlan's CHECK runs policy-route-steals-replies, overlay-drift and rp-filter-forwarding through
    plugins.pkg.rtnl (the doctor's netlink seam, plugins/doctor/netlink.py): healthy and with a
    finding (116, a policy route stealing the pods' traffic), the exec imports the diagnoses and
    neither pyroute2 nor typing."""
    cluster, pods, a, _ = overlay
    h0 = cluster.hosts[0]
    timing = plugin_env(PYTHONPROFILEIMPORTTIME="1", daemon=False)     # what the exec itself imports
    rc, out, err = exec_vxlan("CHECK", pods, a, timing)
    assert rc == 0, (out, err)
    healthy = imported(err)
    assert {"plugins.doctor.overlay", "plugins.doctor.policy_routing", "plugins.doctor.sysctl",
            "plugins.doctor.netlink", "plugins.pkg.rtnl"} <= healthy, sorted(m for m in healthy if "doctor" in m)
    mine = lease_of(cluster, "host0")["subnet"]
    h0.run("ip", "route", "add", "default", "via", h0.router, "dev", "eth0", "table", "100")
    h0.run("ip", "rule", "add", "from", mine, "lookup", "100", "pref", "100")
    rc, out, err = exec_vxlan("CHECK", pods, a, timing)
    assert rc == 1 and out is not None and out["code"] == 116, (out, err)
    assert f"ip rule 100 `from {mine} lookup 100`" in out["msg"] and "lookup main pref 99" in out["details"]
    for modules in (healthy, imported(err)):
        assert not {m for m in modules if m.split(".")[0] in ("pyroute2", "typing", "dataclasses", "logging")}, \
            sorted(modules)
    h0.run("ip", "rule", "del", "pref", "100")
    assert exec_vxlan("CHECK", pods, a)[0] == 0
