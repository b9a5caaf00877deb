"""Atomic JSON records: the one way every part of the suite keeps a small state file.

Used by the result cache (api.py), and by the plugins for the vxlan registry file, leases and
attachment records, dp-steering's state, and the dp's stats. A record is written as a temp file
beside it, opened with O_CREAT|O_EXCL|O_NOFOLLOW (a planted file or symlink is never followed or
reused), fsync'd and renamed over the record: a reader sees the old or the new document, never
half of one, and a crash leaves at worst a temp file named `<record>.tmp<pid>`, which the next
writer in that directory removes once its process is gone.

Reading is bounded and defensive: a record is opened O_NOFOLLOW|O_NONBLOCK (a FIFO never
blocks), must be a regular file of at most `max_bytes`, and must decode (`loads`) without
non-finite numbers or nesting deeper than the stack allows. Anything else is RecordError.
"""
from __future__ import annotations

import errno
import json
import os
import stat

TMP_MARK = ".tmp"
MAX_BYTES = 4 << 20
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class RecordError(ValueError):
    """A record that cannot be read as JSON we wrote: not a regular file, too large, bad JSON."""


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _no_constant(name: str):
    raise ValueError(f"not JSON: {name}")


def loads(data: bytes | str):
    """json.loads as Go's decoder sees JSON: no NaN/Infinity, no number that overflows a
    float64 (1e999), and a document nested too deep is an error, never a RecursionError."""
    try:
        return json.loads(data, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8: {e}") from None


def dumps(obj) -> str:
    """One line of JSON and a newline: json's C encoder (an indent makes json use its Python
    encoder, ~0.25 ms a pod record and ~2 ms a pair record of 100 users; `jq .` shows one indented)."""
    return json.dumps(obj, sort_keys=True, allow_nan=False, separators=(",", ":")) + "\n"


def read(path: str, max_bytes: int = MAX_BYTES):
    """The decoded record at `path`; FileNotFoundError when there is none; RecordError when it
    is not a regular file, is larger than `max_bytes`, or does not decode."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC)
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        if e.errno in (errno.ELOOP, errno.ENXIO):    # a symlink; a socket
            raise RecordError(f"{path}: not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RecordError(f"{path}: not a regular file")
        if st.st_size > max_bytes:
            raise RecordError(f"{path}: {st.st_size} bytes, more than {max_bytes}")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise RecordError(f"{path}: more than {max_bytes} bytes")
            chunks.append(chunk)
    finally:
        os.close(fd)
    try:
        return loads(b"".join(chunks))
    except ValueError as e:
        raise RecordError(f"{path}: {e}") from None


def read_or(path: str, default=None, max_bytes: int = MAX_BYTES):
    """read(), or `default` when there is no record."""
    try:
        return read(path, max_bytes)
    except FileNotFoundError:
        return default


def write(path: str, obj, mode: int = 0o600, text: str | None = None, sync: bool = True) -> None:
    """Write `obj` (or the ready `text`) as the record at `path`, atomically. The directory must
    exist. Stale temp files of dead writers in that directory are removed first. `sync=False`
    leaves out the fsync, for a record of state that dies with the machine (a process's crash
    still leaves the old or the new document; after a power loss it may be empty: unreadable)."""
    directory = os.path.dirname(path) or "."
    check_private(directory)
    clean_stale(directory)
    data = (dumps(obj) if text is None else text).encode()
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC
    try:
        fd = os.open(tmp, flags, mode)
    except FileExistsError:          # ours from an earlier crash of this pid, or planted: unlink, never follow
        os.unlink(tmp)
        fd = os.open(tmp, flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def check_private(directory: str) -> None:
    """RecordError unless only root (this user) and the directory's owner can plant files in it:
    not writable by others (a sticky one like /tmp excepted: nobody can unlink or replace what we
    make there), not writable by a group other than root's, owned by us or root."""
    st = os.stat(directory)
    if st.st_uid not in (0, os.geteuid()):
        raise RecordError(f"{directory}: owned by uid {st.st_uid}, not by root")
    sticky = bool(st.st_mode & stat.S_ISVTX)
    if (st.st_mode & stat.S_IWOTH and not sticky) or (st.st_mode & stat.S_IWGRP and st.st_gid != 0 and not sticky):
        raise RecordError(f"{directory}: others can write in it (mode {stat.S_IMODE(st.st_mode):o}); "
                          "keep state in a directory only root can write")


def remove(path: str) -> bool:
    """Delete the record; False when there was none."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def names(directory: str, suffix: str = "") -> list[str]:
    """The record file names in `directory` (sorted, temp files and hidden files left out)."""
    try:
        entries = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in entries
                  if n.endswith(suffix) and not n.startswith(".") and _tmp_pid(n) is None)


def clean_stale(directory: str) -> list[str]:
    """Remove `<record>.tmp<pid>` files whose writer is no longer alive; their names."""
    removed: list[str] = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for name in entries:
        pid = _tmp_pid(name)
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        if _unlink_quietly(os.path.join(directory, name)):
            removed.append(name)
    return removed


def is_temp(name: str) -> bool:
    """A writer's temp file (`<record>.tmp<pid>`), not a record."""
    return _tmp_pid(name) is not None


def _tmp_pid(name: str) -> int | None:
    head, sep, tail = name.rpartition(TMP_MARK)
    if not sep or not head or not tail.isdigit() or not tail.isascii():
        return None
    return int(tail)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink_quietly(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False
