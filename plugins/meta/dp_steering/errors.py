"""dp-steering's error codes (120-139), each with its meaning and fix, and the one translation of
failures of shared code (plugins/pkg, the dp's control socket) into them. The README table lists
exactly these (tests/unit/test_error_codes.py)."""
from __future__ import annotations

from libcni_py.errors import IO_FAILURE, TRY_AGAIN_LATER
from plugins.pkg.errors import (DP, DP_TIMEOUT, IO, IPTABLES, KERNEL, NETNS, NFT, TOOL_MISSING,
                                XTABLES_LOCK, Codes)

CODES = Codes("dp-steering", 120, 139)

NO_PREV_RESULT = CODES.add(
    120, "no prevResult", "chain dp-steering after an interface plugin")
IFACE_MISSING = CODES.add(
    121, "`CNI_IFNAME` not in prevResult or not in the pod netns (or a device of the pod's port, "
    "vex/vin/vbr/vth, vanished while dp-steering set it up)",
    "the previous plugin must create it; for a vanished device, DEL and ADD the pod again")
ENFORCER_NETNS = CODES.add(
    122, "`enforcerNetns` missing or not a netns", "create it (`ip netns add`) or fix the path")
DATAPATH_UNAVAILABLE = CODES.add(
    123, "the asked-for datapath cannot run (tc-pedit without act_pedit; eBPF not loadable)",
    "use `auto`/`ebpf`, or load act_pedit")
PULL_FAILED = CODES.add(
    124, "moving the pod port in (rolled back) or back out failed", "see details (kernel error)")
RULES_FAILED = CODES.add(
    125, "vbr/vth or filters could not be set up (rolled back), e.g. a non-veth device named `vbrName`",
    "remove it or choose another name")
NO_STATE = CODES.add(
    126, "no (or a corrupt) record of the pod; for `mode`, its netns is gone",
    "ADD the pod; remove the corrupt file")
CHECK_MISMATCH = CODES.add(
    127, "CHECK found a difference (names the device, priority or mode, or an address or route of "
         "prevResult the pod's interface lost)",
    "DEL+ADD, or `dp-steering mode` as suggested")
INDEX_CLASH = CODES.add(
    128, "no free UCMAC / vbr priority (65535 pods on one vbr)", "spread pods over enforcers")
NAME_CLASH = CODES.add(
    129, "`vex<id>`/`vin<id>` exist, or the pod is already steered", "DEL first; remove stale devices")
CONFIG_CHANGED = CODES.add(
    130, "CHECK: config differs from the pod's record (enforcerNetns, names, failOpen, datapath)",
    "DEL and ADD again")
NO_DP = CODES.add(
    131, "CHECK: the pod is steered inline but no dp reads `vthName` (or none answers on `dpSocket`): "
    "its unicast traffic is dropped",
    "start pycni-dp in the enforcer netns on vth (`pycni-dp --netns <enforcerNetns> --iface <vthName> "
    "--socket <dpSocket>`), or set `failOpen` (tap mode when no dp is there)")
DP_REFUSED = CODES.add(
    132, "the dp on `dpSocket` refused a control message (its error is in the details)",
    "see the dp's log; check that `dpSocket` is a pycni-dp (or NeuVector-compatible) control socket")
DP_TIMED_OUT = CODES.add(
    133, "no answer in time (the dp on `dpSocket`, or a lock held by another process)",
    "retry; check that the dp is alive (`pycni-dp` process, its log) and no hung dp-steering holds "
    "`stateDir`/lock")
KERNEL_REFUSED = CODES.add(
    134, "the kernel refused a netlink request (links, addresses, routes in the pod or enforcer netns)",
    "see details (the errno); check `ip link` in both netns for devices someone else changed")
TOOL_FAILED = CODES.add(
    135, "an external tool failed or is missing (`tc`, which the tc-pedit datapath runs)",
    "install iproute2 (`tc` on PATH), or use datapath `ebpf`; see details")
NETNS_FAILED = CODES.add(
    136, "a network namespace (the pod's or `enforcerNetns`) could not be entered",
    "check that the path is a mounted netns (`ip netns list`) and that the plugin runs as root")
NFQUEUE_NO_READER = CODES.add(
    137, "CHECK: an NFQUEUE rule in the pod's netns or `enforcerNetns` queues to a queue no process there "
    "reads, without bypass: the packets it matches are dropped (pycni-doctor nfqueue-no-reader)",
    "run the queue's reader in that netns, or add `--queue-bypass` (nft: `bypass`) to the rule; the error "
    "names the rule and prints both commands")

translate = CODES.translator({
    KERNEL: KERNEL_REFUSED,
    XTABLES_LOCK: TRY_AGAIN_LATER,  # dp-steering writes no iptables rules; kept mapped
    IPTABLES: TOOL_FAILED,
    NFT: TOOL_FAILED,
    TOOL_MISSING: TOOL_FAILED,
    NETNS: NETNS_FAILED,
    DP: DP_REFUSED,
    DP_TIMEOUT: DP_TIMED_OUT,
    IO: IO_FAILURE,
})
