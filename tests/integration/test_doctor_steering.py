"""pycni-doctor's steering-integrity against the real dp-steering plugin: pods steered in test
namespaces (Go bridge + host-local + dp-steering, the reference pycni-dp on vth), then broken behind
the plugin's back (a tc filter deleted, vbr deleted, the filters switched to tap, the dp stopped
while inline), found by `pycni-doctor --json --conf FILE` with its fix, the printed fix applied,
the finding gone and the traffic flowing. A healthy steered node gives no finding at all."""
from __future__ import annotations

import json
import os
import shlex
import subprocess

import pytest

from plugins.meta.dp_steering import state
from plugins.meta.dp_steering import steering as plugin_steering
from plugins.pkg import probe
from tests.conftest import VENV_BIN
from tests.kit.dp_steering import World

pytestmark = pytest.mark.root
DOCTOR = os.path.join(VENV_BIN, "pycni-doctor")
CHECK = "steering-integrity"


def conf_file(w: World, **steer) -> str:
    """The conflist the runtime would read for the world's network."""
    path = os.path.join(w.tmp, f"dpnet-{len(os.listdir(w.tmp))}.conflist")
    with open(path, "w") as f:
        json.dump({"cniVersion": w.version, "name": "dpnet",
                   "plugins": [w.bridge(), {**w.steer, **steer}]}, f)
    return path


def doctor(*args: str) -> tuple[int, dict]:
    p = subprocess.run([DOCTOR, "--json", *args], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, json.loads(p.stdout)


def steering(w: World, **steer) -> list[dict]:
    rc, out = doctor("--check", CHECK, "--conf", conf_file(w, **steer))
    assert out["errors"] == [], out["errors"]
    assert out["checks"] == [CHECK], out
    assert rc == (1 if out["findings"] else 0), (rc, out)
    return out["findings"]


def apply(command: str) -> None:
    """Run a fix exactly as printed (argv from the text, no shell), our executables on PATH."""
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    p = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, (command, p.stdout, p.stderr)


def reaches(w: World, pod) -> bool:
    return probe.ping(w.host.path, pod.ip, count=1, timeout=2) == [0]


def test_healthy_steered_pods_give_no_findings(netns, tmp_path):
    """Every check of the doctor in the host, pod and enforcer netns: two inline pods with their dp
    and a pod `dp-steering mode` switched to tap by hand: nothing to report."""
    w = World(netns, tmp_path)
    with w.dp():
        one, two, by_hand = w.add("c1"), w.add("c2"), w.add("c3")
        w.mode(by_hand, "tap")
        assert all(reaches(w, p) for p in (one, two, by_hand))
        spaces = [a for n in (w.host, w.enf, one.ns, two.ns, by_hand.ns) for a in ("--netns", n.path)]
        rc, out = doctor("--conf", conf_file(w), *spaces)
        assert CHECK in out["checks"], out
        assert (rc, out["findings"], out["errors"]) == (0, [], []), json.dumps(out["findings"], indent=1)
        assert steering(w) == []
        for p in (one, two, by_hand):
            w.delete(p)
    assert steering(w) == []                        # nothing recorded: nothing to say


def test_a_deleted_filter_is_found_and_reinstalled(netns, tmp_path):
    w = World(netns, tmp_path)
    with w.dp():
        pod = w.add("c1")
        vex = w.record(pod)["vex"]
        w.enf.run("tc", "filter", "del", "dev", vex, "ingress", "pref", "10002")
        [f] = steering(w)
        assert f["check"] == CHECK and f["severity"] == "error" and f["where"] == "dp-steering c1/eth0"
        assert f["netns"] == w.enf.path
        assert "c1/eth0 (network dpnet) is steered inline" in f["what"] and f"{vex} pref 10002" in f["what"]
        fix = f["fixes"][0]
        assert fix["command"] == f"dp-steering mode c1 eth0 inline --state-dir {w.state_dir}", fix
        apply(fix["command"])
        assert steering(w) == []
        assert reaches(w, pod)
        w.check(pod)                                 # the plugin's own CHECK agrees
        w.delete(pod)


def test_a_deleted_vbr_is_found_and_the_pod_steered_again(netns, tmp_path):
    w = World(netns, tmp_path)
    with w.dp():
        pod = w.add("c1")
        assert reaches(w, pod)
        w.enf.run("ip", "link", "del", "vbr")        # vth goes with it: the pod is cut off
        assert not reaches(w, pod)
        [f] = steering(w)
        assert f["severity"] == "error" and "vbr is missing in the enforcer netns" in f["what"], f
        commands = [x["command"] for x in f["fixes"] if x["command"]]
        assert commands == [f"dp-steering mode c1 eth0 off --state-dir {w.state_dir}",
                            f"dp-steering mode c1 eth0 inline --state-dir {w.state_dir}"], f
        for c in commands:
            apply(c)
        assert w.record(pod)["installed"] == "inline"
        assert steering(w) == []                     # the dp reads the new vth
        assert reaches(w, pod)
        w.check(pod)
        w.delete(pod)
    assert w.enforcer_links() == ["lo"]


def test_mode_changed_in_the_config_or_behind_the_plugins_back(netns, tmp_path):
    """A config that now says tap for a pod steered inline is a warning with the switch to run.
    Then the kernel holds the inline filters while the record says tap (another tool switched
    them): an error, and the printed `dp-steering mode` puts the tap ones back."""
    w = World(netns, tmp_path)
    with w.dp():
        pod = w.add("c1")
        assert steering(w) == []
        [f] = steering(w, mode="tap")                # the config changed after ADD
        assert f["severity"] == "warning" and "mode is inline, the config says tap" in f["what"], f
        assert f["fixes"][0]["command"] == f"dp-steering mode c1 eth0 tap --state-dir {w.state_dir}"
        apply(f["fixes"][0]["command"])
        assert steering(w, mode="tap") == []
        assert w.record(pod)["installed"] == "tap" and reaches(w, pod)

        rec = state.load_pod(w.state_dir, pod.cid, pod.ifname)
        assert rec is not None
        plugin_steering.switch(rec, "inline")        # the kernel only: the record is not saved
        assert w.record(pod)["installed"] == "tap"
        [f] = steering(w, mode="tap")
        assert f["severity"] == "error" and "is steered tap" in f["what"] and " pref " in f["what"], f
        assert f["fixes"][0]["command"] == f"dp-steering mode c1 eth0 tap --state-dir {w.state_dir}"
        apply(f["fixes"][0]["command"])
        assert steering(w, mode="tap") == []
        assert reaches(w, pod)
        w.delete(pod)


def test_an_inline_pod_without_a_dp_is_blackholed(netns, tmp_path):
    w = World(netns, tmp_path)
    with w.dp():
        pod = w.add("c1")
        assert reaches(w, pod) and steering(w) == []
    assert not reaches(w, pod)                       # the dp stopped: inline frames go nowhere
    [f] = steering(w)
    assert f["severity"] == "error" and f["netns"] == w.enf.path
    assert f"c1/eth0 (network dpnet) is steered inline but no dp reads vth in {w.enf.path}" in f["what"]
    assert f["what"].endswith("blackholed since a time nothing recorded (no fail-open watcher saw its dp go)"), f
    start, tap, fail_open = f["fixes"]
    assert start["command"] == f"pycni-dp --netns {w.enf.path} --iface vth", start
    assert tap["command"] == f"dp-steering mode c1 eth0 tap --state-dir {w.state_dir}", tap
    assert "failOpen" in fail_open["how"] and fail_open["command"] is None
    with w.dp():                                     # the first fix: a dp on vth again
        assert steering(w) == []
        assert reaches(w, pod)
    [f] = steering(w)                                # stopped once more: the second fix
    apply(f["fixes"][1]["command"])
    assert steering(w) == []
    assert reaches(w, pod)                           # tap: unenforced, but it flows
    w.delete(pod)


def test_with_a_dp_socket_a_dp_that_does_not_answer_is_named(netns, tmp_path):
    sock = str(tmp_path / "dp.sock")
    w = World(netns, tmp_path, dpSocket=sock)
    with w.dp():
        pod = w.add("c1")
        assert steering(w) == []
    [f] = steering(w)
    assert f"no dp answers on dpSocket {sock}" in f["what"] and "blackholed" in f["what"], f
    assert f["fixes"][0]["command"] == f"pycni-dp --netns {w.enf.path} --iface vth --socket {sock}"
    w.delete(pod)


def test_a_pod_of_another_network_in_the_same_state_dir_is_not_judged(netns, tmp_path):
    w = World(netns, tmp_path)
    pod = w.add("c1")                                # inline, no dp: blackholed
    assert len(steering(w)) == 1
    path = conf_file(w)
    with open(path) as f:
        doc = json.load(f)
    doc["name"] = "othernet"
    with open(path, "w") as f:
        json.dump(doc, f)
    rc, out = doctor("--check", CHECK, "--conf", path)
    assert (rc, out["findings"], out["errors"]) == (0, [], []), out
    w.delete(pod)


def test_a_record_whose_pod_netns_is_gone_is_a_warning_gc_removes(netns, tmp_path):
    w = World(netns, tmp_path)
    keep, gone = w.add("c1"), w.add("c2")
    with w.dp():
        gone.ns.close()                              # the runtime lost the sandbox, no DEL came
        [f] = steering(w)
        assert f["severity"] == "warning" and f["where"] == "dp-steering c2/eth0", f
        assert f"its netns {gone.ns.path} is gone" in f["what"] and "GC" in f["fixes"][0]["how"], f
        rc, out, err = w.gc([keep])                  # the fix: the runtime's GC
        assert rc == 0, (out, err)
        assert steering(w) == []
        assert reaches(w, keep)
    w.delete(keep)
