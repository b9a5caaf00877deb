"""vxlan's error codes (100-119), each with its meaning and fix, and the one translation of
shared-code failures (netlink, iptables, a netns, I/O) into them at the plugin boundary.

Every other module of the plugin imports its codes from here; the README table of the vxlan
section lists exactly these (tests/unit/test_error_codes.py).
"""
from __future__ import annotations

from libcni_py.errors import INVALID_ENV, IO_FAILURE, TRY_AGAIN_LATER
from plugins.pkg.errors import (DP, DP_TIMEOUT, IO, IPTABLES, KERNEL, NETNS, NFT, TOOL_MISSING,
                                XTABLES_LOCK, Codes)

CODES = Codes("vxlan", 100, 119)

REGISTRY_UNREADABLE = CODES.add(
    100, "registry cannot be read or written (file: I/O, permissions, path is a directory; etcd: no member "
         "answers, refused, TLS or auth failure); STATUS reports it as 50",
    "file: fix `registry.path` or its permissions; etcd: check `registry.endpoints`, `caFile`/`certFile`/"
    "`keyFile`, `username`/`passwordFile`")
REGISTRY_CORRUPT = CODES.add(
    101, "registry document malformed",
    "restore it, or remove it: nodes rejoin and get their subnets back from their local lease copy")
REGISTRY_UNKNOWN_TYPE = CODES.add(
    102, "unknown `registry.type` (the message lists the known types)", "use one of the types listed")
NETWORK_MISMATCH = CODES.add(
    103, "`network`/`subnetLen`/`vni` differ from the registry's while other nodes hold leases",
    "same values on every node, or another registry")
SUBNETS_EXHAUSTED = CODES.add(
    104, "no free subnet left in `network`",
    "larger network, longer `subnetLen`, or make dead nodes leave (`vxlan-agent --leave`)")
BAD_SUBNET_LEN = CODES.add(
    105, "`subnetLen` out of range for `network`", "network prefix < subnetLen <= 30")
NO_UNDERLAY = CODES.add(
    106, "no underlay: no default route and no `iface`, `iface` missing, or no IPv4 address on it",
    "set `iface` or `publicIP`, or give the device an address")
DEVICE_FAILED = CODES.add(
    107, "vxlan device could not be created or configured, or `deviceName` names a link that is not this "
    "network's vxlan device (a bridge, the uplink, a veth, another network's or someone else's vxlan "
    "device: never deleted or changed; the message names it)",
    "check `ip -d link` / dmesg (vxlan module, VNI/port in use); for a link that is not ours, set "
    "`deviceName` to a free name (default vxlan.<vni>) or remove that link yourself")
PEER_PROGRAMMING = CODES.add(
    108, "kernel refused a peer entry, or a route/ARP entry we did not create sits in a lease's place",
    "remove the entry named in the message")
DEVICE_DRIFT = CODES.add(
    109, "CHECK: device missing or an attribute wrong", "ADD or the agent repairs it")
PEER_DRIFT = CODES.add(
    110, "CHECK: a peer's ARP/FDB/route entry missing or wrong, or a stale entry", "run the agent or an ADD")
LEASE_LOST = CODES.add(
    111, "CHECK: this node holds no lease", "ADD or start the agent")
KERNEL_REFUSED = CODES.add(
    112, "the kernel refused a netlink request (address, route or link of the pod or the bridge); "
    "the message names the request and the errno",
    "look at the object named (`ip addr`, `ip route`, `ip link`) and dmesg; a conflicting address or "
    "route left by another program is the usual cause")
BRIDGE_CONFLICT = CODES.add(
    113, "the bridge name belongs to a link that is not a bridge, or the bridge holds another gateway in "
    "`network` that the node did not repair (see 117)",
    "delete that link (the bridge once its pods are gone), or set `bridge` to another name")
VETH_EXISTS = CODES.add(
    114, "the attachment exists (its record or host veth: a repeated ADD, refused before anything is "
    "touched, the live one left as it is), or the pod's ifname already exists in its netns",
    "DEL that container ID/ifname first")
BAD_IPAM_RESULT = CODES.add(
    115, "IPAM failed with an error of its own (host-local's 999: range full, a requested IP out of "
    "range; its message passed on), returned no IPv4 address, or one outside this node's subnet (a "
    "static IP from `runtimeConfig.ips` or `CNI_ARGS IP=` must lie in it too)",
    "let ipam default, allocate from the node subnet, free addresses (DEL or GC stale pods)")
POD_DRIFT = CODES.add(
    116, "CHECK: pod interface, address, route, bridge port, hairpin or ipMasq rule missing or wrong (named), "
    "or a node setting that drops the network's traffic (pycni-doctor's policy-route-steals-replies or "
    "rp-filter-forwarding finding, named with its fix)",
    "DEL and ADD the pod again; for a doctor finding, run the fix it names")
SUBNET_IN_USE = CODES.add(
    117, "this node's subnet or name changed while the old one is in use: a new subnet (lease taken by "
    "another node, another `subnetLen`) while pods use the old one (the bridge holds its gateway), or "
    "a `nodeName` (hostname) change while the node holds a lease under its old name; refused before "
    "the registry or the kernel is changed",
    "subnet: DEL the pods named in the message (the runtime's stop/remove), the next ADD moves the "
    "bridge to the new subnet; name: set nodeName back to the name in the message, or DEL the pods "
    "and `vxlan-agent --leave` under the old name first")
NODE_RENAMED = SUBNET_IN_USE      # the same code: this node's identity changed under running state
PODS_ATTACHED = CODES.add(
    118, "`vxlan-agent --leave` refused: pods are still attached to this node",
    "DEL the pods named in the message first, then leave again")
MASQ_FAILED = CODES.add(
    119, "iptables (ipMasq rules) failed, or iptables/iptables-save/iptables-restore is not installed",
    "install iptables; the message carries iptables' own error")

# What plugins/pkg raises, as codes a user can act on. vxlan never speaks to a dp, nft or tc;
# those kinds still get an owner so that nothing from shared code is a 999.
translate = CODES.translator({
    KERNEL: KERNEL_REFUSED,
    XTABLES_LOCK: TRY_AGAIN_LATER,     # another program holds the xtables lock: retry
    IPTABLES: MASQ_FAILED,
    NFT: MASQ_FAILED,
    TOOL_MISSING: MASQ_FAILED,         # the only tools vxlan runs are iptables-save/-restore
    DP: KERNEL_REFUSED,
    DP_TIMEOUT: TRY_AGAIN_LATER,       # a TimeoutError: a lock or a subprocess did not answer in time
    NETNS: INVALID_ENV,                # the pod's netns could not be entered
    IO: IO_FAILURE,
})
