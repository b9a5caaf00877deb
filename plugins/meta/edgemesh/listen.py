"""ensureListenDevice: a bridge-type `edgemesh0` holding the proxy's listen address(es).

With IPv6 the device holds listenAddress6 too, as a /128 with IFA_F_NODAD: no duplicate
address detection, so the proxy can bind it and the DNATed traffic reach it at once (a
tentative address is not local yet, and an empty bridge has no carrier for DAD to finish on).

edgemesh used a dummy device; dummy is not built into every kernel (this one included),
an empty bridge is, and an address on it is as local as on a dummy. A device we create is
marked in the very request that creates it: its device group is MARK_GROUP (the kernel applies
IFLA_GROUP at creation and ignores an alias there), so a plugin killed at any point leaves no
device or a marked one, and the DEL or GC that finds no edgemesh rule left removes only a
device so marked. The alias ALIAS, set right after, says the same to a reader of `ip link`
(and marks the devices of releases that set only the alias).

Raw rtnetlink through plugins.pkg.link (no pyroute2: an exec pays ~1 ms here, not ~100 ms).
"""
from __future__ import annotations

import errno
import os
import socket

from libcni_py.errors import CNIError

from .errors import LISTEN_FAILED

DEVICE = "edgemesh0"
ALIAS = "pycni edgemesh listen device"
MARK_GROUP = 0x70636E69         # device group 1885564521 ("pcni"): `ip link show group 1885564521`
IFA_F_NODAD = 0x02
_IFA_NOT_USABLE = 0x40 | 0x08   # IFA_F_TENTATIVE, IFA_F_DADFAILED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from plugins.pkg.link import Marks


def address_is_local(addr: str) -> bool:
    """Is `addr` a local address in this netns? IPv4 read from the FIB (no netlink): a leaf
    "|-- <addr>" followed by "/32 host LOCAL"; IPv6 from if_inet6, an address neither tentative
    nor failed DAD."""
    if ":" in addr:
        return _ipv6_is_local(addr)
    try:
        with open("/proc/thread-self/net/fib_trie") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    for i, line in enumerate(lines):
        if line.strip() == f"|-- {addr}":
            for follow in lines[i + 1:]:
                if not follow.strip().startswith("/"):
                    break
                if follow.strip() == "/32 host LOCAL":
                    return True
    return False


def _ipv6_is_local(addr: str) -> bool:
    import ipaddress
    want = ipaddress.IPv6Address(addr).packed.hex()
    try:
        with open("/proc/thread-self/net/if_inet6") as f:
            rows = [line.split() for line in f]
    except OSError:
        return False        # IPv6 disabled in this netns (no if_inet6): nothing is local
    return any(len(r) >= 5 and r[0] == want and not int(r[4], 16) & _IFA_NOT_USABLE for r in rows)


def present() -> bool:
    """Is there a link called edgemesh0 here (ours or not)? No netlink socket needed."""
    try:
        socket.if_nametoindex(DEVICE)
    except OSError:
        return False
    return True


def is_ours(m: Marks) -> bool:
    return m.group == MARK_GROUP or m.alias == ALIAS


def ensure(*addrs: str) -> bool:
    """Make every address in `addrs` (IPv4 or IPv6) local on edgemesh0 (created, marked, when
    missing); True when we created it."""
    missing = [a for a in addrs if not address_is_local(a)]
    if not missing:
        return False
    from plugins.pkg import link
    try:
        with link.open_rtnl() as rt:
            cur, created = link.marks(rt, DEVICE), False
            if cur is None:
                try:
                    link.create_marked(rt, DEVICE, "bridge", MARK_GROUP, up=True)
                    created = True
                except FileExistsError:
                    pass                         # a concurrent creator: look at what is there
                cur = link.marks(rt, DEVICE)
            if cur is None:
                raise ValueError(f"{DEVICE} vanished while it was being set up")
            if cur.kind != "bridge":
                raise ValueError(f"{DEVICE} exists and is a {cur.kind or 'kindless'} link, not a bridge")
            try:
                _set_up(rt, cur, missing, created)
            except BaseException:
                if created:                      # a failed ADD leaves no device of ours behind
                    link.delete_index(rt, cur.index)
                raise
            return created
    except (OSError, ValueError) as e:
        raise CNIError(LISTEN_FAILED, f"cannot put listen address {' and '.join(missing)} on {DEVICE}",
                       str(e)) from None


def _set_up(rt, cur, missing: list[str], created: bool) -> None:
    """The alias (on a device just created), the missing addresses, the link up: one batch."""
    import ipaddress

    from plugins.pkg import link
    from plugins.pkg import rtnl as nl
    msgs = [link.set_alias_msg(cur.index, ALIAS)] if created else []
    have = {a.address for a in rt.addrs(cur.index, family=socket.AF_UNSPEC)}
    for addr in missing:
        iface = ipaddress.ip_interface(f"{addr}/{128 if ':' in addr else 32}")
        if iface not in have:
            msgs.append(nl.addr_msg(True, cur.index, iface, flags=IFA_F_NODAD if ":" in addr else 0))
    if not cur.up:
        msgs.append(nl.link_set_msg(cur.index, up=True))
    for err in rt.batch(msgs) if msgs else ():
        if err and err != errno.EEXIST:      # EEXIST: the address, added by a concurrent ADD
            raise nl.NetlinkError(err, f"set up {DEVICE}: {os.strerror(err)}")


def remove_if_ours() -> bool:
    """Delete edgemesh0 when we created it (marked); True when deleted."""
    if not present():
        return False
    from plugins.pkg import link
    with link.open_rtnl() as rt:
        cur = link.marks(rt, DEVICE)
        if cur is None or not is_ours(cur):
            return False
        return link.delete_index(rt, cur.index)
