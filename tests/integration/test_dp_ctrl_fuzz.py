"""The reference dp's control socket under hostile input and hostile clients (issue 9).

A real pycni-dp reflects a real pod's TCP flow (the vex/vin/vbr triad of
test_dp_traffic.py) while a seeded fuzz sends it a few hundred malformed, huge, nested,
wrong-type and unknown messages, a client sends and never reads, and a long-lived
well-behaved client keeps asking: every request of the fuzz gets an error reply, the
well-behaved client is answered throughout, the pod's flow never stalls, and at the end
the dp is alive with bounded memory. Then one regression test per point of the issue:
the 2 KB datagram of nested brackets, the client that never reads, the registration caps,
and the root-only socket.
"""
import json
import os
import pathlib
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from plugins.dp import ctrl
from plugins.meta.dp_steering import dpctl
from tests.integration.test_dp_traffic import POD_IP, POD_MAC, ping, triad  # noqa: F401
from tests.kit.dp import DP, Client

pytestmark = pytest.mark.root

SEED = 9009
FUZZ_COUNT = 400
UCMAC = "4e:65:75:56:00:58"

FLOW = f"""
import select, socket, sys, time
c = socket.create_connection(("{POD_IP}", 8080), timeout=5)
c.settimeout(10)
rounds, worst, last = 0, 0.0, time.monotonic()
payload = bytes(range(256)) * 4
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0)[0]:
    c.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = c.recv(65536)
        if not chunk:
            print("closed after", rounds, flush=True)
            sys.exit(1)
        got += chunk
    if got != payload:
        print("corrupted after", rounds, flush=True)
        sys.exit(1)
    now = time.monotonic()
    worst, last, rounds = max(worst, now - last), now, rounds + 1
    time.sleep(0.005)
print(rounds, worst, flush=True)
"""


class Flow:
    """A TCP echo loop host -> pod through the dp, until stopped: (round trips, worst gap)."""

    def __init__(self, host):
        self.proc = subprocess.Popen(["ip", "netns", "exec", host.name, sys.executable, "-c",
                                      FLOW], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self):
        out, _ = self.proc.communicate("stop\n", timeout=30)
        assert self.proc.returncode == 0, f"the pod's flow broke: {out}"
        rounds, worst = out.split()
        return int(rounds), float(worst)


@pytest.fixture
def dp(triad, tmp_path):  # noqa: F811
    _, agent, _ = triad
    with DP(agent.path, tmp_path, "--iface", "vth", "--strict") as d:
        assert dpctl.add_port(d.socket, mac=POD_MAC, ucmac=UCMAC, vex="vex", vin="vin",
                              name="pod")
        assert ping(triad[0])
        yield d
        assert d.alive(), f"pycni-dp died:\n{d.output()}"


def fuzz_mac(rng):
    return "02:f0:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(4))


# every message with the JSON type each parameter must have
TYPES = {
    "ctrl_add_mac": {"mac": str, "ucmac": str, "bcmac": str, "oldmac": str, "iface": str,
                     "name": str, "tap": bool, "vex_iface": str, "vin_iface": str},
    "ctrl_del_mac": {"mac": str},
    "ctrl_cfg_mac": {"macs": list, "tap": bool},
    "ctrl_add_srvc_port": {"iface": str, "tap": bool, "jumboframe": bool},
    "ctrl_del_srvc_port": {"iface": str},
    "ctrl_keep_alive": {"seq_num": int},
    "ctrl_stats": {"macs": list},
    "ctrl_cfg_internal_net": {"subnet_addr": list},
    "ctrl_reload_policy": {"policy": dict},
}
VALUES = {str: "02:f0:00:00:00:01", int: 7, bool: True, list: ["02:f0:00:00:00:01"],
          dict: {"rules": []}, float: 1.5}


def wrong_value(rng, want):
    kinds = [t for t in (str, int, bool, list, dict, float) if t is not want
             and not (want is int and t is bool)]
    kind = rng.choice(kinds)
    value = VALUES[kind]
    return {"default": "sometimes"} if kind is dict and want is dict else value


def fuzz_message(rng) -> tuple[str, bytes]:
    """(kind, datagram); every kind but "valid" must get an error reply."""
    kind = rng.choice(["garbage", "truncated", "huge", "nested", "deep", "numbers",
                       "wrongtype", "wrongtype", "unknown", "badutf8", "valid", "valid"])
    if kind == "garbage":
        return kind, rng.randbytes(rng.randrange(0, 300))
    if kind == "truncated":
        text = json.dumps({"ctrl_add_mac": {"mac": fuzz_mac(rng), "name": "x" * 20}})
        return kind, text[:rng.randrange(1, len(text) - 1)].encode()
    if kind == "huge":
        n = rng.randrange(ctrl.MAX_MSG + 1, 3 * ctrl.MAX_MSG)
        return kind, b'{"ctrl_keep_alive": {"seq_num": "' + b"9" * n + b'"}}'
    if kind == "nested":
        n = rng.randrange(1000, 30000)
        return kind, rng.choice([b"[" * n, b'{"a":' * n, b"[" * n + b"]" * n])
    if kind == "deep":
        n = rng.randrange(ctrl.MAX_DEPTH, 900)
        return kind, b'{"ctrl_stats": {"macs": ' + b"[" * n + b"]" * n + b"}}"
    if kind == "numbers":
        return kind, rng.choice([b'{"ctrl_keep_alive": {"seq_num": 1e999}}',
                                 b'{"ctrl_keep_alive": {"seq_num": -Infinity}}',
                                 b'{"ctrl_keep_alive": {"seq_num": NaN}}',
                                 b'{"ctrl_keep_alive": {"seq_num": ' + b"9" * 5000 + b"}}"])
    if kind == "wrongtype":
        name = rng.choice(sorted(TYPES))
        params = {"mac": fuzz_mac(rng)} if name in ("ctrl_add_mac", "ctrl_del_mac") else {}
        key = rng.choice(sorted(TYPES[name]))
        params[key] = wrong_value(rng, TYPES[name][key])
        return kind, json.dumps({name: params}).encode()
    if kind == "unknown":
        return kind, rng.choice([
            json.dumps({"ctrl_" + rng.randbytes(6).hex(): {}}),
            json.dumps({"ctrl_keep_alive": {}, "ctrl_stats": {}}),
            json.dumps(rng.choice([[], "ctrl_keep_alive", 5, None, {}])),
            json.dumps({"ctrl_stats": rng.choice([[1], "x", 3])})]).encode()
    if kind == "badutf8":
        return kind, b'{"ctrl_add_mac": {"mac": "02:f0:00:00:00:01", "name": "\xff\xfe"}}'
    return kind, json.dumps(rng.choice([
        {"ctrl_keep_alive": {"seq_num": rng.randrange(1 << 30)}},
        {"ctrl_stats": {"macs": [fuzz_mac(rng)]}},
        {"ctrl_add_mac": {"mac": fuzz_mac(rng), "name": "fuzz"}},
        {"ctrl_cfg_internal_net": {"subnet_addr": []}},
    ])).encode()


class Steady:
    """A long-lived client that keeps asking (keep-alive every 20 ms) and notes the
    requests it had no answer to within 2 s."""

    def __init__(self, dp, path):
        self.client = Client(dp.socket, path)
        self.asked = self.missed = 0
        self.worst = 0.0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping.wait(0.02):
            self.asked += 1
            start = time.monotonic()
            try:
                reply = self.client.ask({"ctrl_keep_alive": {"seq_num": self.asked}}, 2.0)
                assert reply["ok"] and reply["seq_num"] == self.asked
            except (OSError, AssertionError, ValueError):
                self.missed += 1
                continue
            self.worst = max(self.worst, time.monotonic() - start)

    def stop(self):
        self.stopping.set()
        self.thread.join(10)
        self.client.close()


class NeverReads:
    """Connects, sends ctrl_stats in a loop, never reads a reply."""

    def __init__(self, dp, path):
        self.client = Client(dp.socket, path)
        self.sent = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        self.client.sock.settimeout(1.0)
        while not self.stopping.is_set():
            try:
                self.client.send({"ctrl_stats": {}})
                self.sent += 1
            except OSError:              # the dp's queue is full for a moment
                pass

    def stop(self):
        self.stopping.set()
        self.thread.join(10)
        self.client.close()


def test_fuzz_while_pods_flow_and_a_client_never_reads(triad, dp, tmp_path):  # noqa: F811
    host = triad[0]
    rng = random.Random(SEED)
    for i in range(60):                            # big stats replies for the non-reader
        assert dpctl.add_port(dp.socket, mac=f"02:f1:00:00:00:{i:02x}",
                              ucmac=f"4e:65:75:56:f1:{i:02x}", name="p" * 40)
    rss_before = dp.rss_kib()
    before = dp.stats()["pods"][POD_MAC]["allowed"]
    flow = Flow(host)
    steady = Steady(dp, str(tmp_path / "steady"))
    never = NeverReads(dp, str(tmp_path / "never"))
    kinds = {}
    try:
        with Client(dp.socket, str(tmp_path / "fuzz")) as fuzzer:
            for i in range(FUZZ_COUNT):
                kind, data = fuzz_message(rng)
                kinds[kind] = kinds.get(kind, 0) + 1
                reply = fuzzer.ask(data, timeout=5)
                assert set(reply) >= {"ok", "msg"}, (kind, data[:80], reply)
                if kind != "valid":
                    assert reply["ok"] is False and reply["error"], (kind, data[:80], reply)
                if i % 40 == 0:
                    assert dpctl.ping(dp.socket, timeout=2) is not None, f"ping {i}"
                time.sleep(0.005)        # ~2 s in all: the flow and the others run meanwhile
    finally:
        never.stop()
        steady.stop()
        rounds, worst = flow.stop()
    assert len(kinds) == 10 and sum(kinds.values()) == FUZZ_COUNT
    assert dp.alive(), dp.output()
    assert never.sent > 100 and "does not read its replies" in dp.output()
    assert steady.asked > 20 and steady.missed == 0, (steady.asked, steady.missed)
    assert rounds > 20 and worst < 3.0, (rounds, worst)       # the pod's flow never stalled
    after = dp.stats()["pods"][POD_MAC]
    assert after["allowed"] > before + 2 * rounds and after["tap"] is False
    assert ping(host)
    rss_after = dp.rss_kib()
    assert rss_after < rss_before + 40 * 1024, (rss_before, rss_after)


def test_a_2kb_datagram_of_nested_brackets(triad, dp, tmp_path):  # noqa: F811
    """It raised an uncaught RecursionError: the dp died and inline pods lost traffic."""
    with Client(dp.socket, str(tmp_path / "c")) as c:
        reply = c.ask(b"[" * 2048)
        assert reply["ok"] is False and "nested too deeply" in reply["error"]
        c.send(b"[" * 2048)                      # and again, not waiting, a few times
        c.send(b'{"x":' * 2048)
        assert "nested" in json.loads(c.sock.recv(1 << 16))["error"]
        assert "nested" in json.loads(c.sock.recv(1 << 16))["error"]
    assert dp.alive(), dp.output()
    assert ping(triad[0])
    assert dp.stats()["pods"][POD_MAC]["name"] == "pod"


def test_a_client_that_sends_and_never_reads(dp, tmp_path):
    """It filled the dp's send buffer with unread replies: nobody else got an answer
    until it closed. Now it alone goes unanswered, until it reads or closes."""
    for i in range(60):
        dpctl.add_port(dp.socket, mac=f"02:f1:00:00:00:{i:02x}",
                       ucmac=f"4e:65:75:56:f1:{i:02x}", name="p" * 40)
    bad = Client(dp.socket, str(tmp_path / "bad"))
    try:
        for i in range(3000):
            bad.send({"ctrl_stats": {}})
            if i % 100 == 0:
                assert dpctl.ping(dp.socket, timeout=2) is not None, f"after {i} unread"
        assert dpctl.stats(dp.socket, timeout=2) is not None
    finally:
        bad.close()
    assert "does not read its replies" in dp.output()
    with Client(dp.socket, str(tmp_path / "bad")) as again:     # same address, reads now
        assert again.ask({"ctrl_keep_alive": {"seq_num": 5}})["seq_num"] == 5


def test_registrations_are_capped_and_memory_stays_bounded(dp, tmp_path):
    """Tens of thousands of ctrl_add_mac grew the dp fivefold."""
    rss_before = dp.rss_kib()
    per, total = ctrl.MAX_PODS_PER_CLIENT, ctrl.MAX_PODS

    def mac(i):
        return f"02:f2:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
    i = 0
    for n in range(total // per + 1):
        with Client(dp.socket, str(tmp_path / f"c{n}")) as c:
            for _ in range(per + 10):
                reply = c.ask({"ctrl_add_mac": {"mac": mac(i), "name": f"pod-{i}"}})
                i += 1
                if reply["ok"]:
                    continue
                assert (f"the limit per client is {per}" in reply["error"]
                        or f"the limit is {total}" in reply["error"]), reply
    assert dpctl.ping(dp.socket)["registered"] == total
    rss_full = dp.rss_kib()
    with Client(dp.socket, str(tmp_path / "more")) as c:
        refused = [c.ask({"ctrl_add_mac": {"mac": mac(i + k)}}) for k in range(10000)]
        assert not any(r["ok"] for r in refused)
        assert f"the limit is {total}" in refused[0]["error"]
        reply = c.ask({"ctrl_stats": {"macs": [POD_MAC]}})
        assert reply["ok"] and list(reply["pods"]) == [POD_MAC]    # the pod is still there
        assert c.ask({"ctrl_del_mac": {"mac": mac(0)}})["found"]
        assert c.ask({"ctrl_add_mac": {"mac": mac(i + 20000)}})["ok"]  # a slot freed
    rss_after = dp.rss_kib()
    assert rss_full < rss_before + 30 * 1024, (rss_before, rss_full)
    assert rss_after < rss_full + 4 * 1024, (rss_full, rss_after)
    assert dp.alive()


@pytest.fixture
def open_dir():
    """A directory uid 65534 can enter (pytest's tmp_path is root's alone)."""
    path = tempfile.mkdtemp(prefix="pycni-dp-test-")
    os.chmod(path, 0o755)
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_only_root_may_use_the_socket(netns, open_dir):
    where = open_dir / "nobody"
    where.mkdir()
    os.chmod(where, 0o777)
    dp = DP(netns("dp").path, open_dir).start()
    assert os.stat(dp.socket).st_mode & 0o777 == 0o600

    def as_nobody() -> str:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                  # the child: uid 65534, reports back
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.bind(str(where / "c"))
                s.settimeout(5)
                try:
                    s.connect(dp.socket)
                    s.send(b'{"ctrl_keep_alive": {}}')
                    out = s.recv(65536).decode()
                except OSError as e:
                    out = type(e).__name__
                os.write(w, out.encode())
            finally:
                os._exit(0)
        os.close(w)
        out = os.read(r, 65536).decode()
        os.close(r)
        os.waitpid(pid, 0)
        try:
            os.unlink(where / "c")
        except FileNotFoundError:
            pass
        return out

    try:
        assert as_nobody() == "PermissionError"      # the file mode keeps others out
        os.chmod(dp.socket, 0o666)                    # and if someone loosens it
        reply = json.loads(as_nobody())
        os.chmod(dp.socket, 0o600)
        assert reply["ok"] is False and "only root" in reply["error"]
        assert "uid 65534" in reply["error"]
        assert dpctl.ping(dp.socket) is not None
    finally:
        dp.stop()
