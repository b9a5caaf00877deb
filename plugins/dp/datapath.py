"""Endpoints (pods), the MAC table and the per-frame verdict of the reference dp.

The steering rules rewrite a pod's MAC to its UCMAC 4e:65:75:56:xx:xx before the frame
reaches us: the destination for traffic towards the pod (ingress), the source for
traffic from it (egress). UCMACs decide first (destination, then source), so pod-to-pod
traffic is counted once at each end; a frame carrying an unregistered UCMAC is learned
as an anonymous pod unless the dp runs strict; only then are plain pod MACs looked at
(steering without MAC rewriting). Allowed frames go back out of the same port byte for
byte, denied ones are dropped; in tap mode nothing is sent, frames are only counted.
"""
from __future__ import annotations

import logging
import socket

from plugins.dp import packet
from plugins.dp.policy import Policy, verdict

UCMAC_PREFIX = bytes.fromhex("4e657556")
H = packet.VNET_HDR_LEN
MAX_LEARNED = 1024          # anonymous pods learned from frames; beyond: counted as unknown
log = logging.getLogger("pycni-dp")


def _ifindex(iface: str) -> int | None:
    try:
        return socket.if_nametoindex(iface)
    except OSError:
        return None


def mac_bytes(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"{text!r} is not a MAC address")
    return bytes.fromhex("".join(parts))


def mac_text(raw: bytes) -> str:
    return raw.hex(":")


class Endpoint:
    __slots__ = ("mac", "ucmac", "bcmac", "iface", "name", "vex", "vin", "tap", "learned",
                 "owner", "rules", "allowed", "denied", "allowed_bytes", "denied_bytes")

    def __init__(self, mac: bytes, ucmac: bytes | None = None, bcmac: bytes | None = None,
                 iface: str = "", name: str = "", tap: bool = False, learned: bool = False):
        self.mac, self.ucmac, self.bcmac = mac, ucmac, bcmac
        self.iface, self.name, self.vex, self.vin = iface, name, "", ""
        self.tap, self.learned = tap, learned
        self.owner = None           # the control client that registered it (its address)
        self.rules = ()
        self.allowed = self.denied = self.allowed_bytes = self.denied_bytes = 0

    def ids(self) -> set[str]:
        ids = {mac_text(self.mac)}
        if self.ucmac:
            ids.add(mac_text(self.ucmac))
        if self.name:
            ids.add(self.name.lower())
        return ids

    def take_counters(self, other: Endpoint) -> None:
        self.allowed += other.allowed
        self.denied += other.denied
        self.allowed_bytes += other.allowed_bytes
        self.denied_bytes += other.denied_bytes

    def stats(self) -> dict:
        return {"name": self.name, "mac": mac_text(self.mac),
                "ucmac": mac_text(self.ucmac) if self.ucmac else "",
                "bcmac": mac_text(self.bcmac) if self.bcmac else "",
                "iface": self.iface, "vex": self.vex, "vin": self.vin,
                "tap": self.tap, "learned": self.learned,
                "allowed": self.allowed, "denied": self.denied,
                "allowed_bytes": self.allowed_bytes, "denied_bytes": self.denied_bytes}


class Datapath:
    def __init__(self, policy: Policy, tap: bool = False, learn: bool = True):
        self.policy = policy
        self.tap = tap              # global tap: never send anything back
        self.learn = learn
        self.endpoints: dict[bytes, Endpoint] = {}     # by pod MAC (learned: by UCMAC)
        self.uc_table: dict[bytes, Endpoint] = {}      # UCMACs and BCMACs
        self.mac_table: dict[bytes, Endpoint] = {}     # pod MACs
        self.wanted: dict[str, tuple[bool, bool]] = {}  # service ports: iface -> (tap, jumbo)
        self.ports: dict[int, packet.Port] = {}        # open ones, by fd
        self.totals = dict(frames=0, sent=0, unknown=0, truncated=0, errors=0)
        self.registered = 0                            # endpoints not learned
        self.by_owner: dict = {}                       # owner -> endpoints it registered
        self.learned = 0

    # -- endpoints
    def replaced(self, ep: Endpoint, oldmac: bytes | None = None) -> list[Endpoint]:
        """The endpoints add_endpoint(ep, oldmac) would replace."""
        olds = []
        for key in (oldmac or ep.mac, ep.mac, ep.ucmac):
            old = self.endpoints.get(key) if key else None
            if old is not None and old not in olds:
                olds.append(old)
        return olds

    def add_endpoint(self, ep: Endpoint, oldmac: bytes | None = None) -> Endpoint:
        """Add or replace the endpoint with ep.mac (or oldmac); counters carry over."""
        for old in self.replaced(ep, oldmac):
            self._unlink(old)
            ep.take_counters(old)
        self.endpoints[ep.mac] = ep
        for table, m in self._keys(ep):
            table[m] = ep
        if ep.learned:
            self.learned += 1
        else:
            self.registered += 1
            self.by_owner[ep.owner] = self.by_owner.get(ep.owner, 0) + 1
        ep.rules = self.policy.rules_for(ep.ids())
        return ep

    def find(self, mac: bytes) -> Endpoint | None:
        """The endpoint with this pod MAC, UCMAC or BCMAC."""
        return self.endpoints.get(mac) or self.uc_table.get(mac) or self.mac_table.get(mac)

    def del_endpoint(self, mac: bytes) -> Endpoint | None:
        ep = self.find(mac)
        if ep is not None:
            self._unlink(ep)
        return ep

    def _keys(self, ep: Endpoint) -> list:
        keys = [(self.uc_table, m) for m in (ep.ucmac, ep.bcmac) if m]
        if not ep.learned:
            keys.append((self.mac_table, ep.mac))
        return keys

    def _unlink(self, ep: Endpoint) -> None:
        if self.endpoints.get(ep.mac) is not ep:
            return
        del self.endpoints[ep.mac]
        for table, m in self._keys(ep):
            if table.get(m) is ep:
                del table[m]
        if ep.learned:
            self.learned -= 1
        else:
            self.registered -= 1
            left = self.by_owner.get(ep.owner, 1) - 1
            if left > 0:
                self.by_owner[ep.owner] = left
            else:
                self.by_owner.pop(ep.owner, None)

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        for ep in self.endpoints.values():
            ep.rules = policy.rules_for(ep.ids())

    # -- service ports
    def want_port(self, iface: str, tap: bool = False, jumboframe: bool = False) -> None:
        self.wanted[iface] = (tap, jumboframe)
        for port in self.ports.values():
            if port.iface == iface:
                port.tap, port.jumboframe = tap, jumboframe
        self.sync_ports()

    def unwant_port(self, iface: str) -> bool:
        known = self.wanted.pop(iface, None) is not None
        self.sync_ports()
        return known

    def sync_ports(self) -> bool:
        """Open wanted ports whose interface exists, close the others (also when an
        interface was deleted or re-created under the same name). True if changed."""
        changed = False
        for fd, port in list(self.ports.items()):
            if port.iface not in self.wanted or _ifindex(port.iface) != port.ifindex:
                log.info("closing port %s", port.iface)
                port.close()
                del self.ports[fd]
                changed = True
        open_names = {p.iface for p in self.ports.values()}
        for iface, (tap, jumbo) in self.wanted.items():
            if iface in open_names or _ifindex(iface) is None:
                continue
            try:
                port = packet.Port(iface, tap, jumbo)
            except OSError as e:        # gone again in between, or down: next event retries
                log.warning("cannot open port %s: %s", iface, e)
                continue
            log.info("listening on %s (ifindex %d)%s", iface, port.ifindex,
                     " tap" if tap else "")
            self.ports[port.fileno()] = port
            changed = True
        return changed

    def close(self) -> None:
        for port in self.ports.values():
            port.close()
        self.ports.clear()

    # -- frames
    def handle(self, port: packet.Port, buf, view, n: int) -> None:
        """One frame (with its vnet header) of n bytes in buf, received on port."""
        totals = self.totals
        totals["frames"] += 1
        if n > len(buf):
            totals["truncated"] += 1
            return
        if n < H + 14:
            totals["unknown"] += 1
            return
        dst = bytes(view[H:H + 6])
        ep = self.uc_table.get(dst)
        ingress = True
        if ep is None:
            src = bytes(view[H + 6:H + 12])
            ep = self.uc_table.get(src)
            ingress = False
            if ep is None:
                ep, ingress = self._classify(dst, src, port)
                if ep is None:
                    totals["unknown"] += 1
                    return
        if ep.rules:
            allow = verdict(ep.rules, self.policy.default_allow, ingress,
                            *packet.parse(buf, H, n))
        else:
            allow = self.policy.default_allow
        if not allow:
            ep.denied += 1
            ep.denied_bytes += n - H
            return
        ep.allowed += 1
        ep.allowed_bytes += n - H
        if ep.tap or port.tap or self.tap:
            return
        try:
            port.sock.send(view[:n])
            totals["sent"] += 1
        except OSError:             # full queue, device going away: the frame is lost
            totals["errors"] += 1

    def _classify(self, dst: bytes, src: bytes, port: packet.Port) -> tuple:
        """(endpoint or None, ingress) for a frame without a registered UCMAC."""
        for mac, ingress in ((dst, True), (src, False)):
            if self.learn and mac[:4] == UCMAC_PREFIX and self.learned < MAX_LEARNED:
                log.info("learned pod with UCMAC %s on %s", mac_text(mac), port.iface)
                return self.add_endpoint(Endpoint(mac, ucmac=mac, iface=port.iface,
                                                  learned=True)), ingress
        ep = self.mac_table.get(dst)
        if ep is not None:
            return ep, True
        return self.mac_table.get(src), False

    # -- reporting
    def stats(self, macs: list[bytes] | None = None) -> dict:
        eps: list[Endpoint]
        if macs is None:
            eps = list(self.endpoints.values())
        else:
            eps = [e for e in map(self.find, macs) if e]
        return {"pods": {mac_text(ep.mac): ep.stats() for ep in eps},
                "ports": [p.info() for p in self.ports.values()],
                "totals": dict(self.totals), "tap": self.tap,
                "policy": self.policy.summary()}
