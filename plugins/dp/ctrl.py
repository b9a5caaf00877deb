"""The dp's control socket: JSON over a unix datagram socket, NeuVector's dp messages.

A request is one JSON object with exactly one key, the message name, whose value is an
object of parameters: {"ctrl_add_mac": {"iface": "vth", "mac": "...", "ucmac": "..."}}.
Every request gets one reply, sent to the address the sender's socket is bound to (the
kernel binds an unbound sender to an abstract address, since we ask for its credentials):
{"ok": true, "msg": NAME, ...} or {"ok": false, "msg": NAME, "error": "..."}.

Bad input never stops the dp, and no client can stop it serving the others:
- a request over MAX_MSG bytes, nested deeper than MAX_DEPTH, not JSON (1e999, NaN,
  bad UTF-8), of a wrong type or unknown gets an error reply; an exception in a handler
  is an error reply too (and a logged bug), never the end of the process;
- only root may send (the socket file is 0600 and each datagram's SCM_CREDENTIALS
  must say uid 0);
- what one client and all clients may register is capped (MAX_PODS, MAX_PODS_PER_CLIENT,
  MAX_SRVC_PORTS): a request over a cap gets an error reply naming the limit;
- replies are sent without blocking. A datagram we send stays charged to our socket's
  send buffer until the client reads it, so one client that sends and never reads would
  fill that buffer and silence the dp for everyone (`Clients` below): a client that has
  more than MAX_UNREAD bytes of replies it has not read is stalled, its requests dropped,
  until it reads them all or closes.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import struct
import termios
import time

from libcni_py import records
from libcni_py.errors import CNIError
from plugins.dp.datapath import Datapath, Endpoint, mac_bytes
from plugins.dp.policy import PolicyError, compile_policy
from plugins.pkg.names import check_ifname

MAX_MSG = 1 << 16             # bytes of one request
MAX_DEPTH = 16                # nesting of one request (the deepest valid one has 6)
MAX_REPLY = 192 << 10         # bytes of one reply (dpctl reads up to 1 MiB)
MAX_PODS = 4096               # registered pods (ctrl_add_mac), all clients together
MAX_PODS_PER_CLIENT = 1024    # registered by one client address
MAX_SRVC_PORTS = 64           # service ports asked for (ctrl_add_srvc_port)
MAX_NAME = 253                # characters of a pod name
MAX_UNREAD = 256 << 10        # estimated bytes of replies one client may leave unread
SLACK = 256 << 10             # replies in flight to clients that do read
SNDBUF = 8 << 20              # our send buffer (the kernel doubles it)
MAX_CLIENTS = 1024            # addresses whose unread replies we track
BURST = 64                    # requests served before the frames get their turn
WARNINGS = 10                 # error replies logged per second
SO_SNDBUFFORCE = 32
_UCRED = struct.Struct("iII")   # pid, uid, gid
log = logging.getLogger("pycni-dp")


class CtrlError(ValueError):
    """A request the dp cannot carry out; the text goes back in the reply."""


class Control:
    """Dispatches control messages to the datapath. `reload_policy()` rereads the file."""

    def __init__(self, dp: Datapath, reload_policy):
        self.dp = dp
        self.reload_policy = reload_policy
        self.client = None              # the address of the request being handled
        self.handlers = {
            "ctrl_keep_alive": self.keep_alive,
            "ctrl_add_srvc_port": self.add_srvc_port,
            "ctrl_del_srvc_port": self.del_srvc_port,
            "ctrl_add_mac": self.add_mac,
            "ctrl_del_mac": self.del_mac,
            "ctrl_cfg_mac": self.cfg_mac,
            "ctrl_cfg_internal_net": self.cfg_internal_net,
            "ctrl_stats": self.stats,
            "ctrl_reload_policy": self.reload,
        }

    def handle(self, data: bytes, client=None) -> dict:
        """The reply to one request datagram from `client` (its address, or None).
        Never raises: a bug in a handler is an error reply and a logged traceback."""
        try:
            req = records.loads(data)   # deep nesting, 1e999, NaN, bad UTF-8: ValueError
        except ValueError as e:
            return {"ok": False, "msg": "", "error": f"bad JSON: {e}"}
        if not isinstance(req, dict) or len(req) != 1:
            return {"ok": False, "msg": "",
                    "error": "a request is an object with exactly one message key"}
        name, params = next(iter(req.items()))
        handler = self.handlers.get(name)
        if handler is None:
            shown = name if len(name) <= 64 else name[:64] + "..."
            return {"ok": False, "msg": shown, "error": f"unknown message {shown!r}"}
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return {"ok": False, "msg": name, "error": "parameters must be an object"}
        if _too_deep(params, MAX_DEPTH - 1):
            return {"ok": False, "msg": name,
                    "error": f"request nested deeper than {MAX_DEPTH} levels"}
        self.client = client
        try:
            extra = handler(params)
        except (CtrlError, PolicyError) as e:
            return {"ok": False, "msg": name, "error": str(e)}
        except Exception as e:          # a bug of ours: answered, logged, never fatal
            log.exception("control: %s failed", name)
            return {"ok": False, "msg": name,
                    "error": f"internal error of pycni-dp ({type(e).__name__}); see its log"}
        finally:
            self.client = None
        log.debug("%s from %s", name, client)
        return {"ok": True, "msg": name, **extra}

    # -- messages
    def keep_alive(self, p: dict) -> dict:
        return {"seq_num": _int(p, "seq_num", 0), "pid": os.getpid(),
                "ports": sorted(port.iface for port in self.dp.ports.values()),
                "wanted": sorted(self.dp.wanted), "registered": self.dp.registered,
                "learned": self.dp.learned}

    def add_srvc_port(self, p: dict) -> dict:
        iface = _iface(p, "iface")
        if iface not in self.dp.wanted and len(self.dp.wanted) >= MAX_SRVC_PORTS:
            raise CtrlError(f"{len(self.dp.wanted)} service ports already, the limit is "
                            f"{MAX_SRVC_PORTS}: remove unused ones with ctrl_del_srvc_port")
        self.dp.want_port(iface, _bool(p, "tap", False), _bool(p, "jumboframe", False))
        return {"open": any(port.iface == iface for port in self.dp.ports.values())}

    def del_srvc_port(self, p: dict) -> dict:
        return {"found": self.dp.unwant_port(_iface(p, "iface"))}

    def add_mac(self, p: dict) -> dict:
        mac = _mac(p, "mac")
        oldmac = _opt_mac(p, "oldmac")
        old = self.dp.endpoints.get(oldmac or mac)
        tap = _bool(p, "tap", old.tap if old else True)    # NeuVector: tap until cfg_mac
        ep = Endpoint(mac, _opt_mac(p, "ucmac"), _opt_mac(p, "bcmac"),
                      iface=_iface(p, "iface", required=False), name=_str(p, "name"), tap=tap)
        ep.vex = _iface(p, "vex_iface", required=False)
        ep.vin = _iface(p, "vin_iface", required=False)
        if ep.ucmac and ep.ucmac[0] & 1:
            raise CtrlError("ucmac: must be a unicast MAC")
        if len(ep.name) > MAX_NAME:
            raise CtrlError(f"name: longer than {MAX_NAME} characters")
        _str(p, "pmac")                                     # proxymesh peers: not used here
        ep.owner = self.client
        self.check_caps(ep, self.dp.replaced(ep, oldmac))
        self.dp.add_endpoint(ep, oldmac)
        return {"pod": ep.stats()}

    def check_caps(self, ep: Endpoint, replaced: list[Endpoint]) -> None:
        """CtrlError if registering ep (replacing `replaced`) goes over a cap."""
        if not any(not old.learned for old in replaced) and self.dp.registered >= MAX_PODS:
            raise CtrlError(f"{self.dp.registered} pods registered, the limit is {MAX_PODS}: "
                            "delete the pods that are gone with ctrl_del_mac")
        mine = self.dp.by_owner.get(ep.owner, 0)
        if (ep.owner is not None and not any(old.owner == ep.owner for old in replaced)
                and mine >= MAX_PODS_PER_CLIENT):
            raise CtrlError(f"this client registered {mine} pods, the limit per client is "
                            f"{MAX_PODS_PER_CLIENT}: delete pods with ctrl_del_mac or "
                            "register from another socket")

    def del_mac(self, p: dict) -> dict:
        ep = self.dp.del_endpoint(_mac(p, "mac"))
        return {"found": ep is not None, "pod": ep.stats() if ep else None}

    def cfg_mac(self, p: dict) -> dict:
        macs = p.get("macs")
        if not isinstance(macs, list) or not macs:
            raise CtrlError("macs: must be a non-empty list of MAC addresses")
        raw = [_mac({"macs": m}, "macs") for m in macs]
        tap = p.get("tap")
        if tap is not None and not isinstance(tap, bool):
            raise CtrlError("tap: must be true or false")
        missing = []
        for text, mac in zip(macs, raw):
            ep = self.dp.find(mac)
            if ep is None:
                missing.append(text)
            elif tap is not None:
                ep.tap = tap
        return {"missing": missing}

    def cfg_internal_net(self, p: dict) -> dict:
        nets = p.get("subnet_addr", [])
        if not isinstance(nets, list):
            raise CtrlError("subnet_addr: must be a list")
        return {"subnets": len(nets)}       # accepted as NeuVector's agent sends it; no effect

    def stats(self, p: dict) -> dict:
        macs = p.get("macs")
        if macs is None:
            return self.dp.stats()
        if not isinstance(macs, list):
            raise CtrlError("macs: must be a list of MAC addresses")
        return self.dp.stats([_mac({"macs": m}, "macs") for m in macs])

    def reload(self, p: dict) -> dict:
        if "policy" in p:
            self.dp.set_policy(compile_policy(p["policy"], source="control socket"))
        else:
            self.reload_policy()
        return {"policy": self.dp.policy.summary()}


class Clients:
    """Who leaves our replies unread. The kernel charges every datagram we send to our
    socket until its receiver reads it (a receiver connected to us has no queue limit of
    its own), and tells us only the total (SIOCOUTQ). So we count, per client address, an
    over-estimate of what we sent it since the total last showed that it read everything:
    whenever the total is no more than what the stalled clients hold plus SLACK, every
    other client has read its replies and its count starts again. A client over
    MAX_UNREAD is stalled: no replies, its requests dropped, until the total drops to 0
    (it read them) or it closes (a probe that connects to its address is refused)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.owed: dict = {}            # address -> estimated unread bytes
        self.stalled: dict = {}         # address -> its estimate when stalled
        self.dropped = 0                # requests of stalled clients
        self.probed = 0.0

    @staticmethod
    def cost(nbytes: int) -> int:
        """At least what the kernel charges for a datagram of nbytes (measured on 6.x:
        768 bytes for 1, 1280 for 200, 4352 for 2000, 200960 for 192 KiB)."""
        return 2 * nbytes + 1024

    def outq(self) -> int:
        try:
            raw = fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
        except OSError:
            return 0
        return struct.unpack("i", raw)[0]

    def settle(self) -> None:
        """Forget what clients have read; let go of stalled clients that read or closed."""
        if not self.owed and not self.stalled:
            return
        unread = self.outq()
        if unread == 0:
            for addr in self.stalled:
                log.warning("control: client %s read its replies or closed", addr)
            self.owed.clear()
            self.stalled.clear()
            return
        if unread <= sum(self.stalled.values()) + SLACK:
            self.owed.clear()
        now = time.monotonic()
        if self.stalled and now - self.probed >= 1.0:
            self.probed = now
            for addr in [a for a in self.stalled if not _alive(a)]:
                log.warning("control: stalled client %s closed", addr)
                del self.stalled[addr]

    def is_stalled(self, addr) -> bool:
        if addr in self.stalled:
            self.dropped += 1
            return True
        return False

    def sent(self, addr, nbytes: int) -> None:
        owed = self.owed.pop(addr, 0) + self.cost(nbytes)
        if owed > MAX_UNREAD:
            # it may hold more than we counted (what it left unread while the total was
            # within SLACK): it is charged with all unread bytes no stalled client holds
            owed = max(owed, self.outq() - sum(self.stalled.values()))
            log.warning("control: client %s does not read its replies (about %d bytes "
                        "unread); its requests are dropped until it reads or closes",
                        addr, owed)
            self.stalled[addr] = owed
            return
        self.owed[addr] = owed          # re-inserted: the dict is oldest first
        if len(self.owed) > MAX_CLIENTS:
            del self.owed[next(iter(self.owed))]

    def gone(self, addr) -> None:
        self.owed.pop(addr, None)
        self.stalled.pop(addr, None)


def _alive(addr) -> bool:
    """Is a socket still bound at addr? Connecting to it fails with ECONNREFUSED or
    ENOENT when not; EPERM means it lives and is connected to someone else (us)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(addr)
    except OSError as e:
        return e.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTDIR)
    finally:
        probe.close()
    return True


class Server:
    """The bound datagram socket (mode 0600). The socket file is replaced if stale,
    removed on close."""

    def __init__(self, path: str, control: Control):
        self.path = path
        self.control = control
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        _remove_stale(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SNDBUF)
        except OSError:                  # without CAP_NET_ADMIN: up to net.core.wmem_max
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        self.clients = Clients(self.sock)
        self.buf = bytearray(MAX_MSG)
        self.ancbuf = socket.CMSG_SPACE(_UCRED.size)
        self.refused = 0                 # datagrams not from root
        self.window, self.warned, self.suppressed = 0.0, 0, 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve(self) -> None:
        """Answer the requests waiting in the queue (at most BURST of them: the poll loop
        comes back while more wait). Nothing a client sends ends this process."""
        self.clients.settle()
        for _ in range(BURST):
            try:
                n, anc, flags, addr = self.sock.recvmsg_into([self.buf], self.ancbuf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("control: receive failed: %s", e)
                return
            try:
                self.one(n, anc, flags, addr)
            except Exception:           # a bug of ours: logged, the dp goes on
                log.exception("control: request from %s", addr)

    def one(self, n: int, anc: list, flags: int, addr) -> None:
        if addr and self.clients.is_stalled(addr):
            return
        uid = None
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                uid = _UCRED.unpack(data[:_UCRED.size])[1]
        if uid != 0:
            self.refused += 1
            reply = {"ok": False, "msg": "", "error": f"only root may use the control "
                     f"socket (the sender has uid {uid})"}
        elif flags & socket.MSG_TRUNC:
            reply = {"ok": False, "msg": "",
                     "error": f"request over {MAX_MSG} bytes; send less at a time"}
        elif flags & socket.MSG_CTRUNC:  # file descriptors: the kernel closed them for us
            reply = {"ok": False, "msg": "", "error": "a request carries no ancillary data"}
        else:
            reply = self.control.handle(bytes(self.buf[:n]), addr or None)
        if not reply["ok"]:
            self.warn(str(reply["error"]))
        if addr:
            self.reply(reply, addr)

    def warn(self, error: str) -> None:
        """Log an error reply: at most WARNINGS a second, so a client cannot fill the log."""
        now = time.monotonic()
        if now - self.window >= 1.0:
            if self.suppressed:
                log.warning("control: %d more error replies not logged", self.suppressed)
            self.window, self.warned, self.suppressed = now, 0, 0
        if self.warned < WARNINGS:
            self.warned += 1
            log.warning("control: %s", error if len(error) < 300 else error[:300] + "...")
        else:
            self.suppressed += 1

    def reply(self, reply: dict, addr) -> None:
        data = json.dumps(reply).encode()
        if len(data) > MAX_REPLY:
            data = json.dumps({
                "ok": False, "msg": reply.get("msg", ""),
                "error": f"reply of {len(data)} bytes too large (the limit is {MAX_REPLY}); "
                         "ask for fewer macs"}).encode()
        try:
            self.sock.sendto(data, addr)
        except BlockingIOError:          # our send buffer is full: unread replies
            log.warning("control: cannot reply to %s now: %d bytes of replies unread",
                        addr, self.clients.outq())
            return
        except OSError as e:             # the client went away or is not listening
            log.info("control: cannot reply to %s: %s", addr, e)
            self.clients.gone(addr)
            return
        self.clients.sent(addr, len(data))

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _remove_stale(path: str) -> None:
    """Unlink a socket file left by a dead dp; refuse to steal a live dp's socket."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
    except OSError:                      # refused: nobody reads it any more
        os.unlink(path)
    else:
        raise OSError(errno.EADDRINUSE, f"another dp serves {path}")
    finally:
        probe.close()


def _too_deep(obj, depth: int) -> bool:
    """Is obj nested more than `depth` levels (lists and objects)? Iterative: no recursion."""
    todo = [(obj, depth)]
    while todo:
        item, left = todo.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            continue
        if left <= 0:
            return True
        todo.extend((x, left - 1) for x in item)
    return False


def _str(p: dict, key: str) -> str:
    v = p.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise CtrlError(f"{key}: must be a string")
    return v


def _bool(p: dict, key: str, default: bool) -> bool:
    v = p.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise CtrlError(f"{key}: must be true or false")
    return v


def _int(p: dict, key: str, default: int) -> int:
    v = p.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise CtrlError(f"{key}: must be an integer")
    return v


def _iface(p: dict, key: str, required: bool = True) -> str:
    v = _str(p, key)
    if not v and not required:
        return ""
    if not is_ifname(v):
        raise CtrlError(f"{key}: {v!r} is not an interface name")
    return v


def is_ifname(text: str) -> bool:
    """A Linux interface name as plugins.pkg.names checks it (the whole text: no trailing newline)."""
    try:
        check_ifname(text)
    except CNIError:
        return False
    return True


def _opt_mac(p: dict, key: str) -> bytes | None:
    """An optional MAC: absent, null or "" is None."""
    return _mac(p, key) if p.get(key) else None


def _mac(p: dict, key: str) -> bytes:
    v = p.get(key)
    if not isinstance(v, str):
        raise CtrlError(f"{key}: must be a MAC address string")
    try:
        return mac_bytes(v.lower())
    except ValueError as e:
        raise CtrlError(f"{key}: {e}") from None
