"""dp-steering killed, repeated and pointed at the host (issue 9): a journal per attachment lets
DEL and GC undo any prefix of a killed ADD (nothing stranded, the next ADD succeeds); GC undoes
ADDs that died and leaves live ones alone; a shared pair forgets users that no longer exist; one
ADD waiting for a dp does not hold the others up; a repeated ADD of a live attachment leaves it
alone; the host's (or the enforcer's) namespace as the pod's is refused with 4."""
import json
import os
import random
import signal
import time

import pytest

from plugins.meta.dp_steering import errors
from plugins.pkg import probe
from tests.kit import dp_steering
from tests.kit.dp_steering import pod_view

pytestmark = pytest.mark.root

# Per mode; more in a local run. 10 (5 of them recovered by GC alone): the 30 seeded kills per plugin
# that issue 9 asks of CI, each followed by DEL, GC, the residue check and the next ADD, are
# test_crash.py's (dp-steering-tap 15 + -inline 15, plus the targeted kills); this loop adds
# what that one does not do: GC alone finding a died ADD, and the journal's phase at each kill.
KILLS = int(os.environ.get("DP_STEERING_KILLS", "10"))


def World(*args, **kw):
    """The kit's World with every exec in-process in both modes (PYCNI_TEST_DAEMON=1 too): these
    tests kill the exec'd plugin and read its pid from the journal; a daemon's worker would go on."""
    return dp_steering.World(*args, daemon=False, **kw)


def journal(w, pod) -> dict | None:
    try:
        return w.record(pod)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def wait_for(predicate, what: str, within: float = 30.0):
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def assert_clean(w, pod, view, why=""):
    assert w.enforcer_links() == ["lo"], why
    assert pod_view(pod.ns) == view, why
    assert w.state_files() == [], why


@pytest.mark.parametrize("mode", ["tap", "inline"])
def test_sigkill_at_random_points_of_add_leaves_nothing(netns, tmp_path, mode: str) -> None:
    """The real exec'd plugin SIGKILLed after seeded random delays spanning an ADD; then DEL and
    GC (even kills), or GC alone (odd kills: it must find the died ADD): no links, no records,
    journals or temp files, the pod exactly as the bridge made it, no dp registration; the
    next ADD of the same attachment succeeds."""
    w = World(netns, tmp_path, mode=mode, dpWaitMs=60, failOpen=False)
    pod = w.add("c1", steer=False)
    prev = pod.added.encode()
    view = pod_view(pod.ns)
    dp = w.dp().start() if mode == "inline" else None
    extra = {"dpSocket": dp.socket} if dp else {}
    try:
        t0 = time.monotonic()
        w.status(mode="tap")                          # an exec that changes nothing: the start-up
        start = time.monotonic() - t0
        t0 = time.monotonic()
        status, out, err = w.plugin("ADD", pod, prev, **extra)
        span = time.monotonic() - t0
        assert status == 0, (out, err)
        assert w.plugin("DEL", pod, prev, **extra)[0] == 0
        assert_clean(w, pod, view)
        rng = random.Random(f"dp-steering-{mode}")
        stages: dict = {}
        for i in range(KILLS):
            delay = rng.uniform(min(start, span * 0.45), span)   # the last ADD's span: the load varies
            p = w.spawn("ADD", pod, prev, **extra)
            time.sleep(delay)
            p.send_signal(signal.SIGKILL)
            p.communicate(timeout=60)
            j = journal(w, pod)
            stage = "none" if j is None else (j.get("phase"), tuple(j.get("steps", ())))
            stages[stage] = stages.get(stage, 0) + 1
            why = f"kill {i} after {delay:.3f}s at {stage}"
            if i % 2 == 0:
                status, out, err = w.plugin("DEL", pod, prev, **extra)
                assert status == 0, (why, out, err)
            status, out, err = w.gc([])
            assert status == 0, (why, out, err)
            assert_clean(w, pod, view, why)
            if dp:
                assert dp.stats()["pods"] == {}, why
            t0 = time.monotonic()
            status, out, err = w.plugin("ADD", pod, prev, **extra)
            span = time.monotonic() - t0
            assert status == 0, (why, out, err)
            assert w.plugin("DEL", pod, prev, **extra)[0] == 0, why
            assert_clean(w, pod, view, why)
        print(f"{mode}: start-up {start:.3f}s, ADD {span:.3f}s; kills landed at {stages}")
        assert len(stages) >= 3, stages          # the kills did land at different points
    finally:
        if dp:
            dp.stop()
    assert probe.ping(w.host.path, pod.ip, count=1, timeout=2) == [0]


def waiting_add(w, pod, wait_ms: int = 10000):
    """An inline ADD with no dp, started: it waits dpWaitMs for one (journal steps pull, pair, dp)."""
    p = w.spawn("ADD", pod, pod.result.encode(), dpWaitMs=wait_ms)
    wait_for(lambda: (journal(w, pod) or {}).get("steps") == ["pull", "pair", "dp"] or p.poll() is not None,
             "the ADD to wait for the dp")
    assert p.poll() is None, p.communicate()
    return p


def test_gc_undoes_a_died_add_even_if_listed_and_leaves_a_live_one(netns, tmp_path):
    w = World(netns, tmp_path)
    died, live = w.add("c1", steer=False), w.add("c2", steer=False)
    views = {died.cid: pod_view(died.ns), live.cid: pod_view(live.ns)}
    p = waiting_add(w, died)
    j = journal(w, died)
    assert j["phase"] == "adding" and j["adder"][0] == p.pid and j["snap"]["addrs"], j
    p.kill()
    p.communicate(timeout=60)
    status, out, _ = w.plugin("CHECK", died, died.result.encode())
    assert status == 1 and out["code"] == errors.NO_STATE and "died" in out["msg"], out

    q = waiting_add(w, live)
    status, out, err = w.gc([died, live])            # listed, but its ADD died: undone; the live one kept
    assert status == 0, (out, err)
    assert "its ADD (pid" in err
    assert journal(w, died) is None and pod_view(died.ns) == views[died.cid]
    assert journal(w, live)["phase"] == "adding"
    q.send_signal(signal.SIGKILL)
    q.communicate(timeout=60)
    status, out, err = w.gc([])
    assert status == 0, (out, err)
    assert pod_view(live.ns) == views[live.cid] and w.enforcer_links() == ["lo"] and w.state_files() == []
    for pod in (died, live):                          # and the next ADDs succeed
        status, out, err = w.plugin("ADD", pod, pod.result.encode(), failOpen=True)
        assert status == 0, (out, err)
        assert w.plugin("DEL", pod, pod.result.encode())[0] == 0


def test_an_add_undoes_a_died_add_of_its_attachment_first(netns, tmp_path):
    w = World(netns, tmp_path, failOpen=True)
    pod = w.add("c1", steer=False)
    view = pod_view(pod.ns)
    p = waiting_add(w, pod)
    p.kill()
    p.communicate(timeout=60)
    status, out, err = w.plugin("ADD", pod, pod.result.encode())
    assert status == 0, (out, err)
    assert "died half-way" in err and w.record(pod)["phase"] == "done"
    assert w.plugin("CHECK", pod, pod.result.encode())[0] == 0
    assert w.plugin("DEL", pod, pod.result.encode())[0] == 0
    assert pod_view(pod.ns) == view and w.enforcer_links() == ["lo"] and w.state_files() == []


def test_a_del_during_the_dp_wait_wins_and_the_add_fails_leaving_nothing(netns, tmp_path):
    w = World(netns, tmp_path)
    pod = w.add("c1", steer=False)
    view = pod_view(pod.ns)
    p = waiting_add(w, pod, wait_ms=3000)
    status, out, err = w.plugin("DEL", pod, pod.result.encode())
    assert status == 0 and "did not finish" in err, (out, err)
    stdout, _ = p.communicate(timeout=60)
    assert p.returncode == 1 and json.loads(stdout)["code"] == errors.NO_STATE, stdout
    assert pod_view(pod.ns) == view and w.enforcer_links() == ["lo"] and w.state_files() == []


def test_one_add_waiting_for_a_dp_does_not_hold_up_another(netns, tmp_path):
    """The dpWaitMs wait is outside the state lock: a tap ADD started while an inline one waits
    10 s for a dp finishes while the inline one is still waiting (measured, no tight bound)."""
    w = World(netns, tmp_path)
    slow, fast = w.add("c1", steer=False), w.add("c2", steer=False)
    p = waiting_add(w, slow, wait_ms=10000)
    t0 = time.monotonic()
    status, out, err = w.plugin("ADD", fast, fast.result.encode(), mode="tap")
    took = time.monotonic() - t0
    assert status == 0, (out, err)
    assert p.poll() is None, "the inline ADD should still be waiting for its dp"
    print(f"the tap ADD took {took:.2f}s while the inline one waited")
    assert took < 8, took                             # generous: well below the 10 s the other waits
    assert w.record(fast)["installed"] == "tap" and probe.ping(w.host.path, fast.ip, count=1, timeout=2) == [0]
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    for pod in (slow, fast):
        assert w.plugin("DEL", pod, pod.result.encode())[0] == 0
    assert w.enforcer_links() == ["lo"] and w.state_files() == []


def test_a_repeated_add_of_a_live_attachment_fails_and_leaves_it(netns, tmp_path):
    w = World(netns, tmp_path, failOpen=True)
    pod = w.add("c1")
    prev = pod.added.encode()
    before, links = w.record(pod), w.enforcer_links()
    status, out, _ = w.plugin("ADD", pod, prev)
    assert status == 1 and out["code"] == errors.NAME_CLASH and "steered already" in out["msg"], out
    assert w.record(pod) == before and w.enforcer_links() == links
    assert w.plugin("CHECK", pod, prev)[0] == 0
    assert probe.ping(w.host.path, pod.ip, count=1, timeout=2) == [0]
    status, out, err = w.gc([pod])
    assert status == 0, (out, err)
    assert w.record(pod) == before and w.plugin("CHECK", pod, prev)[0] == 0
    w.delete(pod)
    assert w.enforcer_links() == ["lo"] and w.state_files() == []


def test_a_pair_forgets_users_that_no_longer_exist(netns, tmp_path):
    w = World(netns, tmp_path, failOpen=True)
    pod = w.add("c1")
    shared = os.path.join(w.state_dir, "shared")
    [name] = os.listdir(shared)
    path = os.path.join(shared, name)
    with open(path) as f:
        rec = json.load(f)
    rec["users"] += ["ghost/eth0"]                    # a user whose DEL never came and whose record is gone
    with open(path, "w") as f:
        json.dump(rec, f)
    assert w.gc([pod])[0] == 0                        # GC drops it, keeps the live one
    with open(path) as f:
        assert json.load(f)["users"] == ["c1/eth0"]
    with open(path, "w") as f:
        json.dump(dict(rec, users=["c1/eth0", "ghost/eth0"]), f)
    w.delete(pod)                                     # the last user that exists leaves: the pair goes
    assert w.enforcer_links() == ["lo"] and w.state_files() == []

    w.enf.run("ip", "link", "add", "vbr", "type", "veth", "peer", "name", "vth")   # a pair only a ghost uses
    os.makedirs(shared, exist_ok=True)
    with open(path, "w") as f:
        json.dump(dict(rec, users=["ghost/eth0"]), f)
    status, out, err = w.gc([])
    assert status == 0, (out, err)
    assert w.enforcer_links() == ["lo"] and w.state_files() == []


def test_a_vbr_that_is_not_our_pair_is_never_deleted(netns, tmp_path):
    w = World(netns, tmp_path, failOpen=True)
    pod = w.add("c1", steer=False)
    w.enf.run("ip", "link", "add", "vbr", "type", "bridge")
    status, out, _ = w.plugin("ADD", pod, pod.result.encode())
    assert status == 1 and out["code"] == errors.RULES_FAILED, out
    assert "vbr" in w.enforcer_links() and w.state_files() == []


@pytest.mark.parametrize("how", ["proc-self", "named-path", "enforcer"])
def test_the_hosts_own_namespace_as_the_pods_is_refused(netns, tmp_path, how):
    """CNI_NETNS naming the namespace the plugin runs in (here a test "host" netns with an uplink)
    or the enforcer netns, CNI_IFNAME naming its uplink: 4, nothing changed."""
    w = World(netns, tmp_path)
    w.host.run("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
    w.host.run("ip", "addr", "add", "198.18.0.2/24", "dev", "up0")
    w.host.run("ip", "link", "set", "up0", "up")
    w.host.run("ip", "route", "add", "default", "via", "198.18.0.1")
    target = {"proc-self": "/proc/self/ns/net", "named-path": w.host.path, "enforcer": w.enf.path}[how]
    ifname = "lo" if how == "enforcer" else "up0"
    pod = w.add("c1", steer=False)
    prev = dict(pod.result.encode())
    prev["interfaces"] = [{"name": ifname, "mac": "02:00:00:00:00:01", "sandbox": target}]
    host_view, enf_view = pod_view(w.host), w.enforcer_links()
    status, out, err = w.plugin("ADD", pod, prev, ifname=ifname, netns=target, inside=w.host.name)
    assert status == 1 and out["code"] == 4 and "CNI_NETNS" in out["msg"], (out, err)
    assert pod_view(w.host) == host_view and w.enforcer_links() == enf_view and w.state_files() == []
    status, out, err = w.plugin("DEL", pod, prev, ifname=ifname, netns=target, inside=w.host.name)
    assert status == 0, (out, err)
    assert pod_view(w.host) == host_view
