"""Supported CNI versions, comparison, and the VERSION answer."""
from __future__ import annotations

from .errors import CNIError, INCOMPATIBLE_VERSION, DECODING_FAILURE

CURRENT = "1.1.0"
# Result formats this library encodes and decodes (issue: 0.3.0 .. 1.1.0).
ALL = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def parse(v: str) -> tuple[int, int, int]:
    """'1.0.0' -> (1, 0, 0). Raises CNIError(DECODING_FAILURE) on junk."""
    if not isinstance(v, str):
        raise CNIError(DECODING_FAILURE, "cniVersion must be a string", repr(v))
    parts = v.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise CNIError(DECODING_FAILURE, f"invalid cniVersion {v!r}", "expected MAJOR.MINOR.PATCH")
    return int(parts[0]), int(parts[1]), int(parts[2])


def gte(a: str, b: str) -> bool:
    return parse(a) >= parse(b)


def lt(a: str, b: str) -> bool:
    return parse(a) < parse(b)


def require_supported(v: str, supported=ALL) -> None:
    """Code 1 unless `v` is one of `supported` (like Go's reconciler: a lookup, no parsing)."""
    if v not in supported:
        raise CNIError(INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f'config is "{v}", plugin supports {list(supported)}')


def version_answer(requested: str | None, supported=ALL) -> dict:
    """The VERSION reply: echoes the asked-for version when known, else the newest."""
    v = requested if requested in supported else CURRENT
    return {"cniVersion": v, "supportedVersions": list(supported)}


def config_version(conf: dict) -> str:
    """cniVersion of a config; like Go's ConfigDecoder an absent one means 0.1.0."""
    v = conf.get("cniVersion", "0.1.0") if isinstance(conf, dict) else "0.1.0"
    if v == "":
        v = "0.1.0"
    return v
