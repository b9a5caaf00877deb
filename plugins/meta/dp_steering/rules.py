"""What filters steer one pod, per mode; both datapaths install exactly these.

Each rule is one ingress filter: on `dev`, at priority `pref`, for `protocol`; it
matches frames whose `field` MAC ("dst", "src" or None for every frame) equals
`mac` (and, with `unicast`, whose destination is unicast), optionally sends the
untouched frame to `copy_to`, rewrites that MAC to `rewrite`, and sends the
result to `to` (None: drop). Inline is NeuVector's FwdPortPair, tap its TapPortPair.
"""
from __future__ import annotations

from collections import namedtuple

POD_PREF = 10001          # the matching rule on vex/vin
REST_PREF = 10002         # everything else on vex/vin

# One ingress filter, as above: protocol "ip" or "all", field "dst", "src" or None.
Rule = namedtuple("Rule", "dev pref protocol field mac unicast copy_to rewrite to",
                  defaults=("", False, None, None, None))

# One pod's steering: its devices in the enforcer netns, its MACs, and its vbr rules'
# priorities: vex_pref for frames towards it (the vex ifindex), vin_pref for frames from it.
Port = namedtuple("Port", "vex vin vbr mac ucmac vex_pref vin_pref")


def rules_for(mode: str, p: Port) -> list[Rule]:
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
