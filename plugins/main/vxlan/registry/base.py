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
    """What the first node wrote; every later node must agree with it."""
    __slots__ = ("network", "subnet_len", "vni")

    def __init__(self, network: ipaddress.IPv4Network, subnet_len: int, vni: int):
        self.network, self.subnet_len, self.vni = network, subnet_len, vni

    def __eq__(self, other) -> bool:
        return isinstance(other, NetworkRecord) and \
            (self.network, self.subnet_len, self.vni) == (other.network, other.subnet_len, other.vni)

    def to_json(self) -> dict:
        return {"network": str(self.network), "subnetLen": self.subnet_len, "vni": self.vni}


class Lease:
    """A node's subnet, where peers reach it and its VTEP MAC; `expires`: unix time, None: no TTL."""
    __slots__ = ("node", "subnet", "public_ip", "vtep_mac", "vni", "expires")

    def __init__(self, node: str, subnet: ipaddress.IPv4Network, public_ip: ipaddress.IPv4Address,
                 vtep_mac: str, vni: int, expires: float | None = None):
        self.node, self.subnet, self.public_ip = node, subnet, public_ip
        self.vtep_mac, self.vni, self.expires = vtep_mac, vni, expires

    def __eq__(self, other) -> bool:
        return isinstance(other, Lease) and self.same_binding(other) and self.expires == other.expires

    def same_binding(self, other: Lease | None) -> bool:
        """Equal in everything peers program (TTL aside)."""
        return other is not None and (self.node, self.subnet, self.public_ip, self.vtep_mac, self.vni) == \
            (other.node, other.subnet, other.public_ip, other.vtep_mac, other.vni)

    def with_expiry(self, expires: float | None) -> Lease:
        return Lease(self.node, self.subnet, self.public_ip, self.vtep_mac, self.vni, expires)

    def to_json(self) -> dict:
        out = {"subnet": str(self.subnet), "publicIP": str(self.public_ip),
               "vtepMAC": self.vtep_mac, "vni": self.vni}
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
            record = NetworkRecord(ipaddress.IPv4Network(net["network"]), int(net["subnetLen"]),
                                   int(net["vni"]))
        leases, seen = {}, {}
        for node, raw in (doc.get("leases") or {}).items():
            key = (node, raw["subnet"], raw["publicIP"], raw["vtepMAC"], raw["vni"], raw.get("expires"))
            lease = previous.get(key)
            if lease is None:
                lease = Lease(str(node), _net(raw["subnet"]), _ip(raw["publicIP"]),
                              _mac(raw["vtepMAC"]), int(raw["vni"]), raw.get("expires"))
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
