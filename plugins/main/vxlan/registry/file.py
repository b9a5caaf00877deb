"""The embedded file backend: one JSON document shared by every node.

Writers serialise on a flock of `<path>.lock`, then read, mutate, write a temporary
file beside the document, fsync it and rename() it over the document, so a reader
never sees half a document and needs no lock. Every write bumps `revision`.
`watch()` waits on inotify for the rename into the directory (polling the file's
identity every 0.25 s where inotify is not available).
"""
from __future__ import annotations

import copy
import errno
import json
import os
import select
import time

from libcni_py import records
from libcni_py.errors import CNIError
from plugins.pkg.lock import locked
from ..errors import REGISTRY_CORRUPT, REGISTRY_UNREADABLE
from .base import Registry, Snapshot, decode, encode

IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x8, 0x80, 0x100, 0x200
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
MAX_BYTES = 64 << 20      # ~400 000 leases


class FileRegistry(Registry):
    def __init__(self, path: str, ttl: int = 0):
        super().__init__(ttl)
        self.path = path
        self._inotify: int | None = None
        self._leases: dict = {}          # decode cache: unchanged leases are not parsed again

    # -- reads ----------------------------------------------------------------
    def _read_doc(self):
        try:
            return records.read(self.path, max_bytes=MAX_BYTES)
        except FileNotFoundError:
            return None
        except records.RecordError as e:
            if os.path.isdir(self.path):
                raise CNIError(REGISTRY_UNREADABLE, f"cannot read registry file {self.path}",
                               "it is a directory") from None
            raise CNIError(REGISTRY_CORRUPT, f"registry file {self.path} is not JSON we wrote",
                           str(e)) from None
        except OSError as e:
            raise CNIError(REGISTRY_UNREADABLE, f"cannot read registry file {self.path}",
                           e.strerror or str(e)) from None

    def snapshot(self) -> Snapshot:
        doc = self._read_doc()
        return Snapshot() if doc is None else decode(doc, cache=self._leases)

    # -- writes ---------------------------------------------------------------
    def update(self, mutate) -> Snapshot:
        self.snapshot()     # fail on an unreadable document before creating the lock file
        try:
            with locked(self.path + ".lock"):
                current = self.snapshot()
                draft = copy.deepcopy(current)
                mutate(draft)
                if draft.network == current.network and draft.leases == current.leases:
                    return current
                draft.revision = current.revision + 1
                self._write(encode(draft))
                return draft
        except OSError as e:
            raise CNIError(REGISTRY_UNREADABLE, f"cannot write registry file {self.path}",
                           e.strerror or str(e)) from None

    def _write(self, doc: dict) -> None:
        records.write(self.path, doc, mode=0o644, text=json.dumps(doc, indent=1) + "\n")

    # -- watch ----------------------------------------------------------------
    def watch(self, revision: int, timeout: float) -> Snapshot | None:
        deadline = time.monotonic() + timeout
        fd = self._watch_fd()
        while True:
            snap = self.snapshot()
            if snap.revision != revision:
                return snap
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if fd is None:
                time.sleep(min(left, 0.25))
                continue
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                self._drain(fd)

    def _watch_fd(self) -> int | None:
        if self._inotify is not None:
            return self._inotify
        import ctypes             # the agent's watch only (STATUS reads the file: ~1.5 ms less)
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return None
        directory = os.path.dirname(os.path.abspath(self.path))
        mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE
        if libc.inotify_add_watch(fd, directory.encode(), mask) < 0:
            os.close(fd)
            return None
        self._inotify = fd
        return fd

    @staticmethod
    def _drain(fd: int) -> None:
        try:
            while os.read(fd, 65536):
                pass
        except OSError as e:
            if e.errno != errno.EAGAIN:
                raise

    def close(self) -> None:
        if self._inotify is not None:
            os.close(self._inotify)
            self._inotify = None
