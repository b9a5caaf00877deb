"""dp-steering as real runtimes drive it (issue 8): CHECK fails when steered traffic has no dp,
STATUS says whether a new pod can be served, the standard keys are accepted, DEL is lenient
and removes whatever it finds, and a dp that refuses or does not answer has a code, never 999."""
import json
import os
import signal
import socket
import threading

import pytest

from plugins.meta.dp_steering import errors
from plugins.pkg import probe
from tests.kit.dp_steering import World, pod_view

pytestmark = pytest.mark.root


def enforcer_links(w) -> list[str]:
    return [ln.split(":")[1].strip().split("@")[0] for ln in w.enf.run("ip", "-o", "link", "show").stdout.splitlines()]


def test_check_and_status_fail_when_inline_traffic_has_no_dp(netns, tmp_path):
    w = World(netns, tmp_path)
    assert w.status()[0] == 0, w.status()           # no dpSocket and no vth yet: nothing says no
    pod = w.add("c1")
    assert w.record(pod)["installed"] == "inline"
    prev = pod.result.encode()
    status, out, _ = w.plugin("CHECK", pod, prev)
    assert status == 1 and out["code"] == errors.NO_DP, out
    assert "no dp reads vth" in out["msg"] and "pycni-dp" in out["msg"] and "failOpen" in out["msg"]
    status, out, _ = w.status()
    assert status == 1 and out["code"] == 50 and "no dp reads vth" in out["msg"], out
    assert "pycni-dp" in out["details"] and "failOpen" in out["details"]
    assert w.status(failOpen=True)[0] == 0 and w.status(mode="tap")[0] == 0    # those would not blackhole

    with w.dp():                                     # the real dp on vth: the pod works, CHECK and STATUS pass
        assert probe.ping(w.host.path, pod.ip, count=1, timeout=2) == [0]
        assert w.plugin("CHECK", pod, prev)[0] == 0
        assert w.status()[0] == 0
    status, out, _ = w.plugin("CHECK", pod, prev)    # gone again
    assert status == 1 and out["code"] == errors.NO_DP
    w.delete(pod)


def test_check_and_status_with_a_dp_socket_that_stops_answering(netns, tmp_path):
    sock = str(tmp_path / "dp.sock")
    w = World(netns, tmp_path, dpSocket=sock)
    status, out, _ = w.status()
    assert status == 1 and out["code"] == 50 and f"no dp answers on dpSocket {sock}" in out["msg"], out
    with w.dp() as dp:
        assert w.status()[0] == 0
        pod = w.add("c1")
        prev = pod.result.encode()
        assert w.plugin("CHECK", pod, prev)[0] == 0
        os.kill(dp.proc.pid, signal.SIGSTOP)         # alive, reading nothing, answering nothing
        try:
            status, out, _ = w.plugin("CHECK", pod, prev)
            assert status == 1 and out["code"] == errors.NO_DP and "no dp answers on dpSocket" in out["msg"], out
            status, out, _ = w.status()
            assert status == 1 and out["code"] == 50, out
        finally:
            os.kill(dp.proc.pid, signal.SIGCONT)
        assert w.plugin("CHECK", pod, prev)[0] == 0
        assert w.plugin("DEL", pod, prev)[0] == 0
    assert enforcer_links(w) == ["lo"]


def test_status_names_what_is_missing(netns, tmp_path):
    w = World(netns, tmp_path, mode="tap")
    assert w.status()[0] == 0
    status, out, _ = w.status(enforcerNetns=str(tmp_path / "nope"))
    assert status == 1 and out["code"] == 50 and "enforcerNetns" in out["msg"] and "ip netns add" in out["details"]
    status, out, _ = w.status(enforcerNetns=None)          # required for STATUS: it names the field
    assert status == 1 and out["code"] == 7 and "enforcerNetns" in out["msg"], out
    assert w.status(surprise=1, capabilities={"portMappings": True})[0] == 0


STANDARD = {"capabilities": {"ips": True, "mac": True}, "dns": {"nameservers": ["10.96.0.10"], "search": ["svc"]},
            "runtimeConfig": {"ips": ["10.44.0.9/24"]}, "args": {"cni": {"labels": []}}, "ipMasq": False,
            "cni.dev/attachments": [], "logLevel": "info"}


def test_standard_keys_are_accepted_and_a_typo_is_named(netns, tmp_path):
    w = World(netns, tmp_path)
    base = w.add("c0", steer=False)
    status, out, _ = w.plugin("ADD", base, base.result.encode(), failopen=True)
    assert status == 1 and out["code"] == 7 and "failOpen" in out["msg"], out        # did you mean
    assert pod_view(base.ns) and not os.path.exists(os.path.join(w.state_dir, "pods", "c0"))
    with w.dp():
        pod = w.add("c1", **STANDARD)
        prev = pod.result.encode()
        status, out, _ = w.plugin("CHECK", pod, prev, **STANDARD)
        assert status == 0, out
        status, out, _ = w.plugin("DEL", pod, prev, **STANDARD)
        assert status == 0, out
    assert enforcer_links(w) == ["lo"] and not os.listdir(os.path.join(w.state_dir, "pods"))


@pytest.mark.parametrize("case", ["unknown-and-bad-values", "no-netns", "netns-not-a-netns"])
def test_lenient_del_removes_everything(netns, tmp_path, case):
    w = World(netns, tmp_path)
    bridged = w.add("c1", steer=False)
    view = pod_view(bridged.ns)
    prev = bridged.result.encode()
    assert w.plugin("ADD", bridged, prev, failOpen=True)[0] == 0
    assert w.record(bridged)["installed"] == "tap"
    extra = dict(STANDARD, surprise={"x": 1}, vbrName="not a name!", mode="sideways", dpWaitMs=-5,
                 enforcerNetns=3, failOpen="yes", dns={"nameservers": "not-a-list"})
    netns_arg = None
    if case == "no-netns":
        netns_arg = ""
    elif case == "netns-not-a-netns":
        junk = tmp_path / "umounted"
        junk.write_text("")
        netns_arg = str(junk)
    status, out, err = w.plugin("DEL", bridged, prev, netns=netns_arg, **extra)
    assert status == 0, (out, err)
    assert enforcer_links(w) == ["lo"]
    assert not os.listdir(os.path.join(w.state_dir, "pods")) and not os.listdir(os.path.join(w.state_dir, "shared"))
    if case == "unknown-and-bad-values":
        assert pod_view(bridged.ns) == view                  # the pod's own interface is back
    assert w.plugin("DEL", bridged, prev, netns=netns_arg, **extra)[0] == 0   # and again
    status, out, _ = w.plugin("DEL", bridged, prev, stateDir=str(tmp_path / "state" / "lock"))
    assert status == 1 and out["code"] == 7 and "stateDir" in out["msg"]   # what DEL needs is still checked


def test_check_leaves_out_a_key_with_a_bad_value(netns, tmp_path):
    w = World(netns, tmp_path, failOpen=True)
    pod = w.add("c1")
    prev = pod.result.encode()
    assert w.plugin("CHECK", pod, prev, vbrName="not a name!")[0] == 0
    status, out, _ = w.plugin("CHECK", pod, prev, vbrName="other")
    assert status == 1 and out["code"] == errors.CONFIG_CHANGED and "vbrName" in out["msg"]
    w.delete(pod)


def test_del_with_an_ifname_add_refuses_succeeds(netns, tmp_path):
    w = World(netns, tmp_path)
    pod = w.add("c1", steer=False)
    prev = pod.result.encode()
    status, out, err = w.plugin("DEL", pod, prev, ifname="eth@0")
    assert status == 0, out
    status, out, _ = w.plugin("ADD", pod, prev, ifname="eth@0")
    assert status == 1 and out["code"] == 4 and "CNI_IFNAME" in out["msg"], out


@pytest.mark.parametrize("record", ["missing", "corrupt"])
def test_del_without_a_readable_record_puts_the_pod_back(netns, tmp_path, record):
    w = World(netns, tmp_path, failOpen=True)
    bridged = w.add("c1", steer=False)
    view = pod_view(bridged.ns)
    prev = bridged.result.encode()
    assert w.plugin("ADD", bridged, prev)[0] == 0
    path = os.path.join(w.state_dir, "pods", "c1", "eth0.json")
    if record == "missing":
        os.unlink(path)
    else:
        with open(path, "w") as f:
            f.write('{"container_id": ')
        status, out, _ = w.plugin("CHECK", bridged, prev)
        assert status == 1 and out["code"] == errors.NO_STATE
    status, out, err = w.plugin("DEL", bridged, prev)
    assert status == 0, (out, err)
    assert "no record, putting back" in err
    assert pod_view(bridged.ns) == view
    assert enforcer_links(w) == ["lo"]                        # vex/vin and the pair of its last user
    assert not os.path.exists(path) and not os.listdir(os.path.join(w.state_dir, "shared"))
    assert probe.ping(w.host.path, bridged.ip, count=1, timeout=2) == [0]


class RefusingDp:
    """A peer on dpSocket that speaks the dp's protocol and refuses every message (as pycni-dp
    answers a request it cannot take: {"ok": false, "msg": NAME, "error": ...})."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.running:
            try:
                data, addr = self.sock.recvfrom(65536)
            except OSError:
                continue
            name = next(iter(json.loads(data)))
            self.sock.sendto(json.dumps({"ok": False, "msg": name, "error": "refused by the test"}).encode(), addr)

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


def test_a_dp_that_refuses_is_a_code_with_a_fix_and_add_rolls_back(netns, tmp_path):
    sock = str(tmp_path / "dp.sock")
    w = World(netns, tmp_path, dpSocket=sock)
    pod = w.add("c1", steer=False)
    view = pod_view(pod.ns)
    dp = RefusingDp(sock)
    try:
        status, out, err = w.plugin("ADD", pod, pod.result.encode())
    finally:
        dp.close()
    assert status == 1 and out["code"] == errors.DP_REFUSED and "refused by the test" in out["details"], (out, err)
    assert "Traceback" not in err
    assert pod_view(pod.ns) == view and enforcer_links(w) == ["lo"]
    assert not os.path.exists(os.path.join(w.state_dir, "pods", "c1"))
