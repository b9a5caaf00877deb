"""Registry backends by `registry.type`: one type registry, as flannel's backend.Register.

    BACKENDS = {"file": FileRegistry}        # register() adds one (the etcd backend, later)
    reg = open_registry(cfg.registry_type, cfg.registry_path, cfg.registry_ttl)

A backend is a `Registry` subclass (base.py) constructed as `Backend(path, ttl)`; an unknown
type is code 102 naming the known ones.
"""
from __future__ import annotations

from libcni_py.errors import CNIError
from ..errors import REGISTRY_UNKNOWN_TYPE
from .base import Lease, NetworkRecord, Registry, Snapshot
from .file import FileRegistry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Factory = Callable[[str, int], Registry]

BACKENDS: dict[str, Factory] = {}


def register(kind: str, factory: Factory) -> None:
    """Make `registry.type: kind` open `factory(path, ttl)`; a type is registered once."""
    if kind in BACKENDS:
        raise ValueError(f"registry type {kind!r} registered twice")
    BACKENDS[kind] = factory


register("file", FileRegistry)


def _etcd(source, ttl: int = 0) -> Registry:
    """The etcd backend, imported only when opened (never on the per-pod path): `source` is the
    registry section (a dict) or etcd.Options, not a file path."""
    from .etcd import EtcdRegistry
    return EtcdRegistry(source, ttl)


register("etcd", _etcd)


def check_type(kind: object) -> str:
    if not isinstance(kind, str) or kind not in BACKENDS:
        raise CNIError(REGISTRY_UNKNOWN_TYPE, f"unknown registry type {kind!r}",
                       f"known types: {', '.join(sorted(BACKENDS))}")
    return kind


def open_registry(kind: str, path: str, ttl: int = 0) -> Registry:
    return BACKENDS[check_type(kind)](path, ttl)


def types() -> tuple[str, ...]:
    return tuple(sorted(BACKENDS))


__all__ = ["BACKENDS", "FileRegistry", "Lease", "NetworkRecord", "Registry", "Snapshot", "check_type",
           "open_registry", "register", "types"]
