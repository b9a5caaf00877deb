"""The tc-pedit datapath (u32 + pedit + mirred, as NeuVector's agent/pipe/tc.go installs them) on a
kernel that has act_pedit.

Where the running kernel has it, the end-to-end test runs here. Where it does not (this
project's CI machine), test_tc_pedit_in_stock_kernel_vm boots Debian's stock kernel under
qemu over this filesystem (tests/kit/stock_kernel_vm) and runs the end-to-end test and
the bytes-on-vth test there, and the dual-stack traffic and IPv6 bytes-on-vth tests of
test_dp_steering_ipv6.py, in one boot: about a minute under software emulation on 2
shared cores. It runs whenever the VM is set up (`./build.sh test` sets it up on Debian);
PYCNI_STOCK_KERNEL_VM=0 skips it, =1 makes a missing setup a failure instead of a skip.
"""
import os
import re

import pytest

from plugins.meta.dp_steering import datapath_pedit
from plugins.pkg import probe
from tests.integration.test_dp_steering_traffic import allowed, tcp_ok
from tests.kit.dp_steering import World
from tests.kit.stock_kernel_vm import guest

pytestmark = pytest.mark.root
IN_VM = [
    "tests/integration/test_dp_steering_pedit.py::test_tc_pedit_datapath_end_to_end",
    "tests/integration/test_dp_steering_traffic.py::test_frames_on_vth_carry_the_ucmac_and_nothing_else_changes[pedit]",
    "tests/integration/test_dp_steering_ipv6.py::test_dual_stack_inline_both_families_through_the_dp_and_nd_goes_across[pedit]",
    "tests/integration/test_dp_steering_ipv6.py::test_ipv6_frames_on_vth_carry_the_ucmac_and_nd_never_reaches_vth[pedit]",
    "tests/integration/test_dp_steering_ipv6.py::test_dual_stack_tap_copies_every_unicast_of_both_families[pedit]",
    "tests/integration/test_dp_steering_pedit_requests.py::test_tc_pedit_add_and_del_exec_nothing",
]
GUEST_TIMEOUT = 300       # s; the run takes ~1 min, up to ~2 when the machine is busy


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
    wanted = os.environ.get("PYCNI_STOCK_KERNEL_VM")
    if wanted == "0":
        pytest.skip("PYCNI_STOCK_KERNEL_VM=0: the tc-pedit tests in the stock-kernel VM are not run")
    reason = guest.not_ready()
    if reason:
        message = (f"the stock-kernel VM is not set up ({reason}): tests/kit/stock_kernel_vm/setup.sh "
                   "installs it (PYCNI_STOCK_KERNEL_VM=0 skips this test)")
        if wanted == "1":
            pytest.fail(message)
        pytest.skip(message)
    status, out = guest.pytest(IN_VM, timeout=GUEST_TIMEOUT)
    assert status != 124, f"the guest did not finish within {GUEST_TIMEOUT} s:\n{out[-6000:]}"
    summaries = re.findall(r"^=*\s*(\d+ \w+(?:, \d+ \w+)*) in [\d.]+s", out, re.M)
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summaries[-1])} if summaries else {}
    assert status == 0 and counts.get("passed") == len(IN_VM) \
        and not set(counts) - {"passed", "warning", "warnings"}, out[-6000:]
