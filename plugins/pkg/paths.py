"""Directories named by a config (stateDir, runDir, ...): checked before anything is made there.

A path that reaches os.makedirs or a record as root must be absolute, of a length the kernel
takes, free of NUL and line breaks, and, when it exists, a directory (not a file or a FIFO).
Anything else is CNIError(7) naming the config key.
"""
from __future__ import annotations

import os
import stat

from libcni_py.errors import CNIError, INVALID_CONFIG

PATH_MAX = 4096
NAME_MAX = 255


def check_dir(path, key: str) -> str:
    """`path` as a directory a plugin may create and write; CNIError(7) naming `key` otherwise."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path or "\n" in path:
        raise CNIError(INVALID_CONFIG, f"{key} must be an absolute path", repr(path)[:200])
    raw = path.encode(errors="surrogateescape")
    if len(raw) >= PATH_MAX - 256 or any(len(p) > NAME_MAX for p in raw.split(b"/")):
        raise CNIError(INVALID_CONFIG, f"{key} is too long", f"{len(raw)} bytes")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path
    except OSError as e:
        raise CNIError(INVALID_CONFIG, f"{key} {path!r} cannot be used", e.strerror or str(e)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise CNIError(INVALID_CONFIG, f"{key} {path!r} exists and is not a directory")
    return path
