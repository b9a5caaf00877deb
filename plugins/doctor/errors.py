"""doctor's own failures (160-179): the doctor could not run (exit 2). Findings are not errors."""
from __future__ import annotations

from plugins.pkg.errors import DP, DP_TIMEOUT, IO, IPTABLES, KERNEL, NETNS, NFT, TOOL_MISSING, XTABLES_LOCK, Codes

CODES = Codes("doctor", 160, 179)

NOT_ROOT = CODES.add(
    160, "doctor needs root to enter other network namespaces and read their rules",
    "run it as root (sudo pycni-doctor)")
BAD_ARGUMENTS = CODES.add(
    161, "a command-line argument is wrong (an unknown flag or a missing value)",
    "see `pycni-doctor --help`")
UNKNOWN_CHECK = CODES.add(
    162, "--check names no diagnosis",
    "use one of the names `pycni-doctor --list-checks` prints")
NETNS_UNUSABLE = CODES.add(
    163, "--netns is not a network namespace, or it cannot be entered",
    "give a path such as /run/netns/NAME or /proc/PID/ns/net")
CHECK_FAILED = CODES.add(
    164, "a diagnosis could not finish in a namespace (a tool failed or hung, netlink refused)",
    "see details; the other diagnoses and namespaces were still checked")
BAD_CONF = CODES.add(
    165, "a --conf file cannot be read or is not a CNI network config (.conf) or list (.conflist)",
    "give the file the runtime reads, e.g. /etc/cni/net.d/10-vxlan.conflist; see details for what is wrong")

# A failure of shared code (plugins/pkg) inside a diagnosis: that diagnosis could not finish there;
# a namespace that cannot be entered is the --netns one. Same hook shape as the plugins' translate.
translate = CODES.translator({KERNEL: CHECK_FAILED, XTABLES_LOCK: CHECK_FAILED, IPTABLES: CHECK_FAILED,
                              NFT: CHECK_FAILED, DP: CHECK_FAILED, DP_TIMEOUT: CHECK_FAILED,
                              NETNS: NETNS_UNUSABLE, TOOL_MISSING: CHECK_FAILED, IO: CHECK_FAILED})
