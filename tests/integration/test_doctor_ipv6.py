"""pycni-doctor's routing checks for IPv6 against the real kernel: an IPv6 node (underlay eth0
fd00:18::1/64 to a peer, pods fd00:1::/64 on br0, remote pods fd00:2::/64 on an IPv6 vxlan vx0) is
healthy; a policy rule stealing a pod's replies (`ip -6 rule`), IPv6 forwarding off, and a strict
IPv6 reverse-path filter (ip6tables rpfilter, nft fib: IPv6 has no rp_filter sysctl) on an
asymmetric path are each found, really drop traffic, and are fixed by the command printed."""
from __future__ import annotations

import pytest

from tests.integration.test_doctor import apply, doctor, findings

pytestmark = pytest.mark.root
PY = "import socket,sys\ns=socket.socket(socket.AF_INET6)\ns.settimeout(2)\n" \
     "try:\n s.connect((sys.argv[1], 9)); print('open')\nexcept ConnectionRefusedError: print('refused')\n" \
     "except OSError as e: print(type(e).__name__)\n"


def reach(ns, addr: str) -> str:
    """A TCP connect from `ns` to addr port 9 where nothing listens: 'refused' (the RST came back:
    the path works both ways) or 'TimeoutError' (dropped on the way)."""
    import sys
    return ns.run(sys.executable, "-c", PY, addr, check=False, timeout=30).stdout.strip()


def works(ns, addr: str, tries: int = 10) -> bool:
    """The path works (a fresh bridge port and neighbour discovery may lose the first packets)."""
    return any(reach(ns, addr) == "refused" for _ in range(tries))


def node6(netns):
    """The IPv6 node (all addresses nodad), its peer (fd00:3::1 on lo, the far side of eth0) and a pod."""
    node, peer, pod = netns("doc6node"), netns("doc6peer"), netns("doc6pod")
    node.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", peer.name)
    node.run("ip", "-6", "addr", "add", "fd00:18::1/64", "dev", "eth0", "nodad")
    node.run("ip", "link", "set", "eth0", "up")
    peer.run("ip", "-6", "addr", "add", "fd00:18::2/64", "dev", "eth0", "nodad")
    peer.run("ip", "link", "set", "eth0", "up")
    peer.run("ip", "-6", "addr", "add", "fd00:3::1/128", "dev", "lo")
    peer.run("ip", "-6", "route", "add", "fd00:1::/64", "via", "fd00:18::1")
    node.run("ip", "-6", "route", "add", "fd00:3::/64", "via", "fd00:18::2", "dev", "eth0")
    node.run("ip", "link", "add", "br0", "type", "bridge")
    node.run("ip", "-6", "addr", "add", "fd00:1::1/64", "dev", "br0", "nodad")
    node.run("ip", "link", "set", "br0", "up")
    node.run("ip", "link", "add", "vethp", "type", "veth", "peer", "name", "eth0", "netns", pod.name)
    node.run("ip", "link", "set", "vethp", "master", "br0", "up")
    pod.run("ip", "-6", "addr", "add", "fd00:1::5/64", "dev", "eth0", "nodad")
    pod.run("ip", "link", "set", "eth0", "up")
    pod.run("ip", "-6", "route", "add", "default", "via", "fd00:1::1")
    node.run("ip", "link", "add", "vx0", "type", "vxlan", "id", "1", "local", "fd00:18::1", "dev", "eth0",
             "dstport", "8472", "nolearning")
    node.run("ip", "-6", "addr", "add", "fd00:1::/128", "dev", "vx0", "nodad")
    node.run("ip", "link", "set", "vx0", "up")
    node.run("ip", "-6", "route", "add", "fd00:2::/64", "via", "fd00:2::", "dev", "vx0", "onlink")
    node.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    assert works(pod, "fd00:3::1")            # the pod reaches the peer through the node
    return node, peer, pod


def test_healthy_ipv6_node_gives_no_findings(netns):
    node, _, pod = node6(netns)
    rc, out = doctor("--netns", node.path)
    assert rc == 0 and out["findings"] == [] and out["errors"] == [], out


def test_ipv6_policy_rule_stealing_a_pods_replies(netns):
    node, _, _ = node6(netns)
    node.run("ip", "-6", "route", "add", "default", "via", "fd00:18::2", "dev", "eth0", "table", "100")
    node.run("ip", "-6", "rule", "add", "from", "fd00:1::5", "lookup", "100", "pref", "32760")
    assert "dev eth0" in node.run("ip", "-6", "route", "get", "fd00:2::1", "from", "fd00:1::5", "iif", "br0").stdout
    [f] = findings(node, "policy-route-steals-replies")
    assert "ip -6 rule 32760 `from fd00:1::5/128 lookup 100`" in f["what"], f
    assert "pod fd00:1::5 (behind br0)" in f["what"] and "out of eth0" in f["what"]
    assert "main routes fd00:2::/64 via vx0" in f["what"]
    [fix] = f["fixes"]
    assert fix["command"] == (f"ip netns exec {node.name} ip -6 rule add from fd00:1::5/128 to fd00:2::/64 "
                              "lookup main pref 32759")
    apply(fix["command"])
    assert "dev vx0" in node.run("ip", "-6", "route", "get", "fd00:2::1", "from", "fd00:1::5", "iif", "br0").stdout
    assert findings(node, "policy-route-steals-replies") == []


def test_ipv6_forwarding_off_is_found_and_a_devices_own_forwarding_is_not_the_switch(netns):
    node, _, pod = node6(netns)
    # a device's net.ipv6.conf.<dev>.forwarding = 0 does not stop forwarding (all = 1 does it all)
    node.run("sysctl", "-qw", "net.ipv6.conf.br0.forwarding=0", "net.ipv6.conf.eth0.forwarding=0")
    assert works(pod, "fd00:3::1")
    assert findings(node, "rp-filter-forwarding") == []
    node.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=0")
    assert reach(pod, "fd00:3::1") == "TimeoutError"
    [f] = findings(node, "rp-filter-forwarding")
    assert f["severity"] == "error" and "IPv6 forwarding is off (net.ipv6.conf.all.forwarding = 0)" in f["what"]
    assert all(d in f["what"] for d in ("br0", "vx0", "eth0")), f
    assert f["fixes"][0]["command"] == f"ip netns exec {node.name} sysctl -w net.ipv6.conf.all.forwarding=1"
    apply(f["fixes"][0]["command"])
    assert findings(node, "rp-filter-forwarding") == []
    assert works(pod, "fd00:3::1")


def ip6tables_backend() -> str:
    """What `ip6tables` is here: ip6tables-nft or ip6tables-legacy (the doctor names the backend)."""
    import os
    import shutil
    real = os.path.basename(os.path.realpath(shutil.which("ip6tables") or ""))
    return "ip6tables-nft" if "nft" in real else "ip6tables-legacy"


def rpf_drops(node) -> int:
    out = node.run("ip6tables", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n").stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if "rpfilter" in line)


@pytest.mark.parametrize("kind", ["ip6tables", "nft"])
def test_strict_ipv6_reverse_path_filter_on_an_asymmetric_path(netns, kind):
    node, _, pod = node6(netns)
    if kind == "ip6tables":
        node.run("ip6tables", "-t", "raw", "-A", "PREROUTING", "-m", "rpfilter", "--invert", "-j", "DROP")
    else:
        node.run("nft", "add", "table", "inet", "fw")
        node.run("nft", "add", "chain", "inet", "fw", "pre", "{", "type", "filter", "hook", "prerouting",
                 "priority", "raw", ";", "}")
        node.run("nft", "add", "rule", "inet", "fw", "pre", "fib", "saddr", ".", "iif", "oif", "missing", "drop")
    assert findings(node, "rp-filter-forwarding") == []         # strict on a symmetric path drops nothing
    assert works(pod, "fd00:3::1")
    # The way back to the first pod addresses is by eth0 (a more specific route): what the pods send
    # in by br0 fails the strict check.
    node.run("ip", "-6", "route", "add", "fd00:1::/125", "via", "fd00:18::2", "dev", "eth0")
    [f] = findings(node, "rp-filter-forwarding")
    assert "strict IPv6 reverse-path filter) drops packets from pod fd00:1::2 (fd00:1::/64) arriving on br0: " \
           "the route back to fd00:1::2 leaves by eth0" in f["what"], f
    tool = ip6tables_backend()
    assert (f"`{tool} -t raw -A PREROUTING -m rpfilter --invert -j DROP`" if kind == "ip6tables"
            else "nft rule `fib saddr . iif oif missing drop` (table inet fw, chain pre") in f["what"]
    if kind == "ip6tables":                                     # the pod's real packets are dropped by it
        before = rpf_drops(node)
        assert reach(pod, "fd00:3::1") == "TimeoutError"
        assert rpf_drops(node) > before
    loose = f["fixes"][0]["command"]
    assert loose == (f"ip netns exec {node.name} {tool} -t raw -R PREROUTING 1 -m rpfilter --loose --invert "
                     "-j DROP"
                     if kind == "ip6tables" else
                     f"ip netns exec {node.name} nft replace rule inet fw pre handle 2 fib saddr oif missing drop")
    apply(loose)
    assert findings(node, "rp-filter-forwarding") == []
    # loose: a source with no route back at all is still dropped, and found
    node.run("ip", "-6", "route", "del", "fd00:1::/125", "via", "fd00:18::2", "dev", "eth0")
    node.run("ip", "-6", "route", "add", "unreachable", "fd00:1::/125")
    [f] = findings(node, "rp-filter-forwarding")
    assert "(loose IPv6 reverse-path filter) drops packets from pod fd00:1::2" in f["what"], f
    assert "there is no route back to fd00:1::2" in f["what"]
