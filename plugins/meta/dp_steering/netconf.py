"""dp-steering's config with its defaults, its error codes (120-139; the README lists
each with its fix), and the names and MACs it derives."""
from __future__ import annotations

import os

from libcni_py.errors import CNIError, INVALID_CONFIG
from plugins.pkg.names import check_ifname, check_path_component, short_hash

NO_PREV_RESULT = 120      # chained without an interface plugin before it
IFACE_MISSING = 121       # CNI_IFNAME not in prevResult or not in the pod netns
ENFORCER_NETNS = 122      # enforcerNetns missing or not a network namespace
DATAPATH_UNAVAILABLE = 123  # datapath asked for cannot run on this kernel
PULL_FAILED = 124         # moving the pod port in (rolled back) or back out failed
RULES_FAILED = 125        # installing filters failed (rolled back)
NO_STATE = 126            # no record of this pod (CHECK, mode) or it is corrupt
CHECK_MISMATCH = 127      # CHECK found a difference
INDEX_CLASH = 128         # UCMAC/pref space exhausted or taken
NAME_CLASH = 129          # vex<id>/vin<id> already exist
CONFIG_CHANGED = 130      # CHECK with a config that differs from the pod's record

DEFAULT_STATE_DIR = "/var/lib/cni/pycni/dp-steering"


class Config:
    """The plugin's keys (schema-validated already) with their defaults."""

    def __init__(self, conf: dict):
        self.network = conf["name"]
        self.enforcer_netns = conf.get("enforcerNetns", "")
        self.mode = conf.get("mode", "inline")
        self.datapath = conf.get("datapath", "auto")
        self.dp_socket = conf.get("dpSocket", "")
        self.fail_open = bool(conf.get("failOpen", False))
        self.vbr = check_ifname(conf.get("vbrName", "vbr-dp"), "vbrName")
        self.vth = check_ifname(conf.get("vthName", "vth-dp"), "vthName")
        if self.vbr == self.vth:
            raise CNIError(INVALID_CONFIG, "vbrName and vthName must differ", self.vbr)
        self.state_dir = conf.get("stateDir", DEFAULT_STATE_DIR)
        self.dp_wait_ms = int(conf.get("dpWaitMs", 500))


def load(conf: dict) -> Config:
    return Config(conf)


def check_enforcer(path: str) -> str:
    """The enforcer netns path must exist and be a network namespace."""
    if not path or not os.path.isabs(path):
        raise CNIError(ENFORCER_NETNS, f"enforcerNetns {path!r} is not an absolute path")
    try:
        with open(path, "rb"):
            pass
        from plugins.pkg import ns
        with ns.enter(path):
            pass
    except OSError as e:
        raise CNIError(ENFORCER_NETNS, f"enforcerNetns {path} is not a usable network namespace",
                       e.strerror or str(e)) from None
    return path


def port_names(container_id: str, ifname: str) -> tuple[str, str]:
    """(vex<id>, vin<id>): 6 hex of a hash of (container ID, ifname)."""
    check_path_component(container_id, "containerID")
    check_ifname(ifname, "CNI_IFNAME")
    pid = short_hash(container_id, ifname, n=6)
    return "vex" + pid, "vin" + pid


def parking_mac(container_id: str, ifname: str) -> str:
    """The MAC the original interface wears while it is vex<id>: locally administered."""
    h = short_hash(container_id, ifname, "vex", n=8)
    return "02:00:" + ":".join(h[i:i + 2] for i in range(0, 8, 2))


def ucmac(low16: int) -> str:
    """NeuVector's per-pod unicast MAC 4e:65:75:56:xx:xx (xx:xx: the vex ifindex's low bytes)."""
    return f"4e:65:75:56:{(low16 >> 8) & 0xFF:02x}:{low16 & 0xFF:02x}"


def allocate16(start: int, used: set[int], what: str) -> int:
    """`start`'s low 16 bits, or the next value up that is neither 0 nor in `used`."""
    for k in range(0x10000):
        value = (start + k) & 0xFFFF
        if value and value not in used:
            return value
    raise CNIError(INDEX_CLASH, f"no free {what} left (all 65535 in use)")
