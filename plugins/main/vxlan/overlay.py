"""The overlay API the pod half (cmd.py, pod.py) and the agent call.

    cfg = node_config(conf)       # parse and check the node keys; touches nothing
    info = ensure_node(cfg)       # lease, device, one reconcile; current netns = the host
    check_node(cfg)               # NodeInfo, or CNIError(109/110/111) naming the first drift
    registry_status(cfg)          # CNIError(50) when the registry cannot be read
    leave_node(cfg)               # drop this node's lease (and, optionally, its device)
    ensure_applied(cfg) / follow_change(cfg, applied, snapshot)   # the agent's full and delta steps

Everything runs in the network namespace current at the call, under a flock of
`<stateDir>/node.lock`, with one raw rtnetlink socket (no pyroute2 import).
"""
from __future__ import annotations

import errno
import ipaddress
import os

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
    """The node as a reconcile left it."""
    __slots__ = ("subnet", "gateway", "device", "mtu", "vtep_mac", "public_ip", "network", "node_name",
                 "changes", "revision")

    def __init__(self, subnet: ipaddress.IPv4Network, gateway: ipaddress.IPv4Address, device: str, mtu: int,
                 vtep_mac: str, public_ip: ipaddress.IPv4Address, network: ipaddress.IPv4Network,
                 node_name: str = "", changes: int = 0, revision: int = 0):
        self.subnet, self.gateway = subnet, gateway      # gateway: first address of the subnet (the bridge's)
        self.device, self.mtu, self.vtep_mac, self.public_ip = device, mtu, vtep_mac, public_ip
        self.network, self.node_name = network, node_name
        self.changes = changes                           # peer entries added/removed by this call
        self.revision = revision                         # registry revision the peers were reconciled to


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
    if agent_owned(cfg) or _agent_alive(cfg):
        return _from_agent(cfg, hold)
    return ensure_applied(cfg, hold).info


def _agent_alive(cfg: NetConf) -> bool:
    """File registry: a live vxlan-agent of this node keeps the lease and the peers, so ADD reads its
    state as with etcd (its cost does not grow with the cluster); without one ADD joins and reconciles."""
    from . import lease
    doc, _ = lease.agent_state(cfg.state_dir)
    return doc is not None and doc.get("node") == cfg.node_name and doc.get("registry") == "up"


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


def _from_agent(cfg: NetConf, hold: Callable[[Rtnl, NodeInfo], None] | None) -> NodeInfo:
    """ADD with an agent-owned overlay: the agent's lease, the device as it left it, the bridge."""
    from libcni_py.errors import TRY_AGAIN_LATER
    from plugins.pkg.rtnl import Rtnl
    from . import lease
    doc = _live_agent(cfg)
    mine = lease.agent_lease(doc)
    with locked(os.path.join(cfg.state_dir, "node.lock")), Rtnl() as rt:
        link = rt.link(cfg.device_name)
        if link is None or link.kind != "vxlan" or not link.up or link.mac != mine.vtep_mac:
            what = "missing" if link is None else f"{link.kind or 'not vxlan'}, {'up' if link.up else 'down'}, " \
                f"MAC {link.mac}"
            raise CNIError(TRY_AGAIN_LATER, f"vxlan: device {cfg.device_name} is not as vxlan-agent makes it "
                           f"({what}; the lease says MAC {mine.vtep_mac})",
                           "vxlan-agent repairs it on its next resync; if it keeps failing, see its log")
        _vet_bridge(rt, cfg)
        repair_bridge(rt, cfg, mine.subnet)
        info = _info(cfg, mine, link, 0, int(doc.get("revision", 0)))
        if hold is not None:
            hold(rt, info)
    return info


class Applied:
    """What a node last programmed: lets the agent apply a registry change as a delta."""
    __slots__ = ("info", "lease", "underlay", "dev_index", "peers", "leases", "network")

    def __init__(self, info: NodeInfo, lease, underlay, dev_index: int, peers: tuple,
                 leases: dict | None = None, network=None):
        self.info = info
        self.leases = leases if leases is not None else {}     # registry.Lease by node, as applied
        self.network = network            # the registry's NetworkRecord
        self.lease = lease                # registry.Lease
        self.underlay = underlay          # device.Underlay
        self.dev_index = dev_index
        self.peers = peers                # peers.Peer, as programmed


def ensure_applied(cfg: NetConf, hold: Callable[[Rtnl, NodeInfo], None] | None = None,
                   reg: Registry | None = None) -> Applied:
    """ensure_node, also returning what was programmed (for follow_change).

    Refusals come before the registry or the kernel is changed: a `deviceName` or `bridge` naming a
    link that is not ours (107, 113), this node holding a lease under another name (117), a new
    subnet while pods use the old one (117, vetted inside the registry update)."""
    from plugins.pkg.rtnl import Rtnl
    from . import device, lease, peers
    reg = _registry(cfg) if reg is None else reg
    with locked(os.path.join(cfg.state_dir, "node.lock")), Rtnl() as rt:
        underlay = device.find_underlay(rt, cfg)
        have = device.vet(rt, cfg.device_name, device.mark(cfg.name), cfg.vni, cfg.port, underlay,
                          lambda: lease.expected_mac(reg, cfg))
        _vet_bridge(rt, cfg)
        mine, snap = lease.acquire(reg, cfg, underlay.public_ip,
                                   vet=lambda new: _bridge_problem(rt, cfg, new.subnet),
                                   device_mac=have.mac if have is not None else "")
        repair_bridge(rt, cfg, mine.subnet)       # before peers: an old gateway's route is in a peer's place
        link = device.ensure(rt, device.want(cfg, mine, underlay))
        wanted = peers.desired(snap.leases.values(), cfg.node_name, link.index, underlay, cfg.direct_routing)
        stats = peers.reconcile(rt, link.index, cfg.cluster, wanted)
        info = _info(cfg, mine, link, stats.changes, snap.revision)
        if hold is not None:
            hold(rt, info)
    _log_changes(cfg, stats, snap.revision)
    return Applied(info, mine, underlay, link.index, tuple(wanted), dict(snap.leases), snap.network)


def _vet_bridge(rt: Rtnl, cfg: NetConf) -> None:
    """CNIError(113) when `bridge` names a link that is not a bridge (the uplink, a veth, our own
    vxlan device): refused before anything is changed, and that link is never touched."""
    from .errors import BRIDGE_CONFLICT
    br = rt.link(cfg.bridge)
    if br is not None and br.kind != "bridge":
        raise CNIError(BRIDGE_CONFLICT, f"bridge {cfg.bridge!r} names a {br.kind or 'device'} link "
                       f"(index {br.index}), not a bridge: left as it is", errors.BRIDGE_CONFLICT.fix)


def follow_change(cfg: NetConf, applied: Applied, snap, reg: Registry | None = None) -> Applied:
    """Apply a newer registry snapshot: only the peers that changed, from what `applied` says is
    programmed (no kernel dumps). Anything unexpected (own lease changed, the kernel refusing an
    entry because it is not as assumed) falls back to a full ensure_node."""
    from plugins.pkg.rtnl import Rtnl
    from . import peers
    mine = snap.leases.get(cfg.node_name)
    if mine is None or not mine.same_binding(applied.lease):
        return ensure_applied(cfg, reg=reg)
    old = {p.node: p for p in applied.peers}
    new = peers.desired(snap.leases.values(), cfg.node_name, applied.dev_index, applied.underlay,
                        cfg.direct_routing)
    changed = [p for p in new if old.get(p.node) != p]
    touched = {p.node for p in changed} | (set(old) - {p.node for p in new})
    try:
        with locked(os.path.join(cfg.state_dir, "node.lock")), Rtnl() as rt:
            stats = peers.reconcile(rt, applied.dev_index, cfg.cluster, changed,
                                    peers.assumed([old[n] for n in touched if n in old]))
    except CNIError as e:
        log.warning("delta apply failed (%s); doing a full reconcile", e)
        return ensure_applied(cfg, reg=reg)
    _log_changes(cfg, stats, snap.revision)
    old_info = applied.info
    info = NodeInfo(old_info.subnet, old_info.gateway, old_info.device, old_info.mtu, old_info.vtep_mac,
                    old_info.public_ip, old_info.network, old_info.node_name, stats.changes, snap.revision)
    return Applied(info, applied.lease, applied.underlay, applied.dev_index, tuple(new), dict(snap.leases),
                   snap.network)


def _log_changes(cfg: NetConf, stats, revision: int) -> None:
    if stats.changes:
        log.info("node %s: %d peer entries added, %d removed (registry revision %d)",
                 cfg.node_name, stats.added, stats.deleted, revision)


def _info(cfg: NetConf, mine, link, changes: int, revision: int) -> NodeInfo:
    return NodeInfo(mine.subnet, mine.subnet.network_address + 1, link.name, link.mtu, mine.vtep_mac,
                    mine.public_ip, cfg.cluster, cfg.node_name, changes, revision)


def check_node(cfg: NetConf) -> NodeInfo:
    """Raise CNIError naming the first missing or wrong device attribute or peer entry; else the node."""
    from plugins.pkg.rtnl import Rtnl
    from . import device, peers
    snap = _read(cfg)
    mine = snap.leases.get(cfg.node_name)
    if mine is None:
        raise CNIError(LEASE_LOST, f"node {cfg.node_name} holds no lease in the registry",
                       f"registry {cfg.registry_path}; ADD or the agent takes one")
    with Rtnl() as rt:
        underlay = device.find_underlay(rt, cfg)
        want = device.want(cfg, mine, underlay)
        problems = device.drift(rt, want)
        if problems:
            raise CNIError(DEVICE_DRIFT, problems[0], "; ".join(problems))
        link = rt.link(cfg.device_name)
        wanted = peers.desired(snap.leases.values(), cfg.node_name, link.index, underlay, cfg.direct_routing)
        problems = peers.drift(wanted, peers.actual(rt, link.index, cfg.cluster, wanted), cfg.device_name)
    if problems:
        raise CNIError(PEER_DRIFT, problems[0], "; ".join(problems))
    return _info(cfg, mine, link, 0, snap.revision)


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
    if snap.network is not None and snap.network != network_record(cfg):
        down(f"the registry's network {snap.network.network}/subnetLen {snap.network.subnet_len}/vni "
             f"{snap.network.vni} differs from this config's", "same network, subnetLen and vni on every node")
    fresh, why = is_fresh(mine, cfg.registry_ttl)
    if not fresh:
        down(why, "start vxlan-agent on this node: it renews the lease every ttl/3")
    with Rtnl() as rt:
        link = rt.link(cfg.device_name)
        if link is None or link.kind != "vxlan":
            down(f"device {cfg.device_name} missing" if link is None else
                 f"{cfg.device_name} is a {link.kind or 'non-vxlan'} link", "ADD a pod or start vxlan-agent"
                 if link is None else errors.DEVICE_FAILED.fix)
        from .device import alias, mark
        if alias(rt, link) not in (mark(cfg.name), ""):
            down(f"{cfg.device_name} is a vxlan device marked {alias(rt, link)!r}, not this network's",
                 errors.DEVICE_FAILED.fix)
        if not link.up or link.mac != mine.vtep_mac:
            down(f"device {cfg.device_name} is {'up' if link.up else 'down'} with MAC {link.mac}, the lease "
                 f"says {mine.vtep_mac}", "ADD a pod or start vxlan-agent: it repairs the device")
        try:
            _bridge_problem(rt, cfg, mine.subnet)
        except CNIError as e:
            down(e.msg, e.details or "")


def pod_gateways(rt: Rtnl, cfg: NetConf):
    """The bridge and the gateway addresses inside `network` it holds."""
    from . import pod
    return pod.stale_gateways(rt, cfg.bridge, cfg.cluster, None)


def _gateway(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")


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


def _bridge_problem(rt: Rtnl, cfg: NetConf, subnet: ipaddress.IPv4Network) -> list:
    """The stale gateway addresses on the bridge (and the bridge) when no pod uses them;
    CNIError(117) when pods still do."""
    from . import pod
    br, stale = pod.stale_gateways(rt, cfg.bridge, cfg.cluster, _gateway(subnet))
    if br is None or not stale:
        return []
    users = attached(rt, cfg, br.index)
    if users:
        raise CNIError(SUBNET_IN_USE,
                       f"node {cfg.node_name}'s subnet is now {subnet} but bridge {cfg.bridge} still holds "
                       f"{', '.join(map(str, stale))}, used by {len(users)} pod(s): {', '.join(users[:5])}",
                       errors.SUBNET_IN_USE.fix)
    return [br, stale]


def repair_bridge(rt: Rtnl, cfg: NetConf, subnet: ipaddress.IPv4Network) -> bool:
    """A bridge holding the gateway of an earlier subnet of this node is re-addressed when no pod
    uses it (the next ensure_bridge adds the new gateway); CNIError(117) naming the pods when
    some do. True when something was removed."""
    from . import pod
    found = _bridge_problem(rt, cfg, subnet)
    if not found:
        return False
    br, stale = found
    log.warning("node %s: subnet is now %s; removing %s from %s (no pod uses it)",
                cfg.node_name, subnet, ", ".join(map(str, stale)), cfg.bridge)
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
        link = rt.link(cfg.device_name)
        if link is not None and _ours_to_remove(rt, cfg, link):
            err = rt.batch([nl.link_del_msg(link.index)])[0]
            if err and err != errno.ENODEV:
                raise nl.NetlinkError(err, f"delete {cfg.device_name}: {os.strerror(err)}")
        br, ours = pod.stale_gateways(rt, cfg.bridge, cfg.cluster, None)
        if br is not None and ours:
            pod.remove_addresses(rt, br, ours)
        if br is not None and br.kind == "bridge" and not pod.bridge_ports(rt, br.index) \
                and not rt.addrs(br.index):
            pod.detach(rt, cfg.bridge)
        lease.forget_local(cfg.state_dir)


def _ours_to_remove(rt: Rtnl, cfg: NetConf, link) -> bool:
    """Leave deletes the device only when it is ours: our mark, or (a device of the version before
    marks) unmarked with our VNI and port and the VTEP MAC of the local lease copy."""
    from . import device, lease
    mark = device.mark(cfg.name)
    try:
        device.vet(rt, cfg.device_name, mark, cfg.vni, cfg.port)
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
