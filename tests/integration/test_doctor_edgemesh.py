"""pycni-doctor's edgemesh-hijack diagnosis against the real edgemesh plugin: its DNAT to a listen
address where no proxy listens is found (and the pod's service call really fails), the proxy started
there makes it go (and the call work); iptables-legacy and iptables-nft both holding rules is found
and the printed flush of the stale backend makes it go."""
from __future__ import annotations

import subprocess
import sys

import pytest

from plugins.doctor import edgemesh_hijack as eh
from tests.integration.test_doctor import apply, doctor, findings
from tests.integration.test_edgemesh_kit import SVC, Node, ask, conflist, edgemesh_conf

pytestmark = pytest.mark.root
CHECK = "edgemesh-hijack"


@pytest.fixture
def node(netns, tmp_path):
    n = Node(netns("demh"), str(tmp_path))
    yield n
    n.stop()


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_dnat_to_a_listen_address_nobody_listens_on(node, netns, tmp_path, backend):
    mesh = conflist(tmp_path, edgemesh=edgemesh_conf(tmp_path, backend=backend))
    pod = netns("dempod")
    node.add(mesh, pod, "c1")
    try:
        assert ask(pod, "tcp", SVC).startswith("error")                  # hijacked into nothing
        [f] = findings(node.ns, CHECK)
        assert f["severity"] == "error" and f["where"] == f"netns {node.ns.name}"
        chain = "EDGE-MESH-TCP" if backend == "iptables" else "proxy_tcp"
        assert f"chain {chain} DNATs tcp service traffic to 169.254.96.16:40001, where nothing listens" in f["what"]
        assert "not even an address" not in f["what"]                   # ensureListenDevice put it there
        assert "listening on 169.254.96.16:40001 (tcp)" in f["fixes"][0]["how"]
        assert findings(pod, CHECK) == []                                # the pod has no hijack rules
        node.serve("--listen", "169.254.96.16:40001")
        assert findings(node.ns, CHECK) == []
        assert ask(pod, "tcp", SVC) == f"orig={SVC}:80"
    finally:
        node.stop()
        node.delete(mesh, pod, "c1")


def test_a_proxy_on_the_wildcard_address_counts(netns):
    ns = netns("demwild")
    ns.run("iptables", "-t", "nat", "-N", "EDGE-MESH-UDP")
    ns.run("iptables", "-t", "nat", "-A", "EDGE-MESH-UDP", "-p", "udp", "-j", "DNAT", "--to-destination",
           "10.0.0.1:40001")
    [f] = findings(ns, CHECK)
    assert "DNATs udp service traffic to 10.0.0.1:40001" in f["what"]
    assert "10.0.0.1 is not even an address of this namespace" in f["what"]
    p = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c",
                          "import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                          "s.bind(('0.0.0.0', 40001)); print('ok', flush=True); time.sleep(60)"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ok"
        assert findings(ns, CHECK) == []
    finally:
        p.kill()
        p.wait()


def test_legacy_and_nft_both_holding_rules(node, netns, tmp_path):
    mesh = conflist(tmp_path, edgemesh=edgemesh_conf(tmp_path, backend="iptables"))
    pod = netns("dempod2")
    node.add(mesh, pod, "c1")
    node.serve("--listen", "169.254.96.16:40001")
    try:
        assert findings(node.ns, CHECK) == []                            # healthy edgemesh node
        node.ns.run("iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-d", "10.96.0.5", "-j", "RETURN")
        [f] = findings(node.ns, CHECK)
        assert f["severity"] == "error"
        assert f["what"].startswith("iptables-legacy and iptables-nft both hold rules in this namespace "
                                    "(legacy: nat 1 rule(s); nft: nat ")
        assert f["what"].endswith("edgemesh's chains are in nft")
        assert "`iptables` here is iptables-nft" in f["fixes"][0]["how"]
        assert f["fixes"][1]["command"] == f"ip netns exec {node.ns.name} iptables-legacy -t nat -F"
        apply(f["fixes"][1]["command"])
        assert findings(node.ns, CHECK) == []
        assert ask(pod, "tcp", SVC) == f"orig={SVC}:80"
        rc, out = doctor("--netns", node.ns.path)
        assert (rc, out["findings"], out["errors"]) == (0, [], []), out
    finally:
        node.stop()
        node.delete(mesh, pod, "c1")


def test_parsing_dnats_and_rule_counts():
    save = ("*nat\n:EDGE-MESH-TCP - [0:0]\n-A PREROUTING -m comment --comment \"edgemesh root chain\" -j EDGE-MESH\n"
            "-A EDGE-MESH-TCP -p tcp -j DNAT --to-destination 169.254.96.16:40001\n"
            "-A OTHER -p tcp -j DNAT --to-destination 10.0.0.1:80\nCOMMIT\n*filter\nCOMMIT\n")
    assert eh.xt_dnats(save) == [("EDGE-MESH-TCP", "tcp", "169.254.96.16", 40001)]
    assert eh.rule_count(save) == {"nat": 3}
    rule = {"family": "ip", "table": "edgemesh", "chain": "proxy_udp", "handle": 9,
            "expr": [{"dnat": {"addr": "169.254.96.16", "port": 40002}}]}
    other = dict(rule, table="kube-proxy")
    assert eh.nft_dnats({"nftables": [{"rule": rule}, {"rule": other}]}) == [
        ("proxy_udp", "udp", "169.254.96.16", 40002)]
    assert eh.accepts({("0.0.0.0", 40002)}, "169.254.96.16", 40002)
    assert not eh.accepts({("127.0.0.1", 40002)}, "169.254.96.16", 40002)
