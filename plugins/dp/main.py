"""pycni-dp: the reference userspace datapath for dp-steering.

    pycni-dp [--iface IFACE]... [--netns PATH] [--socket PATH] [--policy FILE]
             [--stats FILE] [--stats-interval SEC] [--tap] [--strict] [-v]

Reads every frame of its service port(s) (default none until `--iface` or the
ctrl_add_srvc_port message names one) with AF_PACKET, applies the policy and sends
allowed frames back out unchanged. Signals: SIGHUP rereads --policy, SIGUSR1 writes
--stats now, SIGTERM/SIGINT exit cleanly. Exit status 0 on a signal, 1 on a bad policy
or socket, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import select
import signal
import socket
import sys
import time

from libcni_py import records
from plugins.dp import ctrl, policy
from plugins.dp.datapath import Datapath
from plugins.dp.packet import RECV_BUF

DEFAULT_SOCKET = "/run/pycni/dp.sock"
BURST = 64                          # frames read from one port before polling again
RTMGRP_LINK = 1
log = logging.getLogger("pycni-dp")


def _ifname(text: str) -> str:
    if not ctrl.is_ifname(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an interface name")
    return text


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="pycni-dp", description=__doc__.split("\n\n")[0])
    ap.add_argument("--iface", action="append", default=[], type=_ifname,
                    help="service port to read (repeatable); opened when it appears")
    ap.add_argument("--netns", help="network namespace path to run in (entered by setns)")
    ap.add_argument("--socket", default=DEFAULT_SOCKET, help="control socket path")
    ap.add_argument("--policy", help="JSON policy file (default: allow everything)")
    ap.add_argument("--stats", help="write per-pod counters as JSON to this file")
    ap.add_argument("--stats-interval", type=float, default=1.0, metavar="SEC",
                    help="how often --stats is rewritten when counters changed")
    ap.add_argument("--tap", action="store_true", help="count only, never send back")
    ap.add_argument("--strict", action="store_true",
                    help="drop frames of pods not registered over the control socket")
    ap.add_argument("-v", "--verbose", action="count", default=0)
    return ap.parse_args(argv)


class Daemon:
    def __init__(self, args):
        self.args = args
        self.dp = Datapath(self.load_policy() if args.policy else policy.Policy(),
                           tap=args.tap, learn=not args.strict)
        self.server = ctrl.Server(args.socket, ctrl.Control(self.dp, self.reload))
        self.links = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
        self.links.bind((0, RTMGRP_LINK))
        self.links.setblocking(False)
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_w.setblocking(False)
        self.pending: list[int] = []
        self.running = True
        self.written = None
        self.frame_bugs = 0
        for iface in args.iface:
            self.dp.wanted[iface] = (False, False)
        self.dp.sync_ports()

    def load_policy(self) -> policy.Policy:
        p = policy.load(self.args.policy)
        log.info("policy %s: %d rule(s), default %s", p.source, len(p.rules),
                 "allow" if p.default_allow else "deny")
        return p

    def reload(self) -> None:
        if not self.args.policy:
            raise ctrl.CtrlError("no --policy file to reload")
        self.dp.set_policy(self.load_policy())

    def on_signal(self, signum, _frame) -> None:
        self.pending.append(signum)

    def run(self) -> None:
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for s in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self.on_signal)
        buf = bytearray(RECV_BUF)
        view = memoryview(buf)
        poller = self.make_poller()
        interval = self.args.stats_interval if self.args.stats else None
        due = time.monotonic()
        log.info("ready: control socket %s", self.args.socket)
        while self.running:
            timeout = None if interval is None else max(0.0, due - time.monotonic()) * 1000
            for fd, _ in poller.poll(timeout):
                port = self.dp.ports.get(fd)
                if port is not None:
                    self.read_port(port, buf, view)
                elif fd == self.server.fileno():
                    self.server.serve()
                elif fd == self.links.fileno():
                    self.drain(self.links)
                    self.dp.sync_ports()
                elif fd == self.wake_r.fileno():
                    self.drain(self.wake_r)
                    self.handle_signals()
            if set(self.dp.ports) != self.polled:
                poller = self.make_poller()
            if interval is not None and time.monotonic() >= due:
                self.write_stats()
                due = time.monotonic() + interval

    def make_poller(self):
        poller = select.poll()
        for fd in (self.server.fileno(), self.links.fileno(), self.wake_r.fileno()):
            poller.register(fd, select.POLLIN)
        self.polled = set(self.dp.ports)
        for fd in self.polled:
            poller.register(fd, select.POLLIN)
        return poller

    def read_port(self, port, buf, view) -> None:
        recv = port.sock.recv_into
        handle = self.dp.handle
        for _ in range(BURST):
            try:
                n = recv(buf, 0, socket.MSG_DONTWAIT | socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:       # device gone (ENETDOWN), bad vnet header (EINVAL)
                self.dp.totals["errors"] += 1
                log.info("port %s: %s", port.iface, e)
                if self.dp.sync_ports() or e.errno != errno.EINVAL:
                    return
                continue
            try:
                handle(port, buf, view, n)
            except Exception:           # a frame we did not foresee: a bug, never fatal
                self.dp.totals["errors"] += 1
                self.frame_bugs += 1
                if self.frame_bugs <= 10 or self.frame_bugs % 1000 == 0:
                    log.exception("port %s: frame of %d bytes (%d such)", port.iface, n,
                                  self.frame_bugs)

    @staticmethod
    def drain(sock) -> None:
        try:
            while sock.recv(65536, socket.MSG_DONTWAIT):
                pass
        except OSError:
            pass

    def handle_signals(self) -> None:
        while self.pending:
            signum = self.pending.pop(0)
            if signum == signal.SIGHUP:
                try:
                    self.reload()
                except (policy.PolicyError, ctrl.CtrlError) as e:
                    log.error("policy reload failed, keeping the old one: %s", e)
            elif signum == signal.SIGUSR1:
                self.write_stats(force=True)
            else:
                self.running = False

    def write_stats(self, force: bool = False) -> None:
        if not self.args.stats:
            return
        stats = self.dp.stats()
        snapshot = (stats["totals"], [(p["allowed"], p["denied"]) for p in
                                      stats["pods"].values()], len(stats["ports"]))
        if not force and snapshot == self.written:
            return
        stats["time"] = time.time()
        try:
            records.write(self.args.stats, stats, mode=0o644)   # atomic: readers never see half of it
        except OSError as e:
            log.error("cannot write --stats %s: %s", self.args.stats, e)
            return
        self.written = snapshot

    def close(self) -> None:
        self.write_stats(force=True)
        self.server.close()
        self.dp.close()
        for s in (self.links, self.wake_r, self.wake_w):
            s.close()


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="pycni-dp: %(levelname)s %(message)s", stream=sys.stderr)
    where: contextlib.AbstractContextManager = contextlib.nullcontext()
    if args.netns:
        from plugins.pkg import ns
        where = ns.enter(args.netns)
    try:
        with where:
            try:
                daemon = Daemon(args)
            except (OSError, policy.PolicyError) as e:
                log.error("%s", e)
                return 1
            try:
                daemon.run()
            finally:
                daemon.close()
    except OSError as e:             # the netns path
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
