"""Registry backends by `registry.type`. Only `file` today; `etcd` is its own issue."""
from __future__ import annotations

from libcni_py.errors import CNIError
from .. import REGISTRY_UNKNOWN_TYPE
from .base import Lease, NetworkRecord, Registry, Snapshot

TYPES = ("file",)


def check_type(kind: str) -> None:
    if kind not in TYPES:
        raise CNIError(REGISTRY_UNKNOWN_TYPE, f"unknown registry type {kind!r}",
                       f"known types: {', '.join(TYPES)}")


def open_registry(kind: str, path: str, ttl: int = 0) -> Registry:
    check_type(kind)
    from .file import FileRegistry
    return FileRegistry(path, ttl)


__all__ = ["Lease", "NetworkRecord", "Registry", "Snapshot", "TYPES", "check_type", "open_registry"]
