"""Enter a network namespace by path, in-process, and always come back."""
from __future__ import annotations

import os
from contextlib import contextmanager

from libcni_py.netns import NetnsError, check_netns, is_current, open_netns  # noqa: F401 - re-exported

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
_libc = None


def libc():
    """The C library (ctypes, loaded once), for the calls Python has no wrapper of."""
    global _libc
    if _libc is None:
        import ctypes
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """setns(2) of this thread (a mount namespace, CLONE_NEWNS, wants a single-threaded process)."""
    if hasattr(os, "setns"):          # Python >= 3.12
        os.setns(fd, nstype)
        return
    if libc().setns(fd, nstype) != 0:
        import ctypes
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns: {os.strerror(err)}")


def current() -> str:
    return "/proc/thread-self/ns/net"


@contextmanager
def enter(path: str):
    """Run the body of the `with` in the netns at `path` (this thread only)."""
    target = open_netns(path)
    orig = os.open(current(), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(orig)
    finally:
        os.close(target)
        os.close(orig)

