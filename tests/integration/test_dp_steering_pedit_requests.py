"""The tc-pedit datapath installs its filters over netlink (datapath_pedit.filter_msg) instead of
exec'ing `tc -batch`: these are the very requests `tc filter add` sends for the same rules, byte
for byte, so the kernel makes the same u32 filters with the same pedit, mirred and gact actions.

What tc sends is read off the wire with strace (its write dump of tc's netlink socket), for every
rule of both modes, both families and neighbour discovery; the kernel need not have act_pedit
for that (tc sends the request and the kernel refuses it here). Where the kernel has act_pedit
(the stock-kernel VM: test_dp_steering_pedit.py runs that test there), an ADD and a DEL with the
tc-pedit datapath exec nothing; nor do they with the eBPF datapath (here).
"""
import os
import re
import shutil
import subprocess

import pytest

from plugins.meta.dp_steering import datapath_pedit as P
from plugins.meta.dp_steering import rules as R
from tests.kit.dp_steering import World
from tests.kit.plugin_env import plugin_env

pytestmark = pytest.mark.root
PORT = R.Port("vex", "vin", "vbr", "0a:58:0a:2c:00:05", "4e:65:75:56:00:0c", 300, 301)
RTM_NEWTFILTER = b"\x2c\x00"


def sent_by_tc(ns, argv: list[str], log: str) -> bytes:
    """The RTM_NEWTFILTER message `tc <argv>` sent in netns `ns` (strace's dump of what it wrote)."""
    ns.run("strace", "-f", "-o", log, "-e", "trace=sendmsg,sendto", "-e", "write=3,4,5", "-xx", "tc", *argv,
           check=False)
    blocks: list[list[str]] = []
    with open(log) as f:
        for line in f:
            if line.lstrip().startswith("|") and blocks:
                octets = []
                for tok in line.split()[2:18]:
                    if not re.fullmatch(r"[0-9a-f]{2}", tok):
                        break
                    octets.append(tok)
                blocks[-1].append("".join(octets))
            elif not line.lstrip().startswith("*"):
                blocks.append([])
    found = [bytes.fromhex("".join(b)) for b in blocks]
    found = [m for m in found if len(m) > 16 and m[4:6] == RTM_NEWTFILTER]
    assert len(found) == 1, (argv, open(log).read())
    return found[0]


@pytest.mark.skipif(not shutil.which("strace") or not shutil.which("tc"), reason="needs strace and tc")
def test_filter_msg_is_what_tc_filter_add_sends(netns, tmp_path):
    ns = netns("req")
    for dev in ("vex", "vin", "vbr"):
        ns.run("ip", "link", "add", dev, "type", "veth", "peer", "name", dev + "p")
        ns.run("tc", "qdisc", "add", "dev", dev, "ingress")
    index = {dev: int(ns.run("ip", "-o", "link", "show", dev).stdout.split(":")[0]) for dev in ("vex", "vin", "vbr")}
    seen = set()
    for mode in ("inline", "tap"):
        for r in R.rules_for(mode, PORT):
            if r in seen:
                continue
            seen.add(r)
            wire = sent_by_tc(ns, P.filter_argv(r), str(tmp_path / "strace.log"))
            kind, flags, body = P.filter_msg(r, index)
            assert wire[4:6] == kind.to_bytes(2, "little")
            assert int.from_bytes(wire[6:8], "little") & ~0x5 == flags          # tc: + NLM_F_REQUEST|ACK
            assert body.hex() == wire[16:].hex(), (mode, r)
    kinds = {(r.copy_to is not None, r.rewrite is not None, r.to is not None, r.icmp6 is not None) for r in seen}
    assert len(seen) == 18 and len(kinds) == 5, kinds      # mirror+pedit+mirror, pedit+mirror, mirror, gact, nd


def test_tc_pedit_add_and_del_exec_nothing(netns, tmp_path):
    if not P.available():
        pytest.skip("no act_pedit in this kernel: test_dp_steering_pedit.py runs this in the stock-kernel VM")
    add_and_del_exec_nothing(netns, tmp_path, "tc-pedit")


def test_ebpf_add_and_del_exec_nothing(netns, tmp_path):
    from plugins.meta.dp_steering import datapath_ebpf
    if not datapath_ebpf.available():
        pytest.skip("this kernel loads no SCHED_CLS program")
    add_and_del_exec_nothing(netns, tmp_path, "ebpf")


def add_and_del_exec_nothing(netns, tmp_path, datapath: str) -> None:
    """An exec'd ADD and DEL (in-process, as without a daemon) of a tap pod exec nothing."""
    w = World(netns, tmp_path, datapath=datapath, mode="tap", failOpen=True)
    pod = w.add("c1", steer=False)
    log = str(tmp_path / "execs.log")
    for command in ("ADD", "DEL"):
        argv, env, stdin = w._exec(command, pod, pod.added.encode(), None, None, None, {})
        env = plugin_env(env, daemon=False)
        p = subprocess.run(["strace", "-f", "-qq", "-o", log, "-e", "trace=execve", *argv], input=stdin,
                           env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, (p.stdout, p.stderr)
        with open(log) as f:
            execs = [line for line in f if "execve(" in line and "= 0" in line]
        assert len(execs) <= 2, execs          # the console script (and its interpreter), nothing else
        if command == "ADD":
            rec = w.record(pod)
            assert rec["datapath"] == datapath and rec["installed"] == "tap"
            shown = w.enf.run("tc", "filter", "show", "dev", rec["vex"], "ingress").stdout
            assert ("pedit" if datapath == "tc-pedit" else "direct-action") in shown, shown
    assert w.enforcer_links() == ["lo"] and w.state_files() == []
    os.remove(log)
