"""Traffic-control helpers: ingress qdiscs, filters by priority, cls_bpf filters.

Netlink over the raw rtnetlink socket of plugins.pkg.rtnl (no pyroute2) for the ingress
qdisc, listing and deleting filters and attaching a loaded eBPF program (each also for many
at once, in one round trip); dp-steering's u32 + pedit + mirred filters are netlink requests
too (datapath_pedit). No tc binary runs. Every function takes an open `Rtnl`
(plugins.pkg.link.open_rtnl). Nothing here knows CNI.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
from collections import namedtuple

from plugins.pkg import rtnl as nl

RTM_NEWQDISC, RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 36, 44, 45, 46
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_CLASSID, TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS = 3, 6, 7, 8
TCA_BPF_FLAG_ACT_DIRECT = 1
INGRESS = 0xFFFF0000           # the ingress qdisc's handle, the parent of its filters
TC_H_INGRESS = 0xFFFFFFF1      # where the ingress qdisc hangs
ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
ETH_P_IPV6 = 0x86DD
PROTOCOLS = {"all": ETH_P_ALL, "ip": ETH_P_IP, "ipv6": ETH_P_IPV6}
_GONE = (errno.ENOENT, errno.ENODEV, errno.EINVAL)
_TCM = struct.Struct("=BxxxiIII")        # family, ifindex, handle, parent, info


# protocol in host order (0x0003 all, 0x0800 ip); options: {TCA_<KIND>_* type: payload} of
# TCA_OPTIONS (rtnl.nla_parse).
Filter = namedtuple("Filter", "pref protocol kind options")


def _tcm(index: int, handle: int, parent: int, info: int = 0) -> bytes:
    return _TCM.pack(socket.AF_UNSPEC, index, handle, parent, info)


def ensure_ingress(rt: nl.Rtnl, index: int) -> None:
    """An ingress qdisc on link `index` (`tc qdisc add dev ... ingress`), kept if there."""
    ensure_ingress_all(rt, [index])


def ensure_ingress_all(rt: nl.Rtnl, indexes: list[int]) -> None:
    """ensure_ingress on each link, in one round trip (the first refusal raises, as ensure_ingress)."""
    msgs = [(RTM_NEWQDISC, nl.F_CREATE | nl.F_EXCL, _tcm(i, INGRESS, TC_H_INGRESS) + nl.nla(TCA_KIND, b"ingress\0"))
            for i in indexes]
    for index, err in zip(indexes, rt.batch(msgs)):
        if err and err != errno.EEXIST:
            raise nl.NetlinkError(err, f"ingress qdisc on link {index}: {os.strerror(err)}")


def delete_filters(rt: nl.Rtnl, prefs: list[tuple[int, int]], parent: int = INGRESS) -> list[bool]:
    """delete_filter for each (ifindex, pref), in one round trip; the first refusal raises."""
    errs = rt.batch([(RTM_DELTFILTER, 0, _tcm(index, 0, parent, (pref & 0xFFFF) << 16)) for index, pref in prefs])
    for (index, pref), err in zip(prefs, errs):
        if err and err not in _GONE:
            raise nl.NetlinkError(err, f"delete filter pref {pref} on link {index}: {os.strerror(err)}")
    return [not err for err in errs]


def delete_filter(rt: nl.Rtnl, index: int, pref: int, parent: int = INGRESS) -> bool:
    """Remove the filters at priority `pref` (any protocol); False when there were none."""
    return delete_filters(rt, [(index, pref)], parent)[0]


def _dump(rt: nl.Rtnl, index: int, parent: int, pref: int, gone: tuple[int, ...]) -> list:
    """RTM_GETTFILTER's answers for link `index` (`pref`: that priority alone, the kernel skips
    the others); [] when the kernel answers with an errno in `gone`."""
    try:
        return rt.dump(RTM_GETTFILTER, _tcm(index, 0, parent, pref << 16))
    except nl.NetlinkError as e:
        if e.errno in gone:
            return []
        raise


def filters(rt: nl.Rtnl, index: int, parent: int = INGRESS, pref: int = 0) -> list[Filter]:
    """The filter entries on a device (one per installed filter, chain heads skipped); `pref`:
    those of that priority alone (the dump does not grow with the device's other filters)."""
    out = []
    for _, p in _dump(rt, index, parent, pref, _GONE):
        _, ifindex, handle, _, info = _TCM.unpack_from(p)
        if not handle or ifindex != index or (pref and info >> 16 != pref):
            continue
        a = nl.nla_parse(p, _TCM.size)
        out.append(Filter(pref=info >> 16, protocol=socket.ntohs(info & 0xFFFF),
                          kind=a.get(TCA_KIND, b"").rstrip(b"\0").decode(),
                          options=nl.nla_parse(a[TCA_OPTIONS]) if TCA_OPTIONS in a else {}))
    return out


def pref_taken(rt: nl.Rtnl, index: int, pref: int, parent: int = INGRESS) -> bool:
    """Does anything on link `index` hold priority `pref` (a filter of any chain, kind or protocol,
    or a chain head with none: the kernel refuses another kind there too)? Asked for that priority
    alone. A missing link holds nothing; any other refusal (EINVAL: a request the kernel could not
    read) raises, never reads as free."""
    msgs = _dump(rt, index, parent, pref, (errno.ENOENT, errno.ENODEV))
    return any(_TCM.unpack_from(p)[1] == index and _TCM.unpack_from(p)[4] >> 16 == pref for _, p in msgs)


def add_bpf_filter(rt: nl.Rtnl, index: int, pref: int, protocol: int, prog_fd: int, name: str,
                   parent: int = INGRESS, classid: int = 1) -> None:
    """Attach a loaded SCHED_CLS program as a direct-action cls_bpf filter
    (`tc filter add dev ... pref P protocol X bpf da fd FD name NAME classid 1`)."""
    add_bpf_filters(rt, [(index, pref, protocol, prog_fd, name)], parent, classid)


def add_bpf_filters(rt: nl.Rtnl, filters: list[tuple[int, int, int, int, str]], parent: int = INGRESS,
                    classid: int = 1) -> None:
    """add_bpf_filter for each (ifindex, pref, protocol, prog_fd, name), in order, in one round
    trip; the first refusal raises (the kernel went on with the ones after it)."""
    msgs = []
    for index, pref, protocol, prog_fd, name in filters:
        options = (nl.nla(TCA_BPF_FD, struct.pack("=I", prog_fd)) + nl.nla(TCA_BPF_NAME, name.encode() + b"\0")
                   + nl.nla(TCA_BPF_FLAGS, struct.pack("=I", TCA_BPF_FLAG_ACT_DIRECT))
                   + nl.nla(TCA_BPF_CLASSID, struct.pack("=I", classid)))
        body = (_tcm(index, 1, parent, (pref & 0xFFFF) << 16 | socket.htons(protocol))
                + nl.nla(TCA_KIND, b"bpf\0") + nl.nla(TCA_OPTIONS, options))
        msgs.append((RTM_NEWTFILTER, nl.F_CREATE | nl.F_EXCL, body))
    for (index, pref, *_), err in zip(filters, rt.batch(msgs)):
        if err:
            raise nl.NetlinkError(err, f"bpf filter pref {pref} on link {index}: {os.strerror(err)}")
