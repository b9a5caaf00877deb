"""dp-steering with real traffic: Go bridge + host-local, then dp-steering, through libcni_py.

Host netns (the bridge and its gateway address) + enforcer netns (vbr/vth and the
reference pycni-dp) + pod netns. Each test runs once per datapath the kernel has;
the tc-pedit runs happen in the stock-kernel VM (test_dp_steering_pedit.py).
"""
import socket

import pytest

from plugins.pkg import probe
from tests.kit.dp_steering import DATAPATHS, GATEWAY, World, allowed, datapath_or_skip, tcp_ok

pytestmark = pytest.mark.root


@pytest.fixture(params=DATAPATHS)
def datapath(request):
    return datapath_or_skip(request.param)


def test_inline_host_and_pods_talk_through_the_dp_and_policy_blocks_one_port(netns, tmp_path, datapath):
    w = World(netns, tmp_path, datapath=datapath, dpSocket=str(tmp_path / "dp.sock"))
    deny = {"rules": [{"action": "deny", "proto": "tcp", "dport": 5201, "direction": "ingress", "pod": "c1"}]}
    with w.dp(deny) as dp:
        p1, p2 = w.add("c1"), w.add("c2")
        r1 = w.record(p1)
        assert r1["installed"] == "inline" and r1["datapath"] == datapath
        mac1 = r1["mac"]
        assert dp.stats()["pods"][mac1]["ucmac"] == r1["ucmac"]          # registered over dpSocket

        assert probe.ping(w.host.path, p1.ip, count=1, timeout=2) == [0]   # also warms ARP
        assert probe.ping(p1.ns.path, GATEWAY, count=1, timeout=2) == [0]
        assert probe.ping(p1.ns.path, p2.ip, count=1, timeout=2) == [0]

        # the dp's counters match what crossed it: 3 echo requests in, 3 replies out
        base = allowed(dp, mac1)
        assert probe.ping(w.host.path, p1.ip, count=3, timeout=2) == [0, 1, 2]
        dp.wait(lambda s: s["pods"][mac1]["allowed"] >= base + 6, "6 more allowed frames")
        assert allowed(dp, mac1) == base + 6

        with probe.TCPEcho(p1.ns.path, port=8080), probe.TCPEcho(p1.ns.path, port=5201), \
                probe.TCPEcho(p2.ns.path, port=8080):
            assert tcp_ok(w.host.path, p1.ip, 8080)
            assert tcp_ok(p2.ns.path, p1.ip, 8080) and tcp_ok(p1.ns.path, p2.ip, 8080)
            denied = dp.stats()["pods"][mac1]["denied"]
            assert not tcp_ok(w.host.path, p1.ip, 5201, timeout=1.5)
            assert probe.ping(w.host.path, p1.ip, count=1, timeout=2) == [0]
            assert tcp_ok(w.host.path, p1.ip, 8080)
        assert dp.stats()["pods"][mac1]["denied"] > denied
        w.check(p1)
        w.delete(p1)
        assert dp.stats()["pods"].get(mac1) is None                       # ctrl_del_mac on DEL
        assert probe.ping(w.host.path, p2.ip, count=1, timeout=2) == [0]
        w.delete(p2)
    assert w.enf.run("ip", "-o", "link", "show").stdout.count(":") and \
        [ln.split(":")[1].strip() for ln in w.enf.run("ip", "-o", "link", "show").stdout.splitlines()] == ["lo"]


def test_inline_without_dp_fails_closed_and_fail_open_steers_in_tap(netns, tmp_path, datapath):
    err = open(tmp_path / "plugins.stderr", "w+")
    w = World(netns, tmp_path, stderr=err, datapath=datapath)
    closed = w.add("c1")
    opened = w.add("c2", failOpen=True)
    err.seek(0)
    said = err.read()
    assert "fail closed" in said and "tap mode instead of inline (failOpen)" in said
    assert w.record(closed)["installed"] == "inline"
    assert (w.record(opened)["mode"], w.record(opened)["installed"]) == ("inline", "tap")

    assert probe.ping(w.host.path, closed.ip, count=2, timeout=1) == []
    assert not tcp_ok(w.host.path, closed.ip, 22, timeout=1)
    assert probe.ping(w.host.path, opened.ip, count=1, timeout=2) == [0]
    with probe.TCPEcho(opened.ns.path, port=8080):
        assert tcp_ok(w.host.path, opened.ip, 8080)
    w.check(opened, failOpen=True)
    with pytest.raises(Exception, match="steered inline but no dp reads vth"):     # 131: blackholed
        w.check(closed)

    with w.dp():                               # a dp appears: the fail-closed pod works now
        assert probe.ping(w.host.path, closed.ip, count=1, timeout=2) == [0]
        w.check(closed)
        with pytest.raises(Exception, match="dp is there now"):
            w.check(opened, failOpen=True)
        assert w.mode(opened, "inline")["installed"] == "inline"
        w.check(opened, failOpen=True)
        assert probe.ping(w.host.path, opened.ip, count=1, timeout=2) == [0]
    err.close()


def icmp_in_echos(pod) -> int:
    lines = [ln.split() for ln in pod.ns.run("cat", "/proc/net/snmp").stdout.splitlines() if ln.startswith("Icmp:")]
    return int(lines[1][lines[0].index("InEchos")])


def test_tap_works_with_and_without_dp_and_the_dp_sees_every_unicast(netns, tmp_path, datapath):
    w = World(netns, tmp_path, datapath=datapath, mode="tap")
    pod = w.add("c1")
    assert w.record(pod)["installed"] == "tap"
    assert probe.ping(w.host.path, pod.ip, count=1, timeout=2) == [0]
    with probe.TCPEcho(pod.ns.path, port=8080):
        assert tcp_ok(w.host.path, pod.ip, 8080)
        # without dpSocket the dp learns the pod and reflects its copies: vbr must drop them
        with w.dp() as dp:
            ucmac = w.record(pod)["ucmac"]
            assert probe.ping(w.host.path, pod.ip, count=1, timeout=2) == [0]
            dp.wait(lambda s: ucmac in s["pods"], "the dp learned the pod")
            seen, echos, sent = allowed(dp, ucmac), icmp_in_echos(pod), dp.stats()["totals"]["sent"]
            assert probe.ping(w.host.path, pod.ip, count=5, timeout=2) == [0, 1, 2, 3, 4]
            dp.wait(lambda s: s["pods"][ucmac]["allowed"] >= seen + 10, "a copy of all 10 frames")
            assert allowed(dp, ucmac) == seen + 10
            assert dp.stats()["totals"]["sent"] >= sent + 10
            assert icmp_in_echos(pod) == echos + 5                # no reflected duplicates
            assert tcp_ok(w.host.path, pod.ip, 8080)
        assert tcp_ok(w.host.path, pod.ip, 8080)                  # and without it again
    w.check(pod, mode="tap")
    w.delete(pod, mode="tap")


def test_frames_on_vth_carry_the_ucmac_and_nothing_else_changes(netns, tmp_path, datapath):
    """Both datapaths put the same bytes on vth: the frame as sent, with the pod's MAC
    swapped for its UCMAC (destination towards the pod, source from it)."""
    w = World(netns, tmp_path, datapath=datapath)
    pod = w.add("c1")
    rec = w.record(pod)
    host_veth = pod.result.interfaces[1].name
    mac, ucmac = bytes.fromhex(rec["mac"].replace(":", "")), bytes.fromhex(rec["ucmac"].replace(":", ""))
    peer = bytes.fromhex("020000000042")
    payload = bytes(range(64))
    udp = bytes.fromhex("4500005c000040004011") + b"\0\0" + socket.inet_aton("10.44.0.99") + \
        socket.inet_aton(pod.ip) + bytes.fromhex("30393039004800") + b"\0" + payload
    from plugins.pkg import ns
    with ns.enter(w.enf.path):
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    cap.bind(("vth", 3))
    cap.settimeout(3)
    try:
        for sender_ns, dev, frame, expect in (
                (w.host.path, host_veth, mac + peer + b"\x08\x00" + udp, ucmac + peer + b"\x08\x00" + udp),
                (pod.ns.path, "eth0", peer + mac + b"\x08\x00" + udp, peer + ucmac + b"\x08\x00" + udp)):
            with ns.enter(sender_ns):
                tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            with tx:
                tx.bind((dev, 0))
                tx.send(frame)
            got = cap.recv(2048)
            while got[:14] != expect[:14]:       # skip anything else crossing vth (there should be nothing)
                got = cap.recv(2048)
            assert got == expect
    finally:
        cap.close()
    w.delete(pod)
