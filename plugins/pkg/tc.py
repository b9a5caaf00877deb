"""Traffic-control helpers: ingress qdiscs, filters by priority, `tc -batch` in a netns.

Netlink through an open pyroute2 IPRoute (plugins.pkg.link.open_iproute) for what
pyroute2 does well (qdiscs, deleting and listing filters); the `tc` binary, fed on
stdin with `-batch -`, for filters whose actions pyroute2 cannot encode (pedit).
Nothing here knows CNI.
"""
from __future__ import annotations

import errno
import socket
import subprocess
from dataclasses import dataclass

INGRESS = 0xFFFF0000
ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
PROTOCOLS = {"all": ETH_P_ALL, "ip": ETH_P_IP}
_GONE = (errno.ENOENT, errno.ENODEV, errno.EINVAL)


class TCError(RuntimeError):
    pass


@dataclass
class Filter:
    pref: int
    protocol: int                  # host order: 0x0003 all, 0x0800 ip
    kind: str
    options: object                # the pyroute2 TCA_OPTIONS nla, or None


def _nlerr():
    from plugins.pkg.iplink import netlink_error
    return netlink_error()


def ensure_ingress(ipr, index: int) -> None:
    try:
        ipr.tc("add", "ingress", index, "ffff:")
    except _nlerr() as e:
        if e.code != errno.EEXIST:
            raise


def delete_ingress(ipr, index: int) -> bool:
    """Remove the ingress qdisc (and every filter under it); False when none was there."""
    try:
        ipr.tc("del", "ingress", index, "ffff:")
    except _nlerr() as e:
        if e.code in _GONE:
            return False
        raise
    return True


def delete_filter(ipr, index: int, pref: int, parent: int = INGRESS) -> bool:
    """Remove every filter at priority `pref` (any protocol); False when there was none."""
    try:
        ipr.tc("del-filter", index=index, parent=parent, info=(pref & 0xFFFF) << 16)
    except _nlerr() as e:
        if e.code in _GONE:
            return False
        raise
    return True


def filters(ipr, index: int, parent: int = INGRESS) -> list[Filter]:
    """The filter entries on a device (one per installed filter, chain heads skipped)."""
    try:
        msgs = ipr.get_filters(index=index, parent=parent)
    except _nlerr() as e:
        if e.code in _GONE:
            return []
        raise
    out = []
    for m in msgs:
        if not m["handle"]:
            continue
        out.append(Filter(pref=m["info"] >> 16, protocol=socket.ntohs(m["info"] & 0xFFFF),
                          kind=m.get_attr("TCA_KIND") or "", options=m.get_attr("TCA_OPTIONS")))
    return out


def run_batch(lines: list[list[str]], netns: str | None = None, binary: str = "tc") -> None:
    """Run `tc -batch -` (in netns `netns`) with one command per argv list (no leading 'tc').

    Every word is checked for characters that could split a batch line; the batch
    stops at the first failing command and raises TCError with tc's message.
    """
    text = []
    for argv in lines:
        for word in argv:
            if not word or any(c.isspace() or c in "\"'\\#" for c in word):
                raise TCError(f"refusing tc word {word!r}")
        text.append(" ".join(argv))
    from contextlib import nullcontext
    from plugins.pkg import ns
    with ns.enter(netns) if netns else nullcontext():
        p = subprocess.run([binary, "-batch", "-"], input="\n".join(text) + "\n",
                           capture_output=True, text=True)
    if p.returncode != 0:
        raise TCError(f"tc -batch failed: {p.stderr.strip()}")
