"""The pod's plumbing: bridge with the subnet gateway, a veth pair, address and routes.

Host side: the bridge (`cni0` default) holds the gateway with the subnet's prefix (of each
family: the IPv6 one nodad), forwarding is on for each, and the host end of the pair (named
by names.host_veth) is a port of it, up, hairpin as configured. Pod side: CNI_IFNAME, MTU of
the vxlan devices (the smaller), the IPAM addresses (IPv6 ones nodad) and routes, and a
default route via the gateway of each family.
One raw netlink socket per namespace for the whole command (plugins.pkg.link, imported
by the functions that use it: VERSION and STATUS never need it).
"""
from __future__ import annotations

import errno
import ipaddress
import os
import struct

from libcni_py.errors import CNIError
from libcni_py.types import Interface, IPConfig, Route

from .errors import BAD_IPAM_RESULT, BRIDGE_CONFLICT, POD_DRIFT, VETH_EXISTS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

    from plugins.pkg.rtnl import Link, Rtnl

DEFAULT = "0.0.0.0/0"
DEFAULT6 = "::/0"
RTPROT_BOOT = 3          # what `ip route add` and Go's netlink use
IFA_F_NODAD = 0x02       # IPv6 addresses usable at once (IPAM made them unique)


class PodNet:
    """What every pod on this node shares; the IPv4 half ("" on an IPv6-only node) and the IPv6
    half (subnet6, gateway6, network6; "" on an IPv4-only node)."""

    def __init__(self, bridge: str, subnet: str, gateway: str, network: str, mtu: int,
                 hairpin: bool = False, default_route: bool = True, subnet6: str = "", gateway6: str = "",
                 network6: str = ""):
        self.bridge = bridge
        self.subnet = subnet             # this node's subnet, "10.244.1.0/24"
        self.gateway = gateway           # its first address, on the bridge
        self.network = network           # the cluster network
        self.mtu, self.hairpin, self.default_route = mtu, hairpin, default_route
        self.subnet6, self.gateway6, self.network6 = subnet6, gateway6, network6

    @property
    def gateway_cidr(self) -> str:
        return f"{self.gateway}/{ipaddress.ip_network(self.subnet).prefixlen}"

    @property
    def gateway6_cidr(self) -> str:
        return f"{self.gateway6}/{ipaddress.ip_network(self.subnet6).prefixlen}"

    def gateways(self) -> list:
        """The bridge's gateway interfaces, IPv4 then IPv6."""
        out: list = []
        if self.subnet:
            out.append(ipaddress.IPv4Interface(self.gateway_cidr))
        if self.subnet6:
            out.append(ipaddress.IPv6Interface(self.gateway6_cidr))
        return out

    def gateway_of(self, version: int) -> str:
        return self.gateway6 if version == 6 else self.gateway


class Attachment:
    """One pod interface: its netns and name, the host end of its pair, its addresses and routes."""
    __slots__ = ("netns", "ifname", "host_veth", "ips", "routes")

    def __init__(self, netns: str, ifname: str, host_veth: str, ips: list[IPConfig],
                 routes: list[Route] | None = None):
        self.netns, self.ifname, self.host_veth = netns, ifname, host_veth
        self.ips = ips
        self.routes = [] if routes is None else routes


def pod_routes(net: PodNet, ipam_routes: list[Route]) -> list[Route]:
    """IPAM's routes of the node's families (gateway filled in) plus a default route via the
    gateway of each family."""
    versions = {v for v, sub in ((4, net.subnet), (6, net.subnet6)) if sub}
    out = []
    for r in ipam_routes:
        dst = ipaddress.ip_network(r.dst, strict=False)
        if dst.version in versions:
            out.append(Route(dst=str(dst), gw=r.gw or net.gateway_of(dst.version)))
    if net.default_route:
        for version, default in ((4, DEFAULT), (6, DEFAULT6)):
            if version in versions and not any(r.dst == default for r in out):
                out.append(Route(dst=default, gw=net.gateway_of(version)))
    return out


def pod_ips(net: PodNet, ips: list[IPConfig]) -> list[IPConfig]:
    """The addresses of the IPAM result, each in this node's subnet of its family; at least one
    of each family the node has (host-local with two ranges gives one of each)."""
    subnets = {v: ipaddress.ip_network(sub) for v, sub in ((4, net.subnet), (6, net.subnet6)) if sub}
    out = []
    for ip in ips:
        iface = ipaddress.ip_interface(ip.address)
        subnet = subnets.get(iface.version)
        if subnet is None or iface.ip not in subnet:
            where = f"this node's subnet {subnet}" if subnet is not None else \
                f"the node's families (it has no IPv{iface.version} subnet)"
            raise CNIError(BAD_IPAM_RESULT, f"IPAM returned {ip.address}, outside {where}",
                           "an explicit ipam section must allocate from the node's subnets")
        out.append(IPConfig(address=ip.address, gateway=ip.gateway or net.gateway_of(iface.version), interface=2))
    for version in subnets:
        if not any(ipaddress.ip_interface(ip.address).version == version for ip in out):
            raise CNIError(BAD_IPAM_RESULT, f"IPAM returned no IPv{version} address",
                           "a dual-stack pod needs one address of each family: give host-local a range "
                           "of each (or omit ranges: the node's subnets are filled in)")
    return out


def ensure_bridge(rt: Rtnl, net: PodNet, found: tuple | None = None) -> Link:
    """The bridge, up, holding the gateway of each family (IPv6: nodad); forwarding on in this
    namespace for each family. `found`: (the bridge's link, its addresses) as the node's
    reconcile read them under the node lock (NodeInfo.bridge): an up bridge there is not looked
    up and its addresses not dumped again. That read is older than this call (the lock is gone,
    the IPAM plugin ran), so each gateway is sent all the same (the kernel's EEXIST when it is
    there: a leave, another ADD's repair or an agent's resync may have taken it since), and a
    bridge gone since (ENODEV) is looked up, made and addressed again as without `found`."""
    import socket
    from plugins.pkg import link, rtnl as nl
    if found is not None and found[0] is not None and found[0].kind == "bridge" and found[0].up:
        br, have_addrs = found
    else:
        found = None
        try:
            br = link.ensure_bridge(rt, net.bridge, mtu=net.mtu)
        except ValueError as e:
            raise CNIError(BRIDGE_CONFLICT, str(e)) from None
        have_addrs = [a.address for a in rt.addrs(br.index, socket.AF_UNSPEC)]
    for gw in net.gateways():
        cluster = ipaddress.ip_network(net.network6 if gw.version == 6 else net.network)
        for have in have_addrs:
            if have != gw and have.version == gw.version and have.ip in cluster:
                raise CNIError(BRIDGE_CONFLICT,
                               f"{net.bridge} already has an IP address {have} different from {gw}",
                               "the node's subnet changed; delete the bridge once its pods are gone")
        err = rt.batch([nl.addr_msg(True, br.index, gw, flags=IFA_F_NODAD if gw.version == 6 else 0)])[0]
        if err == errno.ENODEV and found is not None:
            return ensure_bridge(rt, net)          # the bridge read under the lock is gone
        if err and err != errno.EEXIST:
            raise nl.NetlinkError(err, f"add {gw} to {net.bridge}: {os.strerror(err)}")
        _enable_forwarding(gw.version)
    return br


def attach(rt_host: Rtnl, net: PodNet, br: Link, att: Attachment, pod_mac: str | None = None,
           undo: Callable[[], object] | None = None) -> tuple[Interface, Interface]:
    """Create and configure the pair; returns (host interface, pod interface). `pod_mac`: the pod
    end's MAC (the `mac` capability, CNI_ARGS MAC), random otherwise. `undo()` is called once the
    pair exists (the caller registers its removal then: a pair that existed before is not ours)."""
    from plugins.pkg import link, rtnl as nl
    host_mac, pod_mac = link.random_mac(), pod_mac or link.random_mac()
    try:
        idx = link.create_veth(rt_host, att.host_veth, att.ifname, att.netns, mtu=net.mtu, mac=host_mac,
                               peer_mac=pod_mac, master=br.index, up=True)
    except FileExistsError:
        raise CNIError(VETH_EXISTS, f"host interface {att.host_veth} or pod interface {att.ifname} already exists",
                       "DEL the earlier attachment of this container ID and ifname first") from None
    if undo is not None:
        undo()
    if net.hairpin:
        link.set_hairpin(rt_host, idx, True)
    with link.open_rtnl(att.netns) as rt_pod:
        pidx = rt_pod.link(att.ifname).index
        msgs = [nl.link_set_msg(pidx, up=True)]
        for ip in att.ips:
            iface = ipaddress.ip_interface(ip.address)
            msgs.append(nl.addr_msg(True, pidx, iface, flags=IFA_F_NODAD if iface.version == 6 else 0))
        msgs += [nl.route_any_msg("add", ipaddress.ip_network(r.dst), r.gw or None, pidx, RTPROT_BOOT)
                 for r in att.routes]
        for msg, err in zip(msgs, rt_pod.batch(msgs)):
            if err:
                what = {nl.RTM_NEWADDR: "address", nl.RTM_NEWROUTE: "route"}.get(msg[0], "link up")
                raise nl.NetlinkError(err, f"pod {att.ifname}: add {what}: {os.strerror(err)}")
    return (Interface(name=att.host_veth, mac=host_mac),
            Interface(name=att.ifname, mac=pod_mac, sandbox=att.netns))


def detach(rt_host: Rtnl, host_veth: str) -> bool:
    """Delete the pair by its host end (works when the pod netns is gone)."""
    from plugins.pkg import link
    return link.delete_if_exists(rt_host, host_veth)


def check(rt_host: Rtnl, net: PodNet, att: Attachment) -> None:
    """Raise POD_DRIFT naming the first missing or wrong piece (both families)."""
    import socket
    from plugins.pkg import link, rtnl as nl
    br = rt_host.link(net.bridge)
    if br is None or br.kind != "bridge":
        _drift(f"bridge {net.bridge} missing")
    on_bridge = {a.address for a in rt_host.addrs(br.index, socket.AF_UNSPEC)}
    for gw in net.gateways():
        if gw not in on_bridge:
            _drift(f"gateway {gw} missing on bridge {net.bridge}")
    host = rt_host.link(att.host_veth)
    if host is None:
        _drift(f"host veth {att.host_veth} missing")
    port = link.port(rt_host, host.index)
    if port is None or port.master != br.index or not host.up:
        _drift(f"host veth {att.host_veth} is not an up port of {net.bridge}")
    if net.hairpin and not port.hairpin:
        _drift(f"hairpin off on {att.host_veth}")
    try:
        rt_pod = link.open_rtnl(att.netns)
    except OSError as e:
        _drift(f"pod netns {att.netns} unusable: {e.strerror}")
    with rt_pod:
        pod = rt_pod.link(att.ifname)
        if pod is None:
            _drift(f"pod interface {att.ifname} missing in {att.netns}")
        if not pod.up or pod.mtu != net.mtu:
            _drift(f"pod interface {att.ifname} is {'up' if pod.up else 'down'} with MTU {pod.mtu}, "
                   f"want up with MTU {net.mtu}")
        have = sorted(str(a.address) for a in rt_pod.addrs(pod.index, socket.AF_UNSPEC)
                      if not (a.address.version == 6 and a.address.ip.is_link_local))
        for ip in att.ips:
            if _canonical(ip.address, ipaddress.ip_interface) not in have:
                _drift(f"address {ip.address} missing on pod interface {att.ifname} (has {have or 'none'})")
        v6 = any(":" in str(r.dst) for r in att.routes)        # no IPv6 dump on an IPv4-only pod
        routes = {(str(r.dst), str(r.gateway) if r.gateway else None)
                  for r in [*rt_pod.routes(), *(nl.routes6(rt_pod) if v6 else ())] if r.oif == pod.index}
        for r in att.routes:
            if (_canonical(r.dst, ipaddress.ip_network), _canonical_ip(r.gw) if r.gw else None) not in routes:
                _drift(f"route {r.dst} via {r.gw} missing on pod interface {att.ifname}")


def bridge_ports(rt: Rtnl, bridge_index: int) -> list[str]:
    """Names of the links enslaved to the bridge (one RTM_GETLINK dump)."""
    from plugins.pkg import link, rtnl as nl
    out = []
    for _, p in rt.dump(nl.RTM_GETLINK, link._ifi()):
        attrs = nl.nla_parse(p, link._IFI.size)
        raw = attrs.get(link.IFLA_MASTER)
        if raw and struct.unpack("=I", raw[:4])[0] == bridge_index:
            out.append(attrs.get(nl.IFLA_IFNAME, b"").rstrip(b"\0").decode())
    return sorted(out)


def stale_gateways(rt: Rtnl, bridge: str, network, keep, found: tuple | None = None) -> tuple[Link | None, list]:
    """The bridge and its addresses inside the cluster network (IPv4 or IPv6) other than `keep`
    (the gateway of this node's subnet): what an earlier subnet of this node left. `found`:
    (the bridge's link or None, its addresses of both families) when already read (bridge_found)."""
    import socket
    if found is None:
        br = rt.link(bridge)
        if br is None or br.kind != "bridge":
            return br, []
        family = socket.AF_INET6 if network.version == 6 else socket.AF_INET
        have = [a.address for a in rt.addrs(br.index, family)]
    else:
        br, have = found
        if br is None or br.kind != "bridge":
            return br, []
    return br, [a for a in have if a.version == network.version and a != keep and a.ip in network]


def bridge_found(rt: Rtnl, br: Link | None) -> tuple[Link | None, list]:
    """(`br`, its addresses of both families: one dump) for stale_gateways and ensure_bridge."""
    import socket
    if br is None or br.kind != "bridge":
        return br, []
    return br, [a.address for a in rt.addrs(br.index, socket.AF_UNSPEC)]


def remove_addresses(rt: Rtnl, br: Link, addrs: list[ipaddress.IPv4Interface]) -> None:
    """Take addresses off the bridge (their subnet routes go with them)."""
    from plugins.pkg import rtnl as nl
    for addr, err in zip(addrs, rt.batch([nl.addr_msg(False, br.index, a) for a in addrs])):
        if err and err not in (errno.EADDRNOTAVAIL, errno.ENOENT):
            raise nl.NetlinkError(err, f"remove {addr} from {br.name}: {os.strerror(err)}")


def _canonical(text: str, parse) -> str:
    """How the kernel prints an address or network; the text as given when it is none (a prevResult
    may hold anything: it is then reported missing, never a crash)."""
    try:
        return str(parse(text) if parse is ipaddress.ip_interface else parse(text, strict=False))
    except (ValueError, TypeError):
        return str(text)


def _canonical_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except (ValueError, TypeError):
        return str(text)


def _drift(what: str) -> NoReturn:
    raise CNIError(POD_DRIFT, f"CHECK: {what}")


def _enable_forwarding(version: int = 4) -> None:
    """net.ipv4.ip_forward (IPv6: net.ipv6.conf.all.forwarding) of the namespace this process
    runs in (Go's EnableIP4Forward / EnableIP6Forward)."""
    path = "/proc/sys/net/ipv6/conf/all/forwarding" if version == 6 else "/proc/sys/net/ipv4/ip_forward"
    with open(path) as f:
        if f.read().strip() == "1":
            return
    with open(path, "w") as f:
        f.write("1")
