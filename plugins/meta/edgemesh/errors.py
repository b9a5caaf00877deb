"""edgemesh's error codes (140-159), each with its meaning and fix, and the one translation of
failures of shared code (plugins/pkg) into them. The README table lists exactly these."""
from __future__ import annotations

from libcni_py.errors import INVALID_ENV, IO_FAILURE
from plugins.pkg.errors import (DP, DP_TIMEOUT, IO, IPTABLES, KERNEL, NETNS, NFT, TOOL_MISSING,
                                XTABLES_LOCK, Codes)

CODES = Codes("edgemesh", 140, 159)

KNOWN_BAD_KERNEL = CODES.add(
    140, "kernel known bad: getsockopt(SO_ORIGINAL_DST) can hang the mesh proxy in D state",
    "boot a kernel outside 4.15.* and 4.14.22-4.14.40 (4.19.12 or later), or set allowKnownBadKernel")
RULES_FAILED = CODES.add(
    141, "iptables-restore or nft could not read or write the rules (nothing applied)",
    "see details; look for foreign objects named EDGE-MESH* or a table `ip edgemesh`")
NO_BACKEND = CODES.add(
    142, "the backend's tools are not installed (or none is), or the backend is unknown",
    "install iptables (iptables-save, iptables-restore) or nftables (nft), or use backend auto")
LISTEN_FAILED = CODES.add(
    143, "listenAddress cannot be put on edgemesh0 (e.g. the name is taken by a non-bridge link)",
    "free the name edgemesh0 or put the address on the node yourself (ensureListenDevice false)")
SERVICES_FILE_ERROR = CODES.add(
    144, "ignoredServicesFile cannot be read or holds an invalid entry (named)",
    "fix the file: a JSON list of {\"ip\": \"<IPv4 or IPv6>\", \"name\": \"<namespace>/<name>\"}")
RULES_DIFFER = CODES.add(
    145, "CHECK: the rules differ from the config (listed), or none are found",
    "run `edgemesh sync --config <conflist>` or ADD again")
NO_POD_ADDRESS = CODES.add(
    146, "no prevResult, or no address of a serviceCIDR family (IPv4, IPv6) for the pod's interface in it",
    "chain edgemesh after the plugin that gives the pod its addresses, or add the pod's family to serviceCIDR")
CONFIG_CONFLICT = CODES.add(
    147, "another network on this node applied a different edgemesh config to the shared chains",
    "give every network on the node the same serviceCIDR, listenAddress, listenPort, protocols, scope, "
    "ignoredServices and ignoredServicesFile, or remove the other network's pods first")
XTABLES_LOCKED = CODES.add(
    148, "another program held the xtables lock for 10 s (nothing applied)",
    "retry; find the holder with `fuser -v /run/xtables.lock` or `lsof /run/xtables.lock` "
    "(kube-proxy, a firewall reload)")
KERNEL_REFUSED = CODES.add(
    149, "the kernel refused a netlink request (the listen device edgemesh0 or its address)",
    "see details; check `ip link show edgemesh0` and `ip addr show dev edgemesh0`")
TIMED_OUT = CODES.add(
    150, "an operation timed out (a lock, iptables or nft did not answer)",
    "retry; look for a hung iptables, nft or edgemesh process holding the lock in stateDir")
NO_LISTENER = CODES.add(
    151, "CHECK: edgemesh's rules DNAT service traffic to a listen address and port where "
    "nothing listens (no mesh proxy): every hijacked service connection fails (pycni-doctor edgemesh-hijack)",
    "start the mesh proxy on listenAddress:listenPort and [listenAddress6]:listenPort (each hijacked protocol), "
    "or remove edgemesh from the network's config; checkProxy: false where the proxy starts after the pods")
TWO_BACKENDS = CODES.add(
    152, "CHECK: iptables-legacy and iptables-nft both hold rules in the node's netns, edgemesh's in one of "
    "them: each tool shows only its own, the kernel runs both (pycni-doctor edgemesh-hijack)",
    "keep one backend: the error names the stale one's tables and the command that flushes each")

# skel's hook: the code for a failure of shared code; the details start with the code's fix
# (plugins/pkg/errors.py), then the exception's text (e.g. iptables-restore's input).
translate = CODES.translator({
    KERNEL: KERNEL_REFUSED,
    XTABLES_LOCK: XTABLES_LOCKED,
    IPTABLES: RULES_FAILED,
    NFT: RULES_FAILED,
    TOOL_MISSING: NO_BACKEND,      # iptables-save/-restore or nft vanished under us
    NETNS: INVALID_ENV,            # only `edgemesh sync --netns PATH` enters one: the path is wrong
    DP: TIMED_OUT,                 # edgemesh talks to no dp; kept mapped so nothing is a 999
    DP_TIMEOUT: TIMED_OUT,
    IO: IO_FAILURE,
})
