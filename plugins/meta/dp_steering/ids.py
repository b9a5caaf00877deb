"""The names and MACs dp-steering derives for a pod port."""
from __future__ import annotations

from libcni_py.errors import CNIError
from plugins.pkg.names import check_ifname, check_path_component, short_hash

from .errors import INDEX_CLASH


def port_names(container_id: str, ifname: str) -> tuple[str, str]:
    """(vex<id>, vin<id>): 6 hex of a hash of (container ID, ifname)."""
    check_path_component(container_id, "containerID")
    check_ifname(ifname, "CNI_IFNAME")
    pid = short_hash(container_id, ifname, n=6)
    return "vex" + pid, "vin" + pid


def parking_mac(container_id: str, ifname: str) -> str:
    """The MAC the original interface wears while it is vex<id>: locally administered."""
    h = short_hash(container_id, ifname, "vex", n=8)
    return "02:00:" + ":".join(h[i:i + 2] for i in range(0, 8, 2))


UCMAC_PREFIX = "4e:65:75:56:"


def ucmac(low16: int) -> str:
    """NeuVector's per-pod unicast MAC 4e:65:75:56:xx:xx (xx:xx: the vex ifindex's low bytes)."""
    return f"{UCMAC_PREFIX}{(low16 >> 8) & 0xFF:02x}:{low16 & 0xFF:02x}"


def ucmac_low16(mac) -> int:
    """The xx:xx of a UCMAC as ucmac() writes it; 0 for anything else."""
    if not isinstance(mac, str) or len(mac) != 17 or not mac.startswith(UCMAC_PREFIX):
        return 0
    try:
        return int(mac[12:].replace(":", ""), 16)
    except ValueError:
        return 0


def allocate16(start: int, used: set[int], what: str) -> int:
    """`start`'s low 16 bits, or the next value up that is neither 0 nor in `used`."""
    for k in range(0x10000):
        value = (start + k) & 0xFFFF
        if value and value not in used:
            return value
    raise CNIError(INDEX_CLASH, f"no free {what} left (all 65535 in use)")
