"""A node's lease: its subnet carved from `network`, its public IP and its VTEP MAC.

Node identity is `nodeName` (default: the hostname). The lease is keyed by it in the
registry, so the same node gets the same subnet and MAC back after a restart. A copy
of subnet and MAC is kept in `<stateDir>/lease.json`; when the registry lost the
lease (TTL expired, registry recreated) the node asks for that subnet again if it is
still free. The MAC needs no state: it is derived from (network name, node name),
locally administered and unicast, so it is stable even when everything else is lost.

With `ipv6Network` the lease also carries an IPv6 subnet carved from it (`ipv6SubnetLen`) and the
node's IPv6 underlay address, taken in the same registry update (registry/base.py: Lease,
NetworkRecord.compatible); the local copy keeps it too. The one VTEP MAC serves both devices.
"""
from __future__ import annotations

import ipaddress
import os
import time

from libcni_py import records
from libcni_py.errors import CNIError
from plugins.pkg.names import sha256
from .errors import NETWORK_MISMATCH, NODE_RENAMED, SUBNETS_EXHAUSTED
from .registry.base import Lease, NetworkRecord, Registry, Snapshot


def vtep_mac(network_name: str, node: str) -> str:
    raw = bytearray(sha256(f"{network_name}\0{node}".encode()).digest()[:6])
    raw[0] = (raw[0] & 0xFC) | 0x02        # locally administered, unicast
    return ":".join(f"{b:02x}" for b in raw)


def carve(network, subnet_len: int, taken, prefer=None):
    """`prefer` when free, else the lowest free subnet after the first (flannel's SubnetMin);
    IPv4 or IPv6 (`network` and `taken` of one family)."""
    taken = list(taken)

    def free(candidate):
        return not any(candidate.overlaps(t) for t in taken)
    if prefer is not None and prefer.version == network.version and prefer.subnet_of(network) \
            and prefer.prefixlen == subnet_len and free(prefer):
        return prefer
    candidates = network.subnets(new_prefix=subnet_len)
    next(candidates)
    for candidate in candidates:
        if free(candidate):
            return candidate
    key = "subnetLen" if network.version == 4 else "ipv6SubnetLen"
    raise CNIError(SUBNETS_EXHAUSTED, f"no free /{subnet_len} left in {network}",
                   f"{len(taken)} leases hold it; use a larger network or a longer {key}")


def check_record(snap: Snapshot, want: NetworkRecord, node: str) -> None:
    """The registry's network record must match ours while any other node holds a lease."""
    record = snap.network
    if record is None or record.compatible(want) or not any(n != node for n in snap.leases):
        return
    overlap = " (overlapping it)" if any(
        a is not None and b is not None and a.overlaps(b)
        for a, b in ((record.network, want.network), (record.network6, want.network6))) else ""
    raise CNIError(NETWORK_MISMATCH,
                   f"config {want.describe()} differs from the registry's{overlap}",
                   f"registry holds {record.describe()}; use the same values on every node (a node without "
                   "ipv6Network joins a dual-stack network IPv4-only) or another registry")


def wanted_record(snap: Snapshot, cfg) -> NetworkRecord:
    """The network record this node writes: its own, keeping the IPv6 half of a dual-stack record
    when the node is IPv4-only."""
    want = _record(cfg)
    return snap.network.merged(want) if snap.network is not None and snap.network.compatible(want) else want


def current(snap: Snapshot, cfg, public_ip, ttl: int, public_ip6=None) -> Lease | None:
    """This node's lease when it needs no write (same network record, IPs, a subnet of each family
    the config has, not near expiry). A lease or record that lost its IPv6 fields (a file registry
    rewritten by a node of the version before IPv6) is written again."""
    mine = snap.leases.get(cfg.node_name)
    if mine is None or snap.network != wanted_record(snap, cfg) or mine.public_ip != public_ip \
            or mine.public_ip6 != public_ip6:
        return None
    if (mine.subnet is None) != (cfg.network is None) or (mine.subnet6 is None) != (cfg.network6 is None):
        return None
    if mine.expires is not None and mine.expires - time.time() < ttl / 2:
        return None
    return mine


def check_identity(snap: Snapshot, cfg, public_ip, saved: dict, device_mac: str = "",
                   public_ip6=None) -> None:
    """CNIError(117) when this node already holds a lease under another name (a nodeName or hostname
    change on a running node): the local lease copy names that node, or its lease carries this node's
    public IP (peers would reach it here) or the VTEP MAC of our device. Taking a second lease would
    re-address the device and program ARP/FDB entries pointing at this node itself."""
    for node, lease in snap.leases.items():
        if node == cfg.node_name:
            continue
        why = [text for hit, text in (
            (saved.get("node") == node, f"the local lease copy {_local_path(cfg.state_dir)} names it"),
            (public_ip is not None and lease.public_ip == public_ip, f"its public IP {public_ip} is this node's"),
            (public_ip6 is not None and lease.public_ip6 == public_ip6,
             f"its public IPv6 {public_ip6} is this node's"),
            (bool(device_mac) and lease.vtep_mac == device_mac,
             f"device {cfg.device_name} carries its VTEP MAC {device_mac}")) if hit]
        if why:
            raise CNIError(NODE_RENAMED,
                           f"node {cfg.node_name}: this node already holds a lease as {node!r} (subnet "
                           f"{lease.subnet or lease.subnet6}): {'; '.join(why)}",
                           f"set nodeName back to {node!r}; or move the node: DEL its pods, run "
                           f"`vxlan-agent --leave` with nodeName {node!r}, then ADD with the new name "
                           f"(a dead node {node!r} that had this public IP: remove its lease from the "
                           "registry)")


def acquire(reg: Registry, cfg, public_ip: ipaddress.IPv4Address | None, vet=None,
            device_mac: str = "", public_ip6: ipaddress.IPv6Address | None = None) -> tuple[Lease, Snapshot]:
    """Join or renew: return this node's lease and the registry state holding it. Refused (nothing
    written) when this node holds a lease under another name (check_identity) or when `vet(lease)`,
    called with the lease about to be written, raises (a subnet change while pods use the old one).
    A subnet of each family the config has (`network`, `ipv6Network`), carved in the same update."""
    snap = reg.snapshot()
    saved = _load_local(cfg.state_dir)
    check_identity(snap, cfg, public_ip, saved, device_mac, public_ip6)
    mine = current(snap, cfg, public_ip, reg.ttl, public_ip6)
    if mine is None:

        def mutate(draft: Snapshot) -> None:
            check_identity(draft, cfg, public_ip, saved, device_mac, public_ip6)
            check_record(draft, _record(cfg), cfg.node_name)
            draft.network = wanted_record(draft, cfg)
            old = draft.leases.get(cfg.node_name)
            others = [lease for node, lease in draft.leases.items() if node != cfg.node_name]
            subnet = subnet6 = None
            if cfg.network is not None:
                prefer = old.subnet if old is not None and old.subnet is not None else saved.get("subnet")
                subnet = carve(cfg.network, cfg.subnet_len,
                               [lease.subnet for lease in others if lease.subnet is not None], prefer)
            if cfg.network6 is not None:
                prefer6 = old.subnet6 if old is not None and old.subnet6 is not None else saved.get("subnet6")
                subnet6 = carve(cfg.network6, cfg.subnet_len6,
                                [lease.subnet6 for lease in others if lease.subnet6 is not None], prefer6)
            mac = old.vtep_mac if old is not None else (saved.get("vtepMAC")
                                                         or vtep_mac(cfg.name, cfg.node_name))
            new = reg.stamp(Lease(cfg.node_name, subnet, public_ip if subnet is not None else None, mac, cfg.vni,
                                  subnet6=subnet6, public_ip6=public_ip6 if subnet6 is not None else None))
            if vet is not None and (old is None or not new.same_binding(old)):
                vet(new)
            draft.leases[cfg.node_name] = new
        snap = reg.update(mutate)
        mine = snap.leases[cfg.node_name]
    if _saved_differs(cfg.state_dir, mine):
        _save_local(cfg.state_dir, mine)
    return mine, snap


def expected_mac(reg: Registry, cfg) -> str:
    """The VTEP MAC acquire() would give this node now: its lease's, the local copy's, or derived."""
    mine = reg.snapshot().leases.get(cfg.node_name)
    if mine is not None:
        return mine.vtep_mac
    return _load_local(cfg.state_dir).get("vtepMAC") or vtep_mac(cfg.name, cfg.node_name)


def release(reg: Registry, cfg) -> None:
    """Leave: remove this node's lease (peers drop its entries on their next reconcile)."""
    def mutate(draft: Snapshot) -> None:
        draft.leases.pop(cfg.node_name, None)
    reg.update(mutate)


def is_fresh(lease: Lease, ttl: int, now: float | None = None) -> tuple[bool, str]:
    """A lease a new pod can rely on: without TTL always; with one, at least a third of the TTL
    left (the agent renews every ttl/3, so less means nobody renews it)."""
    if lease.expires is None or not ttl:
        return True, ""
    left = lease.expires - (time.time() if now is None else now)
    if left < ttl / 3:
        return False, f"its lease expires in {max(left, 0):.0f} s of a {ttl} s TTL and is not being renewed"
    return True, ""


def network_record(cfg) -> NetworkRecord:
    return _record(cfg)


def _record(cfg) -> NetworkRecord:
    return NetworkRecord(cfg.network, cfg.subnet_len, cfg.vni, cfg.network6, cfg.subnet_len6)


def _local_path(state_dir: str) -> str:
    return os.path.join(state_dir, "lease.json")


def _load_local(state_dir: str) -> dict:
    try:
        raw = records.read(_local_path(state_dir), max_bytes=4096)
        return {"subnet": ipaddress.IPv4Network(raw["subnet"]) if raw.get("subnet") else None,
                "subnet6": ipaddress.IPv6Network(raw["ipv6Subnet"]) if raw.get("ipv6Subnet") else None,
                "vtepMAC": raw["vtepMAC"], "node": raw.get("node")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _saved_differs(state_dir: str, lease: Lease) -> bool:
    saved = _load_local(state_dir)
    return saved.get("subnet") != lease.subnet or saved.get("vtepMAC") != lease.vtep_mac \
        or saved.get("subnet6") != lease.subnet6


def _save_local(state_dir: str, lease: Lease) -> None:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    doc = {"node": lease.node, "subnet": str(lease.subnet) if lease.subnet is not None else None,
           "vtepMAC": lease.vtep_mac}
    if lease.subnet6 is not None:
        doc["ipv6Subnet"] = str(lease.subnet6)
    records.write(_local_path(state_dir), doc)


def forget_local(state_dir: str) -> bool:
    """Remove the local lease copy (leave): a node that rejoins takes whatever subnet is free."""
    return records.remove(_local_path(state_dir))


def local_mac(state_dir: str) -> str | None:
    """The VTEP MAC of the local lease copy, if any."""
    return _load_local(state_dir).get("vtepMAC")


def local_subnet(state_dir: str) -> ipaddress.IPv4Network | None:
    """The subnet of the local lease copy, if any."""
    return _load_local(state_dir).get("subnet")


def local_subnet6(state_dir: str) -> ipaddress.IPv6Network | None:
    """The IPv6 subnet of the local lease copy, if any."""
    return _load_local(state_dir).get("subnet6")


# ---- the agent's state file (the per-pod plugin's view of the node with an etcd registry) ----
#
# <stateDir>/agent.json        {"pid", "heartbeat" (unix time), "interval", "node", "lease",
#                               "network", "revision", "device", "registry": "up"|"down"}
#                              rewritten every `interval` seconds by vxlan-agent (liveness)
# <stateDir>/agent-peers.json  {"revision", "leases": {node: lease}}: the leases the agent has
#                              programmed (its own included), rewritten on change only
# ADD reads only agent.json (small, whatever the number of peers); CHECK reads both.

HEARTBEAT = 2.0          # seconds between the agent's writes of agent.json
STALE_AFTER = 3          # heartbeats missed before agent.json is stale


def agent_path(state_dir: str) -> str:
    return os.path.join(state_dir, "agent.json")


def agent_peers_path(state_dir: str) -> str:
    return os.path.join(state_dir, "agent-peers.json")


def write_agent_state(state_dir: str, doc: dict) -> None:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    records.write(agent_path(state_dir), doc)


def write_agent_peers(state_dir: str, revision: int, leases) -> None:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    records.write(agent_peers_path(state_dir),
                  {"revision": revision, "leases": {n: lease.to_json() for n, lease in sorted(leases.items())}})


def forget_agent_state(state_dir: str) -> None:
    records.remove(agent_path(state_dir))
    records.remove(agent_peers_path(state_dir))


def agent_state(state_dir: str, now: float | None = None) -> tuple[dict | None, str]:
    """(agent.json, "") when a live agent wrote it within STALE_AFTER heartbeats; else (None, why)."""
    path = agent_path(state_dir)
    try:
        doc = records.read(path, max_bytes=64 << 10)
        beat, interval, pid = float(doc["heartbeat"]), float(doc["interval"]), int(doc["pid"])
        if not isinstance(doc["lease"], dict) or not isinstance(doc["device"], dict):
            raise ValueError("lease or device is not an object")
    except FileNotFoundError:
        return None, f"no agent state {path} (vxlan-agent never ran on this node, or left)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"agent state {path} unreadable: {e}"
    age = (time.time() if now is None else now) - beat
    if age > STALE_AFTER * interval:
        return None, f"agent state {path} is stale: last heartbeat {age:.0f} s ago (pid {pid})"
    return doc, ""


def agent_lease(doc: dict) -> Lease:
    """This node's lease as the agent state names it."""
    from .registry.base import decode
    snap = decode({"leases": {doc["node"]: doc["lease"]}}, now=0)
    return snap.leases[doc["node"]]


def agent_snapshot(state_dir: str, doc: dict) -> Snapshot:
    """The leases the agent has programmed as a Snapshot (revision, network record, leases)."""
    from .registry.base import decode
    try:
        peers = records.read(agent_peers_path(state_dir))
        return decode({"revision": peers.get("revision", 0), "network": doc.get("network"),
                       "leases": peers.get("leases") or {}}, now=0)
    except (OSError, ValueError, AttributeError) as e:
        from .errors import REGISTRY_CORRUPT
        raise CNIError(REGISTRY_CORRUPT, f"agent peers {agent_peers_path(state_dir)} unreadable",
                       str(e)) from None
