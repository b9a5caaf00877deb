"""pycni-doctor's edgemesh-hijack and --conn for IPv6, against the real dual-stack edgemesh plugin: its
IPv6 DNAT to [listenAddress6]:port with nothing listening there is found with the fix (and the pod's
IPv6 service call really fails, and CHECK fails with 151), the proxy started there makes it go (the
call works, CHECK passes); `--conn mesh` lists the IPv6 listen address and names the proxy; `--conn
[addr]:port` of an IPv6 connection names its process. A socket counts as the kernel's lookup counts
it (a `::` socket without IPV6_V6ONLY takes IPv4 too, with it only IPv6), through sock_diag (the
tool) and /proc + raw sock_diag (a plugin's CHECK) alike; ip6tables-legacy and ip6tables-nft both
holding rules is found."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from plugins.doctor import checkctx
from plugins.doctor import edgemesh_hijack as eh
from plugins.pkg import ns as nsmod
from tests.integration.test_doctor import DOCTOR, apply, doctor, findings
from tests.integration.test_edgemesh_ipv6 import LISTEN6, SVC4, SVC6, Host
from tests.integration.test_edgemesh_kit import ask

pytestmark = pytest.mark.root
CHECK = "edgemesh-hijack"

# A listener: AF_INET6 TCP on ("::" or an address, port), V6ONLY as argv[3] says; "ready", then sleeps.
LISTENER = """
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(sys.argv[3]))
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
print("ready", flush=True)
while True:
    c = s.accept()[0]
    c.recv(10)
    time.sleep(0.05)
    c.close()
"""
# A pod's client that holds a hijacked connection to SERVICE:80 open once it has the proxy's answer.
HOLD = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], 80), timeout=5)
c.makefile().readline()
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def host(netns, tmp_path):
    h = Host(netns("dem6h"), str(tmp_path))
    yield h
    h.node.stop()


@pytest.fixture
def spawn():
    procs: list[subprocess.Popen] = []

    def start(ns, *argv: str) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", *argv],
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        return p
    yield start
    for p in procs:
        p.kill()
        p.wait()


def in_plugin_check(ns) -> list:
    """The diagnosis as edgemesh's CHECK runs it: in-process, listeners from /proc (checkctx)."""
    found, failed = checkctx.run_in(ns.path, [eh], listening=checkctx.listening_proc)
    assert failed == []
    return found


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_ipv6_dnat_to_a_listen_address_nobody_listens_on(host, netns, spawn, backend):
    pod, prev = host.pod(netns("dem6pod"))
    conf = host.conf(prev, backend=backend)             # dual-stack, tcp and udp
    host.ok("ADD", conf, "c1", pod)
    try:
        host.real_services(SVC4, SVC6)
        host.proxy(v6=False)                            # the proxy on IPv4 only
        assert ask(pod, "tcp", SVC4) == f"orig={SVC4}:80"
        assert ask(pod, "tcp", SVC6).startswith("error")               # hijacked into nothing
        found = findings(host.ns, CHECK)
        where = "ip6tables-nft -t nat" if backend == "iptables" else "nft table ip6 edgemesh"
        chains = ("EDGE-MESH-TCP", "EDGE-MESH-UDP") if backend == "iptables" else ("proxy_tcp", "proxy_udp")
        assert sorted(f["what"] for f in found) == sorted(
            f"{where} chain {chain} DNATs {proto} service traffic to [{LISTEN6}]:40001, where nothing listens "
            f"in this namespace: hijacked {proto} service connections fail"
            for chain, proto in zip(chains, ("tcp", "udp"))), found
        for f in found:
            assert f["severity"] == "error" and f["where"] == f"netns {host.ns.name}"
            assert f"listening on [{LISTEN6}]:40001 (" in f["fixes"][0]["how"]
        assert sorted(f.what for f in in_plugin_check(host.ns)) == sorted(f["what"] for f in found)

        rc, out, _ = host.run("CHECK", conf, "c1", pod)                # checkProxy's default: fail
        assert rc == 1 and out["code"] == 151, out
        assert f"[{LISTEN6}]:40001, where nothing listens" in out["msg"] and "start the mesh proxy" in out["msg"]
        rc, out, err = host.run("CHECK", dict(conf, checkProxy=False), "c1", pod)
        assert rc == 0 and f"[{LISTEN6}]:40001, where nothing listens" in err, (out, err)   # a warning

        proxy = host.node.serve("--listen", f"[{LISTEN6}]:40001", "--udp")
        assert findings(host.ns, CHECK) == []
        assert in_plugin_check(host.ns) == []
        assert ask(pod, "tcp", SVC6) == f"orig={SVC6}:80"
        assert ask(pod, "udp", SVC6) == f"orig={SVC6}:80"
        host.ok("CHECK", conf, "c1", pod)

        # --conn mesh: both listen addresses, the IPv6 proxy named, and the proxy's end of a hijacked
        # connection the pod holds open (the proxy has closed its end: FIN_WAIT2 until the pod closes)
        spawn(pod, HOLD, SVC6)
        rc, out = doctor("--conn", "mesh", "--netns", host.ns.path)
        assert rc == 0 and out["errors"] == [], out
        assert sorted(out["targets"]) == ["169.254.96.16:40001", f"[{LISTEN6}]:40001"]
        mine = [c for c in out["connections"] if c["local"] == f"[{LISTEN6}]:40001"]
        listeners = [c for c in mine if c["state"] in ("LISTEN", "UNCONNECTED")]
        assert sorted(c["proto"] for c in listeners) == ["tcp", "udp"], out["connections"]
        assert all([p["pid"] for p in c["processes"]] == [proxy.pid] for c in listeners), listeners
        assert any(c["remote"].startswith("[fd00:20::5]:") for c in mine if c["state"] != "LISTEN"), mine
    finally:
        host.node.stop()
        host.ok("DEL", conf, "c1", pod)


def test_a_dual_stack_wildcard_socket_counts_for_ipv4_unless_v6only(netns, spawn):
    """The kernel: an AF_INET6 socket on :: takes IPv4 connections unless IPV6_V6ONLY; on its own
    IPv6 address it takes IPv6 only."""
    ns = netns("dem6w")
    ns.run("ip", "link", "set", "lo", "up")
    ns.run("ip", "addr", "add", "10.0.0.1/32", "dev", "lo")
    ns.run("ip", "-6", "addr", "add", "fd00::1/128", "dev", "lo", "nodad")
    for binary, to in (("iptables", "10.0.0.1:40001"), ("ip6tables", "[fd00::1]:40001")):
        ns.run(binary, "-t", "nat", "-N", "EDGE-MESH-TCP")
        ns.run(binary, "-t", "nat", "-A", "EDGE-MESH-TCP", "-p", "tcp", "-j", "DNAT", "--to-destination", to)
    assert sorted(f["what"].split(" DNATs ")[1].split(",")[0] for f in findings(ns, CHECK)) == [
        "tcp service traffic to 10.0.0.1:40001", "tcp service traffic to [fd00::1]:40001"]

    def connects(addr: str) -> bool:
        p = ns.run(sys.executable, "-c", f"import socket; socket.create_connection(({addr!r}, 40001), timeout=2)",
                   check=False)
        return p.returncode == 0

    p = spawn(ns, LISTENER, "::", "40001", "0")         # dual-stack
    assert connects("10.0.0.1") and connects("fd00::1")
    assert findings(ns, CHECK) == [] and in_plugin_check(ns) == []
    p.kill()
    p.wait()
    p = spawn(ns, LISTENER, "::", "40001", "1")         # IPv6 only: the IPv4 DNAT goes nowhere
    assert not connects("10.0.0.1") and connects("fd00::1")
    [f] = findings(ns, CHECK)
    assert "DNATs tcp service traffic to 10.0.0.1:40001, where nothing listens" in f["what"]
    assert [g.what for g in in_plugin_check(ns)] == [f["what"]]
    p.kill()
    p.wait()
    spawn(ns, LISTENER, "fd00::1", "40001", "1")        # its own address
    [f] = findings(ns, CHECK)
    assert "10.0.0.1:40001" in f["what"] and [g.what for g in in_plugin_check(ns)] == [f["what"]]
    with nsmod.enter(ns.path):                          # both readers answer for the thread's netns
        assert checkctx.listening_proc("tcp") == eh.listening("tcp") == {("fd00::1", 40001)}


def test_conn_names_the_process_of_an_ipv6_connection(netns, spawn):
    ns = netns("dem6c")
    ns.run("ip", "link", "set", "lo", "up")
    ns.run("ip", "-6", "addr", "add", "fd00::7/128", "dev", "lo", "nodad")
    server = spawn(ns, LISTENER, "fd00::7", "9090", "1")
    rc, out = doctor("--conn", "[fd00::7]:9090", "--netns", ns.path)
    assert rc == 0 and out["errors"] == [] and out["targets"] == ["[fd00::7]:9090"], out
    [c] = out["connections"]
    assert (c["proto"], c["state"], c["local"]) == ("tcp", "LISTEN", "[fd00::7]:9090")
    assert [p["pid"] for p in c["processes"]] == [server.pid]
    assert c["processes"][0]["exe"] == os.path.realpath(sys.executable)
    # a connection that lives 50 ms, caught at both ends while --watch runs
    watch = subprocess.Popen([DOCTOR, "--json", "--conn", "fd00::7:9090",
                              "--netns", ns.path, "--watch", "3"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert watch.stderr is not None and "watching [fd00::7]:9090" in watch.stderr.readline()
    client = ns.run(sys.executable, "-c", "import socket, time; c = socket.create_connection(('fd00::7', 9090));"
                    " time.sleep(0.05); c.send(b'x'); print(c.getsockname()[1])")
    port = int(client.stdout.strip())
    out = json.loads(watch.communicate(timeout=60)[0])
    ends = {(c["local"], c["remote"]) for c in out["connections"] if c["state"] != "LISTEN"}
    assert (f"[fd00::7]:{port}", "[fd00::7]:9090") in ends, out["connections"]       # the client's end
    assert ("[fd00::7]:9090", f"[fd00::7]:{port}") in ends, out["connections"]       # the server's end
    server_end = next(c for c in out["connections"] if c["local"] == "[fd00::7]:9090" and c["state"] != "LISTEN")
    assert [p["pid"] for p in server_end["processes"]] == [server.pid]


def test_ip6tables_legacy_and_nft_both_holding_rules(host, netns):
    pod, prev = host.pod(netns("dem6pod2"))
    conf = host.conf(prev, backend="iptables")
    host.ok("ADD", conf, "c1", pod)
    host.proxy()
    try:
        assert findings(host.ns, CHECK) == []                          # healthy dual-stack node
        host.ns.run("ip6tables-legacy", "-t", "nat", "-A", "PREROUTING", "-d", SVC6, "-j", "RETURN")
        [f] = findings(host.ns, CHECK)
        assert f["severity"] == "error"
        assert f["what"].startswith("ip6tables-legacy and ip6tables-nft both hold rules in this namespace "
                                    "(legacy: nat 1 rule(s); nft: nat ")
        assert f["what"].endswith("edgemesh's chains are in nft")
        rc, out, _ = host.run("CHECK", conf, "c1", pod)
        assert rc == 1 and out["code"] == 152 and "ip6tables-legacy" in out["msg"], out
        assert f["fixes"][1]["command"] == f"ip netns exec {host.ns.name} ip6tables-legacy -t nat -F"
        apply(f["fixes"][1]["command"])
        assert findings(host.ns, CHECK) == []
        host.ok("CHECK", conf, "c1", pod)
    finally:
        host.node.stop()
        host.ok("DEL", conf, "c1", pod)


def test_parsing_ipv6_dnats_and_targets():
    save = ("*nat\n-A EDGE-MESH-TCP -p tcp -j DNAT --to-destination [fd00:a9fe:6010::1]:40001\n"
            "-A EDGE-MESH-UDP -p udp -j DNAT --to-destination [fd00::1]\nCOMMIT\n")
    assert eh.xt_dnats(save) == [("EDGE-MESH-TCP", "tcp", "fd00:a9fe:6010::1", 40001)]
    rule = {"family": "ip6", "table": "edgemesh", "chain": "proxy_tcp", "expr": [
        {"dnat": {"family": "ip6", "addr": "fd00:a9fe:6010::1", "port": 40001}}]}
    assert eh.nft_dnats({"nftables": [{"rule": rule}]}) == []                        # not the ip table
    assert eh.nft_dnats({"nftables": [{"rule": rule}]}, ("ip6", "edgemesh")) == [
        ("proxy_tcp", "tcp", "fd00:a9fe:6010::1", 40001)]
    assert eh.accepting("::", 1, False) == {("::", 1), ("0.0.0.0", 1)}
    assert eh.accepting("::", 1, True) == {("::", 1)}
    assert eh.accepting("::ffff:10.0.0.1", 1, False) == {("10.0.0.1", 1)}
    assert eh.accepts({("::", 1)}, "fd00:a9fe:6010:0::1", 1)
    assert not eh.accepts({("::", 1)}, "10.0.0.1", 1)
    assert eh.accepts({("fd00:a9fe:6010::1", 1)}, "fd00:a9fe:6010:0:0::1", 1)
    from plugins.doctor import conn
    assert conn.parse_target("[FD00::0:1]:80") == ("fd00::1", 80)
    assert conn.parse_target("fd00::1:80") == ("fd00::1", 80)
    assert conn.parse_target("[::ffff:10.0.0.1]:80") == ("10.0.0.1", 80)
    for bad in ("[fd00::1]80", "[fd00::1]:", "fd00::1", "[10.0.0.1:80", "[10.0.0.1]:80"):
        with pytest.raises(ValueError):
            conn.parse_target(bad)


UDP = """
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("fd00::1", 40002))
if sys.argv[1] == "connected":
    s.connect(("fd00::1", 9))
print("ready", flush=True)
time.sleep(60)
"""


def test_a_connected_udp_socket_is_no_listener(netns, spawn):
    """A UDP socket connected to a peer takes datagrams from that peer only: not the proxy's."""
    ns = netns("dem6u")
    ns.run("ip", "link", "set", "lo", "up")
    ns.run("ip", "-6", "addr", "add", "fd00::1/128", "dev", "lo", "nodad")
    ns.run("ip6tables", "-t", "nat", "-N", "EDGE-MESH-UDP")
    ns.run("ip6tables", "-t", "nat", "-A", "EDGE-MESH-UDP", "-p", "udp", "-j", "DNAT", "--to-destination",
           "[fd00::1]:40002")
    p = spawn(ns, UDP, "connected")
    [f] = findings(ns, CHECK)
    assert "DNATs udp service traffic to [fd00::1]:40002, where nothing listens" in f["what"]
    assert [g.what for g in in_plugin_check(ns)] == [f["what"]]
    p.kill()
    p.wait()
    spawn(ns, UDP, "bound")
    assert findings(ns, CHECK) == [] and in_plugin_check(ns) == []
