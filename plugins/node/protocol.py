"""The wire between an exec'd plugin (the thin client) and pycni-node: both sides import it, so it
imports only what the client may (os, sys, _socket: not socket.py, whose enum/selectors cost ~5-10 ms).

One connection per request, on a unix stream socket; every message is a frame (4-byte big-endian
length + payload):

    client -> daemon  HELLO   b"PYCNI-NODE\\0" identity b"\\0" plugin name, with SCM_RIGHTS
                              [netns, mntns, cwd, stderr] (the client's own, opened from /proc/self/ns)
    daemon -> client  b"OK" | b"NO\\0" reason           (NO, EOF or silence: the client runs in-process)
    client -> daemon  REQUEST argv, environment, umask, stdout/stderr encodings (NUL-separated
                              sections, see pack_request), then one frame of stdin
    daemon -> client  REPLY   status (4 bytes, signed) + the plugin's stdout, byte for byte

After OK the request is the daemon's: a reply that does not come whole is CNI code 11 (client.py).
"""

import os
import sys

import _socket

PROTOCOL = 1
VERSION = "0.1.0"                 # pyproject's version (tests/integration/test_node_daemon.py checks)
MAGIC = b"PYCNI-NODE\0"
DEFAULT_SOCKET = "/run/pycni/node.sock"
SOCKET_ENV = "PYCNI_NODE_SOCKET"  # the socket's path; empty or "off": never ask a daemon
HELLO_TIMEOUT = 5.0               # connect + hello; after OK the client waits as long as the plugin runs
MAX_FRAME = 64 << 20
# The plugins a daemon serves (plugins/entrypoints.py names): a plain CNI call (no argument).
SERVED = ("vxlan", "dp-steering", "edgemesh", "pycni-passthrough")
N_FDS = 4                          # netns, mntns, cwd, stderr


def identity() -> str:
    """Who may serve whom: the protocol, the package version and the file the code runs from: the
    PyInstaller bundle's executable, else this module's file. An installed upgrade is another file
    (a daemon still running the old one is another version: plugins run in-process until it
    restarts), and so is another installation of the same version (a wheel's venv next to a
    checkout): each installation's plugins talk only to its own daemon."""
    where = sys.executable if getattr(sys, "frozen", False) else __file__
    try:
        st = os.stat(where)
        return f"{PROTOCOL}/{VERSION}/{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}"
    except OSError:
        return f"{PROTOCOL}/{VERSION}/?"


def socket_path(environ=None) -> str:
    env = os.environ if environ is None else environ
    return env.get(SOCKET_ENV, DEFAULT_SOCKET)


class ProtocolError(Exception):
    """The peer broke the protocol or went away inside a message."""


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def recv_exact(sock, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ProtocolError(f"connection closed after {got} of {n} bytes")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def recv_frame(sock) -> bytes:
    n = int.from_bytes(recv_exact(sock, 4), "big")
    if n > MAX_FRAME:
        raise ProtocolError(f"frame of {n} bytes")
    return recv_exact(sock, n)


def send_all(sock, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = sock.send(view)
        view = view[sent:]


def pack_fds(fds) -> list:
    return [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, b"".join(fd.to_bytes(4, sys.byteorder, signed=True)
                                                             for fd in fds))]


def unpack_fds(ancdata) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds += [int.from_bytes(data[i:i + 4], sys.byteorder, signed=True) for i in range(0, usable, 4)]
    return fds


def peer_uid(sock) -> int:
    """SO_PEERCRED: (pid, uid, gid) of the process at the other end when it connected (or listened)."""
    raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(raw[4:8], sys.byteorder, signed=False)


def peer_pid(sock) -> int:
    raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(raw[0:4], sys.byteorder, signed=True)


def pack_request(argv: list[bytes], environ: dict, umask: int, encodings: list[bytes]) -> bytes:
    """NUL-terminated items, counts in decimal ASCII: argc, argv..., envc, K=V..., umask, stdout
    encoding, stdout errors, stderr encoding, stderr errors (what the plugin's sys.stdout/err use)."""
    items = [str(len(argv)).encode(), *argv, str(len(environ)).encode(),
             *(k + b"=" + v for k, v in environ.items()), b"%d" % umask, *encodings]
    return b"\0".join(items) + b"\0"


def unpack_request(data: bytes) -> tuple[list[bytes], dict[bytes, bytes], int, list[str]]:
    items = data.split(b"\0")
    if not items or items[-1] != b"":
        raise ProtocolError("request not NUL-terminated")
    try:
        pos = 0
        argc = int(items[pos])
        argv = items[pos + 1:pos + 1 + argc]
        pos += 1 + argc
        envc = int(items[pos])
        env: dict[bytes, bytes] = {}
        for kv in items[pos + 1:pos + 1 + envc]:
            k, sep, v = kv.partition(b"=")
            if not sep or not k:
                raise ProtocolError(f"environment entry {kv[:40]!r}")
            env[k] = v
        pos += 1 + envc
        umask = int(items[pos])
        encodings = [e.decode("ascii") for e in items[pos + 1:pos + 5]]
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ProtocolError(f"malformed request: {e}") from None
    if len(argv) != argc or len(encodings) != 4 or not 0 <= umask <= 0o777:
        raise ProtocolError("malformed request: short")
    return argv, env, umask, encodings
