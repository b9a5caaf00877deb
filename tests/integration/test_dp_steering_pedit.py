"""The tc-pedit datapath (u32 + pedit + mirred, the article's) on a kernel that has act_pedit.

Where the running kernel has it, the end-to-end test runs here. Where it does not (this
project's CI machine), test_tc_pedit_in_stock_kernel_vm boots Debian's stock kernel under
qemu over this filesystem (tests/kit/stock_kernel_vm) and runs the end-to-end test and
the bytes-on-vth test there. Under software emulation on 2 shared cores that takes 4-7
minutes (most of it Python importing over 9p), so it runs only when asked for with
PYCNI_STOCK_KERNEL_VM=1, and is skipped with the reason otherwise.
"""
import os
import subprocess

import pytest

from plugins.meta.dp_steering import datapath_pedit
from plugins.pkg import probe
from tests.integration.test_dp_steering_traffic import allowed, tcp_ok
from tests.kit.dp_steering import ROOT, World

pytestmark = pytest.mark.root
VM_DIR = os.path.join(ROOT, "tests", "kit", "stock_kernel_vm")
IN_VM = [
    "tests/integration/test_dp_steering_pedit.py::test_tc_pedit_datapath_end_to_end",
    "tests/integration/test_dp_steering_traffic.py::test_frames_on_vth_carry_the_ucmac_and_nothing_else_changes[pedit]",
]


def test_tc_pedit_datapath_end_to_end(netns, tmp_path):
    if not datapath_pedit.available():
        pytest.skip("no act_pedit in this kernel: test_tc_pedit_in_stock_kernel_vm runs this in a VM")
    w = World(netns, tmp_path, dpSocket=str(tmp_path / "dp.sock"))           # datapath auto
    deny = {"rules": [{"action": "deny", "proto": "tcp", "dport": 5201, "direction": "ingress"}]}
    with w.dp(deny) as dp:
        pod = w.add("c1")
        rec = w.record(pod)
        assert (rec["datapath"], rec["installed"]) == ("tc-pedit", "inline")
        filters = w.enf.run("tc", "filter", "show", "dev", rec["vex"], "ingress").stdout
        assert "pedit" in filters and "mirred" in filters
        assert probe.ping(w.host.path, pod.ip, count=1, timeout=3) == [0]
        base = allowed(dp, rec["mac"])
        assert probe.ping(w.host.path, pod.ip, count=2, timeout=3) == [0, 1]
        dp.wait(lambda s: s["pods"][rec["mac"]]["allowed"] >= base + 4, "4 more frames")
        with probe.TCPEcho(pod.ns.path, port=8080), probe.TCPEcho(pod.ns.path, port=5201):
            assert tcp_ok(w.host.path, pod.ip, 8080, timeout=10)
            assert not tcp_ok(w.host.path, pod.ip, 5201, timeout=2)
        w.check(pod)                                  # u32 keys, pedit keys, mirred targets read back
        w.mode(pod, "tap")                            # mirror + pedit + mirror, and gact drops on vbr
        assert probe.ping(w.host.path, pod.ip, count=1, timeout=3) == [0]
        w.check(pod, mode="tap")
        w.enf.run("tc", "filter", "del", "dev", "vbr", "ingress", "pref", str(rec["vex_pref"]))
        with pytest.raises(Exception, match=f"vbr pref {rec['vex_pref']}"):
            w.check(pod, mode="tap")
        w.delete(pod)
    assert w.enf.run("ip", "-o", "link", "show").stdout.count("\n") == 1          # lo only


@pytest.mark.slow
def test_tc_pedit_in_stock_kernel_vm():
    if datapath_pedit.available():
        pytest.skip("this kernel has act_pedit: the tc-pedit tests run in-process")
    if os.environ.get("PYCNI_STOCK_KERNEL_VM") != "1":
        pytest.skip("no act_pedit here, and the stock-kernel VM run takes 4-7 min under emulation: "
                    "set PYCNI_STOCK_KERNEL_VM=1 to run the tc-pedit tests in it")
    kernels = [k for k in os.listdir("/boot") if k.startswith("vmlinuz-6.1.0-")] if os.path.isdir("/boot") else []
    vng = os.path.join(os.environ.get("SKVM_DIR", "/var/tmp/stock-kernel-vm"), "venv", "bin", "vng")
    if not kernels or not os.access(vng, os.X_OK):
        pytest.skip("the stock-kernel VM is not set up (tests/kit/stock_kernel_vm/setup.sh installs it)")
    inner = (f"cd {ROOT} && PYTHONDONTWRITEBYTECODE=1 .venv/bin/python -m pytest -q -p no:cacheprovider "
             + " ".join(f"'{t}'" for t in IN_VM))
    p = subprocess.run([os.path.join(VM_DIR, "run.sh"), inner], capture_output=True, text=True,
                       timeout=900, env={**os.environ, "GUEST_TIMEOUT": "840"})
    out = p.stdout + p.stderr
    assert p.returncode == 0 and f"{len(IN_VM)} passed" in out, out[-6000:]
