"""Kernels on which the mesh proxy's getsockopt(SO_ORIGINAL_DST) is known to hang.

The proxy calls getsockopt(SOL_IP, SO_ORIGINAL_DST) for every hijacked connection.
A netfilter change of early 2018 (torvalds/linux@516c855cf514, reverted in effect by
torvalds/linux@485595768d89; both named in linkerd/linkerd2#982) made that call able to
deadlock, leaving the proxy in D state: it can no longer be killed and every hijacked
connection hangs. KubeEdge edgemesh met it on 4.15.6 (kubeedge/edgemesh#227). Add a row when a new bad
range is reported; every row names where it comes from.
"""
from __future__ import annotations

import os
import re

from libcni_py.errors import CNIError

from .errors import KNOWN_BAD_KERNEL


class Hazard:
    """Releases first..last (inclusive) of a series, and where the report comes from."""
    __slots__ = ("first", "last", "series", "source")

    def __init__(self, first: tuple[int, int, int], last: tuple[int, int, int], series: str, source: str):
        self.first, self.last, self.series, self.source = first, last, series, source


HAZARDS = (
    Hazard((4, 15, 0), (4, 15, 9999), "4.15",
           "KubeEdge edgemesh https://github.com/kubeedge/edgemesh/issues/227 (the edgemesh proxy "
           "hung in getsockopt on 4.15.6-1.el7.elrepo; 3.10.0-514 and 5.2.14 fine); the netfilter "
           "change torvalds/linux@516c855cf514 made nf_getsockopt() take the socket lock, fixed by "
           "torvalds/linux@485595768d89 (commits as named in linkerd2#982). redsocks#118 saw 4.15.7 "
           "work, but the whole series is refused to stay on the safe side"),
    Hazard((4, 14, 22), (4, 14, 40), "4.14.22-4.14.40",
           "https://github.com/linkerd/linkerd2/issues/982 (SO_ORIGINAL_DST deadlock between "
           "4.14.22 and 4.14.40, from the stable backport of the same netfilter change)"),
)

_RELEASE_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def parse_release(release: str) -> tuple[int, int, int] | None:
    """'4.15.6-1.el7.elrepo.x86_64' -> (4, 15, 6); None when it does not start with a version."""
    m = _RELEASE_RE.match(release or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def running_release() -> str:
    return os.uname().release


def hazard_for(release: str) -> Hazard | None:
    version = parse_release(release)
    if version is None:
        return None
    for h in HAZARDS:
        if h.first <= version <= h.last:
            return h
    return None


def error_for(release: str) -> CNIError | None:
    """The CNIError ADD raises on a known-bad kernel (None when the kernel is fine)."""
    h = hazard_for(release)
    if h is None:
        return None
    return CNIError(
        KNOWN_BAD_KERNEL,
        f"kernel {release} is known bad for edgemesh: getsockopt(SO_ORIGINAL_DST) can hang the "
        f"mesh proxy in D state on the {h.series} series",
        f"fix: boot a kernel outside {h.series} (4.19.12 or later; 3.10 was fine too), or set "
        f"allowKnownBadKernel: true to accept the risk. source: {h.source}")
