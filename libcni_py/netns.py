"""CNI_NETNS as the plugin side must treat it: a path that has to be a network namespace.

A runtime passes a bind-mounted nsfs file (/run/netns/x, /proc/<pid>/ns/net). Anything else —
a regular file (what is left of a bind mount after umount), a directory, a FIFO, a relative path —
is refused without blocking: the path is opened O_NONBLOCK and asked NS_GET_NSTYPE.
"""
from __future__ import annotations

import os

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703          # ioctl on an nsfs fd: the namespace's CLONE_NEW* type (Linux >= 4.11)
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class NetnsError(OSError):
    """A path that is not a network namespace (a file, a directory, a FIFO, gone), or setns failed."""


def open_netns(path: str) -> int:
    """An fd of the network namespace at `path`; NetnsError for anything else."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise NetnsError(22, f"network namespace path must be absolute: {path!r}")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        raise NetnsError(e.errno, f"{path}: {e.strerror}") from None
    try:
        import fcntl
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = -1
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise NetnsError(22, f"{path} is not a network namespace")
    return fd


def check_netns(path: str) -> None:
    """NetnsError unless `path` is a network namespace."""
    os.close(open_netns(path))


def is_current(path: str) -> bool:
    """Whether `path` is the network namespace this thread runs in (the host's, for a plugin)."""
    fd = open_netns(path)
    try:
        a, b = os.fstat(fd), os.stat("/proc/thread-self/ns/net")
    finally:
        os.close(fd)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
