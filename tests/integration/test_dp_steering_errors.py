"""Bad input and failures half-way: a clear error (codes 120-139) and the pod left exactly as
the previous plugin (the Go bridge) made it; DEL idempotent, also with a netns gone."""
import os

import pytest

from libcni_py.errors import CNIError
from plugins.meta.dp_steering import datapath_pedit, errors, ids
from plugins.pkg import probe
from tests.kit.dp_steering import World, pod_view

pytestmark = pytest.mark.root


@pytest.fixture
def bridged(netns, tmp_path):
    """A world and a pod plumbed by the bridge alone, with what it sees then."""
    w = World(netns, tmp_path)
    pod = w.add("c1", steer=False)
    return w, pod, pod_view(pod.ns)


def enforcer_links(w) -> list[str]:
    return [ln.split(":")[1].strip().split("@")[0] for ln in w.enf.run("ip", "-o", "link", "show").stdout.splitlines()]


def assert_untouched(w, pod, view):
    assert pod_view(pod.ns) == view
    assert enforcer_links(w)[0] == "lo" and not any(n.startswith(("vex", "vin")) for n in enforcer_links(w))
    assert probe.ping(w.host.path, pod.ip, count=1, timeout=2) == [0]
    assert not os.path.exists(os.path.join(w.state_dir, "pods", pod.cid))


def test_no_prev_result(bridged):
    w, pod, view = bridged
    status, out, _ = w.plugin("ADD", pod, None)
    assert status == 1 and out["code"] == errors.NO_PREV_RESULT and "prevResult" in out["msg"]
    assert_untouched(w, pod, view)


def test_interface_missing_from_prev_result_or_from_the_pod(bridged):
    w, pod, view = bridged
    status, out, _ = w.plugin("ADD", pod, pod.result.encode(), ifname="eth1")
    assert status == 1 and out["code"] == errors.IFACE_MISSING and "eth1" in out["msg"]
    assert_untouched(w, pod, view)

    pod.ns.run("ip", "link", "set", "eth0", "down")
    pod.ns.run("ip", "link", "set", "eth0", "name", "gone0")
    status, out, _ = w.plugin("ADD", pod, pod.result.encode())
    assert status == 1 and out["code"] == errors.IFACE_MISSING and "no interface eth0" in out["msg"]
    assert not any(n.startswith(("vex", "vin")) for n in enforcer_links(w))


def test_enforcer_netns_missing_through_libcni(netns, tmp_path):
    w = World(netns, tmp_path)
    pod = w.add("c0", steer=False)
    with pytest.raises(CNIError) as e:
        w.add("c1", enforcerNetns=str(tmp_path / "no-such-netns"))
    assert e.value.code == errors.ENFORCER_NETNS and "enforcerNetns" in e.value.msg
    assert probe.ping(w.host.path, pod.ip, count=1, timeout=2) == [0]
    w2 = World(netns, tmp_path / "w2")
    p2 = w2.add("c2", steer=False)
    view = pod_view(p2.ns)
    status, out, _ = w2.plugin("ADD", p2, p2.result.encode(), enforcerNetns="/run/netns/pycni-none-here")
    assert status == 1 and out["code"] == errors.ENFORCER_NETNS
    assert_untouched(w2, p2, view)


def test_failure_after_the_pull_rolls_the_pod_back(bridged):
    w, pod, view = bridged
    w.enf.run("ip", "link", "add", "vbr", "type", "bridge")          # not our vbr/vth pair
    status, out, _ = w.plugin("ADD", pod, pod.result.encode())
    assert status == 1 and out["code"] == errors.RULES_FAILED and "vbr" in out["msg"]
    assert pod_view(pod.ns) == view
    assert enforcer_links(w) == ["lo", "vbr"]
    assert probe.ping(w.host.path, pod.ip, count=1, timeout=2) == [0]
    status, out, _ = w.plugin("CHECK", pod, pod.result.encode())
    assert status == 1 and out["code"] == errors.NO_STATE


def test_name_clash_and_double_add(bridged):
    w, pod, view = bridged
    vex, _ = ids.port_names(pod.cid, pod.ifname)
    w.enf.run("ip", "link", "add", vex, "type", "bridge")
    status, out, _ = w.plugin("ADD", pod, pod.result.encode())
    assert status == 1 and out["code"] == errors.NAME_CLASH and vex in out["msg"]
    assert pod_view(pod.ns) == view
    w.enf.run("ip", "link", "del", vex)
    assert w.plugin("ADD", pod, pod.result.encode())[0] == 0
    status, out, _ = w.plugin("ADD", pod, pod.result.encode())
    assert status == 1 and out["code"] == errors.NAME_CLASH and "DEL it first" in out["msg"]


@pytest.mark.skipif(datapath_pedit.available(), reason="this kernel has act_pedit")
def test_tc_pedit_asked_for_without_act_pedit(bridged):
    w, pod, view = bridged
    status, out, _ = w.plugin("ADD", pod, pod.result.encode(), datapath="tc-pedit")
    assert status == 1 and out["code"] == errors.DATAPATH_UNAVAILABLE and "act_pedit" in out["details"]
    assert_untouched(w, pod, view)


def test_del_is_idempotent_and_fine_with_the_pod_netns_gone(netns, tmp_path):
    w = World(netns, tmp_path)
    keep, gone = w.add("c1"), w.add("c2")
    gone.ns.close()
    w.delete(gone)
    w.delete(gone)
    assert not any(gone.cid in n for n in os.listdir(os.path.join(w.state_dir, "pods")))
    assert {n for n in enforcer_links(w) if n.startswith(("vex", "vin"))} == {w.record(keep)["vex"],
                                                                              w.record(keep)["vin"]}
    w.delete(keep)
    assert enforcer_links(w) == ["lo"]


def test_del_with_the_enforcer_netns_gone(netns, tmp_path):
    w = World(netns, tmp_path)
    pod = w.add("c1")
    w.enf.close()
    w.delete(pod)
    assert not os.listdir(os.path.join(w.state_dir, "pods"))
    assert not os.listdir(os.path.join(w.state_dir, "shared"))


def test_a_device_of_ours_that_is_gone_is_iface_missing_not_a_none(netns):
    """triad.must_index: the ifindex of a device dp-steering looks up again (vex, vin, vbr) is an
    int, or the device is gone and that is 121 naming it (never a None handed to the kernel)."""
    from plugins.meta.dp_steering import triad
    from plugins.pkg import link
    enf = netns("dpgone")
    enf.run("ip", "link", "add", "vex-here", "type", "veth", "peer", "name", "vin-here")
    with link.open_rtnl(enf.path) as rt:
        assert triad.must_index(rt, "vex-here", enf.path) == link.index_of(rt, "vex-here")
        enf.run("ip", "link", "del", "vex-here")
        with pytest.raises(CNIError) as e:
            triad.must_index(rt, "vex-here", enf.path)
    assert e.value.code == errors.IFACE_MISSING and "vex-here" in e.value.msg and enf.path in e.value.msg
