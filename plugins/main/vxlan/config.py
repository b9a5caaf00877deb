"""The vxlan plugin's config: one typed object built in one place (Go plugins' NetConf + loadNetConf).

    conf = load(args.conf, args.command, args.args)     # NetConf; the schema has been checked

Everything the plugin's modules read from a config is an attribute here; `raw` is the config
as given, handed whole to the IPAM plugin (as Go's bridge hands IPAM its stdin, runtimeConfig
and args included, so `runtimeConfig.ips` reaches host-local).

ADD, CHECK and STATUS refuse a key whose value makes no sense (code 7, or 105 for subnetLen).
DEL and GC are lenient: they need only the network name, `stateDir`, `ipMasq` and `ipam`, so a
node key that cannot be parsed there is left at None and the command goes on.
"""
from __future__ import annotations

import ipaddress
import os
import re
import socket
from libcni_py.errors import CNIError, INVALID_CONFIG
from plugins.pkg.names import check_ifname, check_path_component
from plugins.pkg.paths import check_dir
from .errors import BAD_SUBNET_LEN

TYPE_CHECKING = False          # typing stays off the exec path; mypy reads the block below
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

DEFAULT_STATE_ROOT = "/var/lib/cni/pycni/vxlan"
LENIENT = ("DEL", "GC")
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}")


class NetConf:
    """A vxlan plugin config, parsed and checked."""

    raw: dict                                   # the config as given (delegated to IPAM whole)
    name: str                                   # the CNI network name
    cni_version: str
    # node keys
    network: ipaddress.IPv4Network | None       # None: IPv6-only (or DEL/GC when it could not be parsed)
    subnet_len: int
    network6: ipaddress.IPv6Network | None      # `ipv6Network`; None: IPv4-only
    subnet_len6: int                            # `ipv6SubnetLen` (default 64)
    vni: int
    port: int
    registry_type: str
    registry_path: str
    registry_options: object | None     # etcd: registry.etcd.Options (checked endpoints, TLS, auth)
    registry_ttl: int
    public_ip: ipaddress.IPv4Address | None
    iface: str | None
    public_ip6: ipaddress.IPv6Address | None    # `publicIPv6`: the IPv6 underlay address announced
    iface6: str | None                          # `ipv6Iface`: the IPv6 underlay device
    device6_name: str                           # `ipv6DeviceName` (default vxlan-v6.<vni>)
    direct_routing: bool
    state_dir: str
    node_name: str
    device_name: str
    # pod keys
    bridge: str
    is_default_gateway: bool
    hairpin: bool
    ip_masq: bool
    ipam: dict | None                           # the config's ipam section, None: host-local default
    dns: dict | None                            # the config's dns, when it sets anything (Go's dnsConfSet)
    mac: str | None                             # runtimeConfig.mac > args.cni.mac > CNI_ARGS MAC
    ipam_self: str                              # why ipam.type would run us again, "" when it would not

    @property
    def cluster(self) -> ipaddress.IPv4Network:
        """`network`, for the IPv4 half of the commands (set when the config has one)."""
        if self.network is None:
            raise CNIError(INVALID_CONFIG, "missing required field 'network'")
        return self.network

    @property
    def cluster6(self) -> ipaddress.IPv6Network:
        """`ipv6Network`, for the IPv6 half of the commands (set when the config has one)."""
        if self.network6 is None:
            raise CNIError(INVALID_CONFIG, "missing required field 'ipv6Network'")
        return self.network6

    @property
    def families(self) -> tuple[int, ...]:
        """The address families of this overlay: (4,), (6,) or (4, 6)."""
        return tuple(f for f, net in ((4, self.network), (6, self.network6)) if net is not None)

    @property
    def ipam_type(self) -> str:
        return (self.ipam or {}).get("type", "host-local")


def load(conf: dict, command: str = "ADD", cni_args: str = "") -> NetConf:
    """The NetConf of `conf` for `command` (see the module docstring for what is lenient)."""
    n = NetConf()
    lenient = command in LENIENT
    n.raw = conf
    n.name = check_path_component(conf.get("name", ""), "network name")
    n.cni_version = str(conf.get("cniVersion", ""))
    n.state_dir = check_dir(conf.get("stateDir") or os.path.join(DEFAULT_STATE_ROOT, n.name), "stateDir")
    n.ip_masq = bool(conf.get("ipMasq", False))
    ipam = conf.get("ipam")
    n.ipam = dict(ipam) if isinstance(ipam, dict) and ipam else None

    def field(parse: Callable[[], Any], default: Any) -> Any:
        if not lenient:
            return parse()
        try:
            return parse()
        except (CNIError, ValueError, TypeError):
            return default

    n.network = field(lambda: _network(conf), None)
    n.subnet_len = field(lambda: _subnet_len(conf, n.network), 24)
    n.network6 = field(lambda: _network6(conf), None)
    n.subnet_len6 = field(lambda: _subnet_len6(conf, n.network6), 64)
    if not lenient and n.network is None and n.network6 is None:
        raise CNIError(INVALID_CONFIG, "missing required field 'network' (or 'ipv6Network')",
                       "set network (IPv4, e.g. 10.244.0.0/16), ipv6Network (e.g. fd00:10:244::/48) or both")
    n.vni = field(lambda: int(conf.get("vni", 1)), 1)
    n.port = field(lambda: int(conf.get("port", 8472)), 8472)
    registry = conf.get("registry") or {"type": "file"}
    if not isinstance(registry, dict):
        registry = {"type": "file"}
    n.registry_type = registry.get("type", "file")
    n.registry_options = None
    if not lenient:
        from .registry import check_type
        check_type(n.registry_type)
        if n.registry_type == "etcd":           # checked here, opened only by vxlan-agent
            if "path" in registry:
                raise CNIError(INVALID_CONFIG, "registry.path is a key of the file registry, not of etcd",
                               "remove it, or use type file")
            from .registry import etcd as etcd_registry     # options only: no client, no network
            n.registry_options = etcd_registry.parse_options(registry, n.name)
        elif set(registry) - {"type", "path", "ttl"}:       # the file registry has no other key
            extra = sorted(set(registry) - {"type", "path", "ttl"})
            raise CNIError(INVALID_CONFIG, f"registry.{extra[0]} is a key of the etcd registry",
                           f"set registry.type to etcd, or remove {', '.join(extra)}")
    n.registry_path = field(lambda: _registry_path(registry, n.state_dir),
                            os.path.join(n.state_dir, "registry.json"))
    n.registry_ttl = field(lambda: int(registry.get("ttl", 0)), 0)
    n.node_name = field(lambda: check_path_component(conf.get("nodeName") or socket.gethostname(),
                                                     "nodeName"), "")
    n.public_ip = field(lambda: _public_ip(conf), None)
    n.iface = field(lambda: check_ifname(conf["iface"], "iface") if conf.get("iface") else None,
                    None)
    n.public_ip6 = field(lambda: _public_ip6(conf), None)
    n.iface6 = field(lambda: check_ifname(conf["ipv6Iface"], "ipv6Iface") if conf.get("ipv6Iface") else None,
                     None)
    n.direct_routing = bool(conf.get("directRouting", False))
    n.device_name = field(lambda: check_ifname(conf.get("deviceName") or f"vxlan.{n.vni}", "deviceName"),
                          f"vxlan.{n.vni}")
    n.device6_name = field(lambda: _device6_name(conf, n.vni, n.network6 is not None), f"vxlan-v6.{n.vni}")
    n.bridge = field(lambda: check_ifname(conf.get("bridge", "cni0"), "bridge"), "cni0")
    n.is_default_gateway = bool(conf.get("isDefaultGateway", True))
    n.hairpin = bool(conf.get("hairpinMode", False))
    n.dns = _dns(conf.get("dns"))
    n.mac = field(lambda: _mac(conf, cni_args), None) if command == "ADD" else None
    n.ipam_self = self_delegation(n.ipam_type, os.environ.get("CNI_PATH", ""))
    if not lenient:
        if n.ipam_self:
            raise CNIError(INVALID_CONFIG, f"invalid config field 'ipam.type': {n.ipam_self}",
                           "use an IPAM plugin (host-local, static, dhcp), or omit ipam for host-local")
        if n.device_name == n.bridge:
            raise CNIError(INVALID_CONFIG, f"deviceName and bridge are both {n.bridge!r}",
                           "the vxlan device and the pods' bridge need their own names")
        if n.network6 is not None and n.device6_name in (n.bridge, n.device_name):
            raise CNIError(INVALID_CONFIG, f"ipv6DeviceName {n.device6_name!r} is also the "
                           f"{'bridge' if n.device6_name == n.bridge else 'deviceName'}",
                           "the IPv6 vxlan device needs a name of its own")
    return n


def self_delegation(ipam_type: object, cni_path: str) -> str:
    """Why delegating IPAM to `ipam_type` would run one of our plugins again (each level delegating
    once more, without end), or "" when it would not: a name of ours (plugins/entrypoints.py), or a
    file on CNI_PATH that is the executable running now (a symlink or hard link to it)."""
    from plugins.entrypoints import ENTRYPOINTS
    if not isinstance(ipam_type, str):
        return ""
    if ipam_type in ENTRYPOINTS:
        return f"{ipam_type!r} is a pycni plugin, not an IPAM plugin (it would delegate to itself)"
    if not ipam_type or "/" in ipam_type or ipam_type in (".", ".."):
        return ""
    running = _running()
    for d in (p for p in cni_path.split(os.pathsep) if p):
        path = os.path.join(d, ipam_type)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):      # as invoke.find_in_path
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in running:
            return (f"{ipam_type!r} on CNI_PATH ({path}) is this plugin's own "
                    "executable (it would delegate to itself)")
        return ""            # the first match is what would run
    return ""


def _running() -> set:
    """(st_dev, st_ino) of the executable running now: the console script (or bundle link) exec'd,
    and the frozen bundle itself."""
    import sys
    out = set()
    for path in (sys.argv[0] if sys.argv else "", sys.executable if getattr(sys, "frozen", False) else ""):
        if path and os.sep in path:
            try:
                st = os.stat(path)
                out.add((st.st_dev, st.st_ino))
            except OSError:
                pass
    return out


def _network(conf: dict) -> ipaddress.IPv4Network | None:
    if conf.get("network") in (None, ""):
        return None                                # IPv6-only (load() refuses a config with neither)
    try:
        return ipaddress.IPv4Network(conf.get("network", ""))
    except ValueError as e:
        raise CNIError(INVALID_CONFIG, f"invalid config field 'network': {e}",
                       "an IPv4 CIDR with no host bits, e.g. 10.244.0.0/16") from None


def _subnet_len(conf: dict, network: ipaddress.IPv4Network | None) -> int:
    subnet_len = int(conf.get("subnetLen", 24))
    if network is not None and not network.prefixlen < subnet_len <= 30:
        raise CNIError(BAD_SUBNET_LEN, f"subnetLen {subnet_len} out of range for network {network}",
                       f"need {network.prefixlen} < subnetLen <= 30")
    return subnet_len


def _network6(conf: dict) -> ipaddress.IPv6Network | None:
    text = conf.get("ipv6Network")
    if text in (None, ""):
        return None
    try:
        return ipaddress.IPv6Network(text)
    except (ValueError, TypeError) as e:
        raise CNIError(INVALID_CONFIG, f"invalid config field 'ipv6Network': {e}",
                       "an IPv6 CIDR with no host bits, e.g. fd00:10:244::/48") from None


def _subnet_len6(conf: dict, network6: ipaddress.IPv6Network | None) -> int:
    subnet_len = int(conf.get("ipv6SubnetLen", 64))
    if network6 is not None and not network6.prefixlen < subnet_len <= 124:
        raise CNIError(BAD_SUBNET_LEN, f"ipv6SubnetLen {subnet_len} out of range for ipv6Network {network6}",
                       f"need {network6.prefixlen} < ipv6SubnetLen <= 124")
    return subnet_len


def _public_ip6(conf: dict) -> ipaddress.IPv6Address | None:
    text = conf.get("publicIPv6")
    try:
        ip = ipaddress.IPv6Address(text) if text else None
    except ValueError as e:
        raise CNIError(INVALID_CONFIG, f"invalid config field 'publicIPv6': {e}") from None
    if ip is not None and (ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_loopback):
        raise CNIError(INVALID_CONFIG, f"invalid config field 'publicIPv6': {ip} is not a unicast address "
                       "peers can reach", "use a global or unique local (fd00::/8) address of the underlay")
    return ip


def _device6_name(conf: dict, vni: int, needed: bool) -> str:
    name = conf.get("ipv6DeviceName") or f"vxlan-v6.{vni}"
    if not needed and not conf.get("ipv6DeviceName"):
        return name                      # an IPv4-only overlay has no IPv6 device
    if not conf.get("ipv6DeviceName") and len(name) > 15:
        raise CNIError(INVALID_CONFIG, f"the IPv6 device name {name!r} is longer than 15 characters",
                       "set ipv6DeviceName (a name of at most 15 characters)")
    return check_ifname(name, "ipv6DeviceName")


def _registry_path(registry: dict, state_dir: str) -> str:
    path = registry.get("path") or os.path.join(state_dir, "registry.json")
    if not isinstance(path, str) or "\0" in path or "\n" in path or not path.startswith("/") \
            or path.endswith("/"):
        raise CNIError(INVALID_CONFIG, "registry.path must be an absolute file path", repr(path)[:200])
    check_dir(os.path.dirname(path), "registry.path (its directory)")
    if len(os.path.basename(path).encode(errors="surrogateescape")) > 250:     # room for .lock/.tmp<pid>
        raise CNIError(INVALID_CONFIG, "registry.path: file name too long", path[:200])
    return path


def _public_ip(conf: dict) -> ipaddress.IPv4Address | None:
    public_ip = conf.get("publicIP")
    try:
        return ipaddress.IPv4Address(public_ip) if public_ip else None
    except ValueError as e:
        raise CNIError(INVALID_CONFIG, f"invalid config field 'publicIP': {e}") from None


def _dns(dns: object) -> dict | None:
    """The config's dns when it sets anything (Go's dnsConfSet), else None (IPAM's is kept)."""
    if not isinstance(dns, dict):
        return None
    keys = ("nameservers", "domain", "search", "options")
    return {k: dns[k] for k in keys if dns.get(k)} or None


def _mac(conf: dict, cni_args: str) -> str | None:
    """The pod interface's MAC, as Go's bridge picks it: CNI_ARGS MAC=, then args.cni.mac, then
    runtimeConfig.mac (the `mac` capability) wins. A unicast MAC, or code 7."""
    mac, source = None, ""
    for pair in cni_args.split(";") if cni_args else ():
        key, _, value = pair.partition("=")
        if key == "MAC" and value:
            mac, source = value, "CNI_ARGS MAC"
    args = conf.get("args")
    cni = args.get("cni") if isinstance(args, dict) else None
    if isinstance(cni, dict) and cni.get("mac"):
        mac, source = cni["mac"], "args.cni.mac"
    rc = conf.get("runtimeConfig")
    if isinstance(rc, dict) and rc.get("mac"):
        mac, source = rc["mac"], "runtimeConfig.mac"
    if mac is None:
        return None
    if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac):
        raise CNIError(INVALID_CONFIG, f"invalid MAC address in {source}", repr(mac)[:100])
    mac = mac.lower().replace("-", ":")
    if int(mac[:2], 16) & 1:
        raise CNIError(INVALID_CONFIG, f"{source} {mac} is a multicast MAC", "use a unicast MAC")
    if mac == "00:00:00:00:00:00":
        raise CNIError(INVALID_CONFIG, f"{source} is the zero MAC", "use a unicast MAC")
    return mac
