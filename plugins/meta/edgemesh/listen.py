"""ensureListenDevice: a bridge-type `edgemesh0` holding the proxy's listen address.

edgemesh used a dummy device; dummy is not built into every kernel (this one included),
an empty bridge is, and an address on it is as local as on a dummy. A device we create
carries an alias naming us, so the last DEL removes only what we made.
"""
from __future__ import annotations

import errno
import socket

from libcni_py.errors import CNIError

DEVICE = "edgemesh0"
ALIAS = "pycni edgemesh listen device"
LISTEN_FAILED = 143


def address_is_local(addr: str) -> bool:
    """Cheap test without netlink: can a socket bind to `addr` in this netns?"""
    if _sysctl("net/ipv4/ip_nonlocal_bind") != "0":
        return False                              # binding proves nothing then
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((addr, 0))
        return True
    except OSError as e:
        if e.errno == errno.EADDRNOTAVAIL:
            return False
        raise
    finally:
        s.close()


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


def _sysctl(name: str) -> str:
    try:
        with open(f"/proc/sys/{name}") as f:
            return f.read().strip()
    except OSError:
        return "0"
