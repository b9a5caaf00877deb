"""The thin client: an exec'd plugin hands its request to pycni-node, or runs in-process.

plugins/entrypoints.py calls `delegate(name)` before any plugin module is imported. It returns
(and the plugin runs in-process, as without a daemon) unless a daemon took the request:

- no socket at $PYCNI_NODE_SOCKET (default /run/pycni/node.sock; "" or "off": never ask), not a
  socket, a socket or a listening process not owned by root, ECONNREFUSED, a hello refused (another
  version, a non-root peer, the daemon full, namespaces it cannot enter) or not answered within
  HELLO_TIMEOUT: in-process, nothing of stdin read;
- once the daemon said OK the request is the daemon's: its reply (the plugin's exit status and
  stdout, byte for byte) is written out and the process exits with that status; a reply that does
  not come whole (the daemon or its worker died) is CNI code 11, try again later (DEL is idempotent,
  so the runtime's retry is safe).

What it sends: argv, the whole environment, umask, the encodings of stdout/stderr, stdin, and by
SCM_RIGHTS its network namespace (/proc/self/ns/net: the daemon's worker setns()es into it), its
mount namespace (entered when it is not the daemon's: `ip netns exec`, a runtime's private
mounts), cwd and stderr (the worker writes the plugin's logs there).
Imports: os, sys, _socket and protocol.py (which imports the same).
"""

import os
import sys

import _socket

from . import protocol as P

S_IFMT, S_IFSOCK = 0o170000, 0o140000


def delegate(name: str) -> None:
    """Serve this exec through the daemon and exit, or return to run in-process."""
    if name not in P.SERVED or len(sys.argv) > 1:      # subcommands (dp-steering mode, edgemesh sync)
        return
    sock = _hello(name)
    if sock is None:
        return
    _run_remote(sock)


def _hello(name: str):
    """A connected socket whose daemon accepted the request, or None."""
    path = os.environ.get(P.SOCKET_ENV, P.DEFAULT_SOCKET)
    if not path or path == "off":
        return None
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if st.st_mode & S_IFMT != S_IFSOCK or st.st_uid != 0:
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    fds: list[int] = []
    try:
        sock.settimeout(P.HELLO_TIMEOUT)
        sock.connect(path)
        if P.peer_uid(sock) != 0:
            raise OSError("the daemon is not root")
        flags = os.O_RDONLY | os.O_CLOEXEC
        fds.append(os.open("/proc/self/ns/net", flags))
        fds.append(os.open("/proc/self/ns/mnt", flags))
        fds.append(os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        hello = P.MAGIC + P.identity().encode() + b"\0" + name.encode()
        sock.sendmsg([P.frame(hello)], P.pack_fds([*fds, 2]))
        if P.recv_frame(sock) == b"OK":
            return sock
    except (OSError, P.ProtocolError):
        pass
    finally:
        for fd in fds:
            os.close(fd)
    sock.close()
    return None


def _run_remote(sock) -> None:
    stdin = b""
    try:
        sock.settimeout(None)
        stdin = _read_stdin()
        umask = os.umask(0o022)
        os.umask(umask)
        request = P.pack_request([os.fsencode(a) for a in sys.argv], dict(os.environb), umask,
                                 _encoding(sys.stdout) + _encoding(sys.stderr, "backslashreplace"))
        P.send_all(sock, P.frame(request) + P.frame(stdin))
        reply = P.recv_frame(sock)
        if len(reply) < 4:
            raise P.ProtocolError("short reply")
    except (OSError, P.ProtocolError) as e:
        _try_again_later(stdin, str(e))
    status = int.from_bytes(reply[:4], "big", signed=True)
    try:
        _write_all(1, reply[4:])
    except OSError:                      # the runtime did not get the answer (as skel.plugin_main)
        status = status or 1
    os._exit(status & 0xFF)


def _encoding(stream, default_errors: str = "strict") -> list[bytes]:
    enc = getattr(stream, "encoding", None) or "utf-8"
    errors = getattr(stream, "errors", None) or default_errors
    return [enc.encode("ascii", "replace"), errors.encode("ascii", "replace")]


def _read_stdin() -> bytes:
    parts = []
    try:
        while True:
            chunk = os.read(0, 1 << 16)
            if not chunk:
                break
            parts.append(chunk)
    except OSError:                      # stdin closed: skel reads nothing either
        pass
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _try_again_later(stdin: bytes, why: str) -> None:
    """The daemon accepted the request and no whole answer came: code 11, as skel would write it."""
    import json

    from libcni_py import errors as E
    from libcni_py import version as V
    try:
        ver = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        ver = None
    err = E.CNIError(E.TRY_AGAIN_LATER, "pycni-node went away during the request; try again later",
                     f"{why} (socket {os.environ.get(P.SOCKET_ENV, P.DEFAULT_SOCKET)})")
    try:
        sys.stderr.write(f"pycni: error {err.code}: {err} ({why})\n")
        sys.stderr.flush()
        _write_all(1, (json.dumps(err.to_dict(ver if ver in V.ALL else V.CURRENT), indent=4) + "\n").encode())
    except OSError:
        pass
    os._exit(1)
