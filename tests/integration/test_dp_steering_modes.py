"""Live mode switches with `dp-steering mode`: inline -> tap -> off -> inline on a running pod
keep what the pod sees (interface, MAC, MTU, IPs, routes, permanent neighbours)."""
import pytest

from plugins.pkg import probe
from tests.kit.dp_steering import GATEWAY, World, pod_view
from tests.integration.test_dp_steering_traffic import datapath, tcp_ok  # noqa: F401 - fixture

pytestmark = pytest.mark.root


def enforcer_links(w) -> list[str]:
    return [ln.split(":")[1].strip().split("@")[0] for ln in w.enf.run("ip", "-o", "link", "show").stdout.splitlines()]


def test_mode_switches_on_a_live_pod_keep_mac_ips_and_routes(netns, tmp_path, datapath):  # noqa: F811 - fixture
    w = World(netns, tmp_path, datapath=datapath, dpSocket=str(tmp_path / "dp.sock"))
    with w.dp() as dp:
        pod = w.add("c1", steer=False)                        # as the bridge made it
        pod.ns.run("ip", "route", "add", "10.50.0.0/16", "via", GATEWAY, "table", "100")
        pod.ns.run("ip", "neigh", "add", "10.44.0.200", "lladdr", "02:00:00:00:00:c8", "dev", "eth0",
                   "nud", "permanent")
        plain = pod_view(pod.ns)
        assert pod.result.interfaces[2].mac in plain

        status, out, err = w.plugin("ADD", pod, pod.result.encode())     # chained after it
        assert status == 0, out
        assert out == pod.result.encode()                     # prevResult passes through
        mac = w.record(pod)["mac"]
        with probe.TCPEcho(pod.ns.path, port=8080):
            for mode in ("inline", "tap", "off", "inline"):
                if mode != "inline" or w.record(pod)["installed"] != "inline":
                    assert w.mode(pod, mode) == {"containerID": "c1", "ifname": "eth0", "mode": mode,
                                                 "installed": mode}
                assert pod_view(pod.ns) == plain, mode
                assert probe.ping(w.host.path, pod.ip, count=1, timeout=2) == [0], mode
                assert tcp_ok(w.host.path, pod.ip, 8080), mode
                status, out, err = w.plugin("CHECK", pod, pod.result.encode(), mode="inline")
                assert status == 0, (mode, out)
                links = enforcer_links(w)
                if mode == "off":
                    assert links == ["lo"]                       # the pair goes with its last pod
                    assert mac not in dp.stats()["pods"]         # and the dp forgot the pod
                else:
                    assert links == ["lo", w.record(pod)["vin"], w.record(pod)["vex"], "vbr", "vth"]
                    assert dp.stats()["pods"][mac]["tap"] == (mode == "tap")
        # CHECK with the config's mode tells a pod switched by hand from one in the wrong mode
        w.mode(pod, "tap")
        status, out, _ = w.plugin("CHECK", pod, pod.result.encode())
        assert status == 0, out
        pod.ns.run("tc", "filter", "del", "dev", "eth0", "ingress", check=False)   # not ours: harmless
        w.enf.run("tc", "filter", "del", "dev", w.record(pod)["vex"], "ingress", "pref", "10002")
        status, out, _ = w.plugin("CHECK", pod, pod.result.encode())
        assert status == 1 and out["code"] == 127 and "pref 10002" in out["msg"], out
        assert w.plugin("DEL", pod, pod.result.encode())[0] == 0
        assert w.plugin("DEL", pod, pod.result.encode())[0] == 0          # idempotent
        assert pod_view(pod.ns) == plain                                   # as the bridge made it
        assert enforcer_links(w) == ["lo"]


def test_mode_command_errors(netns, tmp_path):
    import subprocess
    from tests.kit.dp_steering import STEERING
    p = subprocess.run([STEERING, "mode", "nope", "eth0", "tap", "--state-dir", str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "error 126" in p.stderr and "no dp-steering record" in p.stderr
    p = subprocess.run([STEERING, "mode", "c1", "eth0", "sideways"], capture_output=True, text=True)
    assert p.returncode == 2 and "invalid choice" in p.stderr


def test_gc_unsteers_what_the_runtime_no_longer_lists(netns, tmp_path):
    w = World(netns, tmp_path)
    keep, drop = w.add("c1"), w.add("c2")
    gone = w.add("c3")
    gone.ns.close()
    status, out, err = w.plugin("GC", keep, None, **{"cniVersion": "1.1.0", "cni.dev/valid-attachments": [
        {"containerID": "c1", "ifname": "eth0"}]})
    assert status == 0, (out, err)
    assert w.record(keep)["installed"] == "inline"
    for pod in (drop, gone):
        with pytest.raises(FileNotFoundError):
            w.record(pod)
    assert f"link-netns {w.host.name}" in drop.ns.run("ip", "-o", "link", "show", "eth0").stdout   # its own veth
    assert [n for n in enforcer_links(w) if n.startswith(("vex", "vin"))] == [w.record(keep)["vin"],
                                                                          w.record(keep)["vex"]]
    status, out, _ = w.plugin("CHECK", keep, keep.result.encode(), mode="tap")     # config changed, not by hand
    assert status == 1 and out["code"] == 127 and "the config says tap" in out["msg"], out
