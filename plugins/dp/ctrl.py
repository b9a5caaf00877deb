"""The dp's control socket: JSON over a unix datagram socket, NeuVector's dp messages.

A request is one JSON object with exactly one key, the message name, whose value is an
object of parameters: {"ctrl_add_mac": {"iface": "vth", "mac": "...", "ucmac": "..."}}.
Every request gets one reply, sent to the address the sender's socket is bound to (an
unbound sender gets none, as NeuVector's dp does): {"ok": true, "msg": NAME, ...}
or {"ok": false, "msg": NAME, "error": "..."}. Bad input never stops the dp.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket

from libcni_py.errors import CNIError
from plugins.dp.datapath import Datapath, Endpoint, mac_bytes
from plugins.dp.policy import PolicyError, compile_policy
from plugins.pkg.names import check_ifname

MAX_MSG = 1 << 16
log = logging.getLogger("pycni-dp")


class CtrlError(ValueError):
    """A request the dp cannot carry out; the text goes back in the reply."""


class Control:
    """Dispatches control messages to the datapath. `reload_policy()` rereads the file."""

    def __init__(self, dp: Datapath, reload_policy):
        self.dp = dp
        self.reload_policy = reload_policy
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

    def handle(self, data: bytes) -> dict:
        """The reply to one request datagram."""
        try:
            req = json.loads(data)
        except ValueError as e:      # also bad UTF-8
            return {"ok": False, "msg": "", "error": f"bad JSON: {e}"}
        if not isinstance(req, dict) or len(req) != 1:
            return {"ok": False, "msg": "",
                    "error": "a request is an object with exactly one message key"}
        name, params = next(iter(req.items()))
        handler = self.handlers.get(name)
        if handler is None:
            return {"ok": False, "msg": name, "error": f"unknown message {name!r}"}
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return {"ok": False, "msg": name, "error": "parameters must be an object"}
        try:
            extra = handler(params)
        except (CtrlError, PolicyError) as e:
            return {"ok": False, "msg": name, "error": str(e)}
        log.debug("%s %s", name, params)
        return {"ok": True, "msg": name, **extra}

    # -- messages
    def keep_alive(self, p: dict) -> dict:
        return {"seq_num": _int(p, "seq_num", 0), "pid": os.getpid(),
                "ports": sorted(port.iface for port in self.dp.ports.values()),
                "wanted": sorted(self.dp.wanted)}

    def add_srvc_port(self, p: dict) -> dict:
        iface = _iface(p, "iface")
        self.dp.want_port(iface, _bool(p, "tap", False), _bool(p, "jumboframe", False))
        return {"open": any(port.iface == iface for port in self.dp.ports.values())}

    def del_srvc_port(self, p: dict) -> dict:
        return {"found": self.dp.unwant_port(_iface(p, "iface"))}

    def add_mac(self, p: dict) -> dict:
        mac = _mac(p, "mac")
        oldmac = _mac(p, "oldmac", required=False)
        old = self.dp.endpoints.get(oldmac or mac)
        tap = _bool(p, "tap", old.tap if old else True)    # NeuVector: tap until cfg_mac
        ep = Endpoint(mac, _mac(p, "ucmac", required=False), _mac(p, "bcmac", required=False),
                      iface=_iface(p, "iface", required=False), name=_str(p, "name"), tap=tap)
        ep.vex = _iface(p, "vex_iface", required=False)
        ep.vin = _iface(p, "vin_iface", required=False)
        if ep.ucmac and ep.ucmac[0] & 1:
            raise CtrlError("ucmac: must be a unicast MAC")
        _str(p, "pmac")                                     # proxymesh peers: not used here
        self.dp.add_endpoint(ep, oldmac)
        return {"pod": ep.stats()}

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


class Server:
    """The bound datagram socket. The socket file is replaced if stale, removed on close."""

    def __init__(self, path: str, control: Control):
        self.path = path
        self.control = control
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        _remove_stale(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o077)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve(self) -> None:
        """Answer every request waiting in the queue."""
        while True:
            try:
                data, addr = self.sock.recvfrom(MAX_MSG)
            except (BlockingIOError, InterruptedError):
                return
            reply = self.control.handle(data)
            if not reply["ok"]:
                log.warning("control: %s", reply["error"])
            if addr:
                self.reply(reply, addr)

    def reply(self, reply: dict, addr: str) -> None:
        data = json.dumps(reply).encode()
        try:
            try:
                self.sock.sendto(data, addr)
            except OSError as e:
                if e.errno != errno.EMSGSIZE:
                    raise
                self.sock.sendto(json.dumps({
                    "ok": False, "msg": reply.get("msg", ""),
                    "error": f"reply of {len(data)} bytes too large; ask for fewer macs"}
                ).encode(), addr)
        except OSError as e:             # the client went away or is not listening
            log.info("control: cannot reply to %s: %s", addr, e)

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


def _mac(p: dict, key: str, required: bool = True) -> bytes | None:
    v = p.get(key)
    if not v and not required:
        return None
    if not isinstance(v, str):
        raise CtrlError(f"{key}: must be a MAC address string")
    try:
        return mac_bytes(v.lower())
    except ValueError as e:
        raise CtrlError(f"{key}: {e}") from None
