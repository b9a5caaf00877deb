"""What filters steer one pod, per mode; both datapaths install exactly these.

Each rule is one ingress filter: on `dev`, at priority `pref`, for `protocol`; it
matches frames whose `field` MAC ("dst", "src" or None for every frame) equals
`mac` (and, with `unicast`, whose destination is unicast), optionally sends the
untouched frame to `copy_to`, rewrites that MAC to `rewrite`, and sends the
result to `to` (None: drop). Inline is NeuVector's FwdPortPair, tap its TapPortPair.

IPv6 is steered as IPv4 is: a "ipv6" rule beside each "ip" one, at a priority of its own
in front of the rest. Neighbour discovery stays out of the dp, as ARP does for IPv4 (ARP
is no "ip" frame): two "ipv6" rules in front of those match ICMPv6 (next header 58, no
extension header, as RFC 4861 sends it) by `icmp6` = (type, mask) and send the frame
straight across, unicast NS/NA included; multicast ND (33:33:xx) is not unicast and
goes across with the rest. Types 132-135 (MLD done, RS, RA, NS) and 136-137 (NA, redirect).
"""
from __future__ import annotations

from collections import namedtuple

POD_PREF = 10001          # the matching rule on vex/vin
REST_PREF = 10002         # everything else on vex/vin
ND_PREF, ND2_PREF = 9997, 9998     # IPv6 neighbour discovery on vex/vin: across, never to the dp
POD6_PREF = 9999          # the matching IPv6 rule on vex/vin
PORT_PREFS = (ND_PREF, ND2_PREF, POD6_PREF, POD_PREF, REST_PREF)    # every vex/vin priority of ours
ND_TYPES = ((0x84, 0xFC), (0x88, 0xFE))     # ICMPv6 types 132-135, 136-137

# One ingress filter, as above: protocol "ip", "ipv6" or "all", field "dst", "src" or None;
# icmp6 (type, mask) for an ICMPv6 match (neighbour discovery), else None.
Rule = namedtuple("Rule", "dev pref protocol field mac unicast copy_to rewrite to icmp6",
                  defaults=("", False, None, None, None, None))

# One pod's steering: its devices in the enforcer netns, its MACs, and its vbr rules'
# priorities: vex_pref for frames towards it (the vex ifindex), vin_pref for frames from it.
Port = namedtuple("Port", "vex vin vbr mac ucmac vex_pref vin_pref")


def rules_for(mode: str, p: Port) -> list[Rule]:
    """Every filter of the pod in `mode`: neighbour discovery across, then per family the rule
    taking the pod's unicast to vbr, then the rest across; on vbr the way back."""
    v4 = _rules(mode, p)
    return v4 + _nd(p) + [r._replace(pref=POD6_PREF, protocol="ipv6") for r in v4 if r.pref == POD_PREF]


def _nd(p: Port) -> list[Rule]:
    """Neighbour discovery across, before the IPv6 rule takes the pod's unicast (both modes)."""
    return [Rule(dev, pref, "ipv6", None, to=to, icmp6=t)
            for dev, to in ((p.vex, p.vin), (p.vin, p.vex))
            for pref, t in zip((ND_PREF, ND2_PREF), ND_TYPES)]


def _rules(mode: str, p: Port) -> list[Rule]:
    if mode == "inline":
        return [
            Rule(p.vex, POD_PREF, "ip", "dst", p.mac, True, rewrite=p.ucmac, to=p.vbr),
            Rule(p.vex, REST_PREF, "all", None, to=p.vin),
            Rule(p.vbr, p.vex_pref, "all", "dst", p.ucmac, rewrite=p.mac, to=p.vin),
            Rule(p.vin, REST_PREF, "all", None, to=p.vex),
            Rule(p.vin, POD_PREF, "ip", "src", p.mac, True, rewrite=p.ucmac, to=p.vbr),
            Rule(p.vbr, p.vin_pref, "all", "src", p.ucmac, rewrite=p.mac, to=p.vex),
        ]
    if mode == "tap":
        return [
            Rule(p.vex, POD_PREF, "ip", "dst", p.mac, True, copy_to=p.vin, rewrite=p.ucmac, to=p.vbr),
            Rule(p.vex, REST_PREF, "all", None, to=p.vin),
            Rule(p.vin, POD_PREF, "ip", "src", p.mac, True, copy_to=p.vex, rewrite=p.ucmac, to=p.vbr),
            Rule(p.vin, REST_PREF, "all", None, to=p.vex),
            Rule(p.vbr, p.vex_pref, "all", "dst", p.ucmac),
            Rule(p.vbr, p.vin_pref, "all", "src", p.ucmac),
        ]
    raise ValueError(f"no rules for mode {mode!r}")
