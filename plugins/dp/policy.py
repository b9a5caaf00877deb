"""The dp's JSON policy: ordered allow/deny rules, first match wins, default allow.

    {"default": "allow",
     "rules": [{"action": "deny", "proto": "tcp", "dport": 5201, "direction": "ingress",
                "src": "10.1.0.0/16", "pod": "web-1"}]}

Rule keys (all but `action` optional, an absent key matches everything):
  action     "allow" | "deny"
  proto      "tcp" | "udp" | "icmp" | "icmpv6" | "sctp" | "any" | 0-255; for IPv6 the next header
             after any extension headers (hop-by-hop, routing, destination options, fragment)
  family     4 | 6 | "ipv4" | "ipv6" | "any": the frame's IP version (a rule with src/dst of one
             family matches only that family anyway)
  src, dst   an address or CIDR (IPv4 or IPv6), or a list of them (both families may be mixed)
  sport, dport  a port, "lo-hi", or a list of those (a rule with ports matches TCP/UDP/SCTP only)
  direction  "ingress" (towards the pod) | "egress" (from the pod) | "any"
  pod        a pod's name, MAC or UCMAC as the control socket registered it, or a list
  comment    free text, ignored
Rules are compiled to tuples of ints once, so matching a packet costs no allocation.
"""
from __future__ import annotations

import ipaddress
import json

PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}
PORT_PROTOS = frozenset((6, 17, 132))
DIRECTIONS = {"ingress": True, "egress": False}
RULE_KEYS = {"action", "proto", "family", "src", "dst", "sport", "dport", "direction", "pod", "comment"}
FAMILIES = {4: 4, 6: 6, "4": 4, "6": 6, "ipv4": 4, "ipv6": 6, "any": None}

# A compiled rule: (allow, proto, src_nets, dst_nets, sport_ranges, dport_ranges, ingress, pods, family)
# where nets are tuples of (family, network, mask) and ranges tuples of (lo, hi).


class PolicyError(ValueError):
    """The policy is not valid; the message names the offending field."""


class Policy:
    """A compiled policy. `rules_for(ids)` picks the rules that apply to one pod."""

    def __init__(self, default_allow: bool = True, rules: tuple = (), source: str = "built-in"):
        self.default_allow = default_allow
        self.rules = rules
        self.source = source

    def rules_for(self, pod_ids: set[str]) -> tuple:
        return tuple(r for r in self.rules if r[7] is None or not r[7].isdisjoint(pod_ids))

    def summary(self) -> dict:
        return {"default": "allow" if self.default_allow else "deny",
                "rules": len(self.rules), "source": self.source}


def verdict(rules: tuple, default_allow: bool, ingress: bool, family: int, proto: int,
            src: int, dst: int, sport: int, dport: int) -> bool:
    """True to allow. `family` is 0 for non-IP frames, ports are -1 when absent."""
    for allow, r_proto, r_src, r_dst, r_sport, r_dport, r_ingress, _, r_family in rules:
        if r_ingress is not None and r_ingress != ingress:
            continue
        if r_family is not None and r_family != family:
            continue
        if r_proto is not None and r_proto != proto:
            continue
        if r_src is not None and not _in_nets(r_src, family, src):
            continue
        if r_dst is not None and not _in_nets(r_dst, family, dst):
            continue
        if r_sport is not None and not _in_ranges(r_sport, sport):
            continue
        if r_dport is not None and not _in_ranges(r_dport, dport):
            continue
        return allow
    return default_allow


def _in_nets(nets: tuple, family: int, addr: int) -> bool:
    for fam, net, mask in nets:
        if fam == family and addr & mask == net:
            return True
    return False


def _in_ranges(ranges: tuple, port: int) -> bool:
    for lo, hi in ranges:
        if lo <= port <= hi:
            return True
    return False


def load(path: str) -> Policy:
    """Read and compile a policy file; PolicyError on any problem."""
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except OSError as e:
        raise PolicyError(f"cannot read policy {path}: {e.strerror}") from None
    except ValueError as e:
        raise PolicyError(f"policy {path} is not valid JSON: {e}") from None
    return compile_policy(doc, source=path)


def compile_policy(doc, source: str = "inline") -> Policy:
    if not isinstance(doc, dict):
        raise PolicyError("policy: must be a JSON object")
    unknown = set(doc) - {"default", "rules", "comment"}
    if unknown:
        raise PolicyError(f"policy: unknown key(s) {sorted(unknown)}")
    default = doc.get("default", "allow")
    if default not in ("allow", "deny"):
        raise PolicyError("default: must be \"allow\" or \"deny\"")
    rules = doc.get("rules", [])
    if not isinstance(rules, list):
        raise PolicyError("rules: must be a list")
    compiled = tuple(_compile_rule(r, f"rules[{i}]") for i, r in enumerate(rules))
    return Policy(default == "allow", compiled, source)


def _compile_rule(rule, where: str) -> tuple:
    if not isinstance(rule, dict):
        raise PolicyError(f"{where}: must be an object")
    unknown = set(rule) - RULE_KEYS
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {sorted(unknown)}")
    action = rule.get("action")
    if action not in ("allow", "deny"):
        raise PolicyError(f"{where}.action: must be \"allow\" or \"deny\"")
    proto = _proto(rule.get("proto"), f"{where}.proto")
    sport = _ports(rule.get("sport"), f"{where}.sport")
    dport = _ports(rule.get("dport"), f"{where}.dport")
    if (sport or dport) and proto is not None and proto not in PORT_PROTOS:
        raise PolicyError(f"{where}: ports need proto tcp, udp or sctp")
    direction = rule.get("direction", "any")
    if direction not in ("ingress", "egress", "any"):
        raise PolicyError(f"{where}.direction: must be ingress, egress or any")
    return (action == "allow", proto, _nets(rule.get("src"), f"{where}.src"),
            _nets(rule.get("dst"), f"{where}.dst"), sport, dport,
            DIRECTIONS.get(direction), _pods(rule.get("pod"), f"{where}.pod"),
            _family(rule.get("family", "any"), f"{where}.family"))


def _proto(value, where: str):
    if value is None or value == "any":
        return None
    if isinstance(value, str) and value.lower() in PROTOS:
        return PROTOS[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    raise PolicyError(f"{where}: must be one of {sorted(PROTOS)}, \"any\" or 0-255")


def _family(value, where: str):
    if isinstance(value, bool) or not isinstance(value, (int, str)) or \
            (value.lower() if isinstance(value, str) else value) not in FAMILIES:
        raise PolicyError(f"{where}: must be 4, 6, \"ipv4\", \"ipv6\" or \"any\"")
    return FAMILIES[value.lower() if isinstance(value, str) else value]


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _nets(value, where: str):
    if value is None:
        return None
    nets = []
    for item in _as_list(value):
        if not isinstance(item, str):
            raise PolicyError(f"{where}: must be an address, a CIDR or a list of them")
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise PolicyError(f"{where}: {item!r} is not an address or CIDR") from None
        nets.append((net.version, int(net.network_address), int(net.netmask)))
    if not nets:
        raise PolicyError(f"{where}: empty list")
    return tuple(nets)


def _ports(value, where: str):
    if value is None:
        return None
    ranges = []
    for item in _as_list(value):
        if isinstance(item, int) and not isinstance(item, bool):
            lo = hi = item
        elif isinstance(item, str) and item.count("-") == 1:
            a, b = item.split("-")
            if not (a.strip().isdigit() and b.strip().isdigit()):
                raise PolicyError(f"{where}: {item!r} is not a port range")
            lo, hi = int(a), int(b)
        elif isinstance(item, str) and item.strip().isdigit():
            lo = hi = int(item)
        else:
            raise PolicyError(f"{where}: must be a port, \"lo-hi\" or a list of them")
        if not 0 <= lo <= hi <= 65535:
            raise PolicyError(f"{where}: {item!r} is outside 0-65535 or reversed")
        ranges.append((lo, hi))
    if not ranges:
        raise PolicyError(f"{where}: empty list")
    return tuple(ranges)


def _pods(value, where: str):
    if value is None:
        return None
    pods = _as_list(value)
    if not pods or not all(isinstance(p, str) and p for p in pods):
        raise PolicyError(f"{where}: must be a pod name/MAC or a list of them")
    return frozenset(p.lower() for p in pods)
