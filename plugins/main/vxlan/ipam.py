"""The pod's address: the delegated IPAM plugin, and a record of each allocation.

`ipam` omitted means `{"type": "host-local"}`; a host-local section without
`ranges`/`subnet` gets this node's subnet, gateway and a route to the cluster
network filled in (what flannel's CNI does), and `dataDir` defaults to
<stateDir>/ipam. Before delegating ADD we write a record (container ID, ifname,
netns, the exact IPAM config) under <stateDir>/attachments/, so DEL and GC can
release an allocation even when the node's lease is gone, and GC can find the
attachments the runtime no longer knows.
"""
from __future__ import annotations

import json
import os

from libcni_py import records as rec
from libcni_py import version as V
from libcni_py.errors import CNIError, INCOMPATIBLE_VERSION, INTERNAL, INVALID_CONFIG
from plugins.pkg.log import get_logger
from .errors import BAD_IPAM_RESULT

log = get_logger("pycni.vxlan.ipam")
RECORDS = "attachments"
# Set in the environment of the IPAM plugin we run: a vxlan that finds it was run (through a symlink,
# a copy or a wrapper script named as an IPAM plugin) as the IPAM plugin of a vxlan.
DELEGATED_MARK = "PYCNI_VXLAN_IPAM_OF"


def ipam_config(section: dict | None, state_dir: str, subnet, gateway, network,
                subnet6=None, gateway6=None, network6=None) -> dict:
    """The IPAM section to delegate with, from the config's (NetConf.ipam; None: host-local)
    (subnet/gateway/network: anything str() makes a CIDR/IP of; subnet None: no IPv4 range).
    With an IPv6 subnet host-local gets two ranges (one address of each family) and a route to
    each cluster network."""
    ipam = dict(section or {"type": "host-local"})
    if ipam.get("type") == "host-local" and "ranges" not in ipam and "subnet" not in ipam:
        ranges, routes = [], []
        for sub, gw, net in ((subnet, gateway, network), (subnet6, gateway6, network6)):
            if sub is None or str(sub) == "None":
                continue
            sub, gw = str(sub), str(gw or "")
            ranges.append([{"subnet": sub, "gateway": gw} if gw else {"subnet": sub}])
            routes.append({"dst": str(net)})
        ipam["ranges"] = ranges
        ipam.setdefault("routes", routes)
        ipam.setdefault("dataDir", os.path.join(state_dir, "ipam"))
    return ipam


def find_plugin(ipam_type: object, cni_path: str) -> str:
    """Fail before anything is created when the IPAM plugin is not on CNI_PATH."""
    from libcni_py.invoke import find_in_path
    if not isinstance(ipam_type, str):
        raise CNIError(INVALID_CONFIG, "invalid config field 'ipam.type'", repr(ipam_type))
    try:
        return find_in_path(ipam_type, [p for p in cni_path.split(os.pathsep) if p])
    except CNIError as e:       # libcni's lookup says 999; a config naming a missing plugin is no bug of ours
        raise CNIError(INVALID_CONFIG, f"invalid config field 'ipam.type': {e.msg}",
                       "install that IPAM plugin into a CNI_PATH directory, or fix ipam.type") from None


# ---- the record of one attachment ----

def record_path(state_dir: str, host_veth: str) -> str:
    return os.path.join(state_dir, RECORDS, host_veth + ".json")


def write_record(state_dir: str, host_veth: str, record: dict) -> None:
    """Atomic (a killed ADD leaves the old state or this record, never half of it), not fsync'd:
    the record is a new file and its directory is not synced, so a power cut could always lose
    it; DEL treats a record that is gone or unreadable alike (IPAM released by ID, the file
    removed), so the fsync (1-20 ms of every ADD here) bought no safety."""
    path = record_path(state_dir, host_veth)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    rec.write(path, record, sync=False)


def read_record(state_dir: str, host_veth: str) -> dict | None:
    try:
        got = rec.read(record_path(state_dir, host_veth), max_bytes=1 << 20)
    except (OSError, ValueError):
        return None
    return got if isinstance(got, dict) else None


def remove_record(state_dir: str, host_veth: str) -> None:
    rec.remove(record_path(state_dir, host_veth))


def clean_stale(state_dir: str) -> list[str]:
    """Remove the temp files (`<record>.tmp<pid>`) that writers killed mid-write left in stateDir and
    its attachments/ (node-local: a pid there is a pid of this machine); their names."""
    return rec.clean_stale(os.path.join(state_dir, RECORDS)) + rec.clean_stale(state_dir)


def record_names(state_dir: str) -> list[str]:
    """The host veth names that have a record (an attachment this node made and has not released)."""
    return [n[:-5] for n in rec.names(os.path.join(state_dir, RECORDS), ".json")]


def records(state_dir: str) -> list[dict]:
    out = []
    for name in record_names(state_dir):
        got = read_record(state_dir, name)
        if got and isinstance(got.get("containerID"), str) and isinstance(got.get("ifname"), str):
            out.append(got)
    return out


# ---- delegation ----

def add(conf: dict, ipam: dict):
    """Delegate ADD; the Result in the config's version."""
    res = _delegate("ADD", conf, ipam)
    return res.convert(V.config_version(conf)) if res.cni_version != V.config_version(conf) else res


def check(conf: dict, ipam: dict) -> None:
    _delegate("CHECK", conf, ipam)


def delete(conf: dict, ipam: dict, container_id: str = "", ifname: str = "") -> None:
    """Delegate DEL; for another attachment than this invocation's when IDs are given (GC)."""
    _delegate("DEL", conf, ipam, container_id=container_id, ifname=ifname)


def gc(conf: dict, ipam: dict, valid: list[dict]) -> None:
    """Delegate GC when the IPAM plugin speaks 1.1.0 (host-local 1.1.1 does not)."""
    from libcni_py.invoke import version_info
    path = find_plugin(ipam.get("type"), os.environ.get("CNI_PATH", ""))
    if "1.1.0" not in version_info(path):
        return
    _delegate("GC", conf, ipam, extra={"cni.dev/valid-attachments": valid})


def _netconf(conf: dict, ipam: dict, version: str, extra: dict | None = None) -> bytes:
    out = {k: v for k, v in conf.items() if k not in ("prevResult", "cni.dev/valid-attachments",
                                                      "cni.dev/attachments")}
    out["cniVersion"] = version
    out["ipam"] = ipam
    out.update(extra or {})
    return json.dumps(out).encode()


def _delegate(command: str, conf: dict, ipam: dict, container_id: str = "", ifname: str = "",
              extra: dict | None = None):
    """The IPAM plugin's answer. An IPAM plugin that fails with 999 (Go's host-local does for every
    failure of its own: range full, a requested IP out of range, CNI_ARGS it does not know) is no
    bug of ours: that becomes 115 with its message."""
    try:
        return _run(command, conf, ipam, container_id, ifname, extra)
    except CNIError as e:
        if e.code != INTERNAL:
            raise
        raise CNIError(BAD_IPAM_RESULT, f"IPAM plugin {ipam.get('type')} failed ({command}): {e.msg}",
                       e.details) from None


def _run(command: str, conf: dict, ipam: dict, container_id: str = "", ifname: str = "",
         extra: dict | None = None):
    """Run the IPAM plugin; when it refuses our cniVersion, again at the newest one it knows."""
    from libcni_py import invoke
    path = find_plugin(ipam.get("type"), os.environ.get("CNI_PATH", ""))
    env = dict(os.environ)
    env["CNI_COMMAND"] = command
    env[DELEGATED_MARK] = f"{env.get('CNI_CONTAINERID', '')}/{env.get('CNI_IFNAME', '')} {ipam.get('type')}"
    if container_id:
        env["CNI_CONTAINERID"], env["CNI_IFNAME"] = container_id, ifname
    version = V.config_version(conf)
    for attempt in (0, 1):
        stdin = _netconf(conf, ipam, version, extra)
        try:
            if command == "ADD":
                return invoke.exec_with_result(path, stdin, env)
            invoke.exec_plugin(path, stdin, env)
            return None
        except CNIError as e:
            if e.code != INCOMPATIBLE_VERSION or attempt:
                raise
            version = _common_version(path, version)
            log.debug("IPAM %s refuses cniVersion %s; using %s", ipam.get("type"), conf.get("cniVersion"), version)


def _common_version(path: str, ours: str) -> str:
    from libcni_py.invoke import version_info
    theirs = [v for v in version_info(path) if v in V.ALL and not V.lt(ours, v)]
    if not theirs:
        raise CNIError(INCOMPATIBLE_VERSION, f"IPAM plugin {os.path.basename(path)} supports no version <= {ours}")
    return max(theirs, key=V.parse)
