"""pycni-node: one process per node that serves the per-pod CNI verbs of our plugins.

    pycni-node [--conf FILE ...] [--socket /run/pycni/node.sock] [--no-vxlan-agent]

The exec'd plugins (plugins/node/client.py) hand it their request over a root-only unix socket
(mode 0600; SO_PEERCRED uid 0 checked per connection) with their network namespace as an fd.
The daemon imports the plugins (and what any of their verbs imports) once; every connection gets
a worker forked from that pristine state (forked ahead: spare workers wait in accept(), so the
fork is off the exec's path), which setns()es into the client's network namespace (and its mount
namespace when that is not the daemon's), takes its environment, argv, cwd,
umask and stderr, and runs the plugin's skel.run with the same cmd_* code, module globals as a
fresh exec would see them, and the same flocks. Workers run in parallel; a worker's stdout (a
memfd on fd 1, so the plugin's children write there too) goes back whole with the exit status.

The main process stays single-threaded (it forks spares, reaps, and accepts only to refuse when
--max-workers are busy), so forking is safe. With --log-level debug each request's phases (ms),
minor faults and the modules its worker had to import go to the log (bench/node_daemon.py).
Services run as its supervised children (restarted after a pause when they exit):
- the vxlan agent (plugins/main/vxlan/agent.py) for every conf given with --conf holding a
  vxlan plugin (--no-vxlan-agent: the node runs vxlan-agent.service instead; never both);
- the dp-steering fail-open watcher (plugins/meta/dp_steering/failopen.py) for confs holding
  dp-steering, when this build carries it.
SIGTERM/SIGINT: the socket goes (new execs run in-process), requests in flight finish, services
get SIGTERM.
"""
from __future__ import annotations

import argparse
import errno
import io
import json
import logging
import mmap
import os
import resource
import select
import signal
import socket
import sys
import time

from plugins.pkg import ns

from . import protocol as P

log = logging.getLogger("pycni-node")

# What a worker would otherwise import per request: each plugin's exec path and what any verb
# imports lazily (tests/unit/test_vxlan_edgemesh_imports.py lists the same modules; the debug line's
# "imported" names a module a worker had to import: tests/integration/test_node_daemon.py's both()).
PLUGIN_MODULES = {
    "vxlan": "plugins.main.vxlan.cmd",
    "dp-steering": "plugins.meta.dp_steering.cmd",
    "edgemesh": "plugins.meta.edgemesh.cmd",
    "pycni-passthrough": "plugins.meta.passthrough.cmd",
}
PRELOAD = (
    "libcni_py.skel", "libcni_py.types", "libcni_py.invoke", "libcni_py.records", "libcni_py.netns",
    "plugins.main.vxlan.lease", "plugins.main.vxlan.device", "plugins.main.vxlan.peers",
    "plugins.main.vxlan.registry.file", "plugins.main.vxlan.masq", "plugins.main.vxlan.config",
    "plugins.main.vxlan.overlay", "plugins.main.vxlan.pod", "plugins.main.vxlan.ipam",
    "plugins.meta.edgemesh.listen", "plugins.meta.edgemesh.conflict", "plugins.meta.edgemesh.backends",
    "plugins.meta.edgemesh.backend_iptables", "plugins.meta.edgemesh.backend_nft",
    "plugins.meta.dp_steering.state", "plugins.meta.dp_steering.steering",
    "plugins.meta.dp_steering.datapath_ebpf", "plugins.meta.dp_steering.datapath_pedit",
    "plugins.meta.dp_steering.dpctl",
    "plugins.pkg.tc", "plugins.pkg.link", "plugins.pkg.rtnl", "plugins.pkg.lock", "plugins.pkg.ns",
    "plugins.pkg.iptables", "plugins.pkg.nft", "plugins.pkg.schema",
    "plugins.pkg.names", "_sha256", "_sha2", "plugins.entrypoints",    # names.sha256; vxlan's self_delegation
    # CHECK's integrity checks (plugins/doctor, no pyroute2): edgemesh, dp-steering, vxlan
    "plugins.doctor.checkctx", "plugins.doctor.edgemesh_hijack", "plugins.doctor.nfqueue", "plugins.doctor.steering",
    "plugins.doctor.overlay", "plugins.doctor.policy_routing", "plugins.doctor.sysctl",
    "plugins.meta.dp_steering.triad", "plugins.meta.dp_steering.rules", "plugins.main.vxlan.registry",
    "difflib", "traceback", "stat",      # a config error's nearest key, a 999's traceback, skel's logFile check
    "ipaddress", "json", "subprocess", "fcntl", "ctypes",
)
REQUEST_TIMEOUT = 60.0     # the request and stdin after OK (the client sends them at once)
# The debug line's phases of a request (ms): accepted -> a worker runs it (a spare: at once; at
# --max-workers: the fork and set-up), the client's hello came (the client's time), hello checked, mount and
# network namespaces entered, OK sent, request + stdin read, the exec's process state set up,
# the plugin (skel.run), its stdout collected.
PHASES = ("start", "hello", "check", "mntns", "netns", "ok", "request", "setup", "plugin", "output")
RESTART_PAUSE = 2.0        # a service that exited is started again after this
MAX_WORKERS = 256
HOT_REGION_MAX = 256 << 20  # larger mappings (reservations) are left out of the hot-page bitmap
SPARE_WORKERS = 2          # forked ahead, waiting in accept() (within --max-workers)
READY_TAG = 1 << 30        # on the taken pipe: a spare's pid with it is "waiting in accept()", without "took one"
PR_SET_PDEATHSIG = 1
MADV_POPULATE_WRITE = 23   # Linux 5.14: prefault writable (break copy-on-write) without writing
EXIT_USAGE, EXIT_FAILED = 2, 1


class StartError(Exception):
    """The daemon cannot start (bad --conf, socket in use, unsafe socket directory)."""


class Service:
    """A supervised child: `run` is called in a forked child and returns its exit status."""

    def __init__(self, name: str, run):
        self.name, self.run = name, run
        self.pid = 0
        self.next_start = 0.0


def preload_schemas() -> None:
    """Every plugin schema loaded and its patterns compiled, in the main: what each plugin's validate
    reads and compiles, done once for all workers (an exec compiles only what its config meets)."""
    from plugins.pkg import schema
    for name in sorted(os.listdir(schema.schema_dir())):
        if name.endswith(".json"):
            schema.compile_patterns(schema.load(name[:-5]))


class Daemon:
    def __init__(self, path: str, services: list[Service] | None = None, max_workers: int = MAX_WORKERS):
        self.path, self.services, self.max_workers = path, list(services or []), max_workers
        self.workers: set[int] = set()
        self.stopping = False
        self.listener: socket.socket | None = None
        self.identity = P.identity().encode()
        st = os.stat("/proc/self/ns/mnt")
        self.mntns = (st.st_dev, st.st_ino)
        self.plugins: dict[bytes, object] = {}
        self.debug = False             # a line per request served on the daemon's stderr
        self.stamps: list[int] = []    # a worker's phase ends (time.monotonic_ns), from the accept
        self.idle: set[int] = set()    # spare workers forked that took no request yet
        self.ready: set[int] = set()   # of those, the ones waiting in accept() already
        self.fork_failed = 0.0         # until then (monotonic) no fork is tried
        self.wake_r = self.wake_w = self.taken_r = self.taken_w = self.stop_r = self.stop_w = -1
        self.out_fd = self.null_fd = -1
        self.faults = 0                # a spare's minor faults before its accept
        self.regions: list[tuple[int, int, int]] = []   # (start, end, offset in hot) of the main's memory
        self.hot: mmap.mmap | None = None  # a byte per page of regions: 1 = requests write it
        self.pretouched = 0
        self.entered_mntns = False

    # ---- start-up -------------------------------------------------------------------
    def preload(self) -> None:
        """Import the plugins and their per-request modules once; a worker forked later finds
        them loaded, as pristine as a fresh exec (the main process never runs plugin code)."""
        from importlib import import_module
        for name, module in PLUGIN_MODULES.items():
            try:
                self.plugins[name.encode()] = import_module(module).PLUGIN
            except ImportError as e:
                log.warning("plugin %s is not part of this build (%s): its execs run in-process", name, e)
        for module in PRELOAD:
            try:
                import_module(module)
            except ImportError:
                pass
        try:
            preload_schemas()
        except (OSError, ValueError) as e:       # the plugin's validate reports it, per request
            log.warning("plugin schemas not preloaded: %s", e)
        libc = ns.libc()
        _ = (libc.setns, libc.prctl)             # ctypes makes a function on its first lookup: here, once
        import ctypes
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        import gc
        gc.collect()
        gc.freeze()              # workers' collections leave the preloaded heap (and its pages) alone

    def bind(self) -> None:
        path = self.path
        d = os.path.dirname(path) or "."
        if len(os.fsencode(path)) + 16 > 107:
            raise StartError(f"socket path {path!r} is too long for a unix socket")
        if not os.path.isdir(d):
            os.makedirs(d, mode=0o700)
        st = os.stat(d)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise StartError(f"socket directory {d} must be owned by uid {os.geteuid()} and writable by "
                             f"no one else (it is uid {st.st_uid}, mode {st.st_mode & 0o7777:04o})")
        if os.path.lexists(path):
            import stat
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise StartError(f"{path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1.0)
                probe.connect(path)
                raise StartError(f"another pycni-node is listening on {path}")
            except OSError as e:
                if isinstance(e, StartError) or e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                    raise StartError(f"{path}: {e}") from None
            finally:
                probe.close()
        tmp = f"{path}.{os.getpid()}.tmp"
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            lst.bind(tmp)
        finally:
            os.umask(old)
        os.chmod(tmp, 0o600)
        lst.listen(128)
        os.rename(tmp, path)     # atomic: a client never finds a socket that does not listen yet
        self.inode = os.stat(path).st_ino
        lst.setblocking(False)   # shared by the main and the spares: an accept another one won returns at once
        self.listener = lst

    # ---- the main loop ----------------------------------------------------------------
    # Spare workers are forked ahead of requests (SPARE_WORKERS, within --max-workers): each waits
    # in accept() on the listener itself, so a request meets a worker that is already running,
    # the fork and the request-independent set-up are off the exec's path. A spare that took a
    # connection writes its pid on the `taken` pipe (and, tagged READY_TAG, once it waits in
    # accept()); the main process forks the next one when none is left, else once no request runs
    # (_fork_spares). While no spare waits in accept() (all taken, or just forked and still
    # setting up), the main process accepts itself: it forks a worker for each connection waiting,
    # as many at once as wait (a burst of pods is not served one spare's set-up after another),
    # or at --max-workers closes it before OK (the client runs in-process).
    def serve(self) -> int:
        assert self.listener is not None
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.taken_r, self.taken_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.taken_r, False)
        self._hot_pages()
        self.stop_r, self.stop_w = os.pipe2(os.O_CLOEXEC)   # its EOF: spares leave (shutdown, or the daemon died)
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.signal(signal.SIGCHLD, _ignore)             # a child's end wakes the select below
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        log.info("listening on %s (%s), %d plugins loaded", self.path, self.identity.decode(), len(self.plugins))
        while not self.stopping:
            self._housekeeping()
            self._fork_spares()
            lfd = self.listener.fileno()
            watch = not self.ready         # no spare waits in accept(): connections are the main's to take
            ready, _, _ = select.select([self.wake_r, self.taken_r, *([lfd] if watch else [])], [], [], 0.5)
            if self.wake_r in ready:
                _drain(self.wake_r)
            if self.taken_r in ready:
                self._read_taken()
            if lfd in ready and not self.ready and not self.stopping:
                self._accept_full()
        return self._shutdown()

    def _read_taken(self) -> None:
        if self.taken_r < 0:
            return
        while True:
            try:
                data = os.read(self.taken_r, 4096)       # whole pids: 4-byte writes are atomic
            except BlockingIOError:
                return
            if not data:
                return
            for i in range(0, len(data) - 3, 4):
                word = int.from_bytes(data[i:i + 4], sys.byteorder)
                pid = word & ~READY_TAG
                if word & READY_TAG:
                    if pid in self.idle:
                        self.ready.add(pid)
                else:
                    self.idle.discard(pid)
                    self.ready.discard(pid)

    def _fork_spares(self) -> None:
        """Up to SPARE_WORKERS while no request runs; while some do, only when none is left
        waiting (a fork then would take CPU from the requests in flight)."""
        want = SPARE_WORKERS if len(self.workers) == len(self.idle) else 1
        while (len(self.idle) < want and len(self.workers) < self.max_workers and not self.stopping
               and time.monotonic() >= self.fork_failed):
            pid = self._fork(None)
            if pid:
                self.idle.add(pid)

    def _fork(self, conn: socket.socket | None) -> int:
        """A worker: a spare (conn None) or one for a connection the main process accepted."""
        stamp = time.monotonic_ns()
        try:
            pid = os.fork()
        except OSError as e:
            log.error("fork: %s", e)
            self.fork_failed = time.monotonic() + 0.5      # meanwhile requests are sent in-process
            return 0
        if pid == 0:
            self._worker(conn, stamp)                     # never returns
        self.workers.add(pid)
        return pid

    def _accept_full(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except (TimeoutError, BlockingIOError):
            return                                   # a spare forked meanwhile took it
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.error("accept: %s", e)
                time.sleep(0.1)
                return
            raise
        self._reap()
        if len(self.workers) < self.max_workers and self._fork(conn):
            conn.close()
            return
        conn.close()                 # before OK: the client runs in-process
        if self.debug:
            _log_fd(f"pycni-node: refused a request: {len(self.workers)} requests in flight (--max-workers)\n")

    def _stop(self, *_):
        self.stopping = True

    def _reap(self) -> None:
        self._read_taken()         # first: a spare that took a request and ended is no idle spare
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.workers:
                self.workers.discard(pid)
                if pid in self.idle:
                    self._read_taken()             # it may have taken one and ended since the read above
                if pid in self.idle:               # a spare that never took a request
                    self.idle.discard(pid)
                    self.ready.discard(pid)
                    if not self.stopping:
                        log.warning("spare worker %d ended (status %d) before it took a request", pid,
                                    os.waitstatus_to_exitcode(status))
                        self.fork_failed = time.monotonic() + 0.5     # no fork loop if every spare fails
                    continue
                if os.WIFSIGNALED(status):
                    log.warning("worker %d killed by signal %d: its client answered code 11", pid,
                                os.WTERMSIG(status))
                continue
            for svc in self.services:
                if svc.pid == pid:
                    svc.pid = 0
                    svc.next_start = time.monotonic() + RESTART_PAUSE
                    if not self.stopping:
                        log.warning("service %s exited (status %d); starting it again in %.0f s", svc.name,
                                    os.waitstatus_to_exitcode(status), RESTART_PAUSE)

    def _housekeeping(self) -> None:
        self._reap()
        now = time.monotonic()
        for svc in self.services:
            if svc.pid == 0 and now >= svc.next_start and not self.stopping:
                self._start(svc)

    def _start(self, svc: Service) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self._child_reset()
                _die_with_parent(parent)        # a daemon killed -9 leaves no agent behind to double
                code = svc.run()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001 - a service's crash is logged and it is restarted
                log.exception("service %s failed", svc.name)
            finally:
                logging.shutdown()
                os._exit(code)
        svc.pid = pid
        log.info("service %s started (pid %d)", svc.name, pid)

    def _shutdown(self) -> int:
        """The socket goes first (new execs run in-process), then requests in flight finish."""
        try:
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except OSError:
            pass
        if self.listener is not None:
            self.listener.close()
        _close(self.stop_w)                              # the spares waiting leave
        for svc in self.services:
            if svc.pid:
                _kill(svc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while (self.workers or any(s.pid for s in self.services)) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        left = [*self.workers, *(s.pid for s in self.services if s.pid)]
        if left:
            log.warning("%d workers or services still running after 30 s: killed", len(left))
        for pid in left:
            _kill(pid, signal.SIGKILL)
        log.info("stopped")
        return 0

    def _child_reset(self, spare: bool = False) -> None:
        """A child of the main process: signals as an exec has them, none of the main's fds (a
        spare keeps the listener and the write end of `taken`)."""
        if self.wake_r >= 0:
            signal.set_wakeup_fd(-1)
            for fd in (self.wake_r, self.wake_w, self.taken_r, self.stop_w,
                       *(() if spare else (self.taken_w, self.stop_r))):
                _close(fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        if self.listener is not None and not spare:
            self.listener.close()

    # ---- a worker: one request ----------------------------------------------------------
    def _worker(self, conn: socket.socket | None, forked: int) -> None:
        global _LOG_FD
        code = 0
        try:
            _LOG_FD = os.dup(2)          # the daemon's log; fd 2 becomes the client's stderr
            if conn is None:
                self._child_reset(spare=True)
                self._prepare()
                conn = self._accept()
                if conn is None:
                    return
            else:
                self.stamps, self.faults = [forked], 0
                self._child_reset()
                self._prepare(spare=False)
            self.stamps.append(time.monotonic_ns())      # a worker set up runs the request
            self._serve_one(conn)
        except BaseException as e:  # noqa: BLE001 - the client answers 11 on a reply that never came
            _log_fd(f"pycni-node: worker: {type(e).__name__}: {e}\n")
            code = 1
        finally:
            os._exit(code)

    def _accept(self) -> socket.socket | None:
        """A spare's wait for its connection; None when the stop pipe ends (the daemon stops or
        died: a spare never outlives it). The listener stays non-blocking (the main process
        shares it): another spare may win the accept."""
        assert self.listener is not None
        _write_pid(self.taken_w, os.getpid() | READY_TAG)     # from now on the main leaves accepting to us
        while True:
            ready, _, _ = select.select([self.listener.fileno(), self.stop_r], [], [])
            if self.stop_r in ready:
                return None
            try:
                conn, _ = self.listener.accept()
                break
            except (TimeoutError, BlockingIOError):
                continue
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(0.1)
                    continue
                raise
        self.stamps = [time.monotonic_ns()]
        self.faults = _minflt()
        _write_pid(self.taken_w, os.getpid())           # the main forks the next spare
        for fd in (self.taken_w, self.stop_r):
            _close(fd)
        self.listener.close()
        return conn

    # ---- copy-on-write ahead: the pages requests write, learned and touched by the spares ----------
    # A worker's first write to a page it shares with the main process copies it (a minor fault,
    # ~2.5 us): 170-840 of them per request, in the plugin's run. Each worker, after its reply,
    # marks in a bitmap shared by all (one byte per page of the main's private writable anonymous
    # memory, as it was when serving began) the pages it owns by then (/proc/self/pagemap:
    # present and exclusively mapped); each spare, before its accept, writes back one byte of every
    # marked page that it still has mapped so, and takes those copies off the request's path.
    def _hot_pages(self) -> None:
        regions, off = [], 0
        for a, b in _private_anon():
            if b - a <= HOT_REGION_MAX:
                regions.append((a, b, off))
                off += (b - a) >> 12
        if off:
            self.regions, self.hot = regions, mmap.mmap(-1, off)      # MAP_SHARED: every child sees it

    def _pretouch(self) -> None:
        """madvise(MADV_POPULATE_WRITE) over each run of marked pages still mapped so: the write
        faults without a write (contents unchanged); a range unmapped meanwhile is an error
        return, never a crash."""
        hot, n = self.hot, 0
        assert hot is not None
        madvise = ns.libc().madvise
        runs: list[tuple[int, int]] = []
        for a, b, off in self.regions:
            for ca, cb in _private_anon():
                lo, hi = max(a, ca), min(b, cb)
                start = -1
                for addr in range(lo, hi + 4096, 4096):
                    marked = addr < hi and hot[off + ((addr - a) >> 12)]
                    if marked and start < 0:
                        start = addr
                    elif not marked and start >= 0:
                        runs.append((start, addr - start))
                        start = -1
        for addr, size in runs:
            if madvise(addr, size, MADV_POPULATE_WRITE) == 0:
                n += size >> 12
        self.pretouched = n

    def _learn(self) -> None:
        import array
        hot = self.hot
        assert hot is not None
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for a, b, off in self.regions:
                entries = array.array("Q", os.pread(fd, ((b - a) >> 12) * 8, (a >> 12) * 8))
                for i, e in enumerate(entries):
                    if e >> 63 and (e >> 56) & 1:          # present, exclusively mapped
                        hot[off + i] = 1
        finally:
            os.close(fd)

    def _prepare(self, spare: bool = True) -> None:
        """What a request's process state needs and no request decides: done before the accept."""
        self.out_fd = os.memfd_create("pycni-node-stdout", os.MFD_CLOEXEC)
        self.null_fd = os.open(os.devnull, os.O_RDONLY)
        os.environ.clear()
        sys.stdin = None                             # skel reads the request's stdin, given to it
        _fresh_logging()
        ns.libc().setns(-1, ns.CLONE_NEWNET)         # EBADF: ctypes' first call in this process, not on the path
        if spare and self.hot is not None:
            self._pretouch()

    def _serve_one(self, conn: socket.socket) -> None:
        conn.settimeout(P.HELLO_TIMEOUT)
        fds: list[int] = []
        try:
            uid = P.peer_uid(conn)
            if uid != 0:
                _refuse(conn, f"peer uid {uid} is not root")
                return
            data, anc, flags, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(4 * P.N_FDS))
            self.stamps.append(time.monotonic_ns())      # the client's hello came
            fds = P.unpack_fds(anc)
            if flags & socket.MSG_CTRUNC or len(fds) != P.N_FDS:
                _refuse(conn, f"hello with {len(fds)} file descriptors")
                return
            if len(data) < 4:
                data += P.recv_exact(conn, 4 - len(data))
            n = int.from_bytes(data[:4], "big")
            hello = data[4:] + (P.recv_exact(conn, 4 + n - len(data)) if len(data) < 4 + n else b"")
            why, plugin = self._check_hello(hello, fds)
            if why:
                _refuse(conn, why)
                return
            self.stamps.append(time.monotonic_ns())      # hello read and checked
            # the namespaces the runtime called the plugin in; a mount namespace can be entered
            # because a worker is single-threaded (the main process never starts a thread)
            try:
                st = os.fstat(fds[1])
                self.entered_mntns = (st.st_dev, st.st_ino) != self.mntns
                if self.entered_mntns:
                    ns._setns(fds[1], ns.CLONE_NEWNS)    # (ip netns exec, a runtime's private mounts)
                self.stamps.append(time.monotonic_ns())
                ns._setns(fds[0], ns.CLONE_NEWNET)
                self.stamps.append(time.monotonic_ns())
            except OSError as e:
                _refuse(conn, f"setns into the client's namespaces: {e}")
                return
            P.send_all(conn, P.frame(b"OK"))
            self.stamps.append(time.monotonic_ns())
            conn.settimeout(REQUEST_TIMEOUT)
            request = P.recv_frame(conn)
            stdin = P.recv_frame(conn)
            argv, env, umask, encodings = P.unpack_request(request)
            os.fchdir(fds[2])
            stderr_fd = fds[3]
            conn.settimeout(None)
        except (OSError, P.ProtocolError) as e:
            _log_fd(f"pycni-node: request refused or cut short: {e}\n")
            for fd in fds:
                _close(fd)
            return
        for fd in fds[:3]:
            _close(fd)
        self.stamps.append(time.monotonic_ns())          # the request and its stdin read
        faults = _minflt()
        modules = set(sys.modules) if self.debug else set()
        status, out = self._run(plugin, argv, env, umask, encodings, stdin, stderr_fd)
        if self.debug:                  # before the reply: whoever got the answer finds the line
            name = hello.rpartition(b"\0")[2].decode(errors="replace")
            t = self.stamps
            new = sorted(set(sys.modules) - modules - {"logging"})   # what the plugin imported itself
            _log_fd(f"pycni-node: served {name} "
                    f"{env.get(b'CNI_COMMAND', b'').decode(errors='replace')} pid {P.peer_pid(conn)}: "
                    f"status {status} in {(t[-1] - t[-4]) / 1e6:.1f} ms; accepted at {t[0] / 1e9:.6f}; "
                    + " ".join(f"{k} {(b - a) / 1e6:.2f}" for k, a, b in zip(PHASES, t, t[1:]))
                    + f"; mntns {'entered' if self.entered_mntns else 'same'}; faults {self.faults} + "
                      f"{faults - self.faults} + {_minflt() - faults}; imported {len(new)}"
                    + "".join(" " + m for m in new[:1]) + "".join("," + m for m in new[1:])
                    + f"; pretouched {self.pretouched}\n")
        P.send_all(conn, P.frame(status.to_bytes(4, "big", signed=True) + out))
        if self.hot is not None:
            try:
                self._learn()                # after the reply: off the path (the client has its answer)
            except (OSError, ValueError):    # no /proc in the client's mount namespace
                pass

    def _check_hello(self, hello: bytes, fds: list[int]) -> tuple[str, object]:
        if not hello.startswith(P.MAGIC) or hello.count(b"\0") < 2:
            return "not a pycni-node hello", None
        ident, _, name = hello[len(P.MAGIC):].partition(b"\0")
        if ident != self.identity:
            return f"version {ident.decode(errors='replace')!r} is not this daemon's {self.identity.decode()!r}", None
        plugin = self.plugins.get(name)
        if plugin is None:
            return f"plugin {name.decode(errors='replace')!r} is not served here", None
        return "", plugin

    def _run(self, plugin, argv, env, umask, encodings, stdin: bytes, stderr_fd: int) -> tuple[int, bytes]:
        """The plugin as its exec would run it: skel.run + what skel.plugin_main does after it."""
        os.umask(umask)
        for k, v in env.items():
            os.environb[k] = v
        sys.argv = [os.fsdecode(a) for a in argv]
        out_fd = self.out_fd
        os.dup2(self.null_fd, 0)
        os.dup2(out_fd, 1)
        os.dup2(stderr_fd, 2)
        for fd in (self.null_fd, stderr_fd):
            os.close(fd)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding=encodings[0], errors=encodings[1])
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding=encodings[2], errors=encodings[3],
                                      line_buffering=True)
        from libcni_py import skel
        self.stamps.append(time.monotonic_ns())          # the plugin's process set up as an exec's
        try:
            code = skel.run(plugin, os.environ, io.BytesIO(stdin), sys.stdout, sys.stderr)
        except SystemExit as e:                      # what the interpreter would make of it
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if e.code is not None and not isinstance(e.code, int):
                sys.stderr.write(f"{e.code}\n")
        except BaseException:  # noqa: BLE001 - an exec would print the traceback and exit 1
            import traceback
            traceback.print_exc()
            code = 1
        if "logging" in sys.modules:
            sys.modules["logging"].shutdown()        # flush and close a logFile
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            code = code or 1
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        self.stamps.append(time.monotonic_ns())          # skel.run and the flushes done
        size = os.fstat(out_fd).st_size
        out = os.pread(out_fd, size, 0) if size else b""
        self.stamps.append(time.monotonic_ns())
        return code, out


def _private_anon() -> list[tuple[int, int]]:
    """This process's private writable anonymous mappings (the heap, the allocator's arenas)."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if parts[1] == "rw-p" and (len(parts) == 5 or parts[5] == "[heap]"):
                a, _, b = parts[0].partition("-")
                out.append((int(a, 16), int(b, 16)))
    return out


def _minflt() -> int:
    """Minor page faults of this process so far (a worker: since its fork, mostly copy-on-write)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _fresh_logging() -> None:
    """Logging as a fresh exec finds it: not imported. skel and plugins.pkg.log decide on
    `"logging" in sys.modules` (set-up deferred to the first record, a plain "pycni: error" line
    on stderr otherwise); with the daemon's logging module gone from sys.modules they decide as in
    an exec, and a plugin that logs imports a fresh one. The plugins' exec paths hold no reference
    to logging (tests/unit/test_vxlan_edgemesh_imports.py)."""
    for name in [m for m in sys.modules if m == "logging" or m.startswith("logging.")]:
        del sys.modules[name]
    from libcni_py import skel
    skel._deferred_log_stderr = None


def _die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """PR_SET_PDEATHSIG: `sig` when the daemon is gone (systemd would stop its cgroup; a daemon
    run by hand and killed -9 would otherwise leave its services running, then start second ones)."""
    ns.libc().prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:                         # it died before the prctl
        os.kill(os.getpid(), sig)


def _ignore(*_) -> None:
    pass


def _write_pid(fd: int, word: int) -> None:
    """A 4-byte word on the taken pipe (atomic); a daemon killed meanwhile (EPIPE) is no error:
    the spare serves what it took, or leaves on the stop pipe's EOF."""
    try:
        os.write(fd, word.to_bytes(4, sys.byteorder))
    except OSError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _refuse(conn: socket.socket, why: str) -> None:
    _log_fd(f"pycni-node: refused a request: {why}\n")
    try:
        P.send_all(conn, P.frame(b"NO\0" + why.encode(errors="replace")))
    except OSError:
        pass


_LOG_FD = 2


def _log_fd(line: str) -> None:
    try:
        os.write(_LOG_FD, line.encode(errors="replace"))
    except OSError:
        pass


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# ---- services from --conf -----------------------------------------------------------------
def conf_plugins(path: str) -> list[dict]:
    """The plugin configs of a .conf or .conflist (each with the list's name and cniVersion)."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise StartError(f"--conf {path}: {e}") from None
    if not isinstance(doc, dict):
        raise StartError(f"--conf {path}: not a JSON object")
    if "plugins" in doc:
        plugins = doc.get("plugins")
        if not isinstance(plugins, list):
            raise StartError(f"--conf {path}: plugins is not a list")
        return [{**p, "name": doc.get("name"), "cniVersion": doc.get("cniVersion")} for p in plugins
                if isinstance(p, dict)]
    return [doc]


def services_for(confs: list[str], vxlan_agent: bool = True) -> list[Service]:
    out: list[Service] = []
    dp_state_dirs: list[str] = []
    for path in confs:
        plugins = conf_plugins(path)
        if vxlan_agent and any(p.get("type") == "vxlan" for p in plugins):
            out.append(Service(f"vxlan-agent[{path}]", _vxlan_agent(path)))
        for p in plugins:
            if p.get("type") == "dp-steering":
                d = _dp_state_dir(path, p)
                if d not in dp_state_dirs:
                    dp_state_dirs.append(d)
    if dp_state_dirs and _have("plugins.meta.dp_steering.failopen"):
        out.append(Service("dp-failopen", _dp_watcher(dp_state_dirs)))
    return out


def _have(module: str) -> bool:
    from importlib.util import find_spec
    try:
        return find_spec(module) is not None
    except ImportError:
        return False


def _vxlan_agent(path: str):
    def run() -> int:
        from plugins.main.vxlan.agent import main as agent_main
        return agent_main(["--conf", path, "--log-level", logging.getLevelName(log.getEffectiveLevel()).lower()])
    return run


def _dp_state_dir(path: str, plugin: dict) -> str:
    from libcni_py.errors import CNIError
    from plugins.meta.dp_steering import config as dp_config
    try:
        return dp_config.load(plugin, "DEL").state_dir
    except CNIError as e:
        raise StartError(f"--conf {path}: dp-steering: {e.msg} {e.details or ''}".strip()) from None


def _dp_watcher(state_dirs: list[str]):
    """dp-steering's fail-open watcher (plugins/meta/dp_steering/failopen.py) over these stateDirs:
    failOpen pods go to tap within a second of their dp's death and back inline when it returns."""
    def run() -> int:
        from plugins.meta.dp_steering import failopen
        argv = [a for d in state_dirs for a in ("--state-dir", d)]
        if log.getEffectiveLevel() <= logging.INFO:
            argv.append("-v")
        return failopen.main(argv)
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pycni-node", description=__doc__.splitlines()[0])
    ap.add_argument("--conf", action="append", default=[], metavar="FILE",
                    help="a .conf/.conflist this node's plugins use (repeatable): runs its vxlan agent "
                         "and dp fail-open watcher")
    ap.add_argument("--socket", default=None, help=f"unix socket (default ${P.SOCKET_ENV} or {P.DEFAULT_SOCKET})")
    ap.add_argument("--no-vxlan-agent", action="store_true",
                    help="do not run the vxlan agent for vxlan confs (vxlan-agent.service runs it)")
    ap.add_argument("--max-workers", type=int, default=MAX_WORKERS, help="requests served at once (more: in-process)")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = ap.parse_args(argv)
    if os.environ.get("CNI_COMMAND"):
        # exec'd as a CNI plugin (a conf naming it, a runtime's VERSION probe): never start a daemon there
        sys.stderr.write("pycni-node is the node daemon, not a CNI plugin: run it as a service\n")
        return EXIT_USAGE
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s pycni-node %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(args.log_level.upper())
    log.propagate = False
    if os.geteuid() != 0:
        log.error("pycni-node must run as root (it serves root-only plugin execs)")
        return EXIT_FAILED
    path = args.socket or os.environ.get(P.SOCKET_ENV) or P.DEFAULT_SOCKET
    try:
        services = services_for(args.conf, vxlan_agent=not args.no_vxlan_agent)
        daemon = Daemon(os.path.abspath(path), services, max(1, args.max_workers))
        daemon.debug = args.log_level == "debug"
        daemon.preload()
        daemon.bind()
    except (StartError, OSError) as e:
        log.error("%s", e)
        return EXIT_FAILED
    return daemon.serve()


if __name__ == "__main__":
    sys.exit(main())
