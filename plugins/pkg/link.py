"""Generic link helpers over pyroute2: veth pairs across namespaces, bridges, attributes.

Nothing here knows CNI. Every function takes an open IPRoute (`open_iproute`), so a
caller keeps one netlink socket per namespace for a whole command. Names are
checked with plugins.pkg.names before they reach the kernel.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from plugins.pkg.names import check_ifname

IFF_UP = 0x1


@dataclass
class LinkInfo:
    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    master: int
    up: bool
    hairpin: bool | None = None     # None: not a bridge port


def open_iproute(netns_path: str | None = None):
    """One IPRoute socket in `netns_path` (None: this namespace), pyroute2 imported lazily."""
    from plugins.pkg import lazy_pyroute2
    lazy_pyroute2.install()
    from plugins.pkg.ns import iproute
    return iproute(netns_path)


def netlink_error():
    """pyroute2's NetlinkError class (for `except`), without importing pyroute2 eagerly."""
    from plugins.pkg import lazy_pyroute2
    lazy_pyroute2.install()
    from pyroute2.netlink.exceptions import NetlinkError
    return NetlinkError


def random_mac() -> str:
    """A random locally administered unicast MAC."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def index_of(ipr, name: str) -> int | None:
    found = ipr.link_lookup(ifname=check_ifname(name))
    return found[0] if found else None


def info(ipr, name: str) -> LinkInfo | None:
    """What a link is, or None when there is no link of that name."""
    try:
        msg = ipr.link("get", ifname=check_ifname(name))[0]
    except netlink_error() as e:
        if e.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return _to_info(msg)


def _to_info(msg) -> LinkInfo:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind, hairpin = "", None
    if linkinfo is not None:
        kind = linkinfo.get_attr("IFLA_INFO_KIND") or ""
        slave = linkinfo.get_attr("IFLA_INFO_SLAVE_DATA")
        if linkinfo.get_attr("IFLA_INFO_SLAVE_KIND") == "bridge" and slave is not None:
            hairpin = bool(slave.get_attr("IFLA_BRPORT_MODE"))
    return LinkInfo(index=msg["index"], name=msg.get_attr("IFLA_IFNAME"), kind=kind,
                    mac=msg.get_attr("IFLA_ADDRESS") or "", mtu=msg.get_attr("IFLA_MTU") or 0,
                    master=msg.get_attr("IFLA_MASTER") or 0, up=bool(msg["flags"] & IFF_UP),
                    hairpin=hairpin)


def create_veth(ipr, name: str, peer_name: str, peer_netns: str | None = None, *,
                mtu: int = 0, mac: str = "", peer_mac: str = "", master: int = 0,
                up: bool = False) -> int:
    """Create the pair in one request: `name` here, `peer_name` in `peer_netns` (a path).

    `master` (an ifindex) and `up` apply to `name`. Returns the index of `name`.
    Raises FileExistsError when a link called `name` is here already.
    """
    check_ifname(name)
    check_ifname(peer_name)
    peer: dict = {"ifname": peer_name}
    fd = -1
    if peer_netns is not None:
        fd = os.open(peer_netns, os.O_RDONLY | os.O_CLOEXEC)
        peer["net_ns_fd"] = fd
    if mtu:
        peer["mtu"] = mtu
    if peer_mac:
        peer["address"] = peer_mac
    req: dict = {"ifname": name, "kind": "veth", "peer": peer}
    if mtu:
        req["mtu"] = mtu
    if mac:
        req["address"] = mac
    if master:
        req["master"] = master
    if up:
        req["state"] = "up"
    try:
        ipr.link("add", **req)
    except netlink_error() as e:
        if e.code == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, f"link {name} (or {peer_name} in the peer namespace) exists") from None
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    return index_of(ipr, name)


def ensure_bridge(ipr, name: str, *, mtu: int = 0, mac: str = "") -> LinkInfo:
    """The bridge called `name`, created (with a fixed MAC, so ports never change it) and up.

    Safe against a concurrent creator. Raises ValueError when `name` is another kind of link.
    """
    cur = info(ipr, name)
    if cur is None:
        req = {"ifname": name, "kind": "bridge", "address": mac or random_mac()}
        if mtu:
            req["mtu"] = mtu
        try:
            ipr.link("add", **req)
        except netlink_error() as e:
            if e.code != errno.EEXIST:
                raise
        cur = info(ipr, name)
    if cur is None or cur.kind != "bridge":
        raise ValueError(f"link {name} exists and is not a bridge (kind {cur.kind if cur else '?'!r})")
    if not cur.up:
        ipr.link("set", index=cur.index, state="up")
        cur.up = True
    return cur


def set_link(ipr, index: int, *, mtu: int | None = None, mac: str | None = None,
             up: bool | None = None, master: int | None = None, name: str | None = None) -> None:
    """Change the given attributes of link `index` in one request (rename, MAC, MTU, master, state)."""
    req: dict = {"index": index}
    if name is not None:
        req["ifname"] = check_ifname(name)
    if mtu is not None:
        req["mtu"] = mtu
    if mac is not None:
        req["address"] = mac
    if master is not None:
        req["master"] = master
    if up is not None:
        req["state"] = "up" if up else "down"
    if len(req) > 1:
        ipr.link("set", **req)


def set_hairpin(ipr, index: int, on: bool = True) -> None:
    """Hairpin (reflective relay) on a bridge port."""
    ipr.link("set", index=index, kind="bridge_slave", mode=1 if on else 0)


def move_to_netns(ipr, index: int, netns_path: str, new_name: str | None = None) -> None:
    """Move link `index` into the namespace at `netns_path` (optionally renaming it)."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        req = {"index": index, "net_ns_fd": fd}
        if new_name is not None:
            req["ifname"] = check_ifname(new_name)
        ipr.link("set", **req)
    finally:
        os.close(fd)


def delete_if_exists(ipr, name: str) -> bool:
    """Delete link `name`; False when it was not there. Deleting a veth end removes the pair."""
    idx = index_of(ipr, name)
    if idx is None:
        return False
    try:
        ipr.link("del", index=idx)
    except netlink_error() as e:
        if e.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True
