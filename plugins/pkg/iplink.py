"""Link helpers over pyroute2's IPRoute, for code that also needs its addresses, routes,
neighbours and tc: veth pairs across namespaces, renames, moves, deletes.

(plugins.pkg.link offers the same over a raw rtnetlink socket, without pyroute2.)
Every function takes an open IPRoute (`open_iproute(netns_path)`); pyroute2 is
imported lazily and lightly. Names are checked before they reach the kernel.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from plugins.pkg.names import check_ifname

IFF_UP = 0x1
_GONE = (errno.ENODEV, errno.ENOENT)


@dataclass
class LinkInfo:
    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    up: bool


def _light_pyroute2() -> None:
    """Let `import pyroute2.x` skip the package's eager __init__ (NDB, IPDB, CLI...: ~100 ms):
    a bare package object with the real search path stands in for it. No-op once imported."""
    import sys
    if "pyroute2" in sys.modules:
        return
    import importlib
    import importlib.util
    import types
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or not spec.submodule_search_locations:
        return
    mod = types.ModuleType("pyroute2")
    mod.__spec__, mod.__path__, mod.__file__ = spec, list(spec.submodule_search_locations), spec.origin
    mod.__package__, mod.__loader__ = "pyroute2", spec.loader

    def __getattr__(name: str):          # `from pyroute2 import X` elsewhere: run the real __init__
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:     # a submodule
            return importlib.import_module(f"pyroute2.{name}")
        del mod.__dict__["__getattr__"]
        spec.loader.exec_module(mod)
        return getattr(mod, name)

    mod.__getattr__ = __getattr__
    sys.modules["pyroute2"] = mod


def open_iproute(netns_path: str | None = None):
    """An IPRoute socket in `netns_path` (None: this namespace); it stays there. A context manager."""
    _light_pyroute2()
    from pyroute2.iproute.linux import IPRoute
    if netns_path is None:
        return IPRoute()
    from plugins.pkg.ns import enter
    with enter(netns_path):
        return IPRoute()


def netlink_error():
    """pyroute2's NetlinkError class, for `except`."""
    _light_pyroute2()
    from pyroute2.netlink.exceptions import NetlinkError
    return NetlinkError


def index_of(ipr, name: str) -> int | None:
    found = ipr.link_lookup(ifname=check_ifname(name))
    return found[0] if found else None


def info(ipr, name: str) -> LinkInfo | None:
    try:
        msg = ipr.link("get", ifname=check_ifname(name))[0]
    except netlink_error() as e:
        if e.code in _GONE:
            return None
        raise
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    return LinkInfo(index=msg["index"], name=msg.get_attr("IFLA_IFNAME"),
                    kind=(linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else "") or "",
                    mac=msg.get_attr("IFLA_ADDRESS") or "", mtu=msg.get_attr("IFLA_MTU") or 0,
                    up=bool(msg["flags"] & IFF_UP))


def create_veth(ipr, name: str, peer_name: str, *, mtu: int = 0, mac: str = "", index: int = 0,
                txqlen: int | None = None, peer_netns: str | None = None, peer_index: int = 0) -> int:
    """A veth pair: `name` here (with `mac`, `txqlen`, and ifindex `index` when not 0), `peer_name`
    here or in `peer_netns` (ifindex `peer_index` when not 0); `mtu` on both. Returns `name`'s index.
    Raises FileExistsError when a name or an ifindex is taken."""
    from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
    from pyroute2.netlink.rtnl import RTM_NEWLINK
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    peer_attrs = [("IFLA_IFNAME", check_ifname(peer_name))]
    attrs = [("IFLA_IFNAME", check_ifname(name))]
    if mtu:
        attrs.append(("IFLA_MTU", mtu))
        peer_attrs.append(("IFLA_MTU", mtu))
    if mac:
        attrs.append(("IFLA_ADDRESS", mac))
    if txqlen is not None:
        attrs.append(("IFLA_TXQLEN", txqlen))
    fd = os.open(peer_netns, os.O_RDONLY | os.O_CLOEXEC) if peer_netns else -1
    if fd >= 0:
        peer_attrs.append(("IFLA_NET_NS_FD", fd))
    msg = ifinfmsg()
    msg["index"] = index
    msg["attrs"] = attrs + [("IFLA_LINKINFO", {"attrs": [
        ("IFLA_INFO_KIND", "veth"),
        ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"index": peer_index, "attrs": peer_attrs})]})]})]
    try:
        ipr.nlm_request(msg, msg_type=RTM_NEWLINK,
                        msg_flags=NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
    except netlink_error() as e:
        if e.code in (errno.EEXIST, errno.EBUSY):
            raise FileExistsError(e.code, f"link {name} or {peer_name} (or its ifindex) exists") from None
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    return index_of(ipr, name)


def index_free(ipr, index: int) -> bool:
    """No link has ifindex `index` here."""
    try:
        ipr.link("get", index=index)
    except netlink_error() as e:
        if e.code in _GONE:
            return True
        raise
    return False


def set_link(ipr, index: int, *, name: str | None = None, mac: str | None = None,
             mtu: int | None = None, txqlen: int | None = None, up: bool | None = None) -> None:
    """Change the given attributes of link `index` in one request."""
    req: dict = {"index": index}
    if name is not None:
        req["ifname"] = check_ifname(name)
    if mac is not None:
        req["address"] = mac
    if mtu is not None:
        req["mtu"] = mtu
    if txqlen is not None:
        req["txqlen"] = txqlen
    if up is not None:
        req["state"] = "up" if up else "down"
    if len(req) > 1:
        ipr.link("set", **req)


def move_to_netns(ipr, index: int, netns_path: str, new_index: int = 0) -> None:
    """Move link `index` into the netns at `netns_path`. It keeps its ifindex there when free,
    or takes `new_index` where the kernel can be asked for one (Linux >= 6.5; older kernels
    ignore the wish, and a taken `new_index` falls back to the kernel's choice)."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if new_index:
            try:
                ipr.link("set", index=index, net_ns_fd=fd, new_ifindex=new_index)
                return
            except netlink_error() as e:
                if e.code not in (errno.EBUSY, errno.EEXIST, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
        ipr.link("set", index=index, net_ns_fd=fd)
    finally:
        os.close(fd)


def delete_if_exists(ipr, name: str) -> bool:
    """Delete link `name`; False when it was not there. A veth takes its peer with it."""
    index = index_of(ipr, name)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except netlink_error() as e:
        if e.code in _GONE:
            return False
        raise
    return True
