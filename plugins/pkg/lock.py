"""flock-based locks around read-modify-write of shared state."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager


@contextmanager
def locked(path: str, shared: bool = False):
    """Hold an exclusive (or shared) flock on `path`, creating it and its directory."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)     # closing releases the lock
