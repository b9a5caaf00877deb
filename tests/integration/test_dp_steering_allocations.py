"""dp-steering keeps each pair user's UCMAC and vbr priorities in the shared-pair record
(`allocations`): an ADD reads that one file, never the other pods' records, so its cost does not
grow with the pods on the node; an old record (no allocations, or a user without a valid entry) is
migrated by reading just those users' records once; two pods of a pair never share a UCMAC or a
priority, across ADD, DEL, GC and kills between the pair record's write and the journal's.

The plugin runs exec'd as a runtime runs it (in-process, no daemon: strace counts its opens and the
kills must land on the process doing the work). Pods whose interface is made here with a chosen
host-side ifindex (70000 = 4464 + 65536, ...) all want the same vin priority (the low 16 bits of vin's
ifindex, which is the host side's), so every allocation after the first must step aside. The UCMAC
comes from vex's ifindex, which the pull takes fresh from 1000000 up (never two alike on a pair
until 65536 pods): an entry in the pair record that claims the next one stands for the allocation
a killed ADD left there.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import time

import pytest

from plugins.meta.dp_steering import state
from plugins.pkg import link, tc
from plugins.pkg import rtnl as nl
from tests.kit import dp_steering
from tests.kit.crash import FileWatch
from tests.kit.dp_steering import Pod

pytestmark = pytest.mark.root

BASE = 4464                      # every made pod's host side is ifindex BASE + 65536 * k: one wanted priority


def World(netns, tmp_path, **kw):
    return dp_steering.World(netns, tmp_path, daemon=False, **{"mode": "tap", "failOpen": True,
                                                               "dpWaitMs": 20, **kw})


def made_pod(w, netns, cid: str, k: int) -> tuple[Pod, dict]:
    """A pod whose eth0 carries 10.44.1.<k+2>/24, its veth peer in the host netns with ifindex
    BASE + 65536 k (vin takes the peer's ifindex, so every vin wants priority BASE): (the kit's Pod,
    its prevResult)."""
    pod = Pod(cid, netns("pod"))
    index = BASE + 65536 * k
    w.host.run("ip", "link", "add", f"h{cid}"[:15], "index", str(index), "type", "veth", "peer", "name", "eth0",
               "netns", pod.ns.name)
    pod.ns.run("ip", "addr", "add", f"10.44.1.{k + 2}/24", "dev", "eth0")
    pod.ns.run("ip", "link", "set", "eth0", "up")
    mac = json.loads(pod.ns.run("ip", "-j", "link", "show", "eth0").stdout)[0]["address"]
    prev = {"cniVersion": w.version, "interfaces": [{"name": "eth0", "mac": mac, "sandbox": pod.ns.path}],
            "ips": [{"address": f"10.44.1.{k + 2}/24", "interface": 0}]}
    return pod, prev


def ok(w, verb: str, pod: Pod, prev: dict, **conf) -> str:
    status, out, err = w.plugin(verb, pod, prev, **conf)
    assert status == 0, (verb, pod.cid, out, err)
    return err


def opened(w, verb: str, pod: Pod, prev: dict, **conf) -> list[str]:
    """Run the verb under strace: the files and directories under stateDir/pods it opened (paths
    relative to stateDir/pods), its own container's directory left out."""
    argv, env, stdin = w._exec(verb, pod, prev, None, None, None, conf)
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as trace:
        p = subprocess.run(["strace", "-f", "-qq", "-e", "trace=open,openat", "-o", trace.name, *argv],
                           input=stdin, env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, (verb, pod.cid, p.stdout, p.stderr[-2000:])
        lines = trace.read().splitlines()
    root = os.path.join(w.state_dir, "pods") + "/"
    paths = [m.group(1) for m in (re.search(r'open(?:at)?\([^"]*"([^"]+)"', ln) for ln in lines) if m]
    return [p[len(root):] for p in paths if p.startswith(root) and not p[len(root):].startswith(pod.cid + "/")
            and p[len(root):] != pod.cid]


def pair_record(w, vbr: str = "vbr") -> dict:
    path = state._shared_path(w.state_dir, w.enf.path, vbr)
    with open(path) as f:
        return json.load(f)


def write_pair_record(w, rec: dict, vbr: str = "vbr") -> None:
    with open(state._shared_path(w.state_dir, w.enf.path, vbr), "w") as f:
        json.dump(rec, f)


def entry_of(rec: dict) -> dict:
    """A pod record's allocations entry, as the pair record should keep it."""
    return {"ucmac": int(rec["ucmac"][12:].replace(":", ""), 16), "vex_pref": rec["vex_pref"],
            "vin_pref": rec["vin_pref"]}


def assert_no_collision(entries: list[dict], why: str = "") -> None:
    macs = [e["ucmac"] for e in entries]
    prefs = [e["vex_pref"] for e in entries] + [e["vin_pref"] for e in entries]
    assert len(set(macs)) == len(macs), (why, entries)
    assert len(set(prefs)) == len(prefs), (why, entries)


def vbr_prefs(w) -> list[int]:
    text = w.enf.run("tc", "filter", "show", "dev", "vbr", "ingress").stdout
    return sorted({int(m) for m in re.findall(r"pref (\d+)", text)})


def next_vex_index(w) -> int:
    """The ifindex the next pull gives vex: the lowest free one from 1000000 up."""
    have = {int(x) for x in re.findall(r"^(\d+):", w.enf.run("ip", "-o", "link", "show").stdout, re.M)}
    return next(i for i in range(1000000, 1100000) if i not in have)


def kill_at_tmp(w, pod: Pod, prev: dict, directory: str, nth: int, **conf) -> None:
    """Start ADD and SIGKILL it inside its nth record write (temp file open) in `directory`."""
    watch = FileWatch(directory, ".tmp")
    try:
        p = w.spawn("ADD", pod, prev, **conf)
        for i in range(nth):
            assert watch.wait(p, 60), f"ADD ended before record write {i + 1} in {directory}: {p.communicate()}"
            if i < nth - 1:
                watch._allow(watch.pending.pop())
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        watch.close()
    p.communicate(timeout=60)


@pytest.mark.parametrize("n", [1, 12])
def test_an_add_reads_no_other_pods_record(netns, tmp_path, n):
    """With n pods on the pair an ADD opens nothing under stateDir/pods but its own journal and
    record (the old code read every record: n of them); a DEL opens at most one other (the first
    staying user, state.staying_users)."""
    w = World(netns, tmp_path)
    pods = [made_pod(w, netns, f"p{i:02d}", i) for i in range(n + 1)]
    for pod, prev in pods[:n]:
        ok(w, "ADD", pod, prev)
    probe, prev = pods[n]
    assert opened(w, "ADD", probe, prev) == []
    rec = pair_record(w)
    assert sorted(rec["users"]) == sorted(f"{p.cid}/eth0" for p, _ in pods)
    assert rec["allocations"] == {f"{p.cid}/eth0": entry_of(w.record(p)) for p, _ in pods}
    assert_no_collision(list(rec["allocations"].values()))
    assert len(opened(w, "DEL", probe, prev)) <= 1
    assert f"{probe.cid}/eth0" not in pair_record(w)["allocations"]
    for pod, prev in pods[:n]:
        ok(w, "DEL", pod, prev)
    assert w.enforcer_links() == ["lo"] and w.state_files() == []


def test_an_old_pair_record_is_migrated_from_the_pods_records(netns, tmp_path):
    """A pair record from before allocations (users only, and an older release may have written it
    anew after a loss: here it names m0 alone while m1 and m2 are on the pair too): the next ADD
    reads the stateDir's pod records once, takes none of m1's or m2's UCMAC or priorities, and
    writes every user's entry; the ADD after it reads none but what a bad entry needs. A corrupt or
    unknown entry is read off its pod's record, and a user whose record is gone is dropped."""
    w = World(netns, tmp_path)
    pods = [made_pod(w, netns, f"m{i}", i) for i in range(6)]
    for pod, prev in pods[:3]:
        ok(w, "ADD", pod, prev)
    other, other_prev = pods[3]
    ok(w, "ADD", other, other_prev, vbrName="vbr2", vthName="vth2")        # another pair's pod
    rec = pair_record(w)
    write_pair_record(w, {"enforcer": rec["enforcer"], "vbr": "vbr", "users": ["m0/eth0"]})   # the old format

    got = opened(w, "ADD", *pods[4])
    records = sorted(g for g in got if g.endswith(".json"))
    assert records == ["m0/eth0.json", "m1/eth0.json", "m2/eth0.json", "m3/eth0.json"], got   # each once
    rec = pair_record(w)
    users = [p for p, _ in pods[:3]] + [pods[4][0]]
    assert rec["allocations"] == {f"{p.cid}/eth0": entry_of(w.record(p)) for p in users}
    assert_no_collision(list(rec["allocations"].values()))
    assert w.record(pods[4][0])["vin_index"] & 0xFFFF == BASE == w.record(pods[0][0])["vin_pref"]   # wanted m0's

    allocations = dict(rec["allocations"])
    allocations["m1/eth0"] = {"ucmac": "4e:65:75:56:11:70", "vex_pref": 1, "vin_pref": 2}   # corrupt
    allocations["m2/eth0"] = [4464, 1, 2]                                                   # unknown
    write_pair_record(w, dict(rec, users=rec["users"] + ["ghost/eth0"], allocations=allocations))
    got = opened(w, "ADD", *pods[5])
    assert sorted(got) == ["ghost/eth0.json", "m1/eth0.json", "m2/eth0.json"], got
    rec = pair_record(w)
    assert "ghost/eth0" not in rec["users"]
    users.append(pods[5][0])
    assert rec["allocations"] == {f"{p.cid}/eth0": entry_of(w.record(p)) for p in users}
    assert_no_collision(list(rec["allocations"].values()))
    assert vbr_prefs(w) == sorted(e[k] for e in rec["allocations"].values() for k in ("vex_pref", "vin_pref"))

    for pod, prev in pods[:3] + pods[4:]:
        ok(w, "DEL", pod, prev)
    ok(w, "DEL", other, other_prev, vbrName="vbr2", vthName="vth2")
    assert w.enforcer_links() == ["lo"] and w.state_files() == []


def test_gc_migrates_an_old_pair_record(netns, tmp_path):
    w = World(netns, tmp_path)
    pods = [made_pod(w, netns, f"g{i}", i) for i in range(2)]
    for pod, prev in pods:
        ok(w, "ADD", pod, prev)
    rec = pair_record(w)
    write_pair_record(w, {"enforcer": rec["enforcer"], "vbr": "vbr", "users": rec["users"]})
    status, out, err = w.gc([p for p, _ in pods])
    assert status == 0, (out, err)
    assert pair_record(w)["allocations"] == rec["allocations"]
    assert "forgets" not in err                       # nobody was dropped: only the entries learned
    for pod, prev in pods:
        ok(w, "DEL", pod, prev)
    assert w.enforcer_links() == ["lo"] and w.state_files() == []


def test_no_ucmac_or_priority_collision_across_add_del_gc_and_kills(netns, tmp_path):
    """Every pod wants the same UCMAC and priorities. Killed ADDs: one inside the pair record's write
    (its journal names the pair and what it chose, the record does not name it: it made nothing), one
    right after it (inside its journal's next write, in tap without dpSocket the "rules" one after the
    settle: the record and the journal hold its allocation), one waiting for a dp (inline, its journal
    names its UCMAC). The allocations of the last two block
    later ADDs until GC undoes those ADDs; a DEL frees what its pod had. At every point the pair's
    users never share a UCMAC or a priority, and vbr's filters are the live pods' priorities."""
    w = World(netns, tmp_path)
    pods = [made_pod(w, netns, f"c{i}", i) for i in range(9)]
    shared = os.path.join(w.state_dir, "shared")

    def check(why: str, live: list[Pod]) -> dict:
        rec = pair_record(w)
        assert_no_collision(list(rec["allocations"].values()), why)
        for p in live:
            assert rec["allocations"][f"{p.cid}/eth0"] == entry_of(w.record(p)), (why, p.cid)
        assert vbr_prefs(w) == sorted(e[k] for p in live for e in [entry_of(w.record(p))]
                                      for k in ("vex_pref", "vin_pref")), why
        return rec

    (a, pa), (b, pb) = pods[0], pods[1]
    ok(w, "ADD", a, pa)
    ok(w, "ADD", b, pb)
    assert w.record(a)["vin_index"] == BASE == w.record(a)["vin_pref"]
    assert w.record(b)["vin_index"] == BASE + 65536 and w.record(b)["vin_pref"] != BASE
    check("two pods", [a, b])

    c, pc = pods[2]                                 # killed inside the pair record's write
    kill_at_tmp(w, c, pc, shared, 1)
    j = w.record(c)
    assert j["phase"] == "adding" and j["steps"] == ["pull", "pair"] and j["ucmac"], j   # named, made nothing
    assert f"{c.cid}/eth0" not in pair_record(w)["users"]

    d, pd = pods[3]                                 # killed right after it: the journal's next write (in
    kill_at_tmp(w, d, pd, os.path.join(w.state_dir, "pods", d.cid), 3)   # tap without dpSocket, "rules")
    j = w.record(d)
    assert j["phase"] == "adding" and j["steps"] == ["pull", "pair"], j
    taken_d = pair_record(w)["allocations"][f"{d.cid}/eth0"]
    assert taken_d["ucmac"] == j["vex_index"] & 0xFFFF      # what d took: in the pair record and its journal
    assert entry_of(j) == taken_d
    check("a kill after the pair record", [a, b])

    e, pe = pods[4]                                 # killed while waiting for a dp, its UCMAC journaled
    p = w.spawn("ADD", e, pe, mode="inline", failOpen=False, dpWaitMs=10000)
    watch = os.path.join(w.state_dir, "pods", e.cid, "eth0.json")
    deadline = time.monotonic() + 60
    while not (os.path.exists(watch) and w.record(e).get("steps") == ["pull", "pair", "dp"]):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    taken_e = pair_record(w)["allocations"][f"{e.cid}/eth0"]
    assert taken_e == entry_of(w.record(e))

    # f's vex will have the lowest free ifindex from 1000000 up: a user that holds its UCMAC and vex
    # priority in the pair record alone (a ghost: no pod record says so)
    want = next_vex_index(w) & 0xFFFF
    ghost = {"ucmac": want, "vex_pref": want, "vin_pref": want + 1}
    rec = pair_record(w)
    write_pair_record(w, dict(rec, users=rec["users"] + ["ghost/eth0"],
                              allocations={**rec["allocations"], "ghost/eth0": ghost}))
    f, pf = pods[5]
    ok(w, "ADD", f, pf)
    rec = check("after the kills", [a, b, f])
    assert w.record(f)["vex_index"] & 0xFFFF == want and entry_of(w.record(f))["ucmac"] != want
    assert entry_of(w.record(f))["vex_pref"] != want
    assert set(rec["allocations"]) == {f"{p.cid}/eth0" for p in (a, b, d, e, f)} | {"ghost/eth0"}

    ok(w, "DEL", b, pb)                             # b's allocation is free again
    assert f"{b.cid}/eth0" not in pair_record(w)["allocations"]
    g, pg = pods[6]
    ok(w, "ADD", g, pg)
    check("a DEL, an ADD", [a, f, g])

    status, out, err = w.gc([a, f, g])              # the died ADDs undone, their allocations freed
    assert status == 0, (out, err)
    rec = check("after GC", [a, f, g])
    assert set(rec["allocations"]) == {f"{p.cid}/eth0" for p in (a, f, g)}
    for pod in (c, d, e):
        assert not os.path.exists(os.path.join(w.state_dir, "pods", pod.cid, "eth0.json")), pod.cid
    h, ph = pods[7]
    ok(w, "ADD", h, ph)
    i, pi = pods[8]
    ok(w, "ADD", i, pi)
    check("after GC, two ADDs", [a, f, g, h, i])

    for pod, prev in ((a, pa), (f, pf), (g, pg), (h, ph), (i, pi)):
        ok(w, "DEL", pod, prev)
    assert w.enforcer_links() == ["lo"] and w.state_files() == []


def test_a_filter_not_ours_on_vbr_keeps_its_priority(netns, tmp_path):
    """A filter someone else put on vbr at the priority the next pod would take (the one after the
    first pod's: every vin wants BASE) is stepped around: the kernel is asked for that priority."""
    w = World(netns, tmp_path)
    (a, pa), (b, pb) = made_pod(w, netns, "f0", 0), made_pod(w, netns, "f1", 1)
    ok(w, "ADD", a, pa)
    assert w.record(a)["vin_pref"] == BASE
    w.enf.run("tc", "filter", "add", "dev", "vbr", "ingress", "pref", str(BASE + 1), "protocol", "all",
              "u32", "match", "u32", "0", "0", "classid", "1:1")
    ok(w, "ADD", b, pb)
    assert w.record(b)["vin_pref"] == BASE + 2, w.record(b)
    assert_no_collision([entry_of(w.record(a)), entry_of(w.record(b))])
    assert BASE + 1 in vbr_prefs(w)
    with link.open_rtnl(w.enf.path) as rt:          # tc.filters(pref=): that priority's filters alone
        index = link.index_of(rt, "vbr")
        assert {f.pref for f in tc.filters(rt, index, pref=BASE + 1)} == {BASE + 1}
        assert {f.pref for f in tc.filters(rt, index, pref=BASE + 2)} == {BASE + 2}
        assert tc.filters(rt, index, pref=BASE + 3) == [] and not tc.pref_taken(rt, index, BASE + 3)
        assert tc.pref_taken(rt, index, BASE + 1) and not tc.pref_taken(rt, 99999, BASE + 1)
    for pod, prev in ((a, pa), (b, pb)):
        ok(w, "DEL", pod, prev)
    assert w.enforcer_links() == ["lo"] and w.state_files() == []


def test_a_del_without_a_readable_record_drops_the_users_entry(netns, tmp_path):
    """DEL of a pod whose record is corrupt (it sweeps vex/vin by name) drops the pod from the
    pair's users and its allocations entry with it; the other user's entry stays."""
    w = World(netns, tmp_path)
    (a, pa), (b, pb) = made_pod(w, netns, "s0", 0), made_pod(w, netns, "s1", 1)
    ok(w, "ADD", a, pa)
    ok(w, "ADD", b, pb)
    kept = entry_of(w.record(a))
    with open(os.path.join(w.state_dir, "pods", b.cid, "eth0.json"), "w") as f:
        f.write("{")
    ok(w, "DEL", b, pb)
    rec = pair_record(w)
    assert rec["users"] == [f"{a.cid}/eth0"] and rec["allocations"] == {f"{a.cid}/eth0": kept}, rec
    ok(w, "DEL", a, pa)
    assert w.enforcer_links() == ["lo"] and w.state_files() == []


def test_a_lost_pair_record_is_rebuilt_from_the_pods_records(netns, tmp_path):
    """The pair's record gone (removed by hand, or as 126's fix says for a corrupt one) while the
    pair is there: GC rebuilds a corrupt or missing one from the pods' records; an ADD rebuilds it
    (reading the pods' records once) and does not hand out a live pod's UCMAC; a DEL keeps the pair
    another pod's record names (and rebuilds the record), the last one takes it."""
    w = World(netns, tmp_path)
    (a, pa), (b, pb), (c, pc) = [made_pod(w, netns, f"r{i}", i) for i in range(3)]
    path = state._shared_path(w.state_dir, w.enf.path, "vbr")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    want = next_vex_index(w) & 0xFFFF               # a's vex; a ghost holds its UCMAC: a steps to want + 1
    write_pair_record(w, {"enforcer": w.enf.path, "vbr": "vbr", "users": ["ghost/eth0"],
                          "allocations": {"ghost/eth0": {"ucmac": want, "vex_pref": 9, "vin_pref": 10}}})
    ok(w, "ADD", a, pa)
    ea = entry_of(w.record(a))
    assert ea["ucmac"] == want + 1, ea
    key_a = f"{a.cid}/eth0"

    with open(path, "w") as f:                      # corrupt: GC rebuilds it
        f.write("{")
    status, out, err = w.gc([a])
    assert status == 0, (out, err)
    assert pair_record(w)["users"] == [key_a] and pair_record(w)["allocations"] == {key_a: ea}

    os.remove(path)                                 # gone: the next ADD rebuilds it
    assert next_vex_index(w) & 0xFFFF == ea["ucmac"]    # b wants a's UCMAC
    ok(w, "ADD", b, pb)
    eb = entry_of(w.record(b))
    assert_no_collision([ea, eb])
    rec = pair_record(w)
    assert rec["users"] == sorted([key_a, f"{b.cid}/eth0"])
    assert rec["allocations"] == {key_a: ea, f"{b.cid}/eth0": eb}
    assert vbr_prefs(w) == sorted([ea["vex_pref"], ea["vin_pref"], eb["vex_pref"], eb["vin_pref"]])

    os.remove(path)                                 # gone again: a DEL keeps the pair a's record names
    ok(w, "DEL", b, pb)
    assert "vbr" in w.enforcer_links() and "vth" in w.enforcer_links()
    assert pair_record(w) == {"enforcer": w.enf.path, "vbr": "vbr", "users": [key_a], "allocations": {key_a: ea}}
    assert vbr_prefs(w) == sorted([ea["vex_pref"], ea["vin_pref"]])

    os.remove(path)                                 # and GC puts a missing one back
    status, out, err = w.gc([a])
    assert status == 0, (out, err)
    assert pair_record(w)["allocations"] == {key_a: ea}

    ok(w, "ADD", b, pb)                             # a record that lost a (an older release's ADD wrote it
    write_pair_record(w, {"enforcer": w.enf.path, "vbr": "vbr", "users": [f"{b.cid}/eth0"]})
    ok(w, "DEL", b, pb)                             # anew): b's DEL, its last user by it, keeps the pair
    assert "vbr" in w.enforcer_links()
    assert pair_record(w) == {"enforcer": w.enf.path, "vbr": "vbr", "users": [key_a], "allocations": {key_a: ea}}
    ok(w, "DEL", a, pa)
    assert w.enforcer_links() == ["lo"] and w.state_files() == []
    assert opened(w, "ADD", c, pc) == []            # a new pair, no record: no pod record read
    ok(w, "DEL", c, pc)
    assert w.enforcer_links() == ["lo"] and w.state_files() == []


def test_a_tap_add_names_its_allocation_in_its_journal_before_the_lock_goes(netns, tmp_path):
    """A tap ADD without dpSocket writes no "dp" step: its journal's "pair" write names its UCMAC
    and priorities, under the lock that took them, so a pair record whose entries are dropped (an
    older release writing users only, during a rolling upgrade) loses nothing: the ADD after it
    reads that journal and steps aside. Here the ADD dies at its next write (the "rules" one,
    after the unlocked settle)."""
    w = World(netns, tmp_path)
    (a, pa), (d, pd), (f, pf) = [made_pod(w, netns, f"j{i}", i) for i in range(3)]
    ok(w, "ADD", a, pa)
    want = next_vex_index(w) & 0xFFFF               # d's vex; a ghost holds its UCMAC: d steps to want + 1
    rec = pair_record(w)
    write_pair_record(w, dict(rec, users=rec["users"] + ["ghost/eth0"],
                              allocations={**rec["allocations"],
                                           "ghost/eth0": {"ucmac": want, "vex_pref": 9, "vin_pref": 10}}))
    kill_at_tmp(w, d, pd, os.path.join(w.state_dir, "pods", d.cid), 3)
    j = w.record(d)
    assert j["phase"] == "adding" and j["steps"] == ["pull", "pair"], j
    taken_d = pair_record(w)["allocations"][f"{d.cid}/eth0"]
    assert taken_d["ucmac"] == want + 1
    assert entry_of(j) == taken_d                   # the journal names it too

    rec = pair_record(w)                            # an older release's write: users, no allocations
    write_pair_record(w, {"enforcer": rec["enforcer"], "vbr": "vbr", "users": rec["users"]})
    assert next_vex_index(w) & 0xFFFF == taken_d["ucmac"]   # f wants d's UCMAC
    ok(w, "ADD", f, pf)
    ef = entry_of(w.record(f))
    assert_no_collision([entry_of(w.record(a)), taken_d, ef])
    assert pair_record(w)["allocations"][f"{d.cid}/eth0"] == taken_d

    status, out, err = w.gc([a, f])                 # d's ADD undone
    assert status == 0, (out, err)
    for pod, prev in ((a, pa), (f, pf)):
        ok(w, "DEL", pod, prev)
    assert w.enforcer_links() == ["lo"] and w.state_files() == []


class _Refusing:
    """An Rtnl whose dump the kernel refuses with `err` (no request of ours gets EINVAL from a real
    kernel: it answers a dump of a missing link or qdisc with nothing)."""

    def __init__(self, err: int):
        self.err = err

    def dump(self, *a):
        raise nl.NetlinkError(self.err, os.strerror(self.err))


def test_pref_taken_raises_on_a_refusal_but_a_missing_link():
    import errno
    with pytest.raises(nl.NetlinkError):
        tc.pref_taken(_Refusing(errno.EINVAL), 7, 100)     # a malformed request is no free priority
    with pytest.raises(nl.NetlinkError):
        tc.pref_taken(_Refusing(errno.EPERM), 7, 100)
    assert not tc.pref_taken(_Refusing(errno.ENODEV), 7, 100)


def test_set_users_keeps_the_entries_of_staying_users_on_a_read_error(tmp_path):
    """set_users without allocations, its record unreadable: the staying users' entries come from
    their own records, not dropped."""
    d = str(tmp_path)
    pod = state.Pod("k0", "eth0", "net", "/x", "/e", "vexk0", "vink0", "vbr", "vth", "tc-pedit", "tap",
                    ucmac="4e:65:75:56:12:34", vex_pref=300, vin_pref=301, steps=["pull", "pair", "dp", "rules"])
    state.save_pod(d, pod)
    os.makedirs(os.path.join(d, "shared"))
    with open(state._shared_path(d, "/e", "vbr"), "w") as f:
        f.write("{")
    state.set_users(d, "/e", "vbr", ["k0/eth0", "gone/eth0"])
    assert state.pair(d, "/e", "vbr") == (["gone/eth0", "k0/eth0"],
                                          {"k0/eth0": {"ucmac": 0x1234, "vex_pref": 300, "vin_pref": 301}})
