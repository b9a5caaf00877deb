"""dp-steering's config: one `NetConf` built by `load()` in one place, the only thing cmd_* and the
plugin's modules read config keys from (as the Go plugins' NetConf + loadNetConf), and the schema
hook with the keys each verb's cleanup needs."""
from __future__ import annotations

import os

from libcni_py.errors import CNIError, INVALID_CONFIG
from plugins.pkg.names import check_ifname
from plugins.pkg.paths import check_dir

from .errors import ENFORCER_NETNS

DEFAULT_STATE_DIR = "/var/lib/cni/pycni/dp-steering"

# What each verb outside ADD needs from the config: those keys are still checked (and a bad value
# is an error); a bad value in any other key is dropped (see plugins.pkg.schema.validate).
# DEL and GC find everything from the pod's record under stateDir; CHECK compares the rest
# with the record and leaves out keys it was not given a valid value for; STATUS answers
# for a new pod, so it needs what ADD would use.
CLEANUP = {
    "DEL": ("stateDir",),
    "GC": ("stateDir",),
    "CHECK": ("stateDir",),
    "STATUS": ("stateDir", "enforcerNetns", "mode", "datapath", "dpSocket", "failOpen", "vthName", "vbrName"),
}
_dropped: set[str] = set()        # keys the last validate() dropped (one exec, one config)


def validate(conf: dict, command: str) -> None:
    """The skel's validate hook: the schema, lenient outside ADD (CLEANUP)."""
    from plugins.pkg import schema
    before = set(conf)
    schema.validate(conf, "dp-steering", command, CLEANUP.get(command, ()))
    _dropped.clear()
    _dropped.update(before - set(conf))


class NetConf:
    """The plugin's keys (schema-validated already) with their defaults."""

    network: str
    enforcer_netns: str
    mode: str                 # inline | tap
    datapath: str             # auto | tc-pedit | ebpf
    dp_socket: str            # "" : none
    fail_open: bool
    vbr: str
    vth: str
    state_dir: str
    dp_wait_ms: int
    dropped: frozenset        # config keys validate() dropped (bad values outside ADD)

    def __init__(self, conf: dict, command: str = "ADD"):
        self.network = conf["name"]
        self.enforcer_netns = conf.get("enforcerNetns", "")
        self.mode = conf.get("mode", "inline")
        self.datapath = conf.get("datapath", "auto")
        self.dp_socket = conf.get("dpSocket", "")
        self.fail_open = bool(conf.get("failOpen", False))
        self.vbr = conf.get("vbrName", "vbr-dp")
        self.vth = conf.get("vthName", "vth-dp")
        self.state_dir = check_dir(conf.get("stateDir", DEFAULT_STATE_DIR), "stateDir")
        self.dp_wait_ms = int(conf.get("dpWaitMs", 500))
        self.dropped = frozenset(k for k in _dropped if k not in conf)
        if command in ("ADD", "CHECK", "STATUS"):
            check_ifname(self.vbr, "vbrName")
            check_ifname(self.vth, "vthName")
            if self.vbr == self.vth:
                raise CNIError(INVALID_CONFIG, "vbrName and vthName must differ", self.vbr)


def load(conf: dict, command: str = "ADD") -> NetConf:
    return NetConf(conf, command)


def check_enforcer(path: str) -> str:
    """The enforcer netns path must exist and be a network namespace."""
    if not path or not os.path.isabs(path):
        raise CNIError(ENFORCER_NETNS, f"enforcerNetns {path!r} is not an absolute path")
    from plugins.pkg import ns
    try:
        ns.check_netns(path)
        with ns.enter(path):
            pass
    except OSError as e:
        raise CNIError(ENFORCER_NETNS, f"enforcerNetns {path} is not a usable network namespace",
                       e.strerror or str(e)) from None
    return path
