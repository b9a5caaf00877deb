"""The registry interface: where nodes publish their leases and watch each other's.

A backend offers three things, shaped so that etcd (transactions, watch, TTL leases)
drops in beside the file backend:

- `snapshot()`: the whole state at one revision (network record + leases by node);
- `update(mutate)`: an atomic read-modify-write. `mutate(draft)` edits a Draft copy
  (it may raise to abort: nothing is written). The file backend holds a flock across
  it; an etcd backend runs it in a compare-on-revision transaction and retries.
  A lease written with the registry's `ttl` gets `expires`; expired leases are
  invisible to readers (etcd would drop them itself);
- `watch(revision, timeout)`: block until the state is newer than `revision`, return
  the new snapshot, or None on timeout.
"""
from __future__ import annotations

import ipaddress
import re
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from libcni_py.errors import CNIError
from ..errors import REGISTRY_CORRUPT


class NetworkRecord:
    """What the first node wrote; every later node must agree with it.

    `network6`/`subnet_len6` (the document's optional "ipv6Network"/"ipv6SubnetLen") are the IPv6
    half: a node of the version before IPv6 reads the record without them, and a node whose config
    has no ipv6Network joins a dual-stack network as an IPv4-only node (compatible())."""
    __slots__ = ("network", "subnet_len", "vni", "network6", "subnet_len6")

    def __init__(self, network: ipaddress.IPv4Network | None, subnet_len: int, vni: int,
                 network6: ipaddress.IPv6Network | None = None, subnet_len6: int = 64):
        self.network, self.subnet_len, self.vni = network, subnet_len, vni
        self.network6, self.subnet_len6 = network6, subnet_len6

    def _key(self) -> tuple:
        return (self.network, self.subnet_len if self.network is not None else 0, self.vni,
                self.network6, self.subnet_len6 if self.network6 is not None else 0)

    def __eq__(self, other) -> bool:
        return isinstance(other, NetworkRecord) and self._key() == other._key()

    def compatible(self, want: NetworkRecord) -> bool:
        """Can a node configured with `want` join a registry holding this record? Same VNI and the
        same IPv4 half; the IPv6 halves equal where both have one (a record without one gets the
        node's; a node without one is an IPv4-only node of a dual-stack network)."""
        if (self.network, self.vni) != (want.network, want.vni):
            return False
        if self.network is not None and self.subnet_len != want.subnet_len:
            return False
        if self.network6 is None or want.network6 is None:
            return True          # the record gets the node's IPv6 half, or the node is IPv4-only
        return (self.network6, self.subnet_len6) == (want.network6, want.subnet_len6)

    def merged(self, want: NetworkRecord) -> NetworkRecord:
        """The record a compatible node writes: `want`, keeping an IPv6 half it has not got."""
        if want.network6 is None and self.network6 is not None:
            return NetworkRecord(want.network, want.subnet_len, want.vni, self.network6, self.subnet_len6)
        return want

    def describe(self) -> str:
        parts = [f"network {self.network}, subnetLen {self.subnet_len}"] if self.network is not None else []
        if self.network6 is not None:
            parts.append(f"ipv6Network {self.network6}, ipv6SubnetLen {self.subnet_len6}")
        return ", ".join(parts + [f"vni {self.vni}"])

    def to_json(self) -> dict:
        out: dict = {}
        if self.network is not None:
            out.update(network=str(self.network), subnetLen=self.subnet_len)
        out["vni"] = self.vni
        if self.network6 is not None:
            out.update(ipv6Network=str(self.network6), ipv6SubnetLen=self.subnet_len6)
        return out


class Lease:
    """A node's subnet, where peers reach it and its VTEP MAC; `expires`: unix time, None: no TTL.

    `subnet6`/`public_ip6` (the document's optional "ipv6Subnet"/"publicIPv6") are the node's IPv6
    half; a lease without them is an IPv4-only node. An IPv6-only node's lease has no `subnet` and
    `publicIP` (only in an IPv6-only network, which nodes of the version before IPv6 cannot join)."""
    __slots__ = ("node", "subnet", "public_ip", "vtep_mac", "vni", "expires", "subnet6", "public_ip6")

    def __init__(self, node: str, subnet: ipaddress.IPv4Network | None, public_ip: ipaddress.IPv4Address | None,
                 vtep_mac: str, vni: int, expires: float | None = None,
                 subnet6: ipaddress.IPv6Network | None = None, public_ip6: ipaddress.IPv6Address | None = None):
        self.node, self.subnet, self.public_ip = node, subnet, public_ip
        self.vtep_mac, self.vni, self.expires = vtep_mac, vni, expires
        self.subnet6, self.public_ip6 = subnet6, public_ip6

    def __eq__(self, other) -> bool:
        return isinstance(other, Lease) and self.same_binding(other) and self.expires == other.expires

    def same_binding(self, other: Lease | None) -> bool:
        """Equal in everything peers program (TTL aside)."""
        return other is not None and (self.node, self.subnet, self.public_ip, self.vtep_mac, self.vni,
                                      self.subnet6, self.public_ip6) == \
            (other.node, other.subnet, other.public_ip, other.vtep_mac, other.vni, other.subnet6, other.public_ip6)

    def with_expiry(self, expires: float | None) -> Lease:
        return Lease(self.node, self.subnet, self.public_ip, self.vtep_mac, self.vni, expires,
                     self.subnet6, self.public_ip6)

    @property
    def has6(self) -> bool:
        """The node takes part in the IPv6 overlay (an IPv6 subnet and an IPv6 underlay address)."""
        return self.subnet6 is not None and self.public_ip6 is not None

    def to_json(self) -> dict:
        out: dict = {}
        if self.subnet is not None:
            out["subnet"] = str(self.subnet)
        if self.public_ip is not None:
            out["publicIP"] = str(self.public_ip)
        out.update(vtepMAC=self.vtep_mac, vni=self.vni)
        if self.subnet6 is not None:
            out["ipv6Subnet"] = str(self.subnet6)
        if self.public_ip6 is not None:
            out["publicIPv6"] = str(self.public_ip6)
        if self.expires is not None:
            out["expires"] = self.expires
        return out


class Snapshot:
    """The registry at one revision: the network record and the unexpired leases by node."""
    __slots__ = ("revision", "network", "leases")

    def __init__(self, revision: int = 0, network: NetworkRecord | None = None,
                 leases: dict[str, Lease] | None = None):
        self.revision, self.network = revision, network
        self.leases = {} if leases is None else leases


Draft = Snapshot     # what update() hands to mutate(): a private, editable copy


class Registry(ABC):
    def __init__(self, ttl: int = 0):
        self.ttl = ttl

    @abstractmethod
    def snapshot(self) -> Snapshot: ...

    @abstractmethod
    def update(self, mutate: Callable[[Draft], None]) -> Snapshot: ...

    @abstractmethod
    def watch(self, revision: int, timeout: float) -> Snapshot | None: ...

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing to close
        pass

    def stamp(self, lease: Lease) -> Lease:
        """The lease as it is stored: with an expiry when this registry has a TTL."""
        return lease.with_expiry(round(time.time() + self.ttl, 3) if self.ttl else None)


def decode(doc: object, now: float | None = None, cache: dict | None = None) -> Snapshot:
    """A stored document -> Snapshot without expired leases; CNIError(101) if malformed.

    `cache` (raw fields -> Lease, from the previous decode by the same reader) spares
    re-parsing leases that did not change; it is updated in place to this document's."""
    now = time.time() if now is None else now
    previous = dict(cache) if cache is not None else {}
    try:
        if not isinstance(doc, dict):
            raise ValueError("document is not a JSON object")
        net = doc.get("network")
        record = None
        if net is not None:
            v4, v6 = net.get("network"), net.get("ipv6Network")
            if v4 is None and v6 is None:
                raise KeyError("network")
            record = NetworkRecord(ipaddress.IPv4Network(v4) if v4 is not None else None,
                                   int(net["subnetLen"]) if v4 is not None else 0, int(net["vni"]),
                                   ipaddress.IPv6Network(v6) if v6 is not None else None,
                                   int(net["ipv6SubnetLen"]) if v6 is not None else 64)
        leases, seen = {}, {}
        for node, raw in (doc.get("leases") or {}).items():
            key = (node, raw.get("subnet"), raw.get("publicIP"), raw["vtepMAC"], raw["vni"], raw.get("expires"),
                   raw.get("ipv6Subnet"), raw.get("publicIPv6"))
            lease = previous.get(key)
            if lease is None:
                s4, s6 = raw.get("subnet"), raw.get("ipv6Subnet")
                if s4 is None and s6 is None:
                    raise KeyError("subnet")
                p4, p6 = raw.get("publicIP"), raw.get("publicIPv6")
                lease = Lease(str(node), _net(s4) if s4 is not None else None,
                              _ip(p4) if p4 is not None else None,
                              _mac(raw["vtepMAC"]), int(raw["vni"]), raw.get("expires"),
                              _net6(s6) if s6 is not None else None,
                              ipaddress.IPv6Address(p6) if p6 is not None else None)
                if (lease.subnet is None) != (lease.public_ip is None):
                    raise ValueError(f"lease of {node}: subnet and publicIP go together")
            seen[key] = lease
            if lease.expires is None or lease.expires > now:
                leases[lease.node] = lease
        if cache is not None:
            cache.clear()
            cache.update(seen)
        return Snapshot(int(doc.get("revision", 0)), record, leases)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CNIError(REGISTRY_CORRUPT, "registry document is malformed",
                       f"{type(e).__name__}: {e}") from None


def encode(snap: Snapshot) -> dict:
    return {"revision": snap.revision,
            "network": snap.network.to_json() if snap.network else None,
            "leases": {node: lease.to_json() for node, lease in sorted(snap.leases.items())}}


_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _mac(text: str) -> str:
    text = text.lower()
    if not _MAC_RE.fullmatch(text):
        raise ValueError(f"bad MAC {text!r}")
    return text


def _ip(text: str) -> ipaddress.IPv4Address:
    """Strict dotted quad, about five times faster than IPv4Address(str) (1000s per read)."""
    try:
        packed = socket.inet_aton(text)
    except OSError:
        packed = b""
    if not packed or socket.inet_ntoa(packed) != text:
        raise ValueError(f"bad IPv4 address {text!r}")
    return ipaddress.IPv4Address(packed)


def _net(text: str) -> ipaddress.IPv4Network:
    addr, _, plen = text.partition("/")
    return ipaddress.IPv4Network((int(_ip(addr)), int(plen)))


def _net6(text: str) -> ipaddress.IPv6Network:
    if not isinstance(text, str) or "/" not in text:
        raise ValueError(f"bad IPv6 subnet {text!r}")
    return ipaddress.IPv6Network(text)
