"""Crash tests: SIGKILL a plugin at seeded random points of ADD, then DEL, GC, and look for residue.

    t = make_target("dp-steering-tap", netns_factory, tmp_path)   # namespaces, first plugin ADDed
    report = crash(t, kills=30, seed=1, log=print)                  # the loop below
    t.close()                                                       # first plugin DELeted
    report.failures   # [] when every kill left nothing and the next ADD worked

The plugin is exec'd as a runtime execs it (the venv console script, CNI env, config on stdin, run in
the target's host netns; its own process group so what it forked can be waited for). One round:

1. ADD, killed with SIGKILL after a seeded uniform delay in [0, 1.2 x the typical ADD duration]
   (the median of the last clean ADDs: a few measured first, then each round's next ADD, so it
   follows the machine's load). Only the plugin process is killed, as Go's exec.CommandContext does
   in a runtime; what it forked (host-local, iptables-restore, tc, nft) is left to finish (waited
   for, bounded) before going on. "mid-ADD" = the plugin was still running.
   After the random rounds, one round per targeted point of the target (Target.events()): the kill
   lands the moment a link appears in a netns or gets its IPv4 address (netlink multicast, socket
   bound before the exec), or inside a record write (fanotify holds the plugin's open of a `.tmp`
   file in a state dir until the kill): windows a uniform delay hits only now and then.
2. DEL of the same attachment (same container ID, ifname, config, prevResult), then GC with an empty
   `cni.dev/valid-attachments` (cniVersion 1.1.0): both must succeed.
3. Residue: a snapshot of every test namespace involved (links, addresses, routes of all tables,
   ip rules, permanent neighbours, tc qdiscs and filters of every link), iptables/nft of the host netns,
   the names of files under the plugin's state dirs (records, host-local's reservations; lock files
   aside) and, with a reference dp, its registered pods and service ports, compared to the one before.
4. The next ADD of the same attachment must succeed; then DEL it.

Round 4's leftovers show up in the next round's comparison. A round with residue or a failed next ADD
is a failure; with `rebuild` (a callable) the target is torn down and made anew afterwards (a stranded
attachment would poison every later round), otherwise `stop_on_failure` ends the loop there.
"""
from __future__ import annotations

import ctypes
import json
import os
import random
import re
import select
import signal
import socket
import statistics
import struct
import subprocess
import time

from tests.kit.plugin_env import plugin_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
CNI_PATH = f"{VENV_BIN}:/usr/lib/cni"
GC_VERSION = "1.1.0"
CID, IFNAME = "crashpod", "eth0"
TARGETS = ("vxlan", "dp-steering-tap", "dp-steering-inline", "edgemesh-iptables", "edgemesh-nftables")
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


# ---- exec ----------------------------------------------------------------------------------------

def _enter_netns(path: str):
    def fn():
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        os.close(fd)
    return fn


class Result:
    def __init__(self, verb: str, rc, out: str, err: str, secs: float):
        self.verb, self.rc, self.out, self.err, self.secs = verb, rc, out, err, secs

    @property
    def json(self):
        try:
            return json.loads(self.out)
        except ValueError:
            return None

    def __repr__(self):
        return (f"{self.verb} rc={self.rc} {self.secs * 1000:.0f} ms stdout={self.out[:600]!r} "
                f"stderr={self.err[-600:]!r}")


def start(target: Target, verb: str) -> subprocess.Popen:
    # In-process in both modes: the SIGKILL must land on the process doing the work (a daemon's
    # worker would finish the ADD the killed client handed it), and the kill delays follow the
    # clean ADDs' durations, which must be the killed ADDs' kind.
    env = plugin_env(target.env(verb), daemon=False)
    conf = target.conf(verb)
    p = subprocess.Popen([os.path.join(VENV_BIN, target.plugin)], env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                         preexec_fn=_enter_netns(target.host.path))
    p.stdin.write(json.dumps(conf).encode())
    p.stdin.close()                      # the config is small: it fits the pipe, no blocking
    p.stdin = None
    return p


def run(target: Target, verb: str, timeout: float = 60) -> Result:
    t0 = time.monotonic()
    p = start(target, verb)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p.pid)
        out, err = p.communicate()
    return Result(verb, p.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                  time.monotonic() - t0)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group pgid."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rfind(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(d))
    return out


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_during(target: Target, delay: float) -> tuple[bool, int, bool]:
    """Start ADD, SIGKILL the plugin after `delay` s: (mid_add, orphans it left, orphans hung)."""
    p = start(target, "ADD")
    time.sleep(delay)
    mid = p.poll() is None
    if mid:
        p.send_signal(signal.SIGKILL)
    p.communicate()
    return (mid, *_drain(p.pid))


class NetlinkWatch:
    """Netlink events of one netns: wait() returns when a link named `name` appears (created or
    renamed to it; kind "link") or an IPv4 address is put on it (kind "addr"). Bound before the
    plugin starts, so nothing is missed."""
    RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTM_NEWLINK, RTM_NEWADDR = 0x1, 0x10, 16, 20
    IFLA_IFNAME = IFA_LABEL = 3

    def __init__(self, ns_path: str, kind: str, name: str):
        from plugins.pkg import ns as nsmod
        self.name = name.encode()
        self.msg, self.hdr = {"link": (self.RTM_NEWLINK, 16), "addr": (self.RTM_NEWADDR, 8)}[kind]
        with nsmod.enter(ns_path):           # a netlink socket belongs to the netns it was made in
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, self.RTMGRP_LINK if kind == "link" else self.RTMGRP_IPV4_IFADDR))

    def _seen(self, data: bytes) -> bool:
        off = 0
        while off + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, off)
            if length < 16:
                break
            if kind == self.msg:
                a = off + 16 + self.hdr          # nlmsghdr + ifinfomsg / ifaddrmsg
                while a + 4 <= off + length:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if atype == self.IFLA_IFNAME and data[a + 4:a + alen].rstrip(b"\0") == self.name:
                        return True
                    a += (alen + 3) & ~3
            off += (length + 3) & ~3
        return False

    def wait(self, proc: subprocess.Popen, within: float) -> bool:
        """True as soon as the event is seen; False when proc ended or `within` passed first."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.sock], [], [], 0.002)
            if r:
                if self._seen(self.sock.recv(1 << 16)):
                    return True
            elif proc.poll() is not None:
                return False
        return False

    def close(self) -> None:
        self.sock.close()


class FileWatch:
    """fanotify permission events on one directory: wait() returns when a process opens a file
    whose name contains `part` there (a record's temp file: `.tmp`), with that open held until
    the watch answers it: a kill then lands exactly inside the write, however short the write is
    (an inotify event comes after the fact, when the temp file is often renamed already). The
    directory is made if missing (the plugin makes it on its first ADD anyway; an empty directory
    is no residue: only files are compared)."""
    FAN_CLASS_CONTENT, FAN_CLOEXEC, FAN_NONBLOCK = 0x4, 0x1, 0x2
    FAN_OPEN_PERM, FAN_EVENT_ON_CHILD, FAN_MARK_ADD, FAN_ALLOW = 0x10000, 0x08000000, 1, 1
    AT_FDCWD = -100

    def __init__(self, directory: str, part: str):
        os.makedirs(directory, exist_ok=True)
        self.part, self.pending = part, []
        _libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
        self.fd = _libc.fanotify_init(self.FAN_CLASS_CONTENT | self.FAN_CLOEXEC | self.FAN_NONBLOCK, os.O_RDONLY)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "fanotify_init")
        if _libc.fanotify_mark(self.fd, self.FAN_MARK_ADD, self.FAN_OPEN_PERM | self.FAN_EVENT_ON_CHILD,
                               self.AT_FDCWD, os.fsencode(directory)) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"fanotify_mark {directory}")

    def _allow(self, efd: int) -> None:
        try:
            os.write(self.fd, struct.pack("=iI", efd, self.FAN_ALLOW))
        finally:
            os.close(efd)

    def _seen(self, data: bytes) -> bool:
        hit, off = False, 0
        while off + 24 <= len(data):
            length, _ver, _res, _mlen, _mask, efd, _pid = struct.unpack_from("=IBBHQii", data, off)
            if length < 24:
                break
            if efd >= 0:
                try:
                    name = os.path.basename(os.readlink(f"/proc/self/fd/{efd}"))
                except OSError:
                    name = ""
                if self.part in name and not hit:
                    hit = True
                    self.pending.append(efd)      # held until close(): the opener waits
                else:
                    self._allow(efd)
            off += length
        return hit

    def wait(self, proc: subprocess.Popen, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.fd], [], [], 0.002)
            if r:
                try:
                    data = os.read(self.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if self._seen(data):
                    return True
            elif proc.poll() is not None:
                return False
        return False

    def close(self) -> None:
        for efd in self.pending:
            self._allow(efd)
        self.pending.clear()
        os.close(self.fd)          # any event not answered yet is allowed by the kernel


def kill_at_event(target: Target, where: str, kind: str, name: str,
                  within: float = 30.0) -> tuple[bool, bool, int, bool]:
    """Start ADD, SIGKILL the plugin the moment link `name` appears in netns `where` (kind "link"),
    gets an IPv4 address there (kind "addr"), or a file named with `name` is created in directory
    `where` (kind "file"): (event seen, mid_add, orphans, orphans hung)."""
    w = FileWatch(where, name) if kind == "file" else NetlinkWatch(where, kind, name)
    try:
        p = start(target, "ADD")
        seen = w.wait(p, within)
        mid = p.poll() is None
        if mid:
            p.send_signal(signal.SIGKILL)
            if kind == "file":           # dead before the held open is let go
                p.wait()
    finally:
        w.close()
    p.communicate()
    return (seen, mid, *_drain(p.pid))


def _drain(pgid: int, within: float = 15.0) -> tuple[int, bool]:
    orphans = group_members(pgid)
    deadline = time.monotonic() + within
    while group_members(pgid):
        if time.monotonic() > deadline:
            kill_group(pgid)
            return len(orphans), True
        time.sleep(0.005)
    return len(orphans), False


# ---- snapshots -----------------------------------------------------------------------------------

_CARRIER = ("NO-CARRIER", "LOWER_UP", "M-DOWN")


def _clean(line: str) -> str:
    line = re.sub(r"\\\s+valid_lft.*$", "", line)
    line = re.sub(r"^\d+: ", "", line)                  # ifindexes change when a link is remade
    line = re.sub(r"@if\d+", "", line)
    line = re.sub(r"state \S+", "", line)
    line = re.sub(r" link-netns\S* \S+", "", line)
    line = re.sub(r" (?:qlen|altname) \S+", "", line)
    line = re.sub(r"<([^>]*)>", lambda m: "<" + ",".join(f for f in m.group(1).split(",") if f not in _CARRIER) + ">",
                  line).replace(" linkdown", "")         # carrier comes and goes with ports
    return line.strip()


def ns_view(name: str) -> str:
    """Links, addresses, routes (all tables), rules, permanent neighbours, tc qdiscs and filters."""
    p = subprocess.run(["ip", "-n", name, "-o", "-batch", "-"], capture_output=True, text=True, timeout=30,
                       input="link show\naddr show\nroute show table all\nrule show\nneigh show nud permanent\n"
                             "-6 rule show\n")
    lines = [_clean(x) for x in p.stdout.splitlines()
             if "fe80::" not in x and "ff00::/8" not in x and "ff02::" not in x]
    links = re.findall(r"^\d+: ([^:@\s]+)", subprocess.run(["ip", "-n", name, "-o", "link", "show"],
                                                          capture_output=True, text=True, timeout=30).stdout, re.M)
    batch = "qdisc show\n" + "".join(f"filter show dev {lk} {w}\n" for lk in links
                                      for w in ("ingress", "egress", "root"))
    t = subprocess.run(["ip", "netns", "exec", name, "tc", "-force", "-batch", "-"], capture_output=True,
                       text=True, input=batch, timeout=30)
    for x in t.stdout.splitlines():
        x = re.sub(r"\bid \d+\b|\btag \w+\b|\bjited\b|\bnot_in_hw\b|\bin_hw\b", "", x)   # eBPF ids change
        x = re.sub(r"(?:ref|bind|installed|used|firstused|expires) \d+", "", x)
        x = re.sub(r"Sent \d+ bytes.*|backlog .*|requeues .*", "", x)
        x = re.sub(r"qdisc (\w+) \w+: dev", r"qdisc \1 dev", x)          # handles
        if x.strip():
            lines.append("tc " + x.strip())
    return "\n".join(sorted(lines))


def files(root: str) -> list[str]:
    out = []
    for d, _dirs, names in os.walk(root):
        for n in names:
            if n == "lock" or n.endswith(".lock") or n.startswith("last_reserved_ip"):
                continue                 # locks; host-local's own bookkeeping (Go leaves it too)
            out.append(os.path.relpath(os.path.join(d, n), root))
    return sorted(out)


def snapshot(target: Target) -> dict:
    s = {f"netns {n.name} ({role})": ns_view(n.name) for role, n in target.namespaces().items()}
    if target.iptables:
        s["iptables"] = "\n".join(x for x in target.host.run("iptables-save").stdout.splitlines()
                                  if not x.startswith("#"))
    if target.nft:
        s["nft"] = re.sub(r"counter packets \d+ bytes \d+", "counter", target.host.run("nft", "list", "ruleset").stdout)
    for root in target.state_roots():
        s[f"files {root}"] = "\n".join(files(root))
    if target.dp_socket:
        from plugins.meta.dp_steering import dpctl
        st = dpctl.stats(target.dp_socket, timeout=5)
        s["dp"] = "no answer" if st is None else json.dumps(
            {"pods": sorted(st.get("pods", {})), "ports": sorted(map(str, st.get("ports", [])))})
    return s


def diff(before: dict, after: dict) -> dict:
    import difflib
    out = {}
    for k in sorted(set(before) | set(after)):
        a, b = before.get(k, ""), after.get(k, "")
        if a != b:
            out[k] = "\n".join(list(difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0))[2:])[:2000]
    return out


# ---- targets -------------------------------------------------------------------------------------

class Target:
    """One plugin in its test world: the attachment (CID, IFNAME) the rounds ADD, kill, DEL, GC."""
    name = plugin = ""
    iptables = nft = False
    dp_socket = ""
    version = GC_VERSION

    def __init__(self, factory, tmp: str):
        self.factory, self.tmp = factory, str(tmp)
        os.makedirs(self.tmp, exist_ok=True)

    def keys(self) -> dict:
        raise NotImplementedError

    def prev(self) -> dict | None:
        return None

    def pod_path(self) -> str:
        raise NotImplementedError

    def namespaces(self) -> dict:
        raise NotImplementedError

    def state_roots(self) -> list[str]:
        raise NotImplementedError

    def events(self) -> list[tuple[str, str, str, str]]:
        """Targeted kill points: (netns role, netns path, "link" or "addr", link name) or ("state",
        directory, "file", part of a name); ADD is killed the moment that link appears there or
        gets an IPv4 address, or such a file is created (windows a uniform delay hits only now
        and then)."""
        return []

    def conf(self, verb: str) -> dict:
        c = {"cniVersion": self.version, "name": self.network, "type": self.plugin, **self.keys()}
        if verb in ("ADD", "DEL", "CHECK") and self.prev() is not None:
            c["prevResult"] = self.prev()
        if verb == "GC":
            c["cniVersion"] = GC_VERSION
            c["cni.dev/valid-attachments"] = []
        return c

    def env(self, verb: str) -> dict:
        e = {"CNI_COMMAND": verb, "CNI_PATH": CNI_PATH, "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        if verb in ("ADD", "DEL", "CHECK"):
            e.update(CNI_CONTAINERID=CID, CNI_NETNS=self.pod_path(), CNI_IFNAME=IFNAME,
                     CNI_ARGS=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={CID}")
        return e

    def close(self) -> None:
        pass


class VxlanTarget(Target):
    name = plugin = "vxlan"
    network = "crashvx"
    iptables = nft = True

    def __init__(self, factory, tmp):
        super().__init__(factory, tmp)
        from tests.kit.vxlan_hosts import Cluster
        self.cluster = Cluster(factory, os.path.join(self.tmp, "vx"), segments=[0], network_name=self.network)
        self.h = self.cluster.hosts[0]
        self.host = self.h.ns
        self.pod = factory("crpod")

    def keys(self):
        c = {k: v for k, v in self.h.conf.items() if k not in ("cniVersion", "name", "type")}
        c["ipMasq"] = True
        return c

    def pod_path(self):
        return self.pod.path

    def namespaces(self):
        return {"host": self.host, "pod": self.pod}

    def state_roots(self):
        return [os.path.join(self.tmp, "vx")]

    def events(self):
        from plugins.pkg.names import host_veth
        return [("host", self.host.path, "link", host_veth(CID, IFNAME)),
                ("pod", self.pod.path, "addr", IFNAME),
                ("state", os.path.join(self.h.conf["stateDir"], "attachments"), "file", ".tmp")]


class DpSteeringTarget(Target):
    plugin = "dp-steering"
    network = "dpnet"

    def __init__(self, factory, tmp, mode: str):
        super().__init__(factory, tmp)
        from tests.kit.dp_steering import World
        self.name = f"dp-steering-{mode}"
        extra = {"dpWaitMs": 20} if mode == "tap" else {"dpSocket": os.path.join(self.tmp, "dp.sock")}
        self.w = World(factory, self.tmp, mode=mode, **extra)
        self.host = self.w.host
        self.dp = None
        if mode == "inline":             # the reference dp, registrations counted
            self.dp = self.w.dp(None, "--strict").start()
            self.dp_socket = self.dp.socket
        self.first = self.w.add(CID, steer=False)        # Go bridge + host-local, once

    def keys(self):
        return {k: v for k, v in self.w.steer.items() if k != "type"}

    def prev(self):
        return self.first.result.encode(self.version)

    def pod_path(self):
        return self.first.ns.path

    def namespaces(self):
        return {"host": self.w.host, "enforcer": self.w.enf, "pod": self.first.ns}

    def state_roots(self):
        return [self.w.state_dir, os.path.join(self.tmp, "ipam")]

    def events(self):
        from plugins.meta.dp_steering.ids import port_names
        vex, vin = port_names(CID, IFNAME)
        pod, enf = self.first.ns.path, self.w.enf.path
        return [("pod", pod, "link", vex), ("pod", pod, "addr", IFNAME),
                ("enforcer", enf, "link", vex), ("enforcer", enf, "link", vin),
                ("enforcer", enf, "link", self.w.steer["vbrName"]),
                ("state", os.path.join(self.w.state_dir, "shared"), "file", ".tmp")]

    def close(self):
        try:
            self.w._on("del", self.first, self.w.conflist(steer=False))
        finally:
            if self.dp is not None:
                self.dp.stop()


class EdgemeshTarget(Target):
    plugin = "edgemesh"
    network = "emnet"
    iptables = nft = True

    def __init__(self, factory, tmp, backend: str):
        super().__init__(factory, tmp)
        from tests.integration.test_edgemesh_kit import Node, conflist
        self.name, self.backend = f"edgemesh-{backend}", backend
        self.host = factory("emh")
        self.node = Node(self.host, self.tmp)
        self.first_list = conflist(self.tmp, name=self.network)   # Go bridge + host-local only
        self.pod = factory("empod")
        self.result = self.node.add(self.first_list, self.pod, CID)

    def keys(self):
        from tests.integration.test_edgemesh_kit import edgemesh_conf
        c = edgemesh_conf(self.tmp, backend=self.backend,
                          ignoredServices=[{"ip": "10.96.0.10", "name": "kube-system/kube-dns"}])
        c.pop("type")
        return c

    def prev(self):
        return self.result.encode(self.version)

    def pod_path(self):
        return self.pod.path

    def namespaces(self):
        return {"host": self.host, "pod": self.pod}

    def state_roots(self):
        return [os.path.join(self.tmp, "edgemesh-state"), os.path.join(self.tmp, f"ipam-{self.network}")]

    def events(self):
        return [("host", self.host.path, "link", "edgemesh0"), ("host", self.host.path, "addr", "edgemesh0"),
                ("state", os.path.join(self.tmp, "edgemesh-state", "networks"), "file", ".tmp")]

    def close(self):
        self.node.delete(self.first_list, self.pod, CID)


def make_target(name: str, factory, tmp) -> Target:
    if name == "vxlan":
        return VxlanTarget(factory, tmp)
    if name.startswith("dp-steering-"):
        return DpSteeringTarget(factory, tmp, name.rsplit("-", 1)[1])
    if name.startswith("edgemesh-"):
        return EdgemeshTarget(factory, tmp, name.rsplit("-", 1)[1])
    raise ValueError(f"no crash target {name!r} (one of {', '.join(TARGETS)})")


# ---- the loop ------------------------------------------------------------------------------------

class Report:
    def __init__(self, target: str, seed, kills: int):
        self.target, self.seed, self.asked = target, seed, kills
        self.kills = self.mid = self.orphans = self.hung_orphans = self.rebuilds = 0
        self.targeted = self.targeted_mid = self.unseen = 0
        self.points: list[str] = []       # the targeted kills, as they landed
        self.typical = 0.0
        self.failures: list[dict] = []     # one per round with something wrong
        self.residue = self.next_add_failures = self.del_failures = self.gc_failures = 0
        self.secs = 0.0

    @property
    def mid_share(self) -> float:
        return self.mid / self.kills if self.kills else 0.0

    def summary(self) -> str:
        return (f"{self.target}: seed {self.seed}, {self.kills} kills ({self.mid} mid-ADD, {self.mid_share:.0%}), "
                f"+ {self.targeted} targeted ({self.targeted_mid} mid-ADD), "
                f"typical ADD {self.typical * 1000:.0f} ms, orphans waited for {self.orphans}, "
                f"residue {self.residue}, next-ADD failures {self.next_add_failures}, DEL failures "
                f"{self.del_failures}, GC failures {self.gc_failures}, rebuilds {self.rebuilds}, {self.secs:.1f} s")

    def explain(self, limit: int = 3) -> str:
        parts = [self.summary(), *("  targeted: " + p for p in self.points)]
        for f in self.failures[:limit]:
            parts.append(json.dumps(f, indent=1, default=str)[:4000])
        return "\n".join(parts)


def clean_adds(target: Target, rounds: int = 3) -> list[float]:
    """Wall times of clean ADDs (each DELeted again, one warm-up round first); raises if ADD or
    DEL fails."""
    secs = []
    for i in range(rounds + 1):
        a = run(target, "ADD")
        assert a.rc == 0, f"{target.name}: a clean ADD failed: {a!r}"
        if i:
            secs.append(a.secs)
        d = run(target, "DEL")
        assert d.rc == 0, f"{target.name}: a clean DEL failed: {d!r}"
    return secs


def crash(target: Target, kills: int, seed, log=None, stop_on_failure: bool = False,
          rebuild=None, measure_rounds: int = 5, targeted: bool = True) -> Report:
    """`kills` rounds of random kill / DEL / GC / residue / next ADD on `target`, then (with
    `targeted`) one round per target.events() kill point (see the module doc).
    `rebuild`: a callable returning a fresh target (after closing the old one) used after a failed
    round; without it a failure poisons later rounds, so `stop_on_failure` is advised."""
    rng = random.Random(f"{seed}-{target.name}")
    rep = Report(target.name, seed, kills)
    t0 = time.monotonic()
    durations = clean_adds(target, measure_rounds)
    run(target, "GC")
    baseline = snapshot(target)
    # a kill point is a seeded share of the typical ADD duration, which is the median of the last
    # clean ADDs (each round's next ADD is one): it follows the machine's load as it changes
    plan = [("random", rng.uniform(0, 1.2)) for _ in range(kills)]
    if targeted:
        plan += [("link", ev) for ev in target.events()]
    for i, (how, arg) in enumerate(plan):
        if how == "random":
            typical = statistics.median(durations[-5:])
            delay = arg * typical
            mid, orphans, hung = kill_during(target, delay)
            rep.kills += 1
            rep.mid += mid
            where = f"killed after {delay * 1000:.1f} ms ({arg:.2f} x the typical {typical * 1000:.0f} ms)"
        else:
            role, path, kind, name = arg
            # the netns path changes with a rebuild: look the event up again
            path = next((p for r, p, k, n in target.events() if (r, k, n) == (role, kind, name)), path)
            seen, mid, orphans, hung = kill_at_event(target, path, kind, name)
            rep.targeted += 1
            rep.targeted_mid += mid
            what = {"link": f"{name} appeared in the {role} netns",
                    "addr": f"{name} got an IPv4 address in the {role} netns",
                    "file": f"a file named *{name}* was created in {path}"}[kind]
            where = f"killed when {what}" if seen else f"never seen: {what} (killed after ADD)"
            if not seen:
                rep.unseen += 1
            rep.points.append(f"{where} ({'mid-ADD' if mid else 'after ADD'})")
        rep.orphans += orphans
        rep.hung_orphans += hung
        problems = _after_kill(target, rep, baseline)
        after = problems.pop("_after")
        if problems.get("_add_secs"):
            durations.append(problems["_add_secs"])
        problems.pop("_add_secs", None)
        if problems:
            f = {"round": i, "kill": where, "mid-ADD": mid, **problems}
            rep.failures.append(f)
            if log:
                log(f"  ! {target.name} round {i}: {where} ({'mid-ADD' if mid else 'after ADD'}): "
                    f"{', '.join(problems)}")
            if rebuild is not None:
                target = rebuild(target)
                rep.rebuilds += 1
                durations += clean_adds(target, 1)
                run(target, "GC")
                baseline = snapshot(target)
                continue
            if stop_on_failure:
                break
            baseline = after if "next ADD" in problems else snapshot(target)
    if not rep.failures:
        final = diff(baseline, snapshot(target))
        if final:
            rep.residue += 1
            rep.failures.append({"round": "end", "residue after the last next ADD + DEL": final})
    rep.secs = time.monotonic() - t0
    rep.typical = statistics.median(durations)
    rep.target_obj = target
    if log:
        log(rep.summary())
    return rep


def _after_kill(target: Target, rep: Report, baseline: dict) -> dict:
    """DEL, GC, residue, next ADD, DEL: what went wrong ({} when nothing) and "_after" (the
    snapshot after DEL and GC)."""
    problems: dict = {}
    d = run(target, "DEL")
    if d.rc != 0:
        rep.del_failures += 1
        problems["DEL"] = repr(d)
    g = run(target, "GC")
    if g.rc != 0:
        rep.gc_failures += 1
        problems["GC"] = repr(g)
    after = snapshot(target)
    left = diff(baseline, after)
    if left:
        rep.residue += 1
        problems["residue"] = left
    a = run(target, "ADD")
    if a.rc != 0:
        rep.next_add_failures += 1
        problems["next ADD"] = repr(a)
    else:
        problems["_add_secs"] = a.secs
    d2 = run(target, "DEL")
    if d2.rc != 0 and "DEL" not in problems:
        rep.del_failures += 1
        problems["DEL after next ADD"] = repr(d2)
    problems["_after"] = after
    return problems
