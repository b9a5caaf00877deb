"""Real traffic through the reference dp: host <-> pod over NeuVector's vex/vin/vbr triad.

The steering here uses only u32 + mirred (this kernel has no act_pedit), so frames keep
the pod's own MAC on their way through vbr/vth instead of a UCMAC; the dp knows the pod
by that MAC as well (ctrl_add_mac's `mac`). Ping and TCP work, a bulk transfer survives
the trip (GSO super-frames and offloaded checksums go back as they came), a deny rule
blocks one TCP port while ping and other ports still work, and the counters agree.
"""
import subprocess
import sys

import pytest

from plugins.meta.dp_steering import dpctl
from tests.kit.dp import DP

pytestmark = pytest.mark.root

POD_MAC, POD_IP, HOST_IP = "02:00:00:00:00:58", "10.10.10.88", "10.10.10.66"

ECHO_SERVER = """
import socket, sys, threading
def serve(ls):
    while True:
        c, _ = ls.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()
def echo(c):
    with c:
        while data := c.recv(65536):
            c.sendall(data)
for port in (8080, 5201):
    ls = socket.create_server(("0.0.0.0", port))
    threading.Thread(target=serve, args=(ls,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

ECHO_CLIENT = f"""
import os, socket, sys, threading
port, size = int(sys.argv[1]), int(sys.argv[2])
try:
    c = socket.create_connection(("{POD_IP}", port), timeout=float(sys.argv[3]))
except OSError as e:
    print("connect failed:", e); sys.exit(3)
c.settimeout(20)
payload = os.urandom(size)
threading.Thread(target=c.sendall, args=(payload,), daemon=True).start()
got = bytearray()
while len(got) < size:
    chunk = c.recv(1 << 20)
    if not chunk:
        break
    got += chunk
print("echoed" if bytes(got) == payload else "corrupted %d/%d" % (len(got), size))
"""


def u32_mac(mac: str, at: int) -> list[str]:
    """u32 matches for a MAC at offset `at` (-14: destination, -8: source)."""
    h = mac.replace(":", "")
    if at == -14:
        return ["match", "u16", "0x" + h[:4], "0xffff", "at", "-14",
                "match", "u32", "0x" + h[4:], "0xffffffff", "at", "-12"]
    return ["match", "u32", "0x" + h[:8], "0xffffffff", "at", "-8",
            "match", "u16", "0x" + h[8:], "0xffff", "at", "-4"]


def redirect(agent, dev, pref, matches, to):
    agent.run("tc", "filter", "add", "dev", dev, "parent", "ffff:", "pref", str(pref),
              "protocol", "all", "u32", *matches, "action", "mirred", "egress",
              "redirect", "dev", to)


@pytest.fixture
def triad(netns):
    host, agent, pod = netns("host"), netns("agent"), netns("pod")
    host.run("ip", "link", "add", "hv", "type", "veth", "peer", "name", "vex",
             "netns", agent.name)
    pod.run("ip", "link", "add", "eth0", "address", POD_MAC, "type", "veth", "peer",
            "name", "vin", "netns", agent.name)
    agent.run("ip", "link", "add", "vbr", "type", "veth", "peer", "name", "vth")
    host.run("ip", "addr", "add", HOST_IP + "/24", "dev", "hv")
    pod.run("ip", "addr", "add", POD_IP + "/24", "dev", "eth0")
    host.run("ip", "link", "set", "hv", "up")
    pod.run("ip", "link", "set", "eth0", "up")
    for dev in ("vex", "vin", "vbr", "vth"):
        agent.run("ip", "link", "set", dev, "up")
    for dev in ("vex", "vin", "vbr"):
        agent.run("tc", "qdisc", "add", "dev", dev, "ingress")
    anything = ["match", "u8", "0", "0"]
    redirect(agent, "vex", 1, u32_mac(POD_MAC, -14), "vbr")     # to the pod: via the dp
    redirect(agent, "vex", 2, anything, "vin")                  # broadcast etc.: straight
    redirect(agent, "vin", 1, u32_mac(POD_MAC, -8), "vbr")      # from the pod: via the dp
    redirect(agent, "vin", 2, anything, "vex")
    redirect(agent, "vbr", 1, u32_mac(POD_MAC, -14), "vin")     # back from the dp
    redirect(agent, "vbr", 2, u32_mac(POD_MAC, -8), "vex")
    server = subprocess.Popen(["ip", "netns", "exec", pod.name, sys.executable, "-c",
                               ECHO_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert server.stdout.readline().strip() == "ready"
    yield host, agent, pod
    server.kill()
    server.wait()


def echo(host, port, size, connect_timeout=5.0):
    out = host.run(sys.executable, "-c", ECHO_CLIENT, str(port), str(size),
                   str(connect_timeout), check=False, timeout=60)
    return out.stdout.strip()


PINGER = f"""
import os, select, socket, struct, sys, time
count, replies = int(sys.argv[1]), 0
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xffff)
    return ~(t + (t >> 16)) & 0xffff
for seq in range(count):
    body = struct.pack("!BBHHH", 8, 0, 0, os.getpid() & 0xffff, seq) + bytes(56)
    s.sendto(body[:2] + struct.pack("!H", csum(body)) + body[4:], ("{POD_IP}", 0))
    deadline = time.monotonic() + 2
    while (left := deadline - time.monotonic()) > 0 and select.select([s], [], [], left)[0]:
        pkt = s.recv(2048)
        icmp = pkt[(pkt[0] & 15) * 4:]
        if icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (os.getpid() & 0xffff, seq):
            replies += 1
            break
print(replies)
"""


def ping(host, count=3):
    """Like ping(8): true when at least one of `count` echo requests was answered."""
    return int(host.run(sys.executable, "-c", PINGER, str(count)).stdout) > 0


def test_ping_and_tcp_through_the_dp_with_a_deny_rule(triad, tmp_path):
    host, agent, _ = triad
    assert not ping(host, 1)                    # fail closed: nobody reflects on vth
    with DP(agent.path, tmp_path, "--iface", "vth", "--strict") as dp:
        assert dpctl.add_port(dp.socket, mac=POD_MAC, ucmac="4e:65:75:56:00:58",
                              vex="vex", vin="vin", name="pod")
        assert ping(host)
        assert echo(host, 8080, 4 << 20) == "echoed"     # bulk: GSO frames, partial csums
        assert echo(host, 5201, 1000) == "echoed"
        before = dp.stats()["pods"][POD_MAC]
        assert before["denied"] == 0 and before["allowed"] > 6

        dpctl.reload_policy(dp.socket, {"rules": [
            {"action": "deny", "proto": "tcp", "dport": 5201, "direction": "ingress"}]})
        assert echo(host, 5201, 1000, connect_timeout=1.0).startswith("connect failed")
        assert ping(host)
        assert echo(host, 8080, 1000) == "echoed"
        after = dp.stats()["pods"][POD_MAC]
        assert after["denied"] >= 1                 # the SYN (and its retries)
        assert after["allowed"] >= before["allowed"] + 6
        assert dp.stats()["totals"]["errors"] == 0

        # tap mode: the dp only watches, nothing comes back through vbr
        assert dpctl.set_mode(dp.socket, POD_MAC, "tap")
        assert not ping(host, 1)
        assert dp.stats()["pods"][POD_MAC]["allowed"] > after["allowed"]
