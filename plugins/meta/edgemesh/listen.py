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
    from plugins.pkg import link
    try:
        with link.open_iproute() as ipr:
            created = link.info(ipr, DEVICE) is None
            dev = link.ensure_bridge(ipr, DEVICE)
            if created:
                ipr.link("set", index=dev.index, IFLA_IFALIAS=ALIAS)
            if not ipr.get_addr(index=dev.index, address=addr):
                ipr.addr("add", index=dev.index, address=addr, prefixlen=32)
            return created
    except (OSError, ValueError) as e:
        raise CNIError(LISTEN_FAILED, f"cannot put listen address {addr} on {DEVICE}", str(e)) from None


def remove_if_ours() -> bool:
    """Delete edgemesh0 when we created it; True when deleted."""
    try:
        socket.if_nametoindex(DEVICE)
    except OSError:
        return False
    from plugins.pkg import link
    with link.open_iproute() as ipr:
        msgs = ipr.link("get", ifname=DEVICE)
        if not msgs or msgs[0].get_attr("IFLA_IFALIAS") != ALIAS:
            return False
        ipr.link("del", index=msgs[0]["index"])
        return True


def _sysctl(name: str) -> str:
    try:
        with open(f"/proc/sys/{name}") as f:
            return f.read().strip()
    except OSError:
        return "0"
