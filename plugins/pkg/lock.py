"""flock-based locks around read-modify-write of shared state."""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from contextlib import contextmanager


@contextmanager
def locked(path: str, shared: bool = False):
    """Hold an exclusive (or shared) flock on `path`, creating it and its directory."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    try:          # a symlink planted at the lock's place is never followed (nor its target made)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO):
            raise OSError(e.errno, f"lock file {path} is a symlink or a socket: remove it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"lock file {path} is not a regular file: remove it")
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)     # closing releases the lock
