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

import ipaddress
import os
import socket

from libcni_py.errors import CNIError, INVALID_CONFIG, PLUGIN_NOT_AVAILABLE
from plugins.pkg.lock import locked
from plugins.pkg.log import get_logger
from plugins.pkg.names import check_ifname, check_path_component
from . import BAD_SUBNET_LEN, DEVICE_DRIFT, LEASE_LOST, PEER_DRIFT
from .registry import check_type, open_registry

log = get_logger("pycni.vxlan")
DEFAULT_STATE_ROOT = "/var/lib/cni/pycni/vxlan"


class NodeConfig:
    """The node keys of a vxlan plugin config, parsed and checked (schema validation is the caller's)."""

    def __init__(self, conf: dict):
        self.name = check_path_component(conf.get("name", ""), "network name")     # the CNI network name
        try:
            self.network = ipaddress.IPv4Network(conf.get("network", ""))
        except ValueError as e:
            raise CNIError(INVALID_CONFIG, f"invalid config field 'network': {e}",
                           "an IPv4 CIDR with no host bits, e.g. 10.244.0.0/16") from None
        self.subnet_len = int(conf.get("subnetLen", 24))
        if not self.network.prefixlen < self.subnet_len <= 30:
            raise CNIError(BAD_SUBNET_LEN, f"subnetLen {self.subnet_len} out of range for network {self.network}",
                           f"need {self.network.prefixlen} < subnetLen <= 30")
        registry = conf.get("registry") or {"type": "file"}
        check_type(registry.get("type"))
        self.vni = int(conf.get("vni", 1))
        self.port = int(conf.get("port", 8472))
        self.state_dir = conf.get("stateDir") or os.path.join(DEFAULT_STATE_ROOT, self.name)
        self.registry_type = registry["type"]
        self.registry_path = registry.get("path") or os.path.join(self.state_dir, "registry.json")
        self.registry_ttl = int(registry.get("ttl", 0))
        self.node_name = check_path_component(conf.get("nodeName") or socket.gethostname(), "nodeName")
        public_ip = conf.get("publicIP")
        try:
            self.public_ip = ipaddress.IPv4Address(public_ip) if public_ip else None
        except ValueError as e:
            raise CNIError(INVALID_CONFIG, f"invalid config field 'publicIP': {e}") from None
        iface = conf.get("iface")
        self.iface = check_ifname(iface, "iface") if iface else None
        self.direct_routing = bool(conf.get("directRouting", False))
        self.device_name = check_ifname(conf.get("deviceName") or f"vxlan.{self.vni}", "deviceName")


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


def node_config(conf: dict) -> NodeConfig:
    return NodeConfig(conf)


def _registry(cfg: NodeConfig):
    return open_registry(cfg.registry_type, cfg.registry_path, cfg.registry_ttl)


def ensure_node(cfg: NodeConfig) -> NodeInfo:
    """Join or renew the lease, ensure the device, reconcile peer entries once."""
    return ensure_applied(cfg).info


class Applied:
    """What a node last programmed: lets the agent apply a registry change as a delta."""
    __slots__ = ("info", "lease", "underlay", "dev_index", "peers")

    def __init__(self, info: NodeInfo, lease, underlay, dev_index: int, peers: tuple):
        self.info = info
        self.lease = lease                # registry.Lease
        self.underlay = underlay          # device.Underlay
        self.dev_index = dev_index
        self.peers = peers                # peers.Peer, as programmed


def ensure_applied(cfg: NodeConfig) -> Applied:
    """ensure_node, also returning what was programmed (for follow_change)."""
    from plugins.pkg.rtnl import Rtnl
    from . import device, lease, peers
    reg = _registry(cfg)
    with locked(os.path.join(cfg.state_dir, "node.lock")), Rtnl() as rt:
        underlay = device.find_underlay(rt, cfg)
        mine, snap = lease.acquire(reg, cfg, underlay.public_ip)
        link = device.ensure(rt, device.want(cfg, mine, underlay))
        wanted = peers.desired(snap.leases.values(), cfg.node_name, link.index, underlay, cfg.direct_routing)
        stats = peers.reconcile(rt, link.index, cfg.network, wanted)
    _log_changes(cfg, stats, snap.revision)
    return Applied(_info(cfg, mine, link, stats.changes, snap.revision), mine, underlay, link.index, tuple(wanted))


def follow_change(cfg: NodeConfig, applied: Applied, snap) -> Applied:
    """Apply a newer registry snapshot: only the peers that changed, from what `applied` says is
    programmed (no kernel dumps). Anything unexpected (own lease changed, the kernel refusing an
    entry because it is not as assumed) falls back to a full ensure_node."""
    from plugins.pkg.rtnl import Rtnl
    from . import peers
    mine = snap.leases.get(cfg.node_name)
    if mine is None or not mine.same_binding(applied.lease):
        return ensure_applied(cfg)
    old = {p.node: p for p in applied.peers}
    new = peers.desired(snap.leases.values(), cfg.node_name, applied.dev_index, applied.underlay,
                        cfg.direct_routing)
    changed = [p for p in new if old.get(p.node) != p]
    touched = {p.node for p in changed} | (set(old) - {p.node for p in new})
    try:
        with locked(os.path.join(cfg.state_dir, "node.lock")), Rtnl() as rt:
            stats = peers.reconcile(rt, applied.dev_index, cfg.network, changed,
                                    peers.assumed([old[n] for n in touched if n in old]))
    except CNIError as e:
        log.warning("delta apply failed (%s); doing a full reconcile", e)
        return ensure_applied(cfg)
    _log_changes(cfg, stats, snap.revision)
    old_info = applied.info
    info = NodeInfo(old_info.subnet, old_info.gateway, old_info.device, old_info.mtu, old_info.vtep_mac,
                    old_info.public_ip, old_info.network, old_info.node_name, stats.changes, snap.revision)
    return Applied(info, applied.lease, applied.underlay, applied.dev_index, tuple(new))


def _log_changes(cfg: NodeConfig, stats, revision: int) -> None:
    if stats.changes:
        log.info("node %s: %d peer entries added, %d removed (registry revision %d)",
                 cfg.node_name, stats.added, stats.deleted, revision)


def _info(cfg: NodeConfig, mine, link, changes: int, revision: int) -> NodeInfo:
    return NodeInfo(mine.subnet, mine.subnet.network_address + 1, link.name, link.mtu, mine.vtep_mac,
                    mine.public_ip, cfg.network, cfg.node_name, changes, revision)


def check_node(cfg: NodeConfig) -> NodeInfo:
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
        problems = peers.drift(wanted, peers.actual(rt, link.index, cfg.network, wanted), cfg.device_name)
    if problems:
        raise CNIError(PEER_DRIFT, problems[0], "; ".join(problems))
    return _info(cfg, mine, link, 0, snap.revision)


def registry_status(cfg: NodeConfig) -> None:
    try:
        _read(cfg)
    except CNIError as e:
        raise CNIError(PLUGIN_NOT_AVAILABLE, f"vxlan registry unavailable: {e.msg}", e.details) from None


def leave_node(cfg: NodeConfig, remove_device: bool = False) -> None:
    """Give the lease back; with remove_device also delete the vxlan device (and so its entries)."""
    from plugins.pkg import rtnl as nl
    from . import lease
    with locked(os.path.join(cfg.state_dir, "node.lock")):
        lease.release(_registry(cfg), cfg)
        if remove_device:
            with nl.Rtnl() as rt:
                link = rt.link(cfg.device_name)
                if link is not None and link.kind == "vxlan":
                    rt.batch([nl.link_del_msg(link.index)])


def _read(cfg: NodeConfig):
    reg = _registry(cfg)
    try:
        return reg.snapshot()
    finally:
        reg.close()
