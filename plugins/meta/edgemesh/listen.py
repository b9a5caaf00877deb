"""ensureListenDevice: a bridge-type `edgemesh0` holding the proxy's listen address.

edgemesh used a dummy device; dummy is not built into every kernel (this one included),
an empty bridge is, and an address on it is as local as on a dummy. A device we create
carries an alias naming us, so the last DEL removes only what we made.
"""
from __future__ import annotations

import socket

from libcni_py.errors import CNIError

from .errors import LISTEN_FAILED

DEVICE = "edgemesh0"
ALIAS = "pycni edgemesh listen device"


def address_is_local(addr: str) -> bool:
    """Is `addr` a local address in this netns? Read from the FIB (no netlink, no pyroute2):
    a leaf "|-- <addr>" followed by "/32 host LOCAL"."""
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


def ensure(addr: str) -> bool:
    """Make `addr` local on edgemesh0 (created when missing); True when we created it."""
    if address_is_local(addr):
        return False
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    try:
        with IPRoute() as ipr:
            created = not ipr.link_lookup(ifname=DEVICE)
            if created:
                ipr.link("add", ifname=DEVICE, kind="bridge")
            link = ipr.link("get", ifname=DEVICE)[0]
            if created:                            # the kernel ignores an alias given at creation
                ipr.link("set", index=link["index"], IFLA_IFALIAS=ALIAS)
            kind = link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND")
            if kind != "bridge":
                raise ValueError(f"{DEVICE} exists and is a {kind} link, not a bridge")
            if not ipr.get_addr(index=link["index"], address=addr):
                ipr.addr("add", index=link["index"], address=addr, prefixlen=32)
            ipr.link("set", index=link["index"], state="up")
            return created
    except (NetlinkError, OSError, ValueError) as e:
        raise CNIError(LISTEN_FAILED, f"cannot put listen address {addr} on {DEVICE}", str(e)) from None


def remove_if_ours() -> bool:
    """Delete edgemesh0 when we created it; True when deleted."""
    try:
        socket.if_nametoindex(DEVICE)
    except OSError:
        return False
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        link = ipr.link("get", ifname=DEVICE)[0]
        if link.get_attr("IFLA_IFALIAS") != ALIAS:
            return False
        ipr.link("del", index=link["index"])
        return True
