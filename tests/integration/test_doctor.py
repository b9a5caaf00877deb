"""pycni-doctor against the real kernel: each diagnosis's broken state built in test namespaces, found
(`pycni-doctor --json --netns ...`), fixed with the command the finding prints, and gone; healthy
namespaces give no findings; exit status 0/1/2 and the namespace scan (each namespace once)."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from plugins.meta.edgemesh.kernel import HAZARDS
from tests.conftest import VENV_BIN

pytestmark = pytest.mark.root
DOCTOR = os.path.join(VENV_BIN, "pycni-doctor")

# A tiny NFQUEUE reader: binds queue N through a raw nfnetlink socket (NFQNL_MSG_CONFIG, CMD_BIND) in
# the namespace it runs in, says "bound", then sleeps until killed. No package beyond Python.
READER = r"""
import socket, struct, sys, time
q = int(sys.argv[1])
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)          # NETLINK_NETFILTER
s.bind((0, 0))
attr = struct.pack("=HHBBH", 8, 1, 1, 0, 0)                          # NFQA_CFG_CMD: BIND, pf 0
body = struct.pack("=BBH", 0, 0, socket.htons(q)) + attr            # nfgenmsg: AF_UNSPEC, v0, queue
msg = struct.pack("=IHHII", 16 + len(body), (3 << 8) | 2, 1 | 4, 1, 0) + body   # QUEUE/CONFIG, REQ|ACK
s.send(msg)
err = struct.unpack("=i", s.recv(4096)[16:20])[0]
if err:
    sys.exit(f"bind failed: {err}")
print("bound", flush=True)
while True:
    time.sleep(60)
"""


def doctor(*args: str) -> tuple[int, dict]:
    p = subprocess.run([DOCTOR, "--json", *args], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, json.loads(p.stdout)


def findings(ns, check: str) -> list[dict]:
    rc, out = doctor("--netns", ns.path, "--check", check)
    assert out["errors"] == [], out["errors"]
    assert rc == (1 if out["findings"] else 0), (rc, out)
    assert [f["check"] for f in out["findings"]] == [check] * len(out["findings"])
    return out["findings"]


def apply(command: str) -> None:
    """Run a fix exactly as printed (argv from the text, no shell)."""
    subprocess.run(shlex.split(command), check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture
def reader():
    started: list[subprocess.Popen] = []

    def start(ns, queue: int) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", READER, str(queue)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "bound", p.stderr and p.stderr.read()
        return p

    yield start
    for p in started:
        p.kill()
        p.wait()


def bound(ns) -> set[int]:
    text = ns.run("cat", "/proc/net/netfilter/nfnetlink_queue").stdout
    return {int(line.split()[0]) for line in text.splitlines() if line.strip()}


def test_healthy_namespace_gives_no_findings(netns):
    ns = netns("dochealthy")
    rc, out = doctor("--netns", ns.path)
    assert rc == 0 and out["findings"] == [] and out["errors"] == [] and out["healthy"], out
    assert out["checks"] == ["nfqueue-no-reader", "mark-bit-clash", "policy-route-steals-replies",
                             "rp-filter-forwarding", "kernel-hazards", "edgemesh-hijack"]
    assert out["namespaces"] == [{"where": f"netns {ns.name}", "netns": ns.path}]


def test_nfqueue_without_reader_in_the_pod_namespace(netns, reader):
    """Seed 001: the reader of queue 3 runs in the 'host' namespace; the pod's rule queues to 3 in the
    pod's namespace, where nobody reads it: found there, not in the host. Then both fixes."""
    host, pod = netns("dochost"), netns("docpod")
    host_reader = reader(host, 3)
    assert bound(host) == {3} and bound(pod) == set()
    pod.run("iptables", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "--dport", "80",
            "-m", "comment", "--comment", "dp steering", "-j", "NFQUEUE", "--queue-num", "3")
    assert findings(host, "nfqueue-no-reader") == []
    [f] = findings(pod, "nfqueue-no-reader")
    assert f["severity"] == "error" and f["where"] == f"netns {pod.name}" and f["netns"] == pod.path
    assert "queue 3" in f["what"] and "--dport 80" in f["what"] and "mangle/PREROUTING" in f["what"]
    run_reader, bypass = f["fixes"]
    assert f"inside netns {pod.name}" in run_reader["how"] and "host's included" in run_reader["how"]
    assert bypass["command"] == (f"ip netns exec {pod.name} iptables-nft -t mangle -R PREROUTING 1 -p tcp -m tcp "
                                 f"--dport 80 -m comment --comment 'dp steering' -j NFQUEUE --queue-num 3 "
                                 f"--queue-bypass")
    # fix 1: the reader in the pod's namespace
    pod_reader = reader(pod, 3)
    assert findings(pod, "nfqueue-no-reader") == []
    pod_reader.kill()
    pod_reader.wait()
    assert len(findings(pod, "nfqueue-no-reader")) == 1
    # fix 2: bypass, with the command as printed
    apply(bypass["command"])
    assert "--queue-bypass" in pod.run("iptables-save", "-t", "mangle").stdout
    assert findings(pod, "nfqueue-no-reader") == []
    assert host_reader.poll() is None


def test_nfqueue_finding_is_traffic_dropped_and_the_fix_lets_it_through(netns, reader):
    """The finding is real: with the host's reader bound to queue 3, TCP to the pod's queued port is
    lost; after the printed bypass fix it connects."""
    host, pod = netns("dochostp"), netns("docpodp")
    host.run("ip", "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", pod.name)
    host.run("ip", "addr", "add", "10.3.0.1/24", "dev", "veth0")
    host.run("ip", "link", "set", "veth0", "up")
    pod.run("ip", "addr", "add", "10.3.0.2/24", "dev", "eth0")
    pod.run("ip", "link", "set", "eth0", "up")
    server = subprocess.Popen(["ip", "netns", "exec", pod.name, sys.executable, "-c", LISTENER],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        reader(host, 3)
        pod.run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "NFQUEUE", "--queue-num", "3")

        def connects() -> bool:
            return host.run(sys.executable, "-c", CONNECT, check=False).returncode == 0
        assert not connects()
        [f] = findings(pod, "nfqueue-no-reader")
        apply(f["fixes"][1]["command"])
        assert connects()
        assert findings(pod, "nfqueue-no-reader") == []
    finally:
        server.kill()
        server.wait()


LISTENER = """
import socket
s = socket.socket()
s.bind(("10.3.0.2", 8080))
s.listen(8)
print("listening", flush=True)
while True:
    s.accept()[0].close()
"""
CONNECT = "import socket; socket.create_connection(('10.3.0.2', 8080), timeout=1.5).close()"


@pytest.mark.parametrize("tool", ["iptables-legacy", "ip6tables-nft", "ip6tables-legacy"])
def test_nfqueue_rules_of_every_xtables_backend(netns, tool):
    ns = netns("docxt")
    ns.run(tool, "-A", "OUTPUT", "-j", "NFQUEUE", "--queue-num", "6")
    [f] = findings(ns, "nfqueue-no-reader")
    assert f["what"].startswith(f"`{tool} -t filter -A OUTPUT -j NFQUEUE --queue-num 6` queues to queue 6")
    apply(f["fixes"][1]["command"])
    assert "--queue-bypass" in ns.run(tool + "-save").stdout
    assert findings(ns, "nfqueue-no-reader") == []


def test_nfqueue_balance_range_needs_every_queue(netns, reader):
    ns = netns("docbal")
    ns.run("iptables", "-A", "INPUT", "-j", "NFQUEUE", "--queue-balance", "4:5")
    reader(ns, 4)
    [f] = findings(ns, "nfqueue-no-reader")
    assert "queues to queue 5 with no reader" in f["what"]
    reader(ns, 5)
    assert findings(ns, "nfqueue-no-reader") == []


def node_with_pods(netns):
    """A node: underlay eth0 (198.18.0.1/24, peer 198.18.0.2 in another netns), a pod bridge br0
    (10.1.0.1/24) with a pod 10.1.0.5 behind a veth, and an overlay vx0 with a remote pod subnet
    10.2.0.0/24 on it (flannel style). Forwarding on, rp_filter loose: healthy."""
    node, peer, pod = netns("docnode"), netns("docpeer"), netns("docpodr")
    node.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", peer.name)
    node.run("ip", "addr", "add", "198.18.0.1/24", "dev", "eth0")
    node.run("ip", "link", "set", "eth0", "up")
    peer.run("ip", "addr", "add", "198.18.0.2/24", "dev", "eth0")
    peer.run("ip", "link", "set", "eth0", "up")
    node.run("ip", "link", "add", "br0", "type", "bridge")
    node.run("ip", "addr", "add", "10.1.0.1/24", "dev", "br0")
    node.run("ip", "link", "set", "br0", "up")
    node.run("ip", "link", "add", "vethp", "type", "veth", "peer", "name", "eth0", "netns", pod.name)
    node.run("ip", "link", "set", "vethp", "master", "br0", "up")
    pod.run("ip", "addr", "add", "10.1.0.5/24", "dev", "eth0")
    pod.run("ip", "link", "set", "eth0", "up")
    pod.run("ip", "route", "add", "default", "via", "10.1.0.1")
    node.run("ip", "link", "add", "vx0", "type", "vxlan", "id", "1", "local", "198.18.0.1", "dev", "eth0",
             "dstport", "8472", "nolearning")
    node.run("ip", "addr", "add", "10.1.0.0/32", "dev", "vx0")
    node.run("ip", "link", "set", "vx0", "up")
    node.run("ip", "route", "add", "10.2.0.0/24", "via", "10.2.0.0", "dev", "vx0", "onlink")
    node.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    return node, peer, pod


def test_healthy_node_with_pods_and_overlay_gives_no_findings(netns):
    node, _, _ = node_with_pods(netns)
    rc, out = doctor("--netns", node.path)
    assert rc == 0 and out["findings"] == [] and out["errors"] == [], out


def test_policy_route_stealing_a_pods_replies(netns):
    """Seed 003 in both shapes: a rule for a pod's source address, and (the article's) a rule for a
    node address whose replies to pods then leave by eth0. Each fixed by the narrow rule it prints."""
    node, _, _ = node_with_pods(netns)
    node.run("ip", "route", "add", "default", "via", "198.18.0.2", "dev", "eth0", "table", "100")
    node.run("ip", "rule", "add", "from", "10.1.0.5", "lookup", "100", "pref", "32760")
    # a narrow `lookup main` rule far ahead does not hide the rules behind it (main is `from all lookup main`)
    node.run("ip", "rule", "add", "from", "10.9.9.9", "to", "10.9.9.0/24", "lookup", "main", "pref", "10")
    [f] = findings(node, "policy-route-steals-replies")
    assert f["severity"] == "error" and f["where"] == f"netns {node.name}"
    assert "ip rule 32760 `from 10.1.0.5/32 lookup 100`" in f["what"] and "pod 10.1.0.5 (behind br0)" in f["what"]
    assert "out of eth0" in f["what"] and "main routes 10.2.0.0/24 via vx0" in f["what"]
    [fix] = f["fixes"]
    assert fix["command"] == (f"ip netns exec {node.name} ip rule add from 10.1.0.5/32 to 10.2.0.0/24 lookup main "
                              f"pref 32759")
    route = node.run("ip", "route", "get", "10.2.0.1", "from", "10.1.0.5", "iif", "br0").stdout
    assert "dev eth0" in route
    apply(fix["command"])
    assert "dev vx0" in node.run("ip", "route", "get", "10.2.0.1", "from", "10.1.0.5", "iif", "br0").stdout
    assert findings(node, "policy-route-steals-replies") == []

    # the article's shape: a node address (a second address on eth0) answering pods
    node.run("ip", "addr", "add", "198.18.0.9/32", "dev", "eth0")
    node.run("ip", "rule", "add", "from", "198.18.0.9", "lookup", "100", "pref", "32000")
    got = findings(node, "policy-route-steals-replies")
    assert sorted(f["what"].split(" sends traffic from ")[1].split(" out of")[0] for f in got) == [
        "198.18.0.9 (this node) to 10.1.0.0/24", "198.18.0.9 (this node) to 10.2.0.0/24"]
    for f in got:
        apply(f["fixes"][0]["command"])
    assert findings(node, "policy-route-steals-replies") == []
    assert "dev br0" in node.run("ip", "route", "get", "10.1.0.5", "from", "198.18.0.9").stdout


def test_policy_rule_for_the_pod_subnet(netns):
    node, _, _ = node_with_pods(netns)
    node.run("ip", "route", "add", "default", "via", "198.18.0.2", "dev", "eth0", "table", "100")
    node.run("ip", "rule", "add", "from", "10.1.0.0/24", "lookup", "100", "pref", "500")
    [f] = findings(node, "policy-route-steals-replies")
    assert "from pod 10.1.0.2 (behind br0) to 10.2.0.0/24 out of eth0" in f["what"]
    assert f["fixes"][0]["command"].endswith("ip rule add from 10.1.0.0/24 to 10.2.0.0/24 lookup main pref 499")
    apply(f["fixes"][0]["command"])
    assert findings(node, "policy-route-steals-replies") == []


def test_policy_rule_that_keeps_pod_traffic_on_its_path_is_not_a_finding(netns):
    """A source rule whose table routes the pod subnets the way main does steals nothing."""
    node, _, _ = node_with_pods(netns)
    node.run("ip", "route", "add", "10.2.0.0/24", "via", "10.2.0.0", "dev", "vx0", "onlink", "table", "100")
    node.run("ip", "route", "add", "default", "via", "198.18.0.2", "dev", "eth0", "table", "100")
    node.run("ip", "rule", "add", "from", "10.1.0.0/24", "lookup", "100", "pref", "1000")
    assert findings(node, "policy-route-steals-replies") == []


def test_forwarding_off_and_strict_rp_filter(netns):
    node, _, _ = node_with_pods(netns)
    node.run("sysctl", "-qw", "net.ipv4.ip_forward=0")
    [f] = findings(node, "rp-filter-forwarding")
    assert f["severity"] == "error" and "IPv4 forwarding is off" in f["what"]
    assert "br0" in f["what"] and "vx0" in f["what"] and "eth0" in f["what"]
    assert f["fixes"][0]["command"] == f"ip netns exec {node.name} sysctl -w net.ipv4.ip_forward=1"
    apply(f["fixes"][0]["command"])
    assert findings(node, "rp-filter-forwarding") == []

    node.run("sysctl", "-qw", "net.ipv4.conf.vx0.forwarding=0")
    [f] = findings(node, "rp-filter-forwarding")
    assert "forwarding is off on vx0" in f["what"]
    apply(f["fixes"][0]["command"])
    assert findings(node, "rp-filter-forwarding") == []

    # strict rp_filter on a symmetric path drops nothing: not a finding
    node.run("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
    assert findings(node, "rp-filter-forwarding") == []
    # direct routing for half the remote subnet on this node only: replies come back by eth0, but the
    # peer's packets still arrive on vx0, and strict rp_filter drops them
    node.run("ip", "route", "add", "10.2.0.0/25", "via", "198.18.0.2", "dev", "eth0")
    assert node.run("ip", "route", "get", "10.1.0.5", "from", "10.2.0.1", "iif", "vx0", check=False).returncode != 0
    [f] = findings(node, "rp-filter-forwarding")
    assert f["severity"] == "error"
    assert f["what"].startswith("rp_filter=1 on vx0 drops packets from remote pod 10.2.0.1 (10.2.0.0/24) arriving "
                                "on vx0: the route back to 10.2.0.1 leaves by eth0")
    assert [x["command"] for x in f["fixes"]] == [f"ip netns exec {node.name} sysctl -w net.ipv4.conf.vx0.rp_filter=2",
                                                  f"ip netns exec {node.name} sysctl -w net.ipv4.conf.all.rp_filter=2"]
    for x in f["fixes"]:
        apply(x["command"])
    assert findings(node, "rp-filter-forwarding") == []
    assert "dev br0" in node.run("ip", "route", "get", "10.1.0.5", "from", "10.2.0.1", "iif", "vx0").stdout


def test_kernel_hazards_share_edgemeshs_table(netns):
    ns = netns("dockern")
    rc, out = doctor("--netns", ns.path, "--check", "kernel-hazards")
    assert (rc, out["findings"]) == (0, []), out           # this machine's kernel is fine
    for h, release in zip(HAZARDS, ("4.15.6-1.el7.elrepo.x86_64", "4.14.30")):
        rc, out = doctor("--check", "kernel-hazards", "--kernel-release", release)
        assert rc == 1, out
        [f] = out["findings"]
        assert f["where"] == "kernel" and release in f["what"] and h.series in f["what"]
        assert h.source in f["why"] and "4.19.12" in f["fixes"][0]["how"]
    rc, out = doctor("--check", "kernel-hazards", "--kernel-release", "4.14.41")
    assert (rc, out["findings"]) == (0, [])


def test_every_namespace_once_named_and_of_processes(netns, reader):
    """The whole-node scan: a named netns with a process in it is visited once (as its name); a
    process's unnamed netns is visited as `pid N` and its fix enters it by nsenter."""
    named = netns("docscan")
    reader(named, 7)                                        # a process living in the named netns
    p = subprocess.Popen(["unshare", "--net", "sh", "-c",
                          "iptables -A INPUT -j NFQUEUE --queue-num 9 && echo ok && exec sleep 300"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ok"
        rc, out = doctor("--check", "nfqueue-no-reader")
        paths = [n["netns"] for n in out["namespaces"]]
        keys = [(os.stat(x).st_dev, os.stat(x).st_ino) for x in paths if os.path.exists(x)]
        assert len(keys) == len(set(keys)), out["namespaces"]
        assert {"where": f"netns {named.name}", "netns": named.path} in out["namespaces"]
        mine = [f for f in out["findings"] if f["netns"] == f"/proc/{p.pid}/ns/net"]
        assert rc == 1 and len(mine) == 1, out
        assert mine[0]["where"] == f"pid {p.pid}"
        assert mine[0]["fixes"][1]["command"].startswith(f"nsenter --net=/proc/{p.pid}/ns/net iptables-nft ")
    finally:
        p.kill()
        p.wait()


def test_doctor_own_failures_exit_2_with_a_code(tmp_path):
    rc, out = doctor("--check", "bogus")
    assert rc == 2 and out["code"] == 162 and "nfqueue-no-reader" in out["details"]
    rc, out = doctor("--netns", "/nonexistent/ns")
    assert rc == 2 and out["code"] == 163
    (tmp_path / "f").write_text("")
    rc, out = doctor("--netns", str(tmp_path / "f"))
    assert rc == 2 and out["code"] == 163 and "not a network namespace" in out["details"]
    rc, out = doctor("--bogus")
    assert rc == 2 and out["code"] == 161
    p = subprocess.run([DOCTOR, "--check", "bogus"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "code 162" in p.stderr and p.stdout == ""
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", DOCTOR, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and json.loads(p.stdout)["code"] == 160, p.stdout + p.stderr


def test_table_output_is_readable(netns):
    ns = netns("doctable")
    ns.run("iptables", "-A", "INPUT", "-j", "NFQUEUE", "--queue-num", "2")
    p = subprocess.run([DOCTOR, "--netns", ns.path], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["SEVERITY", "WHERE", "WHAT"]
    assert lines[1].startswith(f"ERROR     netns {ns.name}  `iptables-nft -t filter -A INPUT -j NFQUEUE")
    assert any(line.strip().startswith("why: NFQUEUE hands") for line in lines)
    assert any(line.strip() == f"$ ip netns exec {ns.name} iptables-nft -t filter -R INPUT 1 -j NFQUEUE "
               "--queue-num 2 --queue-bypass" for line in lines)
    assert lines[-1] == "pycni-doctor: 6 check(s) in 1 namespace(s): 1 problem(s)"


def test_our_vxlan_overlay_is_healthy_then_a_stolen_reply_is_found_and_fixed(netns, tmp_path):
    """Three vxlan test hosts with a pod each (our plugin, Go host-local): no findings in any host
    or pod namespace. Then on host0 a rule sends its pod's traffic out of eth0 (seed 003): the pod
    cannot reach host1's pod, doctor finds it, its fix restores the traffic."""
    from plugins.pkg import probe
    from tests.kit.vxlan_hosts import Cluster
    from tests.kit.vxlan_pods import Pods
    cluster = Cluster(netns, tmp_path, segments=[0, 0, 0])
    pods = Pods(cluster, netns, tmp_path)
    attached = [pods.add(h, f"d{h.index}") for h in cluster.hosts]
    cluster.ensure_all()
    try:
        assert probe.ping(attached[0].ns.path, attached[1].ip) == [0]
        for where in [h.path for h in cluster.hosts] + [p.ns.path for p in attached]:
            rc, out = doctor("--netns", where)
            assert (rc, out["findings"], out["errors"]) == (0, [], []), out

        h0, pod0 = cluster.hosts[0], attached[0]
        h0.run("ip", "route", "add", "default", "via", h0.router, "dev", "eth0", "table", "100")
        h0.run("ip", "rule", "add", "from", pod0.ip, "lookup", "100", "pref", "32000")
        assert probe.ping(pod0.ns.path, attached[1].ip) != [0]
        got = [f for f in findings(h0.ns, "policy-route-steals-replies") if attached[1].ip.rsplit(".", 1)[0]
               in f["what"].split(" to ")[1]]
        assert len(got) == 1 and "out of eth0" in got[0]["what"], got
        apply(got[0]["fixes"][0]["command"])
        assert probe.ping(pod0.ns.path, attached[1].ip) == [0]
    finally:
        for pod in attached:
            pods.delete(pod)


def test_run_inside_a_named_netns_names_it_and_prints_fixes_for_it(netns):
    ns = netns("docinside")
    ns.run("iptables", "-A", "INPUT", "-j", "NFQUEUE", "--queue-num", "4")
    p = ns.run(DOCTOR, "--json", "--check", "nfqueue-no-reader", check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["namespaces"][0] == {"where": f"netns {ns.name}", "netns": ns.path}
    [f] = [f for f in out["findings"] if f["netns"] == ns.path]
    assert f["fixes"][1]["command"] == "iptables-nft -t filter -R INPUT 1 -j NFQUEUE --queue-num 4 --queue-bypass"
