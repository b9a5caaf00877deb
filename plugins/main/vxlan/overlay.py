"""The overlay API the pod half (cmd.py, pod.py) and the agent call.

    cfg = node_config(conf)       # parse and check the node keys; touches nothing
    info = ensure_node(cfg)       # lease, device, one reconcile; current netns = the host
    check_node(cfg)               # NodeInfo, or CNIError(109/110/111) naming the first drift
    registry_status(cfg)          # CNIError(50) when the registry cannot be read
    leave_node(cfg)               # drop this node's lease (and, optionally, its device)
    ensure_applied(cfg) / follow_change(cfg, applied, snapshot)   # the agent's full and delta steps

Everything runs in the network namespace current at the call, under a flock of
`<stateDir>/node.lock`, with one raw rtnetlink socket (no pyroute2 import).

Each family the config has (`network`, `ipv6Network`) has its device (vxlan.<vni>,
vxlan-v6.<vni>) and its per-peer trio, programmed by the same steps in the same order;
the lease carries both halves and is taken in one registry update.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket

from libcni_py.errors import CNIError, PLUGIN_NOT_AVAILABLE
from plugins.pkg.lock import locked
from plugins.pkg.log import get_logger
from .config import DEFAULT_STATE_ROOT, NetConf, load
from . import errors
from .errors import DEVICE_DRIFT, LEASE_LOST, PEER_DRIFT, PODS_ATTACHED, SUBNET_IN_USE
from .registry import open_registry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from plugins.pkg.rtnl import Rtnl
    from .registry import Registry

log = get_logger("pycni.vxlan")
__all__ = ["DEFAULT_STATE_ROOT", "NetConf", "NodeInfo", "node_config"]


class NodeInfo:
    """The node as a reconcile left it. The IPv4 fields are None on an IPv6-only node, the IPv6
    ones (subnet6, gateway6, device6, mtu6, public_ip6, network6) on an IPv4-only one; `mtu` is
    what pods get: the smaller of the devices' MTUs."""
    __slots__ = ("subnet", "gateway", "device", "mtu", "vtep_mac", "public_ip", "network", "node_name",
                 "changes", "revision", "subnet6", "gateway6", "device6", "mtu6", "public_ip6", "network6",
                 "bridge")

    def __init__(self, subnet: ipaddress.IPv4Network | None, gateway: ipaddress.IPv4Address | None,
                 device: str | None, mtu: int, vtep_mac: str, public_ip: ipaddress.IPv4Address | None,
                 network: ipaddress.IPv4Network | None, node_name: str = "", changes: int = 0,
                 revision: int = 0, subnet6: ipaddress.IPv6Network | None = None,
                 gateway6: ipaddress.IPv6Address | None = None, device6: str | None = None, mtu6: int = 0,
                 public_ip6: ipaddress.IPv6Address | None = None, network6: ipaddress.IPv6Network | None = None):
        self.subnet, self.gateway = subnet, gateway      # gateway: first address of the subnet (the bridge's)
        self.device, self.mtu, self.vtep_mac, self.public_ip = device, mtu, vtep_mac, public_ip
        self.network, self.node_name = network, node_name
        self.changes = changes                           # peer entries added/removed by this call
        self.revision = revision                         # registry revision the peers were reconciled to
        self.subnet6, self.gateway6, self.device6, self.mtu6 = subnet6, gateway6, device6, mtu6
        self.public_ip6, self.network6 = public_ip6, network6
        self.bridge: tuple | None = None                 # (bridge link, its addresses) as the reconcile
        #                                                  read them under the node lock (pod.ensure_bridge)

    def with_changes(self, changes: int, revision: int) -> NodeInfo:
        return NodeInfo(self.subnet, self.gateway, self.device, self.mtu, self.vtep_mac, self.public_ip,
                        self.network, self.node_name, changes, revision, self.subnet6, self.gateway6,
                        self.device6, self.mtu6, self.public_ip6, self.network6)


def node_config(conf: dict, command: str = "ADD", cni_args: str = "") -> NetConf:
    """config.load: the NetConf of a vxlan plugin config."""
    return load(conf, command, cni_args)


def _registry(cfg: NetConf) -> Registry:
    """The registry the config names (etcd: its checked options; only vxlan-agent opens etcd)."""
    if cfg.registry_type == "etcd":
        return open_registry("etcd", cfg.registry_options, cfg.registry_ttl)     # type: ignore[arg-type]
    return open_registry(cfg.registry_type, cfg.registry_path, cfg.registry_ttl)


def agent_owned(cfg: NetConf) -> bool:
    """With an etcd registry the node agent owns the overlay: the per-pod plugin reads its state file."""
    return cfg.registry_type == "etcd"


def ensure_node(cfg: NetConf, hold: Callable[[Rtnl, NodeInfo], None] | None = None) -> NodeInfo:
    """Join or renew the lease, ensure the device, reconcile peer entries once. `hold(rt, info)` runs
    at the end, still under the node lock (ADD records its attachment there, so a concurrent
    `vxlan-agent --leave` sees the pod).

    With an etcd registry (agent_owned) the node is vxlan-agent's: this reads its state file, checks
    the device and the bridge only (nothing grows with the number of peers) and never opens etcd;
    CNIError(11) when no live agent wrote that file."""
    if agent_owned(cfg):
        return _from_agent(cfg, hold)
    alive = _agent_alive(cfg)
    if alive is not None:
        return _from_agent(cfg, hold, alive)
    return ensure_applied(cfg, hold).info


def _agent_alive(cfg: NetConf) -> dict | None:
    """File registry: a live vxlan-agent of this node keeps the lease and the peers, so ADD reads its
    state as with etcd (its cost does not grow with the cluster); without one ADD joins and reconciles.
    The agent's state when it is live (read once: _from_agent takes it), else None."""
    from . import lease
    doc, _ = lease.agent_state(cfg.state_dir)
    return doc if doc is not None and doc.get("node") == cfg.node_name and doc.get("registry") == "up" else None


def _live_agent(cfg: NetConf) -> dict:
    from libcni_py.errors import TRY_AGAIN_LATER
    from . import lease
    doc, why = lease.agent_state(cfg.state_dir)
    if doc is not None and doc.get("node") != cfg.node_name:
        why = f"the agent state names node {doc.get('node')!r}, not {cfg.node_name!r}"
        doc = None
    if doc is None:
        raise CNIError(TRY_AGAIN_LATER, f"vxlan: node {cfg.node_name} is not ready: {why}",
                       "start vxlan-agent on this node (systemctl start vxlan-agent, or "
                       "`vxlan-agent --conf <this conflist>`): with an etcd registry it holds the lease "
                       "and programs the overlay; pods are added once it is up")
    return doc


def _from_agent(cfg: NetConf, hold: Callable[[Rtnl, NodeInfo], None] | None, doc: dict | None = None) -> NodeInfo:
    """ADD with an agent-owned overlay: the agent's lease, the device as it left it, the bridge.
    `doc`: the agent's state as _agent_alive read it (else read here)."""
    from libcni_py.errors import TRY_AGAIN_LATER
    from plugins.pkg.rtnl import Rtnl
    from . import lease, pod
    doc = _live_agent(cfg) if doc is None else doc
    mine = lease.agent_lease(doc)
    with locked(os.path.join(cfg.state_dir, "node.lock")), Rtnl() as rt:
        found = {}
        for name in _device_names(cfg):
            link = rt.link(name)
            if link is None or link.kind != "vxlan" or not link.up or link.mac != mine.vtep_mac:
                what = "missing" if link is None else \
                    f"{link.kind or 'not vxlan'}, {'up' if link.up else 'down'}, MAC {link.mac}"
                raise CNIError(TRY_AGAIN_LATER, f"vxlan: device {name} is not as vxlan-agent makes it "
                               f"({what}; the lease says MAC {mine.vtep_mac})",
                               "vxlan-agent repairs it on its next resync; if it keeps failing, see its log")
            found[name] = link
        _lease_families(cfg, mine)
        bridge = pod.bridge_found(rt, _vet_bridge(rt, cfg))       # one lookup and one dump for the ADD
        repaired = repair_bridge(rt, cfg, mine.subnet, mine.subnet6, found=bridge)
        info = _info(cfg, mine, found.get(cfg.device_name), 0, int(doc.get("revision", 0)),
                     found.get(cfg.device6_name))
        info.bridge = None if repaired else bridge
        if hold is not None:
            hold(rt, info)
    return info


class Applied:
    """What a node last programmed: lets the agent apply a registry change as a delta (the IPv6
    device's underlay, index and peers beside the IPv4 ones; None/0/() for a family not configured)."""
    __slots__ = ("info", "lease", "underlay", "dev_index", "peers", "leases", "network",
                 "underlay6", "dev6_index", "peers6")

    def __init__(self, info: NodeInfo, lease, underlay, dev_index: int, peers: tuple,
                 leases: dict | None = None, network=None, underlay6=None, dev6_index: int = 0,
                 peers6: tuple = ()):
        self.info = info
        self.leases = leases if leases is not None else {}     # registry.Lease by node, as applied
        self.network = network            # the registry's NetworkRecord
        self.lease = lease                # registry.Lease
        self.underlay = underlay          # device.Underlay
        self.dev_index = dev_index
        self.peers = peers                # peers.Peer, as programmed
        self.underlay6, self.dev6_index, self.peers6 = underlay6, dev6_index, peers6


class _Stats:
    """peers.Stats of both families, summed."""

    def __init__(self, *stats):
        self.added = sum(s.added for s in stats)
        self.deleted = sum(s.deleted for s in stats)

    @property
    def changes(self) -> int:
        return self.added + self.deleted


def _device_names(cfg: NetConf) -> list[str]:
    return ([cfg.device_name] if cfg.network is not None else []) + \
        ([cfg.device6_name] if cfg.network6 is not None else [])


def _lease_families(cfg: NetConf, mine) -> None:
    """CNIError(111) when this node's lease lacks a family its config has (an agent or a registry
    document of another config, or one a pre-IPv6 node rewrote): the next acquire fixes it."""
    pairs = (("network", cfg.network, mine.subnet), ("ipv6Network", cfg.network6, mine.subnet6))
    missing = [key for key, net, sub in pairs if net is not None and sub is None]
    if missing:
        raise CNIError(LEASE_LOST, f"node {cfg.node_name}'s lease has no subnet of {' and '.join(missing)}",
                       "the agent (or the next ADD) takes one; if it stays, check that every node's "
                       "config has the same network keys")


def ensure_applied(cfg: NetConf, hold: Callable[[Rtnl, NodeInfo], None] | None = None,
                   reg: Registry | None = None) -> Applied:
    """ensure_node, also returning what was programmed (for follow_change).

    Refusals come before the registry or the kernel is changed: a `deviceName` or `bridge` naming a
    link that is not ours (107, 113), this node holding a lease under another name (117), a new
    subnet while pods use the old one (117, vetted inside the registry update)."""
    from plugins.pkg.rtnl import Rtnl
    from . import device, lease, peers, pod
    reg = _registry(cfg) if reg is None else reg
    with locked(os.path.join(cfg.state_dir, "node.lock")), Rtnl() as rt:
        v4, v6 = cfg.network is not None, cfg.network6 is not None
        underlay = device.find_underlay(rt, cfg) if v4 else None
        underlay6 = device.find_underlay6(rt, cfg, underlay) if v6 else None
        mark = device.mark(cfg.name)
        have = device.vet(rt, cfg.device_name, mark, cfg.vni, cfg.port, underlay,
                          lambda: lease.expected_mac(reg, cfg)) if v4 else None
        have6 = device.vet(rt, cfg.device6_name, mark, cfg.vni, cfg.port, underlay6,
                           lambda: lease.expected_mac(reg, cfg)) if v6 else None
        bridge = pod.bridge_found(rt, _vet_bridge(rt, cfg))       # one lookup and one dump for the ADD
        mac_now = next((d.mac for d in (have, have6) if d is not None), "")
        mine, snap = lease.acquire(reg, cfg, underlay.public_ip if underlay is not None else None,
                                   vet=lambda new: _bridge_problem(rt, cfg, new.subnet, new.subnet6, bridge),
                                   device_mac=mac_now,
                                   public_ip6=underlay6.public_ip if underlay6 is not None else None)
        # before peers: an old gateway's route is in a peer's place
        repaired = repair_bridge(rt, cfg, mine.subnet, mine.subnet6, found=bridge)
        link = link6 = None
        wanted: list = []
        wanted6: list = []
        stats = []
        if underlay is not None:
            link = device.ensure(rt, device.want(cfg, mine, underlay))
            wanted = peers.desired(snap.leases.values(), cfg.node_name, link.index, underlay, cfg.direct_routing)
            stats.append(peers.reconcile(rt, link.index, cfg.cluster, wanted))
        if underlay6 is not None:
            link6 = device.ensure(rt, device.want6(cfg, mine, underlay6))
            wanted6 = peers.desired(snap.leases.values(), cfg.node_name, link6.index, underlay6,
                                    cfg.direct_routing, family=6)
            stats.append(peers.reconcile(rt, link6.index, cfg.cluster6, wanted6))
        total = _Stats(*stats)
        info = _info(cfg, mine, link, total.changes, snap.revision, link6)
        info.bridge = None if repaired else bridge
        if hold is not None:
            hold(rt, info)
    _log_changes(cfg, total, snap.revision)
    return Applied(info, mine, underlay, link.index if link is not None else 0, tuple(wanted), dict(snap.leases),
                   snap.network, underlay6, link6.index if link6 is not None else 0, tuple(wanted6))


def _vet_bridge(rt: Rtnl, cfg: NetConf):
    """CNIError(113) when `bridge` names a link that is not a bridge (the uplink, a veth, our own
    vxlan device): refused before anything is changed, and that link is never touched. Returns
    the bridge's link (None: there is none yet)."""
    from .errors import BRIDGE_CONFLICT
    br = rt.link(cfg.bridge)
    if br is not None and br.kind != "bridge":
        raise CNIError(BRIDGE_CONFLICT, f"bridge {cfg.bridge!r} names a {br.kind or 'device'} link "
                       f"(index {br.index}), not a bridge: left as it is", errors.BRIDGE_CONFLICT.fix)
    return br


def follow_change(cfg: NetConf, applied: Applied, snap, reg: Registry | None = None) -> Applied:
    """Apply a newer registry snapshot: only the peers that changed, from what `applied` says is
    programmed (no kernel dumps). Anything unexpected (own lease changed, the kernel refusing an
    entry because it is not as assumed) falls back to a full ensure_node."""
    from plugins.pkg.rtnl import Rtnl
    from . import peers
    mine = snap.leases.get(cfg.node_name)
    if mine is None or not mine.same_binding(applied.lease):
        return ensure_applied(cfg, reg=reg)
    plans: list = []    # (family, device index, network, underlay, peers as programmed)
    if applied.underlay is not None:
        plans.append((4, applied.dev_index, cfg.cluster, applied.underlay, applied.peers))
    if applied.underlay6 is not None:
        plans.append((6, applied.dev6_index, cfg.cluster6, applied.underlay6, applied.peers6))
    news, stats = {}, []
    try:
        with locked(os.path.join(cfg.state_dir, "node.lock")), Rtnl() as rt:
            for family, index, network, underlay, programmed in plans:
                old = {p.node: p for p in programmed}
                new = peers.desired(snap.leases.values(), cfg.node_name, index, underlay, cfg.direct_routing,
                                    family=family)
                changed = [p for p in new if old.get(p.node) != p]
                touched = {p.node for p in changed} | (set(old) - {p.node for p in new})
                stats.append(peers.reconcile(rt, index, network, changed,
                                             peers.assumed([old[n] for n in touched if n in old])))
                news[family] = tuple(new)
    except CNIError as e:
        log.warning("delta apply failed (%s); doing a full reconcile", e)
        return ensure_applied(cfg, reg=reg)
    total = _Stats(*stats)
    _log_changes(cfg, total, snap.revision)
    info = applied.info.with_changes(total.changes, snap.revision)
    return Applied(info, applied.lease, applied.underlay, applied.dev_index, news.get(4, ()), dict(snap.leases),
                   snap.network, applied.underlay6, applied.dev6_index, news.get(6, ()))


def _log_changes(cfg: NetConf, stats, revision: int) -> None:
    if stats.changes:
        log.info("node %s: %d peer entries added, %d removed (registry revision %d)",
                 cfg.node_name, stats.added, stats.deleted, revision)


def _info(cfg: NetConf, mine, link, changes: int, revision: int, link6=None) -> NodeInfo:
    v4 = link is not None and mine.subnet is not None
    v6 = link6 is not None and mine.subnet6 is not None
    mtus = [lk.mtu for lk, on in ((link, v4), (link6, v6)) if on]
    return NodeInfo(mine.subnet if v4 else None, mine.subnet.network_address + 1 if v4 else None,
                    link.name if v4 else None, min(mtus) if mtus else 0, mine.vtep_mac,
                    mine.public_ip if v4 else None, cfg.network if v4 else None, cfg.node_name, changes, revision,
                    mine.subnet6 if v6 else None, mine.subnet6.network_address + 1 if v6 else None,
                    link6.name if v6 else None, link6.mtu if v6 else 0, mine.public_ip6 if v6 else None,
                    cfg.network6 if v6 else None)


def check_node(cfg: NetConf) -> NodeInfo:
    """Raise CNIError naming the first missing or wrong device attribute or peer entry; else the node."""
    from plugins.pkg.rtnl import Rtnl
    from . import device, peers
    snap = _read(cfg)
    mine = snap.leases.get(cfg.node_name)
    if mine is None:
        raise CNIError(LEASE_LOST, f"node {cfg.node_name} holds no lease in the registry",
                       f"registry {cfg.registry_path}; ADD or the agent takes one")
    _lease_families(cfg, mine)
    links: dict = {}
    problems: list = []
    with Rtnl() as rt:
        underlay = device.find_underlay(rt, cfg) if cfg.network is not None else None
        underlay6 = device.find_underlay6(rt, cfg, underlay) if cfg.network6 is not None else None
        halves: list = []
        if underlay is not None:
            halves.append((4, device.want(cfg, mine, underlay), underlay, cfg.cluster))
        if underlay6 is not None:
            halves.append((6, device.want6(cfg, mine, underlay6), underlay6, cfg.cluster6))
        for _, want, _, _ in halves:
            found = device.drift(rt, want)
            if found:
                raise CNIError(DEVICE_DRIFT, found[0], "; ".join(found))
        for family, want, under, network in halves:
            link = links[family] = rt.link(want.name)
            wanted = peers.desired(snap.leases.values(), cfg.node_name, link.index, under, cfg.direct_routing,
                                   family=family)
            problems += peers.drift(wanted, peers.actual(rt, link.index, network, wanted), want.name)
    if problems:
        raise CNIError(PEER_DRIFT, problems[0], "; ".join(problems))
    return _info(cfg, mine, links.get(4), 0, snap.revision, links.get(6))


def registry_status(cfg: NetConf) -> None:
    try:
        _read(cfg)
    except CNIError as e:
        raise CNIError(PLUGIN_NOT_AVAILABLE, f"vxlan registry unavailable: {e.msg}", e.details) from None


def node_status(cfg: NetConf) -> None:
    """STATUS: CNIError(50) naming why this node cannot serve a new pod (and what to do); None when
    it can: registry readable, this node's lease held, matching the config and not about to expire,
    the device present and carrying the lease's MAC, the bridge not stuck on an old subnet."""
    from plugins.pkg.rtnl import Rtnl
    from .lease import is_fresh, network_record

    def down(why: str, fix: str) -> None:
        raise CNIError(PLUGIN_NOT_AVAILABLE, f"vxlan: node {cfg.node_name} cannot serve a new pod: {why}", fix)
    try:
        snap = _read(cfg)
    except CNIError as e:
        raise CNIError(PLUGIN_NOT_AVAILABLE, f"vxlan registry unavailable: {e.msg}",
                       f"code {e.code}: {e.details or ''}; {errors.CODES.table[e.code].fix}"
                       if e.code in errors.CODES.table else e.details) from None
    mine = snap.leases.get(cfg.node_name)
    if mine is None:
        with Rtnl() as rt:
            br, old = pod_gateways(rt, cfg)
            users = attached(rt, cfg, br.index) if old else []
        if users:
            down(f"it holds no lease in registry {cfg.registry_path} while {len(users)} pod(s) still use its "
                 f"old subnet (bridge {cfg.bridge} holds {', '.join(map(str, old))}): {', '.join(users[:5])}; "
                 "a new lease needs another subnet (117)", errors.SUBNET_IN_USE.fix)
        down(f"it holds no lease in registry {cfg.registry_path} (never joined, expired or left)",
             "start vxlan-agent on this node (or ADD a pod): it takes a lease")
    if snap.network is not None and not snap.network.compatible(network_record(cfg)):
        down(f"the registry's {snap.network.describe()} differs from this config's",
             "same network, subnetLen, ipv6Network, ipv6SubnetLen and vni on every node")
    try:
        _lease_families(cfg, mine)
    except CNIError as e:
        down(e.msg, e.details or "")
    fresh, why = is_fresh(mine, cfg.registry_ttl)
    if not fresh:
        down(why, "start vxlan-agent on this node: it renews the lease every ttl/3")
    with Rtnl() as rt:
        from .device import alias, mark
        for name in _device_names(cfg):
            link = rt.link(name)
            if link is None or link.kind != "vxlan":
                down(f"device {name} missing" if link is None else
                     f"{name} is a {link.kind or 'non-vxlan'} link", "ADD a pod or start vxlan-agent"
                     if link is None else errors.DEVICE_FAILED.fix)
            if alias(rt, link) not in (mark(cfg.name), ""):
                down(f"{name} is a vxlan device marked {alias(rt, link)!r}, not this network's",
                     errors.DEVICE_FAILED.fix)
            if not link.up or link.mac != mine.vtep_mac:
                down(f"device {name} is {'up' if link.up else 'down'} with MAC {link.mac}, the lease "
                     f"says {mine.vtep_mac}", "ADD a pod or start vxlan-agent: it repairs the device")
        try:
            _bridge_problem(rt, cfg, mine.subnet, mine.subnet6)
        except CNIError as e:
            down(e.msg, e.details or "")


def pod_gateways(rt: Rtnl, cfg: NetConf):
    """The bridge and the gateway addresses inside `network` and `ipv6Network` it holds."""
    return _stale(rt, cfg, None, None, keep_unset=True)


def _stale(rt: Rtnl, cfg: NetConf, subnet, subnet6, keep_unset: bool = False, found: tuple | None = None):
    """(bridge, its addresses inside the cluster networks other than the gateways of `subnet` and
    `subnet6`); with keep_unset every address inside them. `found`: pod.bridge_found's (bridge,
    addresses), read by the caller; else read here (one lookup, one dump)."""
    from . import pod
    if found is None:
        found = pod.bridge_found(rt, rt.link(cfg.bridge))
    out: list = []
    for net, sub in ((cfg.network, subnet), (cfg.network6, subnet6)):
        if net is None or (sub is None and not keep_unset):
            continue
        out += pod.stale_gateways(rt, cfg.bridge, net, _gateway(sub) if sub is not None else None, found)[1]
    return found[0], out


def _gateway(subnet):
    """The bridge's gateway address of a node subnet (IPv4 or IPv6): its first address."""
    iface = ipaddress.IPv6Interface if subnet.version == 6 else ipaddress.IPv4Interface
    return iface(f"{subnet.network_address + 1}/{subnet.prefixlen}")


def attached(rt: Rtnl, cfg: NetConf, bridge_index: int | None = None) -> list[str]:
    """The pods this node serves: attachment records in stateDir and ports on the bridge."""
    from . import ipam, pod
    out = [f"{r['containerID']}/{r['ifname']}" for r in ipam.records(cfg.state_dir)]
    named = set(ipam.record_names(cfg.state_dir))
    if bridge_index is None:
        br = rt.link(cfg.bridge)
        bridge_index = br.index if br is not None and br.kind == "bridge" else None
    if bridge_index is not None:
        out += [f"port {p} of {cfg.bridge}" for p in pod.bridge_ports(rt, bridge_index) if p not in named]
    return out


def _bridge_problem(rt: Rtnl, cfg: NetConf, subnet: ipaddress.IPv4Network | None,
                    subnet6: ipaddress.IPv6Network | None = None, found: tuple | None = None) -> list:
    """The stale gateway addresses on the bridge (and the bridge) when no pod uses them;
    CNIError(117) when pods still do."""
    br, stale = _stale(rt, cfg, subnet, subnet6, found=found)
    if br is None or not stale:
        return []
    users = attached(rt, cfg, br.index)
    if users:
        raise CNIError(SUBNET_IN_USE,
                       f"node {cfg.node_name}'s subnet is now {' and '.join(str(s) for s in (subnet, subnet6) if s)} "
                       f"but bridge {cfg.bridge} still holds "
                       f"{', '.join(map(str, stale))}, used by {len(users)} pod(s): {', '.join(users[:5])}",
                       errors.SUBNET_IN_USE.fix)
    return [br, stale]


def repair_bridge(rt: Rtnl, cfg: NetConf, subnet: ipaddress.IPv4Network | None,
                  subnet6: ipaddress.IPv6Network | None = None, found: tuple | None = None) -> bool:
    """A bridge holding the gateway of an earlier subnet of this node is re-addressed when no pod
    uses it (the next ensure_bridge adds the new gateway); CNIError(117) naming the pods when
    some do. True when something was removed. `found`: pod.bridge_found's, read by the caller."""
    from . import pod
    problem = _bridge_problem(rt, cfg, subnet, subnet6, found)
    if not problem:
        return False
    br, stale = problem
    log.warning("node %s: subnet is now %s; removing %s from %s (no pod uses it)",
                cfg.node_name, " and ".join(str(s) for s in (subnet, subnet6) if s), ", ".join(map(str, stale)),
                cfg.bridge)
    pod.remove_addresses(rt, br, stale)
    return True


def leave_node(cfg: NetConf, remove_device: bool = False) -> None:
    """Leave: give the lease back and (remove_device) take away what the node made: the vxlan device
    (and so its peer entries), the bridge's gateway addresses (the bridge too when it has no port
    left) and the local lease copy. Refused with CNIError(118) while pods are attached."""
    from plugins.pkg import rtnl as nl
    from . import lease, pod
    with locked(os.path.join(cfg.state_dir, "node.lock")), nl.Rtnl() as rt:
        users = attached(rt, cfg)
        if users:
            raise CNIError(PODS_ATTACHED, f"node {cfg.node_name} still serves {len(users)} pod(s): "
                           f"{', '.join(users[:5])}", errors.PODS_ATTACHED.fix)
        reg = _registry(cfg)
        try:
            lease.release(reg, cfg)
            revoke = getattr(reg, "revoke", None)
            if revoke is not None:
                revoke(cfg.node_name)          # etcd: the lease the keys were bound to, now
        finally:
            reg.close()
        lease.forget_agent_state(cfg.state_dir)
        if not remove_device:
            return
        for name in _device_names(cfg):
            link = rt.link(name)
            if link is not None and _ours_to_remove(rt, cfg, link):
                err = rt.batch([nl.link_del_msg(link.index)])[0]
                if err and err != errno.ENODEV:
                    raise nl.NetlinkError(err, f"delete {name}: {os.strerror(err)}")
        br, ours = pod_gateways(rt, cfg)
        if br is not None and ours:
            pod.remove_addresses(rt, br, ours)
        if br is not None and br.kind == "bridge" and not pod.bridge_ports(rt, br.index) \
                and not [a for a in rt.addrs(br.index, socket.AF_UNSPEC) if not a.address.ip.is_link_local]:
            pod.detach(rt, cfg.bridge)
        lease.forget_local(cfg.state_dir)


def _ours_to_remove(rt: Rtnl, cfg: NetConf, link) -> bool:
    """Leave deletes the device only when it is ours: our mark, or (a device of the version before
    marks) unmarked with our VNI and port and the VTEP MAC of the local lease copy."""
    from . import device, lease
    mark = device.mark(cfg.name)
    try:
        device.vet(rt, link.name, mark, cfg.vni, cfg.port)
    except CNIError as e:
        log.warning("leave: %s", e.msg)
        return False
    saved = lease.local_mac(cfg.state_dir)
    return device.alias(rt, link) == mark or saved is None or link.mac == saved


def _read(cfg: NetConf):
    """The registry's snapshot; with an agent-owned overlay the agent's (CNIError 11 without one)."""
    if agent_owned(cfg):
        from . import lease
        return lease.agent_snapshot(cfg.state_dir, _live_agent(cfg))
    reg = _registry(cfg)
    try:
        return reg.snapshot()
    finally:
        reg.close()
