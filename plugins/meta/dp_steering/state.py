"""dp-steering's records under stateDir, all read and written under one flock.

    <stateDir>/lock                         the flock every command holds
    <stateDir>/pods/<containerID>/<ifname>.json   one pod port (Pod): its journal while ADD runs
                                            (phase "adding", the ADD's pid and start time, the
                                            steps begun), then its record (phase "done")
    <stateDir>/shared/<hash>.json           one vbr/vth pair in one enforcer netns: its users and,
                                            per user, the UCMAC and vbr priorities it took
                                            ("allocations"), so an ADD reads this one file, not
                                            every pod's record, to find what is free (one line
                                            of JSON: it grows with the pods, and is written by
                                            every ADD and DEL)

The journal is written before each step of ADD that changes the kernel (`steps` names the
step about to be done, and every one before it), so DEL and GC can undo any prefix of an ADD
that was killed: an ADD whose process is gone (pid and /proc start time) left a dead journal.
A user of a shared pair counts only while its journal or record (with the "pair" step) exists.

Every record goes through libcni_py.records (O_EXCL|O_NOFOLLOW temp file, fsync, rename; a
reader never sees half of one, and a record that is no JSON we wrote is NO_STATE, never a crash).
"""
from __future__ import annotations

import os
from contextlib import contextmanager

from libcni_py import records
from libcni_py.errors import CNIError
from plugins.pkg.lock import locked
from plugins.pkg.names import check_ifname, check_path_component, short_hash

from . import ids
from .errors import NO_STATE


STEPS = ("pull", "pair", "dp", "rules")     # ADD's kernel-changing steps, in order


class Pod:
    """One steered pod port; its record is its slots' values."""
    __slots__ = ("container_id", "ifname", "network", "netns", "enforcer", "vex", "vin", "vbr", "vth",
                 "datapath", "mode", "mode_by_hand", "installed", "mac", "ucmac", "vex_index", "vin_index",
                 "vex_pref", "vin_pref", "fail_open", "dp_socket", "dp_wait_ms", "name",
                 "phase", "steps", "adder", "snap", "dp_lost_since")

    def __init__(self, container_id: str, ifname: str, network: str, netns: str, enforcer: str,
                 vex: str, vin: str, vbr: str, vth: str, datapath: str, mode: str,
                 mode_by_hand: bool = False, installed: str = "off", mac: str = "", ucmac: str = "",
                 vex_index: int = 0, vin_index: int = 0, vex_pref: int = 0, vin_pref: int = 0,
                 fail_open: bool = False, dp_socket: str = "", dp_wait_ms: int = 500, name: str = "",
                 phase: str = "done", steps: list | None = None, adder: list | None = None,
                 snap: dict | None = None, dp_lost_since: float = 0.0):
        self.container_id, self.ifname, self.network = container_id, ifname, network
        self.netns, self.enforcer = netns, enforcer
        self.vex, self.vin, self.vbr, self.vth = vex, vin, vbr, vth
        self.datapath = datapath          # resolved: "tc-pedit" or "ebpf"
        self.mode = mode                  # wanted: "inline", "tap" or "off"
        self.mode_by_hand = mode_by_hand  # `dp-steering mode` chose it (else the config's)
        self.installed = installed        # what the filters do now
        self.mac = mac                    # the pod's MAC
        self.ucmac = ucmac
        self.vex_index, self.vin_index = vex_index, vin_index
        self.vex_pref, self.vin_pref = vex_pref, vin_pref      # the pod's vbr filter priorities
        self.fail_open, self.dp_socket, self.dp_wait_ms = fail_open, dp_socket, dp_wait_ms
        self.name = name                  # how the dp's policy names the pod
        self.phase = phase                # "adding": a journal (ADD not finished); "done": a record
        # the steps begun, in order (STEPS); a record from before journals: all of them if steered
        self.steps = list(steps) if steps is not None else (list(STEPS) if installed != "off" else [])
        self.adder = list(adder or [])    # [pid, start time] of the ADD writing the journal
        self.snap = snap                  # the pod interface as pull found it (triad.snapshot_record)
        # when the fail-open watcher (failopen.py) saw the pod's dp go (time.time(); 0: it did not, or
        # the dp is back): a failOpen pod runs in tap since then, another one is blackholed
        self.dp_lost_since = dp_lost_since

    def dead_journal(self) -> bool:
        """A journal whose ADD process is gone (its pid is dead, a zombie, or another process)."""
        return self.phase == "adding" and not alive(self.adder)

    def dp_gone(self) -> str:
        """What a missing dp does to the pod now: "failed-open" (failOpen, wants inline, runs in tap:
        since ADD found no dp, or since the fail-open watcher saw the dp go), "fail-closed" (inline,
        and the watcher saw its dp go), or ""."""
        if self.mode == "inline" and self.installed == "tap" and self.fail_open:
            return "failed-open"
        if self.installed == "inline" and self.dp_lost_since:
            return "fail-closed"
        return ""

    def since(self) -> str:
        return (f"since {stamp(self.dp_lost_since)} (the dp went away)" if self.dp_lost_since
                else "since its ADD (no dp then)")

    def runtime(self) -> str:
        """dp_gone() in words ("": nothing to say)."""
        gone = self.dp_gone()
        if gone == "failed-open":
            return f"failed open {self.since()}: its traffic bypasses the dp (tap) until a dp reads {self.vth}"
        if gone == "fail-closed":
            return f"fail closed {self.since()}: its unicast traffic is dropped until a dp reads {self.vth}"
        return ""

    @property
    def key(self) -> str:
        return f"{self.container_id}/{self.ifname}"

    def record(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}

    def __eq__(self, other) -> bool:
        return isinstance(other, Pod) and self.record() == other.record()


@contextmanager
def lock(state_dir: str):
    with locked(os.path.join(state_dir, "lock")):
        yield


def _pod_path(state_dir: str, container_id: str, ifname: str) -> str:
    check_path_component(container_id, "containerID")
    check_ifname(ifname, "CNI_IFNAME")
    return os.path.join(state_dir, "pods", container_id, ifname + ".json")


def _write(path: str, data: dict, sync: bool = True) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    records.write(path, data, sync=sync)


def _read(path: str, what: str):
    try:
        return records.read(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:        # RecordError is a ValueError
        raise CNIError(NO_STATE, f"unreadable {what} {path}", str(e)) from None


def load_pod(state_dir: str, container_id: str, ifname: str) -> Pod | None:
    path = _pod_path(state_dir, container_id, ifname)
    data = _read(path, "dp-steering record")
    if data is None:
        return None
    try:
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return Pod(**{k: v for k, v in data.items() if k in Pod.__slots__})
    except TypeError as e:
        raise CNIError(NO_STATE, f"unreadable dp-steering record {path}", str(e)) from None


def all_pods(state_dir: str, skip_corrupt: bool = True) -> list[Pod]:
    """Every journal and record (a corrupt one is left out, or raises NO_STATE)."""
    out = []
    root = os.path.join(state_dir, "pods")
    for cid in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        for name in records.names(os.path.join(root, cid), ".json"):
            try:
                pod = load_pod(state_dir, cid, name[:-5])
            except CNIError:
                if not skip_corrupt:
                    raise
                continue
            if pod is not None:
                out.append(pod)
    return out


def save_pod(state_dir: str, pod: Pod) -> None:
    """Not fsync'd: what a journal or record describes (links, filters in netns) dies with the
    machine, a process's crash leaves the old or the new one, and a record a power loss emptied
    is a corrupt one (DEL sweeps by name, GC skips it). The shared-pair records are synced (every
    ADD reads its pair's)."""
    _write(_pod_path(state_dir, pod.container_id, pod.ifname), pod.record(), sync=False)


def remove_pod(state_dir: str, container_id: str, ifname: str) -> None:
    path = _pod_path(state_dir, container_id, ifname)
    records.remove(path)
    _tidy(os.path.dirname(path))


def _tidy(directory: str) -> None:
    """Remove temp files of dead writers (a killed ADD's) in `directory`, and it if empty."""
    records.clean_stale(directory)
    try:
        os.rmdir(directory)
    except OSError:
        pass


def tidy(state_dir: str) -> None:
    """GC: temp files of dead writers anywhere in the state, and empty pod directories."""
    root = os.path.join(state_dir, "pods")
    for cid in os.listdir(root) if os.path.isdir(root) else []:
        _tidy(os.path.join(root, cid))
    records.clean_stale(os.path.join(state_dir, "shared"))


def _shared_path(state_dir: str, enforcer: str, vbr: str) -> str:
    return os.path.join(state_dir, "shared", short_hash(enforcer, vbr, n=16) + ".json")


def users(state_dir: str, enforcer: str, vbr: str) -> list[str]:
    return _users(_read(_shared_path(state_dir, enforcer, vbr), "dp-steering shared-pair record"))


def pair(state_dir: str, enforcer: str, vbr: str) -> tuple[list[str], dict | None]:
    """(users, allocations) of the pair's record: allocations maps a user's key to what it took
    ({"ucmac": low 16 bits, "vex_pref": P, "vin_pref": P}, as written; read them with allocation()).
    None for a record without them (an older release's, which keeps users only and may have
    written the record again after it was lost: its users may not be all the pair's) and for no
    record at all; {} for a record of this release's with no user."""
    data = _read(_shared_path(state_dir, enforcer, vbr), "dp-steering shared-pair record")
    current = isinstance(data, dict) and isinstance(data.get("allocations"), dict)
    return _users(data), (_allocations(data) if current else None)


def _users(data) -> list[str]:
    if data is None:
        return []
    if not isinstance(data, dict) or not isinstance(data.get("users", []), list):
        raise CNIError(NO_STATE, "unreadable dp-steering shared-pair record", "not a {users: [...]} object")
    return [k for k in data.get("users", []) if isinstance(k, str)]


def _allocations(data) -> dict:
    got = data.get("allocations") if isinstance(data, dict) else None
    return got if isinstance(got, dict) else {}


def allocation(entry) -> tuple[int, int, int] | None:
    """(UCMAC low 16 bits, vex_pref, vin_pref) of an allocations entry; None for anything else
    (a missing, corrupt or unknown entry: the caller falls back to the user's record)."""
    if not isinstance(entry, dict):
        return None
    got = [entry.get(k) for k in ("ucmac", "vex_pref", "vin_pref")]
    ints = [v for v in got if type(v) is int and 0 < v <= 0xFFFF]
    return (ints[0], ints[1], ints[2]) if len(ints) == 3 else None


def allocated(pod: Pod) -> dict | None:
    """The allocations entry of what `pod` took (None: it took no UCMAC, or its record says
    nothing we can read as one)."""
    entry = {"ucmac": ids.ucmac_low16(pod.ucmac), "vex_pref": pod.vex_pref, "vin_pref": pod.vin_pref}
    return entry if allocation(entry) is not None else None


def entry_of(pod: Pod | None) -> dict | None:
    """What a pod's journal or record says it took of its pair, as an allocations entry: None
    unless it joined the pair (the "pair" step) and names a UCMAC and priorities (the journal's
    "pair" write names them, before the pair's record does)."""
    return allocated(pod) if pod is not None and "pair" in pod.steps and "pull" in pod.steps else None


def pair_from_pods(state_dir: str, enforcer: str, vbr: str, leaving: str = "") -> tuple[list[str], dict]:
    """(users, allocations) of the pair as the pods' journals and records say (every one of the
    stateDir read; a corrupt one is left out): for a pair whose record is gone, or does not name a
    pod that joined it. Those that joined it (the "pair" step), without `leaving`."""
    keys, entries = [], {}
    for pod in all_pods(state_dir):
        if pod.enforcer != enforcer or pod.vbr != vbr or "pair" not in pod.steps or pod.key == leaving:
            continue
        keys.append(pod.key)
        entry = entry_of(pod)
        if entry is not None:
            entries[pod.key] = entry
    return keys, entries


def set_users(state_dir: str, enforcer: str, vbr: str, keys: list[str], allocations: dict | None = None) -> None:
    """The pair's users are `keys` (none: the record goes), each with its allocations entry
    (from `allocations`, or, without it, the ones the record has now); entries of users that
    are not in `keys` go with them. fsync'd: every ADD takes its UCMAC and priorities off it."""
    path = _shared_path(state_dir, enforcer, vbr)
    if not keys:
        records.remove(path)
        return
    keys = sorted(set(keys))
    if allocations is None:
        try:
            allocations = _allocations(records.read(path))
        except (OSError, ValueError):       # none, or corrupt: the users' own records say what they took
            allocations = {k: e for k in keys if (e := entry_of(_pod_of(state_dir, k))) is not None}
    kept = {k: allocations[k] for k in keys if allocation(allocations.get(k)) is not None}
    _write(path, {"enforcer": enforcer, "vbr": vbr, "users": keys, "allocations": kept})


def _pod_of(state_dir: str, key: str) -> Pod | None:
    """The journal or record of `key` (containerID/ifname); None if gone or corrupt."""
    cid, _, ifname = key.partition("/")
    try:
        return load_pod(state_dir, cid, ifname)
    except CNIError:
        return None


def attached(state_dir: str, key: str) -> bool:
    """Is `key` (containerID/ifname) a user of its pair still: its journal or record exists and
    has begun the "pair" step? A corrupt record counts (DEL of it removes it)."""
    cid, _, ifname = key.partition("/")
    try:
        pod = load_pod(state_dir, cid, ifname)
    except CNIError:
        return True
    return pod is not None and "pair" in pod.steps


def live_users(state_dir: str, enforcer: str, vbr: str, leaving: str = "") -> list[str]:
    """The pair's users that still exist, without `leaving`."""
    return [k for k in users(state_dir, enforcer, vbr) if k != leaving and attached(state_dir, k)]


def staying_users(state_dir: str, enforcer: str, vbr: str, leaving: str) -> tuple[list[str], dict]:
    """The pair's users without `leaving`, for its DEL, and the allocations (for set_users, not
    read again): [] when none of them exists any more (the pair goes), else those from the first
    that exists on (one record read, not one per pod of the node: the users it does not read stay
    listed until GC, drop_dead_users, looks). Before the pair goes, and whenever the record does
    not name `leaving` (gone, removed by hand, written by a release that lost it), the pods'
    records are read (pair_from_pods): the pair goes only if none of them names it, and
    release's write rebuilds the record with those that do. So a DEL with users staying reads
    one record besides the pair's, the pair's last DEL the stateDir's records (its other
    pairs' pods: the pair's own are gone)."""
    keys, kept = pair(state_dir, enforcer, vbr)
    allocations = {k: v for k, v in (kept or {}).items() if allocation(v) is not None}
    scanned = leaving not in keys
    if scanned:
        more, entries = pair_from_pods(state_dir, enforcer, vbr, leaving)
        keys += [k for k in more if k not in keys]
        allocations = {**entries, **allocations}
    keys = [k for k in keys if k != leaving]
    for i, key in enumerate(keys):
        if attached(state_dir, key):
            return keys[i:], allocations
    if not scanned:
        more, entries = pair_from_pods(state_dir, enforcer, vbr, leaving)
        if more:
            return more, {**entries, **allocations}
    return [], allocations


def all_shared(state_dir: str) -> list[tuple[str, str, list[str], dict]]:
    """(enforcer, vbr, users, allocations) of every readable shared-pair record."""
    out = []
    root = os.path.join(state_dir, "shared")
    for name in records.names(root, ".json"):
        try:
            data = records.read(os.path.join(root, name))
            keys = _users(data)
        except (OSError, ValueError, CNIError):
            continue
        if isinstance(data.get("enforcer"), str) and isinstance(data.get("vbr"), str):
            out.append((data["enforcer"], data["vbr"], keys, _allocations(data)))
    return out


def stamp(t: float) -> str:
    """A time.time() as UTC ISO 8601 (seconds)."""
    import time
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def proc_start(pid: int) -> str | None:
    """The start time of process `pid` (/proc/<pid>/stat field 22), None if it is gone or a zombie."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except (OSError, ValueError):
        return None
    fields = text.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] in ("Z", "X", "x"):
        return None
    return fields[19]


def me() -> list:
    """[pid, start time] of this process, as a journal names its ADD."""
    return [os.getpid(), proc_start(os.getpid())]


def alive(adder) -> bool:
    """Is the process a journal names ([pid, start time]) still running?"""
    if not isinstance(adder, list) or len(adder) != 2 or not isinstance(adder[0], int) or adder[0] <= 0:
        return False
    return adder[1] is not None and proc_start(adder[0]) == adder[1]


def load_pod_quietly(state_dir: str, container_id: str, ifname: str) -> Pod | None:
    """load_pod, with a corrupt record read as none."""
    try:
        return load_pod(state_dir, container_id, ifname)
    except CNIError:
        return None
