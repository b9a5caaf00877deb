"""dp-steering's journal helpers without root (issue 9): the ADD's identity from /proc (pid and
start time, so a reused pid is not the ADD), the pull snapshot as JSON and back, old records
read as fully steered, and every state writer going through libcni_py.records."""
import ipaddress
import os
import re
import subprocess
import sys

from plugins.meta.dp_steering import state, triad
from plugins.pkg import link
from plugins.pkg import rtnl as nl

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN = os.path.join(HERE, "..", "..", "plugins", "meta", "dp_steering")


def test_an_add_is_alive_only_as_the_same_process():
    me = state.me()
    assert me[0] == os.getpid() and me[1] and state.alive(me)
    assert not state.alive([me[0], str(int(me[1]) + 1)])           # same pid, other start: reused
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    child = [p.pid, state.proc_start(p.pid)]
    p.wait()
    assert not state.alive(child)
    for junk in ([], None, [0, "1"], [-1, "1"], ["1", "1"], [1], [os.getpid(), None], "x"):
        assert not state.alive(junk)


def test_a_zombie_is_not_alive():
    """A killed ADD its runtime has not reaped yet is dead (state Z in /proc/<pid>/stat)."""
    import time
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    child = [p.pid, state.proc_start(p.pid)]
    assert state.alive(child)
    p.kill()
    deadline = time.monotonic() + 10
    while state.alive(child):                       # not reaped: a zombie, still in /proc
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert os.path.exists(f"/proc/{p.pid}/stat")
    p.wait()


def test_a_journal_knows_whether_its_add_died():
    pod = state.Pod("c1", "eth0", "n", "/ns", "/enf", "vex1", "vin1", "vbr", "vth", "ebpf", "inline",
                    phase="adding", adder=state.me(), steps=["pull"])
    assert not pod.dead_journal()
    pod.adder = [pod.adder[0], "0"]
    assert pod.dead_journal()
    pod.phase = "done"
    assert not pod.dead_journal()


def test_an_old_record_is_read_as_every_step_done():
    old = dict(container_id="c1", ifname="eth0", network="n", netns="/ns", enforcer="/enf", vex="vex1",
               vin="vin1", vbr="vbr", vth="vth", datapath="ebpf", mode="inline", installed="tap")
    pod = state.Pod(**old)
    assert pod.phase == "done" and pod.steps == list(state.STEPS)
    assert state.Pod(**dict(old, installed="off")).steps == []


def test_the_snapshot_survives_json():
    snap = triad.Snapshot(
        mac="02:00:00:00:00:01", mtu=1450, txqlen=1000, peer=7,
        addrs=[nl.Addr(3, ipaddress.ip_interface("10.44.0.2/24"), 0x80, ipaddress.ip_address("10.44.0.255")),
               nl.Addr(3, ipaddress.ip_interface("fd00::2/64"), 0, None)],
        routes=[link.LinkRoute(2, 0, 0, 0, 254, 3, 0, 1, 0, {5: b"\x0a\x2c\x00\x01"})],
        neighs=[nl.Neigh(3, 2, ipaddress.ip_address("10.44.0.1"), "02:00:00:00:0d:01", nl.NUD_PERMANENT, 0, 0)])
    import json
    back = triad.snapshot_from(json.loads(json.dumps(triad.snapshot_record(snap))))
    assert back.mac == snap.mac and (back.mtu, back.txqlen, back.peer) == (1450, 1000, 7)
    assert [(a.address, a.flags, a.broadcast) for a in back.addrs] == [(a.address, a.flags, a.broadcast)
                                                                        for a in snap.addrs]
    assert back.routes == snap.routes and back.routes[0].gateway
    assert [(n.dst, n.lladdr) for n in back.neighs] == [(n.dst, n.lladdr) for n in snap.neighs]
    for junk in (None, {}, {"mac": 1}, [], {**triad.snapshot_record(snap), "addrs": [["nope", 0, None]]}):
        assert triad.snapshot_from(junk) is None


def test_every_state_writer_goes_through_records():
    """No plugin module writes a file itself (only /proc/sys knobs); records.write does it."""
    for name in sorted(os.listdir(PLUGIN)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(PLUGIN, name)) as f:
            text = f.read()
        for m in re.finditer(r"open\(([^)]*)\)", text):
            args = m.group(1)
            if re.search(r"""["'][wax]b?\+?["']""", args):
                assert "/proc/sys/" in args, f"{name}: {m.group(0)} writes a file outside libcni_py.records"
        assert "os.replace(" not in text and "os.rename(" not in text and "json.dump(" not in text, name
