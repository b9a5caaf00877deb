"""The reference dp on a bare vbr/vth pair, without the plugin: frames injected into vbr
with a pod's UCMAC come back out of vbr byte for byte when allowed, never when denied or
in tap mode; the counters, the control socket and the policy reload do what they say."""
import json
import os
import signal
import socket
import struct

import pytest

from plugins.dp.packet import PACKET_IGNORE_OUTGOING, SOL_PACKET
from plugins.meta.dp_steering import dpctl
from plugins.pkg import ns
from tests.kit.dp import DP

pytestmark = pytest.mark.root

POD, UC = "02:00:00:00:00:01", "4e:65:75:56:00:01"
MARK_POD, MARK_UC = "02:00:00:00:00:fe", "4e:65:75:56:00:fe"
PEER = bytes.fromhex("020000000099")
MARK_TYPE = 0x88B5                          # IEEE local experimental ethertype


def mac(text):
    return bytes.fromhex(text.replace(":", ""))


def frame(dst, src, proto=6, sport=40000, dport=80, size=0):
    """Ethernet + IPv4 + TCP/UDP/ICMP header, padded to `size` bytes."""
    l4 = struct.pack("!HH", sport, dport) + bytes(16) if proto in (6, 17) else bytes(8)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    f = dst + src + b"\x08\x00" + ip + l4
    return f + bytes(max(0, size - len(f)))


class Wire:
    """The vbr side of the pair: inject frames, read what the dp sends back."""

    def __init__(self, nsobj):
        nsobj.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        nsobj.run("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        nsobj.run("ip", "link", "add", "vbr", "type", "veth", "peer", "name", "vth")
        nsobj.run("ip", "link", "set", "vbr", "up")
        nsobj.run("ip", "link", "set", "vth", "up")
        self.ns = nsobj
        self.seq = 0
        self.sock = None
        self.open()

    def open(self):
        if self.sock:
            self.sock.close()
        with ns.enter(self.ns.path):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        s.bind(("vbr", 3))
        s.settimeout(10)
        self.sock = s

    def exchange(self, frames):
        """Send frames, then a marker frame of the inline marker pod; return every frame
        that came back before the marker (the dp keeps order, so nothing reflected can
        arrive after it)."""
        self.seq += 1
        marker = mac(MARK_UC) + PEER + struct.pack("!HI", MARK_TYPE, self.seq) + bytes(40)
        for f in frames:
            self.sock.send(f)
        self.sock.send(marker)
        back = []
        while True:
            data = self.sock.recv(65536)
            if data == marker:
                return back
            if data[:4] == mac(UC)[:4] or data[6:10] == mac(UC)[:4] or data[:6] == mac(POD):
                back.append(data)


@pytest.fixture
def wire(netns):
    w = Wire(netns("dp"))
    yield w
    w.sock.close()


def start_dp(wire, tmp_path, *args):
    dp = DP(wire.ns.path, tmp_path, *args).start()
    assert dpctl.add_port(dp.socket, mac=MARK_POD, ucmac=MARK_UC, name="marker")
    return dp


def pod(stats, key=POD):
    return stats["pods"][key]


def test_allowed_frames_come_back_unchanged_and_are_counted(wire, tmp_path):
    with start_dp(wire, tmp_path, "--iface", "vth") as dp:
        assert dpctl.add_port(dp.socket, mac=POD, ucmac=UC, vex="vex1", vin="vin1")
        frames = [frame(mac(UC), PEER),                              # towards the pod
                  frame(PEER, mac(UC), sport=80, dport=40000),       # from the pod
                  frame(mac(UC), PEER, proto=17, size=1514),
                  frame(PEER, mac(UC), proto=1, size=99)]
        assert wire.exchange(frames) == frames
        s = dp.stats()
        assert (pod(s)["allowed"], pod(s)["denied"]) == (4, 0)
        assert pod(s)["allowed_bytes"] == sum(len(f) for f in frames)
        # its own transmissions are not read again: exactly one pass per frame
        assert s["totals"]["frames"] == 5 and s["totals"]["sent"] == 5
    assert dp.stop() == 0


def test_policy_file_denies_and_counts_per_pod(wire, tmp_path):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"rules": [
        {"action": "deny", "proto": "tcp", "dport": 5201, "direction": "ingress"},
        {"action": "deny", "pod": "db", "proto": "udp"}]}))
    with start_dp(wire, tmp_path, "--iface", "vth", "--policy", str(policy)) as dp:
        assert dpctl.add_port(dp.socket, mac=POD, ucmac=UC, name="web")
        assert dpctl.add_port(dp.socket, mac="02:00:00:00:00:02", ucmac="4e:65:75:56:00:02",
                              name="db")
        to_iperf = frame(mac(UC), PEER, dport=5201)
        to_http = frame(mac(UC), PEER, dport=80)
        out_iperf = frame(PEER, mac(UC), dport=5201)                # egress: not matched
        udp_iperf = frame(mac(UC), PEER, proto=17, dport=5201)
        db_udp = frame(mac("4e:65:75:56:00:02"), PEER, proto=17, dport=53)
        back = wire.exchange([to_iperf, to_http, out_iperf, udp_iperf, db_udp])
        assert back == [to_http, out_iperf, udp_iperf]
        s = dp.stats()
        assert (pod(s)["allowed"], pod(s)["denied"]) == (3, 1)
        assert pod(s, "02:00:00:00:00:02")["denied"] == 1
        assert pod(s)["denied_bytes"] == len(to_iperf)
        assert s["policy"] == {"default": "allow", "rules": 2, "source": str(policy)}


def test_policy_reload_on_sighup_and_by_message(wire, tmp_path):
    policy = tmp_path / "policy.json"
    policy.write_text("{}")
    deny_http = {"rules": [{"action": "deny", "proto": "tcp", "dport": 80}]}
    with start_dp(wire, tmp_path, "--iface", "vth", "--policy", str(policy)) as dp:
        assert dpctl.add_port(dp.socket, mac=POD, ucmac=UC)
        http = frame(mac(UC), PEER, dport=80)
        assert wire.exchange([http]) == [http]
        policy.write_text(json.dumps(deny_http))
        os.kill(dp.proc.pid, signal.SIGHUP)
        dp.wait(lambda s: s["policy"]["rules"] == 1, "policy reloaded on SIGHUP")
        assert wire.exchange([http]) == []
        # installed over the socket, then back to the file
        assert dpctl.reload_policy(dp.socket, {"default": "allow"})["source"] == "control socket"
        assert wire.exchange([http]) == [http]
        assert dpctl.reload_policy(dp.socket)["rules"] == 1
        assert wire.exchange([http]) == []
        # a broken file is refused and the running policy stays
        policy.write_text("{broken")
        with pytest.raises(dpctl.DpError, match="not valid JSON"):
            dpctl.reload_policy(dp.socket)
        assert wire.exchange([http]) == []
        assert (pod(dp.stats())["allowed"], pod(dp.stats())["denied"]) == (2, 3)


def test_tap_mode_counts_but_never_reflects(wire, tmp_path):
    with start_dp(wire, tmp_path, "--iface", "vth") as dp:
        assert dpctl.add_port(dp.socket, mac=POD, ucmac=UC, mode="tap")
        dpctl.reload_policy(dp.socket, {"rules": [{"action": "deny", "dport": 22,
                                                   "proto": "tcp"}]})
        frames = [frame(mac(UC), PEER), frame(PEER, mac(UC)), frame(mac(UC), PEER, dport=22)]
        assert wire.exchange(frames) == []
        assert (pod(dp.stats())["allowed"], pod(dp.stats())["denied"]) == (2, 1)
        # live switch to inline, and back
        assert dpctl.set_mode(dp.socket, POD, "inline")
        assert wire.exchange(frames) == frames[:2]
        assert dpctl.set_mode(dp.socket, POD, "tap")
        assert wire.exchange(frames) == []
        assert (pod(dp.stats())["allowed"], pod(dp.stats())["denied"]) == (6, 3)


def test_tap_service_port_reflects_nothing(wire, tmp_path):
    with DP(wire.ns.path, tmp_path) as dp:                   # no --iface: the message opens it
        assert dpctl.ping(dp.socket)["ports"] == []
        assert dpctl._session(dp.socket, 5, [("ctrl_add_srvc_port",
                                              {"iface": "vth", "tap": True})])
        assert dpctl.ping(dp.socket)["ports"] == ["vth"]
        assert dpctl._session(dp.socket, 5, [("ctrl_add_mac", {"mac": POD, "ucmac": UC,
                                                                "tap": False})])
        for _ in range(3):
            wire.sock.send(frame(mac(UC), PEER))
        dp.wait(lambda s: s["totals"]["frames"] == 3, "three frames read")
        s = dp.stats()
        assert pod(s)["allowed"] == 3 and s["totals"]["sent"] == 0


def test_global_tap_flag_reflects_nothing(wire, tmp_path):
    with DP(wire.ns.path, tmp_path, "--iface", "vth", "--tap") as dp:
        assert dpctl.add_port(dp.socket, mac=POD, ucmac=UC, mode="inline")
        for _ in range(2):
            wire.sock.send(frame(mac(UC), PEER))
        s = dp.wait(lambda s: s["totals"]["frames"] == 2, "two frames read")
        assert s["tap"] is True and pod(s)["allowed"] == 2 and s["totals"]["sent"] == 0


def test_unregistered_ucmac_is_learned_unless_strict(wire, tmp_path):
    stranger = frame(mac("4e:65:75:56:00:07"), PEER)
    not_steered = frame(PEER, bytes.fromhex("020000000077"))
    with start_dp(wire, tmp_path, "--iface", "vth") as dp:
        assert wire.exchange([stranger, not_steered]) == [stranger]
        s = dp.stats()
        learned = pod(s, "4e:65:75:56:00:07")
        assert learned["learned"] and learned["allowed"] == 1
        assert s["totals"]["unknown"] == 1
        # registering the pod behind that UCMAC takes the learned counters over
        assert dpctl.add_port(dp.socket, mac=POD, ucmac="4e:65:75:56:00:07")
        s = dp.stats()
        assert "4e:65:75:56:00:07" not in s["pods"] and pod(s)["allowed"] == 1
    dp = start_dp(wire, tmp_path, "--iface", "vth", "--strict")
    with dp:
        assert wire.exchange([stranger]) == []
        assert dp.stats()["totals"]["unknown"] == 1
        assert dpctl.add_port(dp.socket, mac=POD, ucmac="4e:65:75:56:00:07")
        assert wire.exchange([stranger]) == [stranger]
        assert dpctl.del_port(dp.socket, POD)["allowed"] == 1
        assert wire.exchange([stranger]) == []


def test_port_follows_the_interface_being_recreated(wire, tmp_path):
    with start_dp(wire, tmp_path, "--iface", "vth") as dp:
        assert dpctl.add_port(dp.socket, mac=POD, ucmac=UC)
        first = dp.stats()["ports"][0]["ifindex"]
        wire.ns.run("ip", "link", "del", "vbr")
        dp.wait(lambda s: s["ports"] == [], "port closed with the interface")
        wire.ns.run("ip", "link", "add", "vbr", "type", "veth", "peer", "name", "vth")
        wire.ns.run("ip", "link", "set", "vbr", "up")
        wire.ns.run("ip", "link", "set", "vth", "up")
        s = dp.wait(lambda s: len(s["ports"]) == 1, "port reopened")
        assert s["ports"][0]["ifindex"] != first
        wire.open()
        f = frame(mac(UC), PEER)
        assert wire.exchange([f]) == [f]
        assert dpctl.del_srvc_port(dp.socket, "vth")
        assert dpctl.ping(dp.socket)["ports"] == []


def test_bad_messages_never_stop_the_dp(wire, tmp_path):
    with start_dp(wire, tmp_path, "--iface", "vth") as dp:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        client.bind(str(tmp_path / "client.sock"))
        client.settimeout(5)
        for junk in (b"", b"\x00" * 100, b"{", b"[1,2]", b'{"ctrl_nope": 1}',
                     b'{"ctrl_add_mac": {"mac": null}}', b"x" * 70000):
            try:
                client.sendto(junk, dp.socket)
            except OSError:              # too long for one datagram: refused by the kernel
                continue
            reply = json.loads(client.recv(65536))
            assert reply["ok"] is False and reply["error"]
        client.close()
        anonymous = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)   # as NeuVector's agent talks to its dp
        anonymous.sendto(b'{"ctrl_keep_alive": {}}', dp.socket)
        anonymous.close()
        assert dpctl.ping(dp.socket)["ports"] == ["vth"]
        assert dpctl.add_port(dp.socket, mac=POD, ucmac=UC)
        f = frame(mac(UC), PEER)
        assert wire.exchange([f]) == [f]
        assert dp.proc.poll() is None


def test_bad_start_exits_with_a_message(tmp_path, netns):
    n = netns("dp")
    policy = tmp_path / "p.json"
    policy.write_text('{"rules": [{"action": "drop"}]}')
    dp = DP(n.path, tmp_path, "--policy", str(policy))
    with pytest.raises(RuntimeError, match=r"rules\[0\]\.action"):
        dp.start()
    assert dp.proc.returncode == 1
    dp = DP(str(tmp_path / "no-such-netns"), tmp_path)
    with pytest.raises(RuntimeError, match="No such file"):
        dp.start()


def test_pod_to_pod_counts_once_at_each_end(wire, tmp_path):
    """A's egress leaves A's vin with source UCMAC A and destination B's real MAC; it
    comes back to the dp as B's ingress with destination UCMAC B (after the host side)."""
    with start_dp(wire, tmp_path, "--iface", "vth") as dp:
        b_mac, b_uc = "02:00:00:00:00:02", "4e:65:75:56:00:02"
        assert dpctl.add_port(dp.socket, mac=POD, ucmac=UC, name="a")
        assert dpctl.add_port(dp.socket, mac=b_mac, ucmac=b_uc, name="b")
        dpctl.reload_policy(dp.socket, {"rules": [
            {"action": "deny", "pod": "a", "direction": "egress", "proto": "tcp", "dport": 22}]})
        leaving_a = frame(mac(b_mac), mac(UC), dport=80)
        entering_b = frame(mac(b_uc), mac(POD), dport=80)
        ssh_from_a = frame(mac(b_mac), mac(UC), dport=22)
        assert wire.exchange([leaving_a, entering_b, ssh_from_a]) == [leaving_a, entering_b]
        s = dp.stats()
        assert (pod(s)["allowed"], pod(s)["denied"]) == (1, 1)
        assert (pod(s, b_mac)["allowed"], pod(s, b_mac)["denied"]) == (1, 0)


def test_stats_file_and_clean_exit(wire, tmp_path):
    stats = tmp_path / "stats.json"
    dp = start_dp(wire, tmp_path, "--iface", "vth", "--stats", str(stats),
                  "--stats-interval", "0.05")
    with dp:
        assert dpctl.add_port(dp.socket, mac=POD, ucmac=UC, name="web")
        f = frame(mac(UC), PEER)
        assert wire.exchange([f, f]) == [f, f]

        def written():
            try:
                return json.loads(stats.read_text())
            except (OSError, ValueError):
                return None
        dp.wait(lambda _: (written() or {}).get("pods", {}).get(POD, {}).get("allowed") == 2,
                "stats file shows two frames")
        assert written()["pods"][POD]["name"] == "web"
        stats.unlink()
        os.kill(dp.proc.pid, signal.SIGUSR1)             # written now, changed or not
        dp.wait(lambda _: written() is not None, "stats file rewritten on SIGUSR1")
    assert dp.proc.returncode == 0
    assert not os.path.exists(dp.socket)                  # socket removed on exit
    assert json.loads(stats.read_text())["totals"]["sent"] == 3   # final write (+marker)
