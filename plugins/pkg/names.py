"""Names that reach paths, netlink and iptables: generate them and check them."""
from __future__ import annotations

import re

from libcni_py.errors import CNIError, INVALID_CONFIG

IFNAME_MAX = 15
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")
_SAFE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,252}$")


def short_hash(*parts: str, n: int = 8) -> str:
    """n hex chars of sha256 over the parts (NUL-separated), stable across runs."""
    return sha256("\0".join(parts).encode()).hexdigest()[:n]


def sha256(data: bytes):
    """hashlib.sha256(data), from CPython's own sha256 module when there is one: loading it
    takes ~1 ms of an exec, where hashlib loads OpenSSL's _hashlib (~3-4 ms)."""
    try:
        from _sha256 import sha256 as new      # CPython up to 3.11 (3.12 renamed it _sha2)
    except ImportError:
        from hashlib import sha256 as new
    return new(data)


def host_veth(container_id: str, ifname: str, prefix: str = "veth") -> str:
    """`veth` + 8 hex of a hash of (container ID, ifname), as the conventions say."""
    return prefix + short_hash(container_id, ifname)


def check_ifname(name: str, field: str = "interface name") -> str:
    """A Linux interface name: 1-15 chars of [A-Za-z0-9_.-], not '.'/'..'."""
    if not isinstance(name, str) or not _IFNAME_RE.fullmatch(name) or name in (".", ".."):
        raise CNIError(INVALID_CONFIG, f"invalid {field} {name!r}",
                       "1-15 characters from A-Z a-z 0-9 _ . -")
    return name


def check_path_component(name: str, field: str = "name") -> str:
    """A single safe path component (network name, container ID) for state files."""
    if not isinstance(name, str) or not _SAFE_RE.fullmatch(name) or name in (".", ".."):
        raise CNIError(INVALID_CONFIG, f"invalid {field} {name!r}",
                       "must match ^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    return name
