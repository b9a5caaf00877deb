"""pycni-doctor's mark-bit-clash diagnosis with real rules: kube-proxy's own drop bit (KUBE-MARK-DROP
sets 0x8000, KUBE-FIREWALL drops it) is no finding; another component marking its traffic 0x8000
makes KUBE-FIREWALL drop it (TCP really fails), is found with who sets and who reads the bit, and
the printed fix (the mark moved to a free bit) lets the traffic through and the finding go."""
from __future__ import annotations

import subprocess
import sys

import pytest

from plugins.doctor import marks
from tests.integration.test_doctor import apply, findings

pytestmark = pytest.mark.root
CHECK = "mark-bit-clash"

LISTENER = """
import socket
s = socket.socket()
s.bind(("10.4.0.2", 8080))
s.listen(8)
print("listening", flush=True)
while True:
    s.accept()[0].close()
"""
CONNECT = "import socket; socket.create_connection(('10.4.0.2', 8080), timeout=1.5).close()"


@pytest.fixture
def pair(netns):
    cli, srv = netns("docmcli"), netns("docmsrv")
    cli.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", srv.name)
    cli.run("ip", "addr", "add", "10.4.0.1/24", "dev", "eth0")
    cli.run("ip", "link", "set", "eth0", "up")
    srv.run("ip", "addr", "add", "10.4.0.2/24", "dev", "eth0")
    srv.run("ip", "link", "set", "eth0", "up")
    server = subprocess.Popen(["ip", "netns", "exec", srv.name, sys.executable, "-c", LISTENER],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "listening"
    yield cli, srv
    server.kill()
    server.wait()


def kube_rules(ns) -> None:
    """kube-proxy's/kubelet's drop and masquerade bits, as they write them."""
    ns.run("iptables", "-t", "filter", "-N", "KUBE-FIREWALL")
    ns.run("iptables", "-t", "filter", "-A", "KUBE-FIREWALL", "-m", "comment", "--comment",
           "kubernetes firewall for dropping marked packets", "-m", "mark", "--mark", "0x8000/0x8000", "-j", "DROP")
    ns.run("iptables", "-t", "filter", "-A", "INPUT", "-j", "KUBE-FIREWALL")
    ns.run("iptables", "-t", "nat", "-N", "KUBE-MARK-DROP")
    ns.run("iptables", "-t", "nat", "-A", "KUBE-MARK-DROP", "-j", "MARK", "--set-xmark", "0x8000/0x8000")
    ns.run("iptables", "-t", "nat", "-N", "KUBE-MARK-MASQ")
    ns.run("iptables", "-t", "nat", "-A", "KUBE-MARK-MASQ", "-j", "MARK", "--set-xmark", "0x4000/0x4000")
    ns.run("iptables", "-t", "nat", "-N", "KUBE-POSTROUTING")
    ns.run("iptables", "-t", "nat", "-A", "KUBE-POSTROUTING", "-m", "mark", "!", "--mark", "0x4000/0x4000",
           "-j", "RETURN")
    ns.run("iptables", "-t", "nat", "-A", "POSTROUTING", "-j", "KUBE-POSTROUTING")


def test_a_mark_on_kube_proxys_drop_bit_drops_traffic_and_the_fix_moves_it(pair):
    cli, srv = pair

    def connects() -> bool:
        return cli.run(sys.executable, "-c", CONNECT, check=False).returncode == 0

    kube_rules(srv)
    # an unrelated low-bit mark nobody here reads: no clash either
    srv.run("iptables", "-t", "mangle", "-A", "OUTPUT", "-p", "udp", "-j", "MARK", "--set-mark", "0x1")
    assert findings(srv, CHECK) == []                                  # kube-proxy's own bits: healthy
    assert connects()
    srv.run("iptables", "-t", "mangle", "-I", "PREROUTING", "-p", "tcp", "--dport", "8080", "-m", "comment",
            "--comment", "ids verdict", "-j", "MARK", "--set-xmark", "0x8000/0x8000")
    assert not connects()                                              # KUBE-FIREWALL drops it
    [f] = findings(srv, CHECK)
    assert f["severity"] == "error" and f["where"] == f"netns {srv.name}"
    assert f["what"].startswith("`iptables-nft -t mangle -A PREROUTING -p tcp -m tcp --dport 8080 -m comment "
                                "--comment 'ids verdict' -j MARK --set-xmark 0x8000/0x8000` (an unknown component) "
                                "sets packet mark bits 0x8000, overlapping 0x8000 that Kubernetes reads 0x8000")
    assert "KUBE-FIREWALL" in f["what"] and "are dropped" in f["what"]
    assert f["fixes"][0]["command"] == (f"ip netns exec {srv.name} iptables-nft -t mangle -R PREROUTING 1 -p tcp "
                                        "-m tcp --dport 8080 -m comment --comment 'ids verdict' -j MARK "
                                        "--set-xmark 0x1000/0x1000")
    assert "--iptables-drop-bit" in f["fixes"][1]["how"]
    apply(f["fixes"][0]["command"])
    assert connects()
    assert findings(srv, CHECK) == []


def test_nft_mark_on_the_masquerade_bit_and_a_conntrack_mark(netns):
    ns = netns("docmnft")
    kube_rules(ns)
    ns.run("nft", "add", "table", "ip", "ids")
    ns.run("nft", "add", "chain", "ip", "ids", "pre", "{ type filter hook prerouting priority 0; }")
    ns.run("nft", "add", "rule", "ip", "ids", "pre", "meta", "mark", "set", "meta", "mark", "|", "0x4000")
    [f] = findings(ns, CHECK)
    assert f["severity"] == "warning"
    assert f["what"].startswith("`nft rule in table ip ids chain pre handle ")
    assert "sets packet mark bits 0x4000, overlapping 0x4000 that Kubernetes reads 0x4000" in f["what"]
    assert "masquerade bit" in f["what"] and f["fixes"][0]["command"] is None
    ns.run("nft", "flush", "chain", "ip", "ids", "pre")
    # a conntrack mark does not clash with a packet-mark reader
    ns.run("nft", "add", "rule", "ip", "ids", "pre", "ct", "mark", "set", "0x4000")
    assert findings(ns, CHECK) == []


def test_the_table_names_each_source():
    assert marks.__doc__ is not None
    for _c, mask, _, source in marks.KNOWN:
        assert f"0x{mask:08x}" in marks.__doc__ and source in marks.__doc__
    assert {c for c, *_ in marks.KNOWN} >= {"Kubernetes", "portmap", "Calico", "Cilium", "pycni"}


SAVE = """*mangle
-A PREROUTING -j MARK --set-xmark 0x8000/0xffffffff
-A cali-pre -j MARK --set-xmark 0x10000/0x10000
-A PREROUTING -m connmark --mark 0x2/0x2 -j CONNMARK --set-xmark 0x0/0xff
COMMIT
*filter
-A KUBE-FIREWALL -m mark --mark 0x8000/0x8000 -j DROP
-A INPUT -m connmark ! --mark 0x5 -j ACCEPT
COMMIT
"""


def test_iptables_save_setters_and_readers():
    setters, readers = marks.xt_rules(SAVE, "iptables-nft")
    assert [(s.kind, s.value, s.mask, s.owner, s.target) for s in setters] == [
        ("packet", 0x8000, 0xFFFFFFFF, None, "MARK"), ("packet", 0x10000, 0x10000, "Calico", "MARK"),
        ("ct", 0, 0xFF, None, "CONNMARK")]
    assert setters[0].fix == "iptables-nft -t mangle -R PREROUTING 1 -j MARK --set-xmark __MARK__"
    assert setters[2].fix is not None and setters[2].fix.startswith("iptables-nft -t mangle -R PREROUTING 2 ")
    assert [(r.kind, r.value, r.mask, r.owner, r.target) for r in readers] == [
        ("ct", 0x2, 0x2, None, "CONNMARK"), ("packet", 0x8000, 0x8000, "Kubernetes", "DROP"),
        ("ct", 0x5, 0xFFFFFFFF, None, "ACCEPT")]


def test_nft_setters_readers_and_iptables_nft_tables_skipped():
    rule = {"family": "ip", "table": "ids", "chain": "c", "handle": 3}
    ruleset = {"nftables": [
        {"rule": dict(rule, expr=[{"mangle": {"key": {"meta": {"key": "mark"}},
                                              "value": {"|": [{"meta": {"key": "mark"}}, 0x4000]}}}])},
        {"rule": dict(rule, expr=[{"mangle": {"key": {"ct": {"key": "mark"}}, "value": 0x20}}])},
        {"rule": dict(rule, expr=[{"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 0xC000]},
                                             "right": 0x8000}}, {"drop": None}])},
        {"rule": dict(rule, table="mangle", expr=[{"mangle": {"key": {"meta": {"key": "mark"}}, "value": 1}}])},
        {"rule": dict(rule, table="kube-proxy", expr=[{"match": {"op": "==", "left": {"ct": {"key": "mark"}},
                                                                 "right": 5}}, {"accept": None}])}]}
    setters, readers = marks.nft_rules(ruleset, {("ip", "mangle")})
    assert [(s.kind, s.value, s.mask) for s in setters] == [("packet", 0x4000, 0x4000), ("ct", 0x20, 0xFFFFFFFF)]
    assert [(r.kind, r.value, r.mask, r.owner, r.target) for r in readers] == [
        ("packet", 0x8000, 0xC000, None, "drop"), ("ct", 5, 0xFFFFFFFF, "Kubernetes", "accept")]


def test_free_bit_avoids_reserved_and_used_bits():
    assert marks.free_bit(0, set()) == 0x1000
    assert marks.free_bit(0x1000, set()) == 0x40
    assert marks.free_bit(0, {"Cilium"}) == 0x40
    assert marks.free_bit(0xFF | 0x1000, {"Cilium"}) is None
