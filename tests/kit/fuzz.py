"""Bad input and fuzzing of every plugin: worlds, runners, a seeded mutator, the verdict.

    world = make_world("vxlan", factory, tmp)       # test namespaces + a valid attached pod
    out = run_case(world, env, stdin)                # forked in-process (skel.run) or exec'd
    problems = verdict(verb, out)                    # 999, traceback, hang, bad stdout, bad status
    stats = fuzz(world, "ADD", cases=200, seed=1)    # mutated configs/envs; residue of rejected ADDs

A case runs in a child that enters the world's host netns (the runtime's namespace: the plugins
are run from it as the kits run them through libcni) and a private mount namespace whose
/var/lib is a tmpfs with /var/lib/cni bound to a scratch dir of the world, so a mutation that
drops a stateDir (default /var/lib/cni/pycni/...) or an ipam dataDir never writes to the machine;
the scratch dir is part of the residue check. Cwd is scratch too (relative paths land there).

Most cases are forked: the child calls libcni_py.skel.run(PLUGIN, env, stdin, stdout, stderr)
with stdout/stderr on pipes (fds 1 and 2 too, so a stray print or traceback is seen) and exits;
the parent reads both under a deadline and kills the child's process group on a hang. A share
(`exec_share`) execs the venv console script instead, with the same namespaces.
"""
from __future__ import annotations

import ctypes
import io
import json
import os
import random
import re
import select
import signal
import stat
import subprocess
import sys
import time

from tests.kit.plugin_env import plugin_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
CNI_PATH = f"{VENV_BIN}:/usr/lib/cni"
VERBS = ("ADD", "CHECK", "DEL", "GC", "STATUS", "VERSION")
PLUGINS = ("pycni-passthrough", "edgemesh", "vxlan", "dp-steering")
MODULES = {"pycni-passthrough": "plugins.meta.passthrough.cmd", "edgemesh": "plugins.meta.edgemesh.cmd",
           "vxlan": "plugins.main.vxlan.cmd", "dp-steering": "plugins.meta.dp_steering.cmd"}
VERSION = "1.1.0"
NETWORK = "fznet"
FORK_TIMEOUT = float(os.environ.get("PYCNI_FUZZ_TIMEOUT", "8"))
EXEC_TIMEOUT = FORK_TIMEOUT * 2
MAX_OUT = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 0x4000, 1 << 18


def plugin_object(plugin: str):
    from importlib import import_module
    return import_module(MODULES[plugin]).PLUGIN


# ---- the child's sandbox ------------------------------------------------------------------

def _enter(host_ns: str, scratch: str) -> None:
    """In a child (after fork, before exec): own process group, the host netns, a private mount
    namespace with /var/lib a tmpfs and /var/lib/cni = scratch/var-lib-cni, cwd scratch/cwd."""
    os.setpgid(0, 0)
    fd = os.open(host_ns, os.O_RDONLY | os.O_CLOEXEC)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)
    if _libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount private")
    if _libc.mount(b"tmpfs", b"/var/lib", b"tmpfs", 0, b"mode=755") != 0:
        raise OSError(ctypes.get_errno(), "mount tmpfs")
    os.mkdir("/var/lib/cni")
    src = os.path.join(scratch, "var-lib-cni").encode()
    if _libc.mount(src, b"/var/lib/cni", None, MS_BIND, None) != 0:
        raise OSError(ctypes.get_errno(), "mount bind")
    os.chdir(os.path.join(scratch, "cwd"))


class Outcome:
    def __init__(self, rc, stdout: bytes, stderr: bytes, secs: float, hang: bool, how: str):
        self.rc, self.stdout, self.stderr, self.secs, self.hang, self.how = rc, stdout, stderr, secs, hang, how

    @property
    def json(self):
        try:
            return json.loads(self.stdout)
        except ValueError:
            return None

    @property
    def code(self):
        j = self.json
        return j.get("code") if isinstance(j, dict) else None

    def __repr__(self):
        return (f"Outcome(rc={self.rc}, hang={self.hang}, how={self.how}, {self.secs:.2f}s, "
                f"stdout={self.stdout[:400]!r}, stderr={self.stderr[-600:]!r})")


def _collect(pid: int, rfds: list[int], timeout: float, how: str, started: float) -> Outcome:
    bufs = {fd: bytearray() for fd in rfds}
    open_fds, status, hang = list(rfds), None, False
    deadline = started + timeout
    exited_at = None
    while True:
        if status is None:
            wpid, st = os.waitpid(pid, os.WNOHANG)
            if wpid:
                status, exited_at = st, time.monotonic()
        now = time.monotonic()
        if not open_fds and status is not None:
            break
        if exited_at is not None and now - exited_at > 0.5:
            break                       # a grandchild holds the pipe: enough
        if status is None and now > deadline:
            hang = True
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status = os.waitpid(pid, 0)
            break
        if not open_fds:
            time.sleep(0.01)
            continue
        ready, _, _ = select.select(open_fds, [], [], 0.05)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.remove(fd)
            elif len(bufs[fd]) < MAX_OUT:
                bufs[fd] += chunk
    if not hang:
        try:
            os.killpg(pid, signal.SIGKILL)     # anything it left running (none expected)
        except (ProcessLookupError, PermissionError):
            pass
    for fd in rfds:
        os.close(fd)
    rc = os.waitstatus_to_exitcode(status) if status is not None else None
    return Outcome(rc, bytes(bufs[rfds[0]]), bytes(bufs[rfds[1]]), time.monotonic() - started, hang, how)


def run_forked(plugin, env: dict, stdin: bytes, host_ns: str, scratch: str,
               timeout: float = FORK_TIMEOUT) -> Outcome:
    """skel.run(PLUGIN, env, stdin, ...) in a forked child inside the world's namespaces."""
    obj = plugin_object(plugin) if isinstance(plugin, str) else plugin
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:                                 # child: never returns
        code = 120
        try:
            os.close(out_r)
            os.close(err_r)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            _enter(host_ns, scratch)
            sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
            # as an exec'd plugin has them (an environment without LANG: Python's UTF-8 mode)
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                          errors="surrogateescape", line_buffering=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                          errors="backslashreplace", line_buffering=True)
            os.environ.clear()
            os.environ.update({k: v for k, v in env.items() if "\0" not in k + v})
            if "logging" in sys.modules:        # what the parent set up is not the plugin's
                sys.modules["logging"].getLogger("pycni").handlers.clear()
            from libcni_py import skel
            skel._deferred_log_stderr = None
            code = skel.run(obj, env, io.BytesIO(stdin), sys.stdout, sys.stderr)
            if "logging" in sys.modules:
                sys.modules["logging"].shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001 - the harness's own failure, shown as such
            import traceback
            try:
                os.write(2, ("FUZZ-HARNESS: " + traceback.format_exc()).encode())
            except OSError:
                pass
            code = 120
        os._exit(code)
    os.close(out_w)
    os.close(err_w)
    return _collect(pid, [out_r, err_r], timeout, "fork", started)


def run_exec(plugin: str, env: dict, stdin: bytes, host_ns: str, scratch: str,
             timeout: float = EXEC_TIMEOUT) -> Outcome:
    """The venv console script, exec'd as a runtime does, in the same namespaces."""
    started = time.monotonic()
    env = plugin_env(env)                       # PYCNI_TEST_DAEMON=1: through the session's daemon
    benv = {os.fsencode(k): os.fsencode(v) for k, v in env.items() if "\0" not in k + v}
    try:
        p = subprocess.Popen([os.path.join(VENV_BIN, plugin)], env=benv, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=lambda: _enter(host_ns, scratch))
    except OSError as e:         # e.g. an environment too big for execve: not a plugin's doing
        return Outcome(None, b"", f"FUZZ-HARNESS: exec failed: {e}".encode(), 0.0, False, "exec-skipped")
    try:
        out, err = p.communicate(stdin, timeout=timeout)
        hang = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = p.communicate()
        hang = True
    return Outcome(p.returncode, out[:MAX_OUT], err[:MAX_OUT], time.monotonic() - started, hang, "exec")


# ---- the verdict ---------------------------------------------------------------------------

def verdict(verb: str, o: Outcome) -> list[str]:
    """What is wrong with an outcome whatever the input: [] when it keeps the contract."""
    if o.how == "exec-skipped":
        return []
    p = []
    if o.hang:
        return [f"hang (> {FORK_TIMEOUT if o.how == 'fork' else EXEC_TIMEOUT:.0f} s)"]
    if b"Traceback" in o.stderr or b"FUZZ-HARNESS" in o.stderr:
        p.append("traceback on stderr")
    if o.rc not in (0, 1):
        p.append(f"exit status {o.rc}")
    text = o.stdout.strip()
    j = o.json
    is_error = isinstance(j, dict) and "code" in j and "msg" in j
    if is_error:
        if j.get("code") == 999:
            p.append("code 999")
        if not isinstance(j.get("code"), int) or isinstance(j.get("code"), bool):
            p.append(f"error code is no integer: {j.get('code')!r}")
        if not isinstance(j.get("msg"), str):
            p.append("error msg is no string")
        if o.rc != 1:
            p.append(f"error JSON with exit status {o.rc}")
    elif o.rc == 1:
        p.append("exit 1 without one error JSON on stdout")
    elif o.rc == 0:
        if verb == "VERSION":
            if not (isinstance(j, dict) and isinstance(j.get("supportedVersions"), list)):
                p.append("VERSION answer is not a version object")
        elif verb == "ADD":
            if not isinstance(j, dict) or not isinstance(j.get("cniVersion"), str):
                p.append("ADD succeeded without a result object")
            else:
                try:
                    from libcni_py.types import decode
                    decode(j, ver=j["cniVersion"])
                except Exception as e:  # noqa: BLE001
                    p.append(f"ADD result does not decode: {type(e).__name__}: {e}")
        elif text:
            p.append(f"{verb} succeeded with output on stdout")
    if text and j is None:
        p.append("stdout is not one JSON document")
    return p


# ---- worlds: test namespaces and valid configs -------------------------------------------------

def _ip_dump(ns_name: str) -> str:
    p = subprocess.run(["ip", "-n", ns_name, "-o", "-batch", "-"], capture_output=True, text=True, timeout=30,
                       input="link show\naddr show\nroute show table all\nneigh show nud permanent\n")
    lines = []
    for line in p.stdout.splitlines():
        line = re.sub(r"\\\s+valid_lft.*$", "", line)
        line = re.sub(r"state \S+", "", line)
        line = re.sub(r"NO-CARRIER,|,LOWER_UP| linkdown", "", line)   # carrier follows the ports, late
        line = re.sub(r"^\d+: ", "", line)                 # ifindexes change when a link is remade
        line = re.sub(r"@if\d+", "", line)
        if "fe80::" in line or "ff00::/8" in line or "ff02::" in line:
            continue
        lines.append(line.strip())
    return "\n".join(sorted(lines))


def _in_ns(path: str, *argv: str) -> str:
    p = subprocess.run(["nsenter", f"--net={path}", *argv], capture_output=True, text=True, timeout=30)
    return p.stdout if p.returncode == 0 else f"<{argv[0]} failed: {p.stderr.strip()[:200]}>"


def _files(root: str, skip_lock: bool = True) -> list[str]:
    out = []
    for d, _dirs, names in os.walk(root):
        for n in names:
            if skip_lock and (n == "lock" or n.endswith(".lock") or n.startswith("last_reserved_ip")):
                continue                   # locks; host-local's own bookkeeping (Go leaves it too)
            rel = os.path.relpath(os.path.join(d, n), root)
            out.append(rel if "\n" not in rel else repr(rel))
    return sorted(out)


class World:
    """Namespaces, a scratch dir and valid configs for one plugin. Targets: 'base' (attached at
    set-up: what CHECK and GC's valid list name), 'add' (never attached: ADD cases), 'del'
    (attached on demand: DEL cases)."""
    plugin = ""
    CIDS = {"base": "fzbase", "add": "fzadd", "del": "fzdel"}

    def __init__(self, factory, tmp: str):
        self.factory, self.tmp = factory, str(tmp)
        self.scratch = os.path.join(self.tmp, "scratch")
        for d in ("var-lib-cni", "cwd", "paths"):
            os.makedirs(os.path.join(self.scratch, d), exist_ok=True)
        self.attached: set[str] = set()
        self.host = None
        self.snap_ns: list = []          # NetNS objects whose links/addresses/routes count
        self.iptables = self.nft = False
        self.state_roots: list[str] = [self.scratch]
        self.results: dict[str, dict] = {}
        self.bad_paths()

    # -- what subclasses say
    def keys(self, verb: str, target: str) -> dict:
        raise NotImplementedError

    def prev(self, target: str) -> dict | None:
        return self.results.get(target)

    def pod_ns(self, target: str):
        raise NotImplementedError

    # -- shared
    def conf(self, verb: str, target: str = "base") -> dict:
        c = {"cniVersion": VERSION, "name": NETWORK, "type": self.plugin, **self.keys(verb, target)}
        if verb in ("ADD", "CHECK", "DEL"):
            prev = self.prev(target)
            if prev is not None:
                c["prevResult"] = prev
        if verb == "GC":
            c["cni.dev/valid-attachments"] = [{"containerID": self.CIDS[t], "ifname": "eth0"}
                                              for t in ("base", "del")]
        return c

    def env(self, verb: str, target: str = "base") -> dict:
        e = {"CNI_COMMAND": verb, "CNI_PATH": CNI_PATH, "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        if verb in ("ADD", "CHECK", "DEL"):
            e.update(CNI_CONTAINERID=self.CIDS[target], CNI_NETNS=self.pod_ns(target).path, CNI_IFNAME="eth0",
                     CNI_ARGS=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={self.CIDS[target]}")
        return e

    def run(self, env: dict, stdin: bytes, exec_: bool = False) -> Outcome:
        fn = run_exec if exec_ else run_forked
        return fn(self.plugin, env, stdin, self.host.path, self.scratch)

    def run_verb(self, verb: str, target: str = "base", exec_: bool = False, **over) -> Outcome:
        conf = {**self.conf(verb, target), **over}
        return self.run(self.env(verb, target), json.dumps(conf).encode(), exec_)

    def attach(self, target: str) -> Outcome:
        o = self.run_verb("ADD", target)
        if o.rc == 0 and target != "add":
            self.results[target] = o.json
        self.attached.add(target)
        return o

    def detach(self, target: str) -> Outcome:
        o = self.run_verb("DEL", target)
        self.attached.discard(target)
        return o

    NODE_KEYS: tuple = ()

    def node_state(self, done: list[str], diff: dict) -> bool:
        """Whether residue is node-level state a mutation of a node key made (a lease in another
        registry, another stateDir): reported, not a pod's leftover."""
        return bool(self.NODE_KEYS) and all(k.startswith("files ") for k in diff) and any(
            key in m for m in done for key in self.NODE_KEYS)

    def prepare(self, verb: str) -> None:
        """Before a run of `verb`: the targets attached that it needs (a DEL or GC may have removed them)."""
        for t in ("base",) + (("del",) if verb == "DEL" else ()):
            if t not in self.attached:
                self.attach(t)

    def snapshot(self) -> dict:
        s = {f"ns {n.name}": _ip_dump(n.name) for n in self.snap_ns}
        if self.iptables:
            s["iptables"] = "\n".join(line for line in _in_ns(self.host.path, "iptables-save").splitlines()
                                      if not line.startswith("#"))
        if self.nft:
            ruleset = _in_ns(self.host.path, "nft", "list", "ruleset")
            s["nft"] = re.sub(r"counter packets \d+ bytes \d+", "counter", ruleset)
        for root in self.state_roots:
            s[f"files {root}"] = "\n".join(_files(root))
        return s

    def close(self) -> None:
        for t in ("add", "del", "base"):
            try:
                self.detach(t)
            except Exception:  # noqa: BLE001 - best effort; the namespaces go anyway
                pass

    # -- hostile paths (all under the world's scratch)
    def bad_paths(self) -> dict[str, str]:
        d = os.path.join(self.scratch, "paths")
        f, dr, fifo = os.path.join(d, "file"), os.path.join(d, "dir"), os.path.join(d, "fifo")
        if not os.path.exists(f):
            with open(f, "w") as fh:
                fh.write("not a directory\n")
        os.makedirs(dr, exist_ok=True)
        if not os.path.exists(fifo):
            os.mkfifo(fifo)
        return {"file": f, "dir": dr, "fifo": fifo, "relative": "relative/path",
                "too long": os.path.join(d, "x" * 300), "too long total": d + ("/" + "y" * 200) * 22,
                "nul": d + "/a\0b", "newline": d + "/a\nb", "missing": os.path.join(d, "missing", "deeper")}


def prev_result(ip: str, netns: str, version: str = VERSION) -> dict:
    return {"cniVersion": version,
            "interfaces": [{"name": "cni0", "mac": "02:00:00:00:00:01"},
                           {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": netns}],
            "ips": [{"address": f"{ip}/24", "gateway": "10.22.0.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1"}],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}}


class PassthroughWorld(World):
    plugin = "pycni-passthrough"
    path_keys = ("logFile",)

    def __init__(self, factory, tmp):
        super().__init__(factory, tmp)
        self.host, self.pod = factory("fzph"), factory("fzpp")
        self.snap_ns = [self.pod]
        for t, ip in (("base", "10.22.0.5"), ("add", "10.22.0.6"), ("del", "10.22.0.7")):
            self.results[t] = prev_result(ip, self.pod.path)

    def keys(self, verb, target):
        return {}

    def pod_ns(self, target):
        return self.pod

    def attach(self, target):
        self.attached.add(target)
        return None


class EdgemeshWorld(World):
    plugin = "edgemesh"
    path_keys = ("stateDir", "logFile", "ignoredServicesFile")
    IPS = {"base": "10.22.0.5", "add": "10.22.0.6", "del": "10.22.0.7"}

    def __init__(self, factory, tmp):
        super().__init__(factory, tmp)
        self.host, self.pod = factory("fzeh"), factory("fzep")
        self.snap_ns = [self.host]
        self.iptables = self.nft = True
        self.state_dir = os.path.join(self.tmp, "em-state")
        self.state_roots.append(self.state_dir)
        self.attach("base")

    def keys(self, verb, target):
        return {"serviceCIDR": "10.96.0.0/12", "ensureListenDevice": True, "stateDir": self.state_dir,
                "ignoredServices": [{"ip": "10.96.0.10", "name": "kube-system/kube-dns"}],
                "checkProxy": False}        # no proxy in this world: CHECK judges the state the cases left

    def prev(self, target):
        return prev_result(self.IPS[target], self.pod.path)

    def pod_ns(self, target):
        return self.pod

    def attach(self, target):
        self.attached.add(target)
        return self.run_verb("ADD", target)


class VxlanWorld(World):
    plugin = "vxlan"
    NODE_KEYS = ("registry", "stateDir", "network", "name", "nodeName", "subnetLen", "vni", "port",
                 "deviceName", "publicIP", "iface")
    path_keys = ("stateDir", "logFile", "registry.path")

    def __init__(self, factory, tmp):
        super().__init__(factory, tmp)
        from tests.kit.vxlan_hosts import Cluster
        self.cluster = Cluster(factory, os.path.join(self.tmp, "vx"), segments=[0], network_name=NETWORK)
        self.h = self.cluster.hosts[0]
        self.host = self.h.ns
        self.pods = {t: factory(f"fzv{t[0]}") for t in self.CIDS}
        self.snap_ns = [self.host, self.pods["add"]]
        self.iptables = True
        self.state_roots.append(os.path.join(self.tmp, "vx"))
        o = self.attach("base")
        assert o.rc == 0, f"vxlan world: base ADD failed: {o}"

    def keys(self, verb, target):
        c = {k: v for k, v in self.h.conf.items() if k not in ("cniVersion", "name", "type")}
        c["ipMasq"] = True
        return c

    def prev(self, target):
        return self.results.get(target) if target != "add" else None

    def pod_ns(self, target):
        return self.pods[target]


class DpSteeringWorld(World):
    plugin = "dp-steering"
    path_keys = ("stateDir", "logFile", "enforcerNetns", "dpSocket")

    def __init__(self, factory, tmp):
        super().__init__(factory, tmp)
        from tests.kit.dp_steering import World as DpWorld
        self.w = DpWorld(factory, os.path.join(self.tmp, "dp"), mode="tap", dpWaitMs=20)
        self.host = self.w.host
        self.bridged = {t: self.w.add(self.CIDS[t], steer=False) for t in self.CIDS}
        self.snap_ns = [self.host, self.w.enf, self.bridged["add"].ns]
        self.state_roots.append(self.w.state_dir)
        o = self.attach("base")
        assert o.rc == 0, f"dp-steering world: base ADD failed: {o}"

    def keys(self, verb, target):
        return {k: v for k, v in self.w.steer.items() if k != "type"}

    def prev(self, target):
        return self.bridged[target].result.encode(VERSION)

    def pod_ns(self, target):
        return self.bridged[target].ns

    def attach(self, target):
        self.attached.add(target)
        return self.run_verb("ADD", target)

    def close(self):
        super().close()
        for _t, pod in self.bridged.items():
            try:
                self.w.delete(pod) if False else self.w._on("del", pod, self.w.conflist(steer=False))
            except Exception:  # noqa: BLE001
                pass


WORLDS = {"pycni-passthrough": PassthroughWorld, "edgemesh": EdgemeshWorld, "vxlan": VxlanWorld,
          "dp-steering": DpSteeringWorld}


def make_world(plugin: str, factory, tmp) -> World:
    return WORLDS[plugin](factory, tmp)


# ---- JSON with what json.dumps will not write ---------------------------------------------------

class Raw:
    """Text put into the document as is (1e999, NaN, 10**5000, deep nesting)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self):
        return f"Raw({self.text[:40]!r}{'...' if len(self.text) > 40 else ''})"


class Pairs:
    """An object written from (key, value) pairs: duplicate keys."""

    def __init__(self, items):
        self.items = list(items)

    def __repr__(self):
        return f"Pairs({[k for k, _ in self.items]})"


def encode(v, ascii_: bool = True) -> str:
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, Pairs):
        return "{" + ",".join(f"{encode(k, ascii_)}:{encode(x, ascii_)}" for k, x in v.items) + "}"
    if isinstance(v, dict):
        return "{" + ",".join(f"{encode(k, ascii_)}:{encode(x, ascii_)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(encode(x, ascii_) for x in v) + "]"
    return json.dumps(v, ensure_ascii=ascii_)


def deep(depth: int, kind: str = "list") -> Raw:
    if kind == "list":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


# ---- the mutator --------------------------------------------------------------------------------

EDGE_NUMBERS = [0, -1, 1, 2**31 - 1, 2**31, -2**31 - 1, 2**32, 2**63 - 1, 2**63, 2**64, -2**63, 65535, 65536,
                16777215, 16777216, 1.5, -0.0, 1e308, 5e-324, True, False,
                Raw("1e999"), Raw("-1e999"), Raw("1" * 5000), Raw("NaN"), Raw("Infinity"), Raw("1E400"),
                Raw("0.0000000000000000000000000000001e-400")]
WEIRD_STRINGS = ["", " ", "\0", "a\0b", "\n", "x\ny", "\ud800", "\udfff", "é", "日本語", "🙂" * 5, "\u202e",
                 "..", ".", "a/b", "a:b", "-", "--help", "$(id)", "`id`", "%s%n", "\\", '"', "null", "true",
                 "10.0.0.1", "10.0.0.300/24", "::1", "0.0.0.0/0", "fe80::1/64", "x" * 16, "x" * 256, "x" * 5000]
STANDARD_EXTRAS = [("capabilities", {"portMappings": True, "ips": True, "mac": True}),
                   ("dns", {"nameservers": ["10.96.0.10"], "search": ["x"]}),
                   ("runtimeConfig", {"ips": ["10.22.0.77/24"], "mac": "02:00:00:00:00:99",
                                      "portMappings": [{"hostPort": 8080, "containerPort": 80}]}),
                   ("args", {"cni": {"ips": ["10.22.0.78"]}}), ("cni.dev/custom", {"x": 1}),
                   ("ipMasq", True), ("logLevel", "debug"), ("logLevel", "chatty")]


def random_value(rng: random.Random, scratch_paths: dict):
    r = rng.random()
    if r < 0.25:
        return rng.choice(EDGE_NUMBERS)
    if r < 0.5:
        return rng.choice(WEIRD_STRINGS)
    if r < 0.6:
        return "".join(chr(rng.randrange(1, 0x10FFFF)) for _ in range(rng.randrange(1, 20)))
    if r < 0.7:
        return deep(rng.choice([50, 500, 990, 1500, 5000, 100000]), rng.choice(["list", "dict"]))
    if r < 0.75:
        return "z" * rng.choice([1000, 70000, 300000])
    if r < 0.85:
        return rng.choice([None, [], {}, [None], [[]], {"": None}, [1, "a", None, {}]])
    return rng.choice(list(scratch_paths.values()))


def _paths(v, prefix=()):
    """(path, value) of every node under a JSON tree of dicts and lists."""
    yield prefix, v
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, prefix + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, prefix + (i,))


def _set(tree, path, value):
    node = tree
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _delete(tree, path):
    node = tree
    for p in path[:-1]:
        node = node[p]
    if isinstance(node, dict):
        node.pop(path[-1], None)
    else:
        node.pop(path[-1])


def _retype(rng, v):
    choices = [None, True, 0, -1, 1.5, "", "1", [], {}, [v], {"v": v}]
    if isinstance(v, str):
        choices += [v.encode().hex(), len(v), v * 50, v + "\0", v.upper(), " " + v]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        choices += [str(v), -v, v + 1, v * 1000, Raw(f"{v}e999")]
    return rng.choice(choices)


def _get(tree, path):
    node = tree
    for p in path:
        node = node[p]
    return node


def _first_dict(items, index: int) -> bool:
    """Whether items[index] is an object a mutation can set a key of (an earlier mutation of the
    same case may have retyped the list or its members)."""
    return isinstance(items, list) and bool(items) and isinstance(items[index], dict)


def mutate(rng: random.Random, world: World, verb: str, target: str) -> tuple[dict, bytes, list[str]]:
    """A mutated (env, stdin) from the world's valid case and what was done to it."""
    import copy
    env, conf = world.env(verb, target), copy.deepcopy(world.conf(verb, target))
    paths = world.bad_paths()
    done: list[str] = []
    whole = None
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        r = rng.random()
        if r < 0.08:                                   # a benign standard key
            k, v = rng.choice(STANDARD_EXTRAS)
            conf[k] = copy.deepcopy(v)
            done.append(f"add {k}={v!r}")
        elif r < 0.38:                                 # somewhere in the config tree
            nodes = [p for p, _ in _paths(conf) if p]
            path = rng.choice(nodes)
            op = rng.choice(["drop", "retype", "value", "value", "dup", "unknown"])
            if op == "drop":
                _delete(conf, path)
                done.append(f"drop {path}")
            elif op == "retype":
                v = _retype(rng, _get(conf, path))
                _set(conf, path, v)
                done.append(f"retype {path}={v!r:.80}")
            elif op == "value":
                v = random_value(rng, paths)
                _set(conf, path, v)
                done.append(f"set {path}={v!r:.80}")
            elif op == "dup" and isinstance(_get(conf, path[:-1]), dict):
                parent = _get(conf, path[:-1])
                pairs = Pairs(list(parent.items()) + [(path[-1], random_value(rng, paths))])
                if path[:-1]:
                    _set(conf, path[:-1], pairs)
                else:
                    whole = encode(pairs)
                done.append(f"duplicate key {path}")
            else:
                parent = _get(conf, path[:-1]) if isinstance(_get(conf, path[:-1]), dict) else conf
                key = rng.choice(["listenPort", "stateDirr", "x", "", "\0", "cni.dev/x", "Type", "é" * 3])
                if isinstance(parent, dict):
                    parent[key] = random_value(rng, paths)
                done.append(f"unknown key {key!r}")
        elif r < 0.50:                                 # a path-valued key: hostile paths
            key = rng.choice(world.path_keys)
            kind = rng.choice(sorted(paths))
            if key == "registry.path" and isinstance(conf.get("registry"), dict):
                conf["registry"]["path"] = paths[kind]
            else:
                conf[key] = paths[kind]
            done.append(f"{key} = {kind}")
        elif r < 0.62:                                 # prevResult
            prev = conf.get("prevResult")
            if not isinstance(prev, dict):
                conf["prevResult"] = prev = copy.deepcopy(prev_result("10.22.0.9", world.pod_ns("add").path))
            op = rng.choice(["deep", "iface", "ip", "many", "drop", "version", "sandbox"])
            if op == "deep":
                conf["prevResult"] = Pairs(list(prev.items()) + [("x", deep(rng.choice([990, 2000, 100000])))])
            elif op == "iface" and _first_dict(prev.get("ips"), 0):
                prev["ips"][0]["interface"] = rng.choice([-1, 99, 2**63, "1", None, 1.0])
            elif op == "ip" and _first_dict(prev.get("ips"), 0):
                prev["ips"][0]["address"] = rng.choice(["10.22.0.300/24", "10.22.0.5", "fd00::5/64", "", "x/y",
                                                        "10.22.0.5/33", None, 5])
            elif op == "many":
                prev["ips"] = [{"address": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32"}
                               for i in range(rng.choice([100, 5000]))]
            elif op == "drop":
                prev.pop(rng.choice(["interfaces", "ips", "routes", "cniVersion", "dns"]), None)
            elif op == "version":
                prev["cniVersion"] = rng.choice(["0.1.0", "0.3.1", "0.4.0", "1.0.0", "9.9.9", "", None])
            elif op == "sandbox" and _first_dict(prev.get("interfaces"), -1):
                prev["interfaces"][-1]["sandbox"] = rng.choice(["", "/nonexistent", paths["fifo"], None, 1])
            done.append(f"prevResult {op}")
        elif r < 0.70:                                 # cniVersion / name / type
            key = rng.choice(["cniVersion", "name", "type"])
            v = rng.choice(["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "1.2.0", "2.0.0", "1.0",
                            "", "v1", None, 1, "n" * 300, "a b", "ok-name"] + WEIRD_STRINGS[:12])
            conf[key] = v
            done.append(f"{key}={v!r:.60}")
        elif r < 0.92:                                 # the environment
            var = rng.choice(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"])
            op = rng.random()
            if op < 0.15:
                env.pop(var, None)
                done.append(f"unset {var}")
                continue
            if var == "CNI_NETNS":
                v = rng.choice([paths["file"], paths["dir"], paths["fifo"], "relative/netns", "/nonexistent/ns",
                                "/proc/self/ns/mnt", "/proc/self/ns/net", "/dev/null", "",
                                world.host.path, "/run/netns/",
                                "/run/netns/../netns/" + os.path.basename(env.get(var, "x"))])
            elif var == "CNI_IFNAME":
                v = rng.choice(["eth1", "", ".", "..", "a/b", "a:b", "a b", "\t", "x" * 15, "x" * 16, "é" * 7, "é" * 8,
                                "\udcff\udcfe", "eth0\udcff", "lo", "cni0", "vxlan.1", "-eth0", "eth0\n"])
            elif var == "CNI_CONTAINERID":
                v = rng.choice(["", "x" * 300, "x" * 5000, "../etc", "a/b", "a b", "é", "\udcff", "-x", "a;b",
                                "fzadd", "c" + str(rng.randrange(10**6))])
            elif var == "CNI_ARGS":
                v = rng.choice(["a", "=x", ";;;", "IgnoreUnknown=1;K8S_POD_NAME=" + "p" * 5000,
                                "K8S_POD_NAMESPACE=kube-system",
                                "IgnoreUnknown=1;IP=10.22.0.99", "x=\udcff", "IgnoreUnknown=true", ""])
            elif var == "CNI_PATH":
                v = rng.choice(["", "/nonexistent", "relative", paths["file"], paths["fifo"], ":" * 10,
                                "/nonexistent:" + CNI_PATH, VENV_BIN])
            else:
                v = rng.choice(list(VERBS) + ["add", "", "FOO", "ADD\n", "\udcff"])
            env[var] = v
            done.append(f"{var}={v!r:.60}")
        else:                                          # the document itself
            text = encode(conf) if whole is None else whole
            op = rng.choice(["truncate", "garbage", "nonutf8", "bom", "scalar", "deep", "empty"])
            if op == "truncate":
                whole = text[:rng.randrange(0, max(1, len(text)))]
            elif op == "garbage":
                whole = text + rng.choice(["}", " x", "\0", "{}", ",", "\n\n{"])
            elif op == "nonutf8":
                i = rng.randrange(0, max(1, len(text)))
                whole = text[:i] + "\udcff" + text[i:]
            elif op == "bom":
                whole = "\ufeff" + text
            elif op == "scalar":
                whole = rng.choice(["null", "[]", "1", '"x"', "true", "[{}]"])
            elif op == "deep":
                whole = deep(rng.choice([1000, 100000]), rng.choice(["list", "dict"])).text
            else:
                whole = rng.choice(["", " ", "\n"])
            done.append(f"document {op}")
    text = encode(conf, ascii_=rng.random() < 0.7) if whole is None else whole
    data = text.encode("utf-8", errors="surrogateescape") if not _has_lone_surrogate(text) else \
        text.encode("utf-8", errors="surrogatepass")
    return env, data, done


# The kinds of mutation mutate() makes, by the description it gives each (its `done` list).
MUTATION_KINDS = ("standard key", "config tree", "hostile path", "prevResult", "cniVersion/name/type",
                  "environment", "document")
_KIND_OF = [(re.compile(r"^add [\w./]+="), "standard key"),
            (re.compile(r"^((drop|retype|set) \(|duplicate key |unknown key )"), "config tree"),
            (re.compile(r"^prevResult \w+$"), "prevResult"),
            (re.compile(r"^(cniVersion|name|type)="), "cniVersion/name/type"),
            (re.compile(r"^(unset )?CNI_[A-Z]+"), "environment"),
            (re.compile(r"^document \w+$"), "document"),
            (re.compile(r"^[\w.]+ = [\w ]+$"), "hostile path")]


def mutation_kind(desc: str) -> str:
    """The kind (MUTATION_KINDS) of one of mutate()'s descriptions; "other" if none fits."""
    for pattern, kind in _KIND_OF:
        if pattern.match(desc):
            return kind
    return "other"


def _has_lone_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8", errors="surrogateescape")
        return False
    except UnicodeEncodeError:
        return True


# ---- the loop -------------------------------------------------------------------------------

class Stats:
    def __init__(self, plugin: str, verb: str):
        self.plugin, self.verb = plugin, verb
        self.cases = self.forked = self.execd = self.ok = 0
        self.codes: dict = {}
        self.kinds: dict = {}                   # mutation kind -> how many mutations of it
        self.unclassified: list[str] = []       # descriptions mutation_kind() does not know
        self.problems: list[dict] = []         # each: what, env, stdin, outcome
        self.residue: list[dict] = []
        self.secs = 0.0

    def count(self, kind: str) -> int:
        return sum(1 for p in self.problems if kind in p["what"])

    def others(self) -> int:
        """Problems that are not a 999, a traceback or a hang."""
        return len([p for p in self.problems if not any(k in p["what"] for k in ("code 999", "traceback", "hang"))])

    def summary(self) -> str:
        return (f"{self.plugin} {self.verb}: {self.cases} cases ({self.forked} forked, {self.execd} exec), "
                f"{self.ok} ok, codes {dict(sorted(self.codes.items(), key=lambda kv: str(kv[0])))}, "
                f"999s {self.count('code 999')}, tracebacks {self.count('traceback')}, hangs {self.count('hang')}, "
                f"other problems {self.others()}, "
                f"residue {len(self.residue)}, mutations {dict(sorted(self.kinds.items()))}, {self.secs:.1f} s")


def _short(env: dict, data: bytes) -> dict:
    return {"env": {k: (v if len(v) < 200 else v[:200] + f"...({len(v)})") for k, v in env.items() if k != "PATH"},
            "stdin": data[:600].decode("utf-8", "backslashreplace")
            + (f"...({len(data)} bytes)" if len(data) > 600 else "")}


def _diff(before: dict, after: dict) -> dict:
    import difflib
    out = {}
    for k in sorted(set(before) | set(after)):
        a, b = before.get(k, ""), after.get(k, "")
        if a != b:
            out[k] = "\n".join(list(difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0))[2:])[:1500]
    return out


def fuzz(world: World, verb: str, cases: int, seed: int, exec_share: float = 0.08,
         check_residue: bool = True, log=None, exec_first: int = 0) -> Stats:
    """`cases` mutated cases of `verb` against `world`; every outcome judged, rejected ADDs
    checked for residue, successful ADDs DELeted again (and checked too). The first `exec_first`
    cases are exec'd whatever the draw (a small sample still takes the exec path)."""
    rng = random.Random(f"{seed}-{world.plugin}-{verb}")
    st = Stats(world.plugin, verb)
    started = time.monotonic()
    target = {"ADD": "add", "DEL": "del"}.get(verb, "base")
    world.prepare(verb)
    baseline = world.snapshot() if verb == "ADD" and check_residue else None
    for i in range(cases):
        env, data, done = mutate(rng, world, verb, target)
        for d in done:
            kind = mutation_kind(d)
            st.kinds[kind] = st.kinds.get(kind, 0) + 1
            if kind == "other":
                st.unclassified.append(d)
        exec_ = rng.random() < exec_share or i < exec_first
        o = world.run(env, data, exec_)
        st.cases += 1
        st.execd += exec_
        st.forked += not exec_
        code = o.code if o.rc == 1 else ("ok" if o.rc == 0 else f"rc={o.rc}")
        st.codes[code] = st.codes.get(code, 0) + 1
        st.ok += o.rc == 0
        effective = env.get("CNI_COMMAND", "")
        bad = verdict(effective, o)
        if bad:
            st.problems.append({"case": i, "what": bad, "mutations": done, **_short(env, data), "outcome": repr(o)})
            if log:
                log(f"  ! {world.plugin} {verb} case {i}: {bad} after {done}: {o!r:.500}")
        if effective in ("DEL", "GC") and o.rc == 0:      # may have removed an attached target
            world.attached.clear()
            if verb == "DEL" and rng.random() < 0.3:
                world.attach("del")
            if baseline is not None:
                baseline = world.snapshot()
            continue
        if baseline is not None and effective == "ADD":
            if effective == "ADD" and o.rc == 0:          # undo it as a runtime would
                d_env = dict(env, CNI_COMMAND="DEL")
                if world.run(d_env, data).rc != 0:
                    ids = {k: env[k] for k in ("CNI_CONTAINERID", "CNI_IFNAME") if k in env}
                    world.run(dict(world.env("DEL", target), **ids), json.dumps(world.conf("DEL", target)).encode())
            after = world.snapshot()
            diff = _diff(baseline, after)
            if diff:
                kind = "left by a rejected ADD" if o.rc != 0 else "left after ADD + DEL"
                if world.node_state(done, diff):
                    kind = "node state " + kind
                st.residue.append({"case": i, "what": kind, "mutations": done, "code": code, **_short(env, data),
                                   "diff": diff})
                if log:
                    log(f"  ~ {world.plugin} {verb} case {i}: residue {kind} (code {code}) after {done}: {diff}")
                baseline = after                            # count it once, go on from here
    st.secs = time.monotonic() - started
    return st


class Factory:
    """A netns factory outside pytest (bench/fuzz.py): every namespace made is removed by close()."""

    def __init__(self):
        from tests.kit.netns import NetNS
        self._cls, self.made = NetNS, []

    def __call__(self, tag: str = "ns"):
        n = self._cls(tag)
        self.made.append(n)
        return n

    def close(self):
        for n in reversed(self.made):
            n.close()
        self.made.clear()


def is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
