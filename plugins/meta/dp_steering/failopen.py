"""failOpen at runtime: watch the dp of every steered pod and switch pods as it dies and returns.

    python -m plugins.meta.dp_steering.failopen --state-dir DIR [--state-dir DIR]... [--interval S] [-v]

`FailOpenWatcher(state_dirs)` reads the pod records under each stateDir (what ADD wrote) and
groups the steered pods by their dp: (enforcerNetns, vthName, dpSocket). Every `interval`
(0.1 s) it looks at each dp, cheaply, without a CNI call:

- a dp is *there* when an AF_PACKET socket in the enforcer netns is bound to vth
  (/proc/net/packet, as ADD and CHECK judge it: enforcer.reader_on) and, with dpSocket,
  that socket takes a connection (a dead dp's socket file refuses: ECONNREFUSED, the test
  pycni-dp makes too before it replaces a stale one; nothing is sent). A kill -9 closes the
  dp's sockets at once, so either is seen on the next look;
- a dp on dpSocket that is new (the socket refused since the last look, or its file is another
  one: inode and ctime, as a restarted dp binds a new one) is told every steered pod of the
  group again (ctrl_add_srvc_port, ctrl_add_mac, ctrl_cfg_mac in the mode the pod's filters
  have), since a new dp knows no pod and reads no vth until told.

When a dp goes, every pod of the group that wants inline and runs inline
- with failOpen is switched to tap (vex <-> vin directly, a copy to vbr): its traffic flows;
- without it stays inline (fail closed): its unicast traffic is dropped until a dp is back;
and `dp_lost_since` in its record says since when (CHECK and STATUS say so: state.Pod.runtime).
When the dp is there again, a failOpen pod that wants inline and runs tap (failed open here,
or at ADD because no dp was there then) goes back inline, and `dp_lost_since` is cleared.

Every change is made with the `dp-steering mode` code (steering.switch back inline: the dp told
and its reader awaited; steering.refilter to tap: the filters only, nothing told to a dead dp),
under the stateDir's flock, with the pod's record read again under it and the dp's state
confirmed there (gone: a fresh look, which never waits for a dying dp's answer; there: as CHECK
judges it, steering.dp_missing): a watcher never races an ADD, DEL or GC, and a record only
changes while it holds the lock. A pod's wanted mode (`mode`, `mode_by_hand`)
is never changed; a pod set to tap by hand is left alone.

Not detected: a dp that hangs with its sockets open (SIGSTOP, a livelock): its pods look served.
"""
from __future__ import annotations

import errno
import os
import socket
import sys
import threading
import time
from contextlib import ExitStack, contextmanager

from libcni_py.errors import CNIError
from plugins.pkg import link
from plugins.pkg.log import get_logger

from . import dpctl, enforcer, state, steering

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

INTERVAL = 0.1            # s between two looks at every dp
RESCAN = 1.0              # s between two reads of the records (and at once when a dp changes)
RETRY = 1.0               # s before a pod whose switch failed is tried again
log = get_logger("pycni.dp-steering.failopen")


class _Dp:
    """One dp as the pods' records name it, and what the watcher knows of it."""

    def __init__(self, enforcer_ns: str, vth: str, dp_socket: str):
        self.enforcer, self.vth, self.dp_socket = enforcer_ns, vth, dp_socket
        self.vth_index: int | None = None
        self.present: bool | None = None   # None: not looked at yet
        self.told: tuple | None = None     # (inode, ctime) of the dpSocket file whose dp was told the pods
        self.tell_after = 0.0              # monotonic time before which telling is not retried
        self.pods: list[tuple[str, state.Pod]] = []     # (stateDir, record) as last read
        self.unknown = ""                  # why it cannot be looked at (logged once)

    def __repr__(self) -> str:
        return f"dp on {self.vth} in {self.enforcer}" + (f" ({self.dp_socket})" if self.dp_socket else "")


class FailOpenWatcher:
    """Keep failOpen true while pods run: see the module doc. `poll_once()` looks once and acts,
    returning what it did; `run(stop_event)` does that every `interval` until the event is set.
    Not thread-safe: one thread runs it (it may share the process with CNI verbs: the locks
    are flocks on the stateDir's lock file, which exclude threads of one process too)."""

    def __init__(self, state_dirs: Iterable[str], interval: float = INTERVAL, rescan: float = RESCAN):
        from plugins.pkg.paths import check_dir
        self.state_dirs = [check_dir(d, "stateDir") for d in dict.fromkeys(state_dirs)]
        self.interval, self.rescan = interval, rescan
        self.dps: dict[tuple[str, str, str], _Dp] = {}
        self.next_scan = 0.0
        self.retry_at: dict[tuple[str, str], float] = {}   # (stateDir, pod key) -> monotonic time
        self.said: dict[tuple[str, str], str] = {}         # the last error logged per pod

    # -- the loop
    def run(self, stop_event: threading.Event) -> None:
        """poll_once() every `interval` until `stop_event` is set. A bug in one look is logged,
        never the end of the watcher."""
        log.info("watching the dps of the pods steered under %s", ", ".join(self.state_dirs))
        last, again = "", 0.0
        while not stop_event.is_set():
            try:
                self.poll_once()
            except Exception as e:  # noqa: BLE001 - a daemon's thread: log it (once a minute) and look again
                if repr(e) != last or time.monotonic() >= again:
                    import logging
                    logging.getLogger("pycni.dp-steering.failopen").exception("fail-open watcher: look failed")
                    last, again = repr(e), time.monotonic() + 60
            stop_event.wait(self.interval)

    def poll_once(self) -> list[dict]:
        """Look at every dp once and switch the pods that need it. Returns one entry per change:
        {"stateDir", "pod" (containerID/ifname), "action": "failed-open" | "inline" | "fail-closed"
        | "recovered" | "told", "time" (time.time())}."""
        now = time.monotonic()
        if now >= self.next_scan:
            self._scan()
        done: list[dict] = []
        rescanned = False
        for key in list(self.dps):
            dp = self.dps.get(key)
            present = None if dp is None else self._look(dp, done)
            if dp is not None and present is not None and dp.present is not None and present != dp.present \
                    and not rescanned:         # a change: the newest records (its last pod may be gone)
                self._scan()
                rescanned = True
                dp = self.dps.get(key)
                present = None if dp is None else self._look(dp, done)
            if dp is None or present is None:
                continue
            if present != dp.present:
                if dp.present is None:
                    log.info("%r is %s (%d steered pod(s))", dp, "there" if present else "not there", len(dp.pods))
                else:
                    log.warning("%r is %s", dp, "back" if present else "gone")
                dp.present = present
            if any(_needs(pod, present) for _, pod in dp.pods):
                done += self._act(dp, present)
        return done

    # -- the records
    def _scan(self) -> None:
        """Read every record (no lock: records are replaced atomically) and group the steered pods."""
        self.next_scan = time.monotonic() + self.rescan
        groups: dict[tuple[str, str, str], list[tuple[str, state.Pod]]] = {}
        for sd in self.state_dirs:
            try:
                pods = state.all_pods(sd)
            except OSError as e:
                log.error("cannot read the records under %s: %s", sd, e)
                continue
            for pod in pods:
                if pod.phase == "done" and pod.installed != "off":
                    groups.setdefault((pod.enforcer, pod.vth, pod.dp_socket), []).append((sd, pod))
        for key in list(self.dps):
            if key not in groups:
                del self.dps[key]
        for key, members in groups.items():
            dp = self.dps.get(key)
            if dp is None:
                dp = self.dps[key] = _Dp(*key)
            dp.pods = members
            dp.vth_index = self._vth_index(dp)

    def _vth_index(self, dp: _Dp) -> int | None:
        try:
            with link.open_rtnl(dp.enforcer) as rt:
                index = link.index_of(rt, dp.vth)
        except OSError as e:
            self._unknown(dp, f"enforcer netns {dp.enforcer} cannot be entered ({e})")
            return None
        if index is None:
            self._unknown(dp, f"{dp.vth} is missing in {dp.enforcer}")
        return index

    def _unknown(self, dp: _Dp, why: str) -> None:
        if why != dp.unknown:
            log.error("%r cannot be watched: %s; its pods are left as they are", dp, why)
            dp.unknown = why

    # -- the dp
    def _look(self, dp: _Dp, done: list[dict]) -> bool | None:
        """Is the dp there (None: cannot tell)? A new dp on dpSocket is told the pods first."""
        if dp.vth_index is None:
            return None
        answers = True
        if dp.dp_socket:
            ident = _socket_ident(dp.dp_socket)
            answers = ident is not None and _connectable(dp.dp_socket)
            if ident is None or not answers:
                dp.told = None                    # whatever answers next is told the pods
            elif ident != dp.told and time.monotonic() >= dp.tell_after:
                done += self._tell(dp, ident)
        try:
            reads = enforcer.reader_on(dp.enforcer, dp.vth_index)
        except OSError as e:
            self._unknown(dp, f"enforcer netns {dp.enforcer} cannot be entered ({e})")
            return None
        dp.unknown = ""
        return answers and reads

    @staticmethod
    def _probe(dp: _Dp) -> bool:
        """A look, afresh (vth by name): a reader on vth and, with dpSocket, a socket that takes
        a connection."""
        if dp.dp_socket and not _connectable(dp.dp_socket):
            return False
        with link.open_rtnl(dp.enforcer) as rt:
            index = link.index_of(rt, dp.vth)
        return index is not None and enforcer.reader_on(dp.enforcer, index)

    def _tell(self, dp: _Dp, ident: tuple) -> list[dict]:
        """A dp on dpSocket we have not told yet (a new one): every steered pod of the group, in
        the mode its filters have (a failed-open pod in tap, so the dp only counts its copies
        until it is switched back). Under the lock: a DEL's ctrl_del_mac is never undone."""
        done: list[dict] = []
        for sd in sorted({sd for sd, _ in dp.pods}):
            with self._locked(sd) as held:
                for pod in _fresh(sd, dp) if held else []:
                    try:
                        took = dpctl.add_port(dp.dp_socket, mac=pod.mac, ucmac=pod.ucmac, iface=pod.vth,
                                              mode="tap" if pod.installed == "tap" else "inline",
                                              vex=pod.vex, vin=pod.vin, name=pod.name)
                    except dpctl.DpError as e:
                        log.error("the dp on %s refused %s: %s", dp.dp_socket, pod.key, e)
                        continue
                    if not took:                      # it went again, or does not answer: later
                        dp.tell_after = time.monotonic() + RETRY
                        return done
                    done.append(_did(sd, pod, "told"))
        log.info("told the dp on %s (new socket) the %d pod(s) steered to %s", dp.dp_socket, len(done), dp.vth)
        dp.told = ident
        return done

    # -- the pods
    def _act(self, dp: _Dp, present: bool) -> list[dict]:
        """Switch the pods of `dp` that need it, one stateDir (one lock) at a time. The dp's
        presence is confirmed under the lock as CHECK judges it, once per stateDir."""
        done: list[dict] = []
        now = time.monotonic()
        for sd in sorted({sd for sd, pod in dp.pods if _needs(pod, present)}):
            with self._locked(sd) as held:
                pods = [p for p in _fresh(sd, dp) if held and _needs(p, present)
                        and self.retry_at.get((sd, p.key), 0.0) <= now]
                if not pods:
                    continue
                if self._confirmed(dp) != present:
                    continue                      # it changed again (or cannot tell): the next look decides
                for pod in pods:
                    action = self._switch(sd, pod, present)
                    if action:
                        done.append(_did(sd, pod, action))
        if done:
            self._scan()                          # our own changes, read back
        return done

    def _confirmed(self, dp: _Dp) -> bool | None:
        """Is the dp there, asked again under the lock? Gone: no reader on vth or a socket that
        refuses, as seen by a look (a dying dp may keep its control socket a moment after its
        reader, and never answers: nothing waits for it). There: as CHECK judges it, an answer on
        dpSocket and a reader on vth (steering.dp_missing)."""
        try:
            if not self._probe(dp):
                return False
            return steering.dp_missing(dp.enforcer, dp.vth, dp.dp_socket, need_vth=True) is None
        except (OSError, CNIError) as e:
            log.error("%r: cannot tell whether it is there: %s", dp, e)
            return None

    def _switch(self, sd: str, pod: state.Pod, present: bool) -> str:
        """One pod, under its stateDir's lock: the action taken, or "" (failed: retried later)."""
        key = (sd, pod.key)
        try:
            if present and pod.installed == "tap" and pod.mode == "inline" and pod.fail_open:
                steering.switch(pod, "inline")    # tells the dp it is inline, then the inline filters
                action = "inline" if pod.installed == "inline" else ""
            elif present:
                action = "recovered"              # a fail-closed pod: the dp is back
            elif pod.fail_open:
                steering.refilter(pod, "tap")     # still wanted inline; nothing to tell a dead dp
                action = "failed-open"
            else:
                action = "fail-closed"
        except (CNIError, OSError, dpctl.DpError) as e:
            msg = f"{e.msg} ({e.details})" if isinstance(e, CNIError) and e.details else str(e)
            if self.said.get(key) != msg:
                log.error("%s: cannot switch %s to %s: %s (retried every %.0f s)", sd, pod.key,
                          "inline" if present else "tap", msg, RETRY)
                self.said[key] = msg
            self.retry_at[key] = time.monotonic() + RETRY
            return ""
        self.said.pop(key, None)
        self.retry_at.pop(key, None)
        if present:
            pod.dp_lost_since = 0.0 if action else pod.dp_lost_since
        elif not pod.dp_lost_since:
            pod.dp_lost_since = time.time()
        state.save_pod(sd, pod)
        if action == "failed-open":
            log.warning("%s: its dp is gone: failed open (tap): its traffic bypasses the dp", pod.key)
        elif action == "fail-closed":
            log.error("%s: its dp is gone and it has no failOpen: its unicast traffic is dropped "
                      "until a dp reads %s (fail closed)", pod.key, pod.vth)
        elif action:
            log.warning("%s: its dp is back: %s", pod.key, "inline again" if action == "inline" else "served again")
        return action

    @contextmanager
    def _locked(self, sd: str):
        """state.lock(sd), yielding False (said once) when the lock file cannot be opened."""
        stack = ExitStack()
        try:
            stack.enter_context(state.lock(sd))
        except OSError as e:
            if self.said.get((sd, "")) != str(e):
                log.error("%s: cannot take the lock: %s", sd, e)
                self.said[(sd, "")] = str(e)
            yield False
            return
        self.said.pop((sd, ""), None)
        with stack:
            yield True

    def close(self) -> None:
        self.dps.clear()


def _needs(pod: state.Pod, present: bool) -> bool:
    """Does the pod need the watcher, with its dp there (present) or not?"""
    if pod.phase != "done" or pod.installed == "off":
        return False
    if present:
        return bool(pod.dp_lost_since) or (pod.mode == "inline" and pod.installed == "tap" and pod.fail_open)
    return pod.mode == "inline" and pod.installed == "inline" and (pod.fail_open or not pod.dp_lost_since)


def _fresh(sd: str, dp: _Dp) -> list[state.Pod]:
    """The records of dp's pods under stateDir `sd`, read again (call with its lock held)."""
    out = []
    for have_sd, old in dp.pods:
        if have_sd != sd:
            continue
        pod = state.load_pod_quietly(sd, old.container_id, old.ifname)
        if pod is not None and pod.phase == "done" and pod.installed != "off" and \
                (pod.enforcer, pod.vth, pod.dp_socket) == (dp.enforcer, dp.vth, dp.dp_socket):
            out.append(pod)
    return out


def _did(sd: str, pod: state.Pod, action: str) -> dict:
    return {"stateDir": sd, "pod": pod.key, "action": action, "time": time.time()}


def _socket_ident(path: str) -> tuple | None:
    """Which socket file is at `path` (a new dp binds a new one; its inode may be the old one's)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_ctime_ns)


def _connectable(path: str) -> bool:
    """Does a datagram socket at `path` take a connection (its dp is alive)? A dead dp's socket
    file refuses (ECONNREFUSED); no request is sent, no answer waited for."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTDIR):
            log.error("dpSocket %s: %s", path, e)
        return False
    finally:
        s.close()
    return True


def main(argv: list[str] | None = None) -> int:
    import argparse
    import logging
    import signal
    ap = argparse.ArgumentParser(prog="python -m plugins.meta.dp_steering.failopen",
                                 description="keep dp-steering's failOpen true while pods run")
    ap.add_argument("--state-dir", action="append", required=True, metavar="DIR",
                    help="a dp-steering stateDir (repeatable)")
    ap.add_argument("--interval", type=float, default=INTERVAL, metavar="S", help="seconds between two looks")
    ap.add_argument("-v", "--verbose", action="count", default=0)
    opts = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(opts.verbose, 2), stream=sys.stderr,
                        format="dp-steering failopen: %(asctime)s %(levelname)s %(message)s")
    if not 0.01 <= opts.interval <= 10:
        ap.error("--interval must be between 0.01 and 10 seconds")
    try:
        watcher = FailOpenWatcher(opts.state_dir, interval=opts.interval)
    except CNIError as e:
        ap.error(f"{e.msg}: {e.details}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        watcher.run(stop)
    finally:
        watcher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
