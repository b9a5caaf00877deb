"""dp-steering with IPv6: dual-stack and IPv6-only pods (Go bridge + host-local with a range per
family, then dp-steering, through libcni_py), inline and tap, with each datapath the kernel has
(tc-pedit runs in the stock-kernel VM: test_dp_steering_pedit.py).

What it shows: IPv6 unicast to and from the pod crosses the dp as IPv4 does (ping6 and TCP over
IPv6, the dp's counters exact), neighbour discovery goes across without the dp (as ARP does:
a unicast NS reaches the pod and never vth), the frames on vth are the pod's with the UCMAC
swapped in, the pod keeps its IPv6 addresses, routes and permanent neighbours across the pull
and gets them back on DEL, CHECK sees a lost IPv6 address or route, and the reference dp's
policy drops by IPv6 destination, next header and port and lets the rest through.
"""
import json
import os
import socket
import struct
import time

import pytest

from plugins.meta.dp_steering import datapath_ebpf
from plugins.pkg import ns, probe
from tests.kit.dp_steering import (DATAPATHS, GATEWAY, SUBNET, Pod, World, allowed, datapath_or_skip, pod_view,
                                   tcp_ok)

pytestmark = pytest.mark.root
SUBNET6, GATEWAY6 = "fd44::/64", "fd44::1"


@pytest.fixture(params=DATAPATHS)
def datapath(request):
    return datapath_or_skip(request.param)


class DualWorld(World):
    """The dp-steering world with host-local ranges for both families (or IPv6 only)."""

    def __init__(self, netns_factory, tmp_path, families=(4, 6), **steer):
        super().__init__(netns_factory, tmp_path, **steer)
        self.families = families

    def bridge(self) -> dict:
        conf = super().bridge()
        ranges, routes = [], []
        if 4 in self.families:
            ranges.append([{"subnet": SUBNET, "gateway": GATEWAY}])
            routes.append({"dst": "0.0.0.0/0"})
        if 6 in self.families:
            ranges.append([{"subnet": SUBNET6, "gateway": GATEWAY6}])
            routes.append({"dst": "::/0"})
        conf["ipam"].update(ranges=ranges, routes=routes)
        return conf

    def add(self, cid: str, steer: bool = True, **overrides) -> Pod:
        pod = super().add(cid, steer, **overrides)
        settle(self.host)            # the bridge's IPv6 gateway address out of DAD
        return pod


def ip6(pod: Pod) -> str:
    return next(i.address.split("/")[0] for i in pod.added.ips if ":" in i.address)


def settle(netns, within: float = 10.0) -> None:
    """Wait until no IPv6 address in `netns` is tentative (DAD done): bounded, not a timing check."""
    deadline = time.monotonic() + within
    while netns.run("ip", "-6", "-o", "addr", "show", "tentative").stdout.strip():
        if time.monotonic() > deadline:
            raise AssertionError("IPv6 addresses still tentative: " +
                                 netns.run("ip", "-6", "-o", "addr", "show").stdout)
        time.sleep(0.05)


def icmp6_in_echos(pod: Pod) -> int:
    for line in pod.ns.run("cat", "/proc/net/snmp6").stdout.splitlines():
        name, value = line.split()
        if name == "Icmp6InEchos":
            return int(value)
    raise AssertionError("no Icmp6InEchos")


def udp6_received(src_ns: str, dst: str, port: int, dst_ns: str, timeout: float = 1.5) -> bool:
    """One UDP datagram over IPv6 from `src_ns` to `dst`:`port`, read in `dst_ns`."""
    with ns.enter(dst_ns):
        rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with ns.enter(src_ns):
        tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind(("::", port))
        rx.settimeout(timeout)
        tx.sendto(b"six", (dst, port))
        try:
            return rx.recv(64) == b"six"
        except OSError:
            return False


def test_dual_stack_inline_both_families_through_the_dp_and_nd_goes_across(netns, tmp_path, datapath):
    w = DualWorld(netns, tmp_path, datapath=datapath, dpSocket=str(tmp_path / "dp.sock"))
    with w.dp() as dp:
        p1, p2 = w.add("c1"), w.add("c2")
        r1 = w.record(p1)
        assert r1["installed"] == "inline" and r1["datapath"] == datapath
        mac1 = r1["mac"]
        a1, a2 = ip6(p1), ip6(p2)
        assert a1.startswith("fd44::") and a2.startswith("fd44::")

        # both families: host <-> pod, pod -> gateway, pod <-> pod (this also resolves neighbours)
        for dst_ns, dst in ((w.host.path, p1.ip), (w.host.path, a1), (p1.ns.path, GATEWAY),
                            (p1.ns.path, GATEWAY6), (p1.ns.path, a2), (p2.ns.path, a1)):
            assert probe.ping(dst_ns, dst, count=1, timeout=3) == [0], dst

        # exact: 3 echo requests in, 3 replies out; neighbour discovery, which the host and the pod
        # do again now (their entries flushed: multicast NS, then a unicast NA), never reaches the dp
        w.host.run("ip", "-6", "neigh", "flush", "dev", "cni-dp0")
        p1.ns.run("ip", "-6", "neigh", "flush", "dev", "eth0")
        base = allowed(dp, mac1)
        assert probe.ping(w.host.path, a1, count=3, timeout=3) == [0, 1, 2]
        dp.wait(lambda s: s["pods"][mac1]["allowed"] >= base + 6, "6 more allowed frames")
        time.sleep(0.3)                  # anything else that would have reached the dp by now
        assert allowed(dp, mac1) == base + 6
        reach = w.host.run("ip", "-6", "neigh", "show", a1, "dev", "cni-dp0").stdout
        assert r1["mac"] in reach.lower() and "REACHABLE" in reach, reach

        with probe.TCPEcho(p1.ns.path, addr="::", port=8080), probe.TCPEcho(p2.ns.path, addr="::", port=8080):
            assert tcp_ok(w.host.path, a1, 8080) and tcp_ok(w.host.path, p1.ip, 8080)
            assert tcp_ok(p2.ns.path, a1, 8080) and tcp_ok(p1.ns.path, a2, 8080)
        assert dp.stats()["pods"][mac1]["denied"] == 0
        w.check(p1)
        w.delete(p1)
        assert dp.stats()["pods"].get(mac1) is None
        assert probe.ping(w.host.path, a2, count=1, timeout=3) == [0]
        w.delete(p2)
    assert w.enforcer_links() == ["lo"]


def test_ipv6_policy_drops_by_address_next_header_and_port_and_allows_the_rest(netns, tmp_path, datapath):
    w = DualWorld(netns, tmp_path, datapath=datapath, dpSocket=str(tmp_path / "dp.sock"))
    policy = {"rules": [
        {"action": "deny", "proto": "tcp", "dport": 5201, "dst": SUBNET6, "direction": "ingress", "pod": "c1"},
        {"action": "deny", "proto": 17, "src": GATEWAY6, "direction": "ingress", "pod": "c1"},
        {"action": "allow", "proto": "icmpv6"}]}
    with w.dp(policy) as dp:
        pod = w.add("c1")
        mac, a6 = w.record(pod)["mac"], ip6(pod)
        assert probe.ping(w.host.path, a6, count=1, timeout=3) == [0]
        with probe.TCPEcho(pod.ns.path, addr="::", port=5201), probe.TCPEcho(pod.ns.path, addr="::", port=8080):
            denied = dp.stats()["pods"][mac]["denied"]
            assert not tcp_ok(w.host.path, a6, 5201, timeout=1.5)          # IPv6, tcp, port 5201: dropped
            assert dp.stats()["pods"][mac]["denied"] > denied
            assert tcp_ok(w.host.path, a6, 8080)                           # another port: allowed
            assert tcp_ok(w.host.path, pod.ip, 5201)                       # same port over IPv4: allowed
        denied = dp.stats()["pods"][mac]["denied"]
        assert not udp6_received(w.host.path, a6, 9000, pod.ns.path)       # next header 17 from fd44::1
        assert dp.stats()["pods"][mac]["denied"] == denied + 1
        assert udp6_received(pod.ns.path, GATEWAY6, 9000, w.host.path)     # egress UDP: allowed
        assert probe.ping(w.host.path, a6, count=2, timeout=3) == [0, 1]
        w.delete(pod)


def test_dual_stack_tap_copies_every_unicast_of_both_families(netns, tmp_path, datapath):
    w = DualWorld(netns, tmp_path, datapath=datapath, mode="tap")
    pod = w.add("c1")
    a6 = ip6(pod)
    assert w.record(pod)["installed"] == "tap"
    assert probe.ping(w.host.path, a6, count=1, timeout=3) == [0]
    with probe.TCPEcho(pod.ns.path, addr="::", port=8080):
        assert tcp_ok(w.host.path, a6, 8080)
        with w.dp() as dp:                     # no dpSocket: the dp learns the pod from its copies
            ucmac = w.record(pod)["ucmac"]
            assert probe.ping(w.host.path, a6, count=1, timeout=3) == [0]
            dp.wait(lambda s: ucmac in s["pods"], "the dp learned the pod")
            seen, echos = allowed(dp, ucmac), icmp6_in_echos(pod)
            assert probe.ping(w.host.path, a6, count=5, timeout=3) == [0, 1, 2, 3, 4]
            dp.wait(lambda s: s["pods"][ucmac]["allowed"] >= seen + 10, "a copy of all 10 frames")
            assert icmp6_in_echos(pod) == echos + 5                 # what the dp reflects is dropped
            assert tcp_ok(w.host.path, a6, 8080) and tcp_ok(w.host.path, pod.ip, 8080)
        assert tcp_ok(w.host.path, a6, 8080)
    w.check(pod, mode="tap")
    w.delete(pod, mode="tap")


def _udp6(src: str, dst: str, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 12345, 12345, 8 + len(payload), 0) + payload
    return struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + socket.inet_pton(socket.AF_INET6, src) + \
        socket.inet_pton(socket.AF_INET6, dst) + udp


def _ns6(src: str, dst: str, target: str) -> bytes:
    """A unicast neighbour solicitation (checksum left 0: it only has to be seen, not answered)."""
    icmp = struct.pack("!BBHI", 135, 0, 0, 0) + socket.inet_pton(socket.AF_INET6, target)
    return struct.pack("!IHBB", 6 << 28, len(icmp), 58, 255) + socket.inet_pton(socket.AF_INET6, src) + \
        socket.inet_pton(socket.AF_INET6, dst) + icmp


def _capture(netns_path: str, dev: str):
    with ns.enter(netns_path):
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    cap.bind((dev, 3))
    cap.settimeout(2)
    return cap


def _wait_for(cap, head: bytes, within: float = 2.0) -> bytes | None:
    """The first frame starting with `head` seen within the time, or None (others skipped)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        cap.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            got = cap.recv(4096)
        except TimeoutError:
            return None
        if got.startswith(head):
            return got
    return None


def test_ipv6_frames_on_vth_carry_the_ucmac_and_nd_never_reaches_vth(netns, tmp_path, datapath):
    """Both datapaths put the same bytes on vth for IPv6 as for IPv4: the frame as sent with the
    pod's MAC swapped for its UCMAC; a unicast NS to the pod goes to the pod, not to vth."""
    w = DualWorld(netns, tmp_path, datapath=datapath)
    pod = w.add("c1")
    rec = w.record(pod)
    host_veth = pod.added.interfaces[1].name
    mac, ucmac = bytes.fromhex(rec["mac"].replace(":", "")), bytes.fromhex(rec["ucmac"].replace(":", ""))
    peer, eth6 = bytes.fromhex("020000000042"), b"\x86\xdd"
    a6 = ip6(pod)
    vth = _capture(w.enf.path, "vth")
    try:
        for sender_ns, dev, frame, expect in (
                (w.host.path, host_veth, mac + peer + eth6 + _udp6("fd44::99", a6, bytes(range(64))),
                 ucmac + peer + eth6 + _udp6("fd44::99", a6, bytes(range(64)))),
                (pod.ns.path, "eth0", peer + mac + eth6 + _udp6(a6, "fd44::99", bytes(range(48))),
                 peer + ucmac + eth6 + _udp6(a6, "fd44::99", bytes(range(48))))):
            with ns.enter(sender_ns):
                tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            with tx:
                tx.bind((dev, 0))
                tx.send(frame)
            assert _wait_for(vth, expect[:14]) == expect

        ns_frame = mac + peer + eth6 + _ns6("fd44::99", a6, a6)
        with _capture(pod.ns.path, "eth0") as at_pod:
            with ns.enter(w.host.path):
                tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            with tx:
                tx.bind((host_veth, 0))
                tx.send(ns_frame)
            assert _wait_for(at_pod, ns_frame[:14]) == ns_frame        # across, untouched
        assert _wait_for(vth, ucmac + peer, within=0.5) is None         # and not to the dp
    finally:
        vth.close()
    w.delete(pod)


def test_ipv6_only_pod_inline_through_the_dp(netns, tmp_path, datapath):
    w = DualWorld(netns, tmp_path, families=(6,), datapath=datapath, dpSocket=str(tmp_path / "dp.sock"))
    with w.dp() as dp:
        pod = w.add("c1")
        assert [i.address for i in pod.added.ips if ":" not in i.address] == []
        a6, mac = ip6(pod), w.record(pod)["mac"]
        assert probe.ping(w.host.path, a6, count=1, timeout=3) == [0]
        assert probe.ping(pod.ns.path, GATEWAY6, count=1, timeout=3) == [0]
        base = allowed(dp, mac)
        with probe.TCPEcho(pod.ns.path, addr="::", port=8080):
            assert tcp_ok(w.host.path, a6, 8080)
        assert allowed(dp, mac) > base
        w.check(pod)
        w.delete(pod)
    assert w.enforcer_links() == ["lo"]


def view6(pod: Pod) -> str:
    """pod_view, but for the nodad flag: the pull re-adds the pod's IPv6 addresses without DAD
    (they are the pod's already; DAD would make them tentative for a second)."""
    return pod_view(pod.ns).replace(" nodad", "")


def test_pull_keeps_ipv6_addresses_routes_and_permanent_neighbours_and_del_restores_them(netns, tmp_path):
    w = DualWorld(netns, tmp_path, datapath="ebpf" if datapath_ebpf.available() else "tc-pedit")
    pod = w.add("c1", steer=False)
    for argv in (("ip", "-6", "neigh", "add", "fd44::77", "lladdr", "02:00:00:00:00:77", "dev", "eth0",
                  "nud", "permanent"),
                 ("ip", "neigh", "add", "10.44.0.77", "lladdr", "02:00:00:00:00:78", "dev", "eth0", "nud", "permanent"),
                 ("ip", "-6", "addr", "add", "fd45::5/64", "dev", "eth0", "nodad"),
                 ("ip", "-6", "route", "add", "fd99::/64", "via", GATEWAY6, "dev", "eth0"),
                 ("ip", "-6", "route", "add", "fd98::/64", "dev", "eth0", "metric", "7")):
        pod.ns.run(*argv)
    view = view6(pod)
    assert "fd44::77" in view and "fd45::5/64" in view and "fd99::/64 via fd44::1" in view
    prev = pod.added.encode()
    with w.dp():
        _pull_check_del(w, pod, prev, view)


def _pull_check_del(w, pod, prev, view):
    status, out, err = w.plugin("ADD", pod, prev)
    assert status == 0, (out, err)
    assert w.record(pod)["installed"] == "inline"
    assert view6(pod) == view                      # the new eth0 (our veth) carries all of it
    assert pod.ns.run("ip", "-6", "-o", "addr", "show", "dev", "eth0", "tentative").stdout == ""

    status, out, err = w.plugin("CHECK", pod, prev)
    assert status == 0, (out, err)
    pod.ns.run("ip", "-6", "route", "del", "::/0", "dev", "eth0")
    status, out, err = w.plugin("CHECK", pod, prev)
    assert (status, out.get("code")) == (1, 127) and "route to ::/0" in out["msg"], (out, prev)
    pod.ns.run("ip", "-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0")
    assert w.plugin("CHECK", pod, prev)[0] == 0
    pod.ns.run("ip", "-6", "addr", "del", f"{ip6(pod)}/64", "dev", "eth0")
    status, out, err = w.plugin("CHECK", pod, prev)
    assert (status, out.get("code")) == (1, 127) and f"address {ip6(pod)}/64" in out["msg"], out
    pod.ns.run("ip", "-6", "addr", "add", f"{ip6(pod)}/64", "dev", "eth0", "nodad")
    pod.ns.run("ip", "-6", "route", "replace", "default", "via", GATEWAY6, "dev", "eth0")
    assert w.plugin("CHECK", pod, prev)[0] == 0

    view = view6(pod)               # fd44::2 is the newest address now: listed first
    status, out, err = w.plugin("DEL", pod, prev)
    assert status == 0, (out, err)
    assert view6(pod) == view                              # the original eth0 back, with all of it
    assert pod.ns.run("ip", "-6", "-o", "addr", "show", "tentative").stdout == ""   # usable at once
    assert w.enforcer_links() == ["lo"]
    assert probe.ping(w.host.path, ip6(pod), count=1, timeout=3) == [0]
    assert not os.path.exists(os.path.join(w.state_dir, "pods", pod.cid, "eth0.json"))


def go_runner(w: World, pod: Pod, tmp_path, plugins: list):
    """go(verb): the real Go libcni (tests/golibcni) runs `plugins` as one list for `pod`, in the
    world's host netns (where the Go bridge makes its bridge); skips without Go."""
    import subprocess

    from tests.conftest import GO_CNI_DIR, VENV_BIN
    from tests.golibcni.build import GoUnavailable, driver_path
    try:
        exe = driver_path()
    except GoUnavailable as e:
        pytest.skip(str(e))
    conflist = tmp_path / "go.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": "dpnet", "plugins": plugins}))

    def go(verb: str) -> subprocess.CompletedProcess:
        argv = [exe, verb, "-conflist", str(conflist), "-netns", pod.ns.path, "-cid", pod.cid, "-ifname", "eth0",
                "-cache", str(tmp_path / "gocache"), "-path", f"{VENV_BIN}:{GO_CNI_DIR}",
                "-args", f"IgnoreUnknown=1;K8S_POD_NAME={pod.cid};K8S_POD_NAMESPACE=default"]
        with ns.enter(w.host.path):
            return subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return go


def test_go_libcni_runs_the_dual_stack_go_bridge_chain_with_dp_steering(netns, tmp_path):
    """The real Go libcni (tests/golibcni) runs Debian's Go bridge + host-local with a range per
    family, then our dp-steering: ADD steers the pod (ping and TCP over both families through the
    dp), Go's CHECK passes (and fails once the pod lost its IPv6 route), DEL leaves nothing."""
    w = DualWorld(netns, tmp_path, datapath="ebpf" if datapath_ebpf.available() else "tc-pedit",
                  dpSocket=str(tmp_path / "dp.sock"))
    pod = Pod("g1", netns("pod"))
    go = go_runner(w, pod, tmp_path, [w.bridge(), w.steer])

    with w.dp() as dp:
        added = go("add")
        assert added.returncode == 0, added.stdout + added.stderr
        res = json.loads(added.stdout)
        addrs = {i["address"].split("/")[0] for i in res["ips"]}
        a6 = next(a for a in addrs if ":" in a)
        a4 = next(a for a in addrs if ":" not in a)
        settle(w.host)
        mac = w.record(pod)["mac"]
        assert w.record(pod)["installed"] == "inline"
        for dst in (a4, a6):
            assert probe.ping(w.host.path, dst, count=1, timeout=3) == [0], dst
        with probe.TCPEcho(pod.ns.path, addr="::", port=8080):
            assert tcp_ok(w.host.path, a6, 8080) and tcp_ok(w.host.path, a4, 8080)
        assert allowed(dp, mac) >= 8
        checked = go("check")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        pod.ns.run("ip", "-6", "route", "del", "::/0")
        checked = go("check")
        # the Go bridge's CHECK, first in the chain, finds it (ours does too: the test above)
        assert checked.returncode != 0 and "not found in routing table" in checked.stdout, checked.stdout
        deleted = go("del")
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert w.enforcer_links() == ["lo"] and w.state_files() == []
    assert pod.ns.run("ip", "link", "show", "eth0", check=False).returncode != 0     # the Go bridge's DEL
    host = [ln.split(":")[1].strip() for ln in w.host.run("ip", "-o", "link", "show").stdout.splitlines()]
    assert sorted(host) == ["cni-dp0", "lo"]          # the pod's original veth went, its host end with it


def test_go_libcni_dual_stack_chain_with_dp_steering_then_edgemesh(netns, tmp_path):
    """Go bridge + host-local (both families), dp-steering inline, then edgemesh, under the real Go
    libcni: the pod's IPv4 and IPv6 service traffic (TCP, and UDP over IPv6) crosses the dp and is hijacked to the mesh
    proxy on the host with its original destination; an ignored IPv6 service is not; CHECK
    passes; DEL leaves no rule, device or record."""
    from tests.integration.test_edgemesh_ipv6 import CIDR4, CIDR6, IGN6, IGNORED, LISTEN6, SVC4, SVC6
    from tests.integration.test_edgemesh_kit import Node, ask
    w = DualWorld(netns, tmp_path, datapath="ebpf" if datapath_ebpf.available() else "tc-pedit",
                  dpSocket=str(tmp_path / "dp.sock"))
    pod = Pod("g1", netns("pod"))
    mesh = {"type": "edgemesh", "serviceCIDR": [CIDR4, CIDR6], "protocols": ["tcp", "udp"],
            "ignoredServices": IGNORED, "ensureListenDevice": True, "stateDir": str(tmp_path / "emstate")}
    go = go_runner(w, pod, tmp_path, [w.bridge(), w.steer, mesh])
    node = Node(w.host, str(tmp_path))
    try:
        with w.dp() as dp:
            added = go("add")
            assert added.returncode == 0, added.stdout + added.stderr
            assert {i["address"].split("/")[0] for i in json.loads(added.stdout)["ips"]} == \
                {a.split("/")[0] for a in (pod_addr(pod, 4), pod_addr(pod, 6))}
            settle(w.host)
            mac = w.record(pod)["mac"]
            w.host.run("ip", "addr", "add", f"{IGN6}/128", "dev", "lo")
            node.serve("--real", "--listen", f"[{IGN6}]:80")
            node.serve("--listen", "169.254.96.16:40001", "--listen", f"[{LISTEN6}]:40001", "--udp")
            base = allowed(dp, mac)
            assert ask(pod.ns, "tcp", SVC6) == f"orig={SVC6}:80"       # through the dp, then hijacked
            assert ask(pod.ns, "tcp", SVC4) == f"orig={SVC4}:80"
            assert ask(pod.ns, "udp", SVC6) == f"orig={SVC6}:80"
            assert ask(pod.ns, "tcp", IGN6) == f"real={IGN6}:80"       # ignored: reaches the real one
            assert allowed(dp, mac) > base
            checked = go("check")
            assert checked.returncode == 0, checked.stdout + checked.stderr
            deleted = go("del")
            assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    finally:
        node.stop()
    assert w.enforcer_links() == ["lo"] and w.state_files() == []
    for binary in ("iptables-save", "ip6tables-save"):
        assert "EDGE-MESH" not in w.host.run(binary).stdout
    assert "edgemesh" not in w.host.run("nft", "list", "ruleset").stdout
    assert w.host.run("ip", "link", "show", "edgemesh0", check=False).returncode != 0


def pod_addr(pod: Pod, family: int) -> str:
    """The pod's eth0 address of `family` as the kernel has it (global scope)."""
    flag = "-6" if family == 6 else "-4"
    line = pod.ns.run("ip", flag, "-o", "addr", "show", "dev", "eth0", "scope", "global").stdout.split()
    return line[line.index("inet6" if family == 6 else "inet") + 1]


def test_dual_stack_pod_switched_off_tap_and_inline_in_place_keeps_both_families(netns, tmp_path, datapath):
    """`dp-steering mode` on a dual-stack pod: off gives the pod its own interface back with its IPv6
    config, tap and inline steer it again; ping6 and TCP over IPv6 in every mode, CHECK passes."""
    w = DualWorld(netns, tmp_path, datapath=datapath, dpSocket=str(tmp_path / "dp.sock"))
    with w.dp() as dp:
        pod = w.add("c1")
        a6 = ip6(pod)
        view = view6(pod)
        with probe.TCPEcho(pod.ns.path, addr="::", port=8080):
            for mode in ("off", "tap", "inline", "off", "inline"):
                assert w.mode(pod, mode)["installed"] == mode
                assert view6(pod) == view, mode
                assert pod.ns.run("ip", "-6", "-o", "addr", "show", "tentative").stdout == "", mode
                assert probe.ping(w.host.path, a6, count=1, timeout=3) == [0], mode
                assert tcp_ok(w.host.path, a6, 8080), mode
                if mode == "inline":
                    mac = w.record(pod)["mac"]
                    base = allowed(dp, mac)
                    assert probe.ping(w.host.path, a6, count=2, timeout=3) == [0, 1]
                    dp.wait(lambda s, m=mac, b=base: s["pods"][m]["allowed"] >= b + 4, "4 more allowed frames")
        w.check(pod)
        w.delete(pod)
    assert w.enforcer_links() == ["lo"]


def test_a_pod_steered_before_ipv6_steering_is_named_by_check_and_mode_upgrades_it(netns, tmp_path, datapath):
    """A pod whose filters are those of the version before IPv6 steering (no IPv6 rule on vex/vin):
    CHECK says so (127) and names the command; `dp-steering mode` installs them in place."""
    w = DualWorld(netns, tmp_path, datapath=datapath, mode="tap")
    pod = w.add("c1")
    rec = w.record(pod)
    for dev in (rec["vex"], rec["vin"]):
        for pref in ("9997", "9998", "9999"):
            w.enf.run("tc", "filter", "del", "dev", dev, "ingress", "pref", pref)
    status, out, _ = w.plugin("CHECK", pod, pod.added.encode(), mode="tap")
    assert (status, out.get("code")) == (1, 127), out
    assert "none of the IPv6 filters is there" in out["msg"] and "dp-steering mode c1 eth0 tap" in out["msg"], out
    assert w.mode(pod, "tap")["installed"] == "tap"
    w.check(pod, mode="tap")
    assert probe.ping(w.host.path, ip6(pod), count=1, timeout=3) == [0]
    w.delete(pod, mode="tap")
