"""Client of the reference dp's control socket (plugins/dp/ctrl.py), for dp-steering.

Every call opens its own datagram socket bound to a path (the dp answers to the sender's
bound address; abstract addresses would not cross network namespaces): a name of this
process and thread beside the dp's socket (the dp sees that directory whatever its mount
namespace; a call killed mid-way leaves one socket file there, which the next call of a
process with the same pid reuses), or a private directory in $TMPDIR when that path would
be too long for a socket address. It sends the messages one by one and waits for each reply within what is
left of `timeout`. A dp that is not there is detected at once (no socket file, or
connection refused) or after `timeout` (alive but not answering): the call returns
False / None so the caller can fail open. A dp that answers with an error raises DpError.
"""
from __future__ import annotations

import _thread
import json
import os
import socket
import time

DEFAULT_TIMEOUT = 1.0
MAX_REPLY = 1 << 20
MAX_SOCKET_PATH = 107       # sun_path holds 108 bytes with the NUL


class DpError(RuntimeError):
    """The dp answered a request with an error."""


class _Client:
    def __init__(self, sock_path: str, timeout: float):
        self.deadline = time.monotonic() + timeout
        self.dir = ""
        self.path = os.path.join(os.path.dirname(sock_path), f".dpctl-{os.getpid()}-{_thread.get_ident()}")
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            self.dir = _private_dir()
            self.path = os.path.join(self.dir, "c")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if not self.dir:
                try:
                    os.unlink(self.path)     # left by a killed call of an earlier process with this pid
                except FileNotFoundError:
                    pass
            mask = os.umask(0o177)           # only root sends to it, as to the dp's own socket
            try:
                self.sock.bind(self.path)
            finally:
                os.umask(mask)
            self.sock.connect(sock_path)
        except OSError:              # no dp there: nothing of ours stays behind either
            self.close()
            raise

    def call(self, name: str, params: dict) -> dict:
        # The dp's queue holds only a few datagrams (net.unix.max_dgram_qlen): a hung dp blocks the send
        # too, so the deadline covers it as well as the answer.
        self.sock.settimeout(max(self.deadline - time.monotonic(), 0.001))
        self.sock.send(json.dumps({name: params}).encode())
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to {name}")
            self.sock.settimeout(left)
            try:
                reply = json.loads(self.sock.recv(MAX_REPLY))
            except ValueError:
                raise DpError(f"{name}: the dp answered something that is not JSON") from None
            if not isinstance(reply, dict):
                raise DpError(f"{name}: the dp answered {type(reply).__name__}, not an object")
            if reply.get("msg") == name:
                break
        if not reply.get("ok"):
            raise DpError(f"{name}: {reply.get('error', 'failed')}")
        return reply

    def close(self) -> None:
        self.sock.close()
        for remove, path in ((os.unlink, self.path), (os.rmdir, self.dir)):
            try:
                if path:
                    remove(path)
            except OSError:
                pass


def _private_dir() -> str:
    """A new directory only we can enter, in $TMPDIR or /tmp, as tempfile.mkdtemp makes
    (importing tempfile costs ~4 ms of an exec)."""
    path = os.path.join(os.environ.get("TMPDIR") or "/tmp", "pycni-dpctl-" + os.urandom(6).hex())
    os.mkdir(path, 0o700)
    return path


def _session(sock_path: str, timeout: float, calls: list[tuple[str, dict]]) -> list | None:
    """Replies to calls in order, or None when the dp is not there / did not answer."""
    try:
        client = _Client(sock_path, timeout)
    except OSError:                  # no such socket, refused: no dp behind that path
        return None
    try:
        return [client.call(name, params) for name, params in calls]
    except (OSError, ValueError):    # timeout, dp died in between, garbage reply
        return None
    finally:
        client.close()


def ping(sock_path: str, timeout: float = DEFAULT_TIMEOUT) -> dict | None:
    """The dp's keep-alive answer ({"ports": [open service ports], "pid": ...}) or None."""
    replies = _session(sock_path, timeout, [("ctrl_keep_alive", {"seq_num": 1})])
    return replies[0] if replies else None


def add_port(sock_path: str, *, mac: str, ucmac: str, iface: str = "vth", mode: str = "inline",
             vex: str = "", vin: str = "", name: str = "", jumboframe: bool = False,
             timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Tell the dp about one pod port: service port `iface`, pod `mac` seen as `ucmac`.

    mode "inline" makes the dp reflect the pod's allowed frames, "tap" only count them.
    True when the dp took it, False when no dp answered.
    """
    if mode not in ("inline", "tap"):
        raise ValueError(f"mode must be inline or tap, not {mode!r}")
    bcmac = "ff:ff:ff:00:" + ucmac.split(":", 4)[4]  # NeuVector's per-pod broadcast MAC
    replies = _session(sock_path, timeout, [
        ("ctrl_add_srvc_port", {"iface": iface, "jumboframe": jumboframe}),
        ("ctrl_add_mac", {"iface": iface, "mac": mac, "ucmac": ucmac, "bcmac": bcmac,
                          "oldmac": "", "pmac": "", "pips": None, "name": name,
                          "vex_iface": vex, "vin_iface": vin}),
        ("ctrl_cfg_mac", {"tap": mode == "tap", "macs": [mac]}),
    ])
    return replies is not None


def set_mode(sock_path: str, mac: str, mode: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Switch a registered pod between inline and tap. False: no dp, or it lost the pod."""
    if mode not in ("inline", "tap"):
        raise ValueError(f"mode must be inline or tap, not {mode!r}")
    replies = _session(sock_path, timeout,
                       [("ctrl_cfg_mac", {"tap": mode == "tap", "macs": [mac]})])
    return replies is not None and not replies[0]["missing"]


def del_port(sock_path: str, mac: str, timeout: float = DEFAULT_TIMEOUT) -> dict | None:
    """Forget a pod (idempotent). Its final counters, {} if the dp did not know it, or
    None when no dp answered."""
    replies = _session(sock_path, timeout, [("ctrl_del_mac", {"mac": mac})])
    if replies is None:
        return None
    return replies[0]["pod"] or {}


def del_srvc_port(sock_path: str, iface: str = "vth", timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Stop reading a service port (when the shared vbr/vth pair goes). True if answered."""
    return _session(sock_path, timeout, [("ctrl_del_srvc_port", {"iface": iface})]) is not None


def stats(sock_path: str, macs: list[str] | None = None,
          timeout: float = DEFAULT_TIMEOUT) -> dict | None:
    """{"pods": {mac: {"allowed", "denied", ...}}, "ports", "totals", "policy"} or None."""
    params = {} if macs is None else {"macs": macs}
    replies = _session(sock_path, timeout, [("ctrl_stats", params)])
    return replies[0] if replies else None


def reload_policy(sock_path: str, policy: dict | None = None,
                  timeout: float = DEFAULT_TIMEOUT) -> dict | None:
    """Reread the dp's --policy file, or install `policy` (a policy document) instead.
    The new policy summary, or None when no dp answered; DpError if it is invalid."""
    params = {} if policy is None else {"policy": policy}
    replies = _session(sock_path, timeout, [("ctrl_reload_policy", params)])
    return replies[0]["policy"] if replies else None
