"""The edgemesh plugin config: NetConf built by load(), checks the JSON Schema cannot make, the services file.

Everything that ends up in a rule (addresses, service names, comments) is checked
here against a strict shape; the backends check every token once more.
"""
from __future__ import annotations

import ipaddress
import os
import re
import stat

from libcni_py.errors import CNIError, INVALID_CONFIG

from .errors import SERVICES_FILE_ERROR

COMMENT_MAX = 255
DEFAULT_STATE_DIR = "/var/lib/cni/pycni/edgemesh"
DEFAULT_LISTEN = "169.254.96.16"
DEFAULT_LISTEN6 = "fd00:a9fe:6010::1"     # a ULA: "a9fe" is 169.254, "6010" is .96.16
FAMILIES = ("4", "6")
# A Kubernetes namespace or service name (RFC 1123 label).
_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_RELEASE_RE = re.compile(r"[0-9]+\.[0-9]+[A-Za-z0-9._+~-]{0,120}")


class Service:
    """An ignored service: its IPv4 or IPv6 address and "<namespace>/<name>"."""
    __slots__ = ("ip", "name")

    def __init__(self, ip: str, name: str):
        self.ip, self.name = ip, name

    @property
    def family(self) -> str:
        return family_of(self.ip)

    @property
    def comment(self) -> str:
        return f"ignore {self.name} service"


class NetConf:
    """The plugin's config, typed: defaults filled in, every value checked (CNIError(7) names a
    bad field). Built by load() only; cmd, rules, backends and sync read keys from nothing else."""

    network: str
    service_cidr: str              # the IPv4 service CIDR; "" when none (IPv6 only, or dropped outside ADD/CHECK)
    service_cidr6: str             # the IPv6 service CIDR; "" when none
    listen_address: str
    listen_address6: str
    listen_port: int
    protocols: tuple[str, ...]
    ignored_services: tuple[Service, ...]
    ignored_services_file: str
    exclude_namespaces: tuple[str, ...]
    scope: str
    backend: str
    ensure_listen_device: bool
    allow_known_bad_kernel: bool
    check_proxy: bool              # CHECK fails (151) when nothing listens on a listen address (false: warns)
    kernel_release: str
    state_dir: str

    @property
    def families(self) -> tuple[str, ...]:
        """The families with a service CIDR: ("4",), ("6",) or ("4", "6")."""
        return tuple(f for f in FAMILIES if self.cidr(f))

    def cidr(self, family: str) -> str:
        return self.service_cidr6 if family == "6" else self.service_cidr

    def listen(self, family: str) -> str:
        return self.listen_address6 if family == "6" else self.listen_address

    @property
    def lock_path(self) -> str:
        return f"{self.state_dir}/edgemesh.lock"

    @property
    def records_dir(self) -> str:
        """One record per network: the shared config it applied (see cmd.check_conflict)."""
        return f"{self.state_dir}/networks"

    def record_path(self, network: str) -> str:
        return f"{self.records_dir}/{network}.json"

    def all_ignored(self) -> tuple[Service, ...]:
        """Inline services plus the file's, read now (the controller may have rewritten it)."""
        seen: dict[tuple[str, str], Service] = {}
        for s in self.ignored_services + read_services_file(self.ignored_services_file):
            seen.setdefault((s.ip, s.name), s)
        return tuple(seen.values())

    def shared(self) -> dict:
        """The keys that shape the node-wide chains every network shares (not the pods' rules):
        two networks with pods in the same chains must agree on all of them. An IPv4-only config
        gives the dict of the releases before IPv6 (their records compare equal); with IPv6,
        serviceCIDR is the list [IPv4?, IPv6] and listenAddress6 is added."""
        out = {"serviceCIDR": self.service_cidr, "listenAddress": self.listen_address,
               "listenPort": self.listen_port, "protocols": list(self.protocols), "scope": self.scope,
               "ignoredServices": sorted([s.ip, s.name] for s in self.ignored_services),
               "ignoredServicesFile": self.ignored_services_file}
        if self.service_cidr6:
            out["serviceCIDR"] = [self.cidr(f) for f in self.families]
            out["listenAddress6"] = self.listen_address6
        return out


STRICT = ("ADD", "CHECK")      # the verbs that need every key; the others keep what cleanup needs


def load(conf: dict, command: str = "ADD") -> NetConf:
    """The NetConf of a (schema-checked) config dict. ADD and CHECK: any bad value is CNIError(7).
    DEL, GC and STATUS: a value that does not pass is replaced by its default (the schema already
    dropped what it refuses), except stateDir, where the lock and records are."""
    from plugins.pkg.paths import check_dir
    strict = command in STRICT
    c = NetConf()
    c.network = conf["name"]
    c.state_dir = check_dir(conf.get("stateDir", DEFAULT_STATE_DIR), "stateDir").rstrip("/") or "/"

    def field(fn, default):
        if strict:
            return fn()
        try:
            return fn()
        except CNIError:
            return default
    c.service_cidr, c.service_cidr6 = field(lambda: _service_cidrs(conf.get("serviceCIDR")), ("", ""))
    c.listen_address = field(lambda: _ipv4_address(conf.get("listenAddress", DEFAULT_LISTEN), "listenAddress"),
                             DEFAULT_LISTEN)
    c.listen_address6 = field(lambda: _ipv6_address(conf.get("listenAddress6", DEFAULT_LISTEN6), "listenAddress6"),
                              DEFAULT_LISTEN6)
    c.ignored_services = field(lambda: tuple(check_service(s, "ignoredServices", INVALID_CONFIG)
                                             for s in conf.get("ignoredServices") or []), ())
    c.exclude_namespaces = field(lambda: _namespaces(conf.get("excludeNamespaces") or []), ())
    c.listen_port = int(conf.get("listenPort", 40001))
    c.protocols = tuple(sorted(set(conf.get("protocols") or ["tcp"])))
    c.ignored_services_file = conf.get("ignoredServicesFile", "")
    c.scope = conf.get("scope", "pod")
    c.backend = conf.get("backend", "auto")
    c.ensure_listen_device = bool(conf.get("ensureListenDevice", False))
    c.allow_known_bad_kernel = bool(conf.get("allowKnownBadKernel", False))
    c.check_proxy = bool(conf.get("checkProxy", True))
    c.kernel_release = field(lambda: _release(conf.get("kernelRelease", "")), "")
    return c


def _namespaces(values) -> tuple[str, ...]:
    for ns in values:
        if not isinstance(ns, str) or not _LABEL_RE.fullmatch(ns):
            raise CNIError(INVALID_CONFIG, f"invalid config field 'excludeNamespaces': {ns!r}",
                           "a Kubernetes namespace name")
    return tuple(values)


def check_service(entry, where: str, code: int) -> Service:
    """One {ip, name} entry; `name` is '<namespace>/<name>', both RFC 1123 labels."""
    if not isinstance(entry, dict) or set(entry) - {"ip", "name"}:
        raise CNIError(code, f"invalid entry in {where}: {str(entry)[:120]!r}",
                       'each entry is {"ip": "<IPv4 or IPv6>", "name": "<namespace>/<name>"}')
    name = entry.get("name")
    parts = name.split("/") if isinstance(name, str) else []
    if len(parts) != 2 or not all(_LABEL_RE.fullmatch(p) for p in parts):
        raise CNIError(code, f"invalid service name in {where}: {str(name)[:120]!r}",
                       "expected <namespace>/<name>, each a Kubernetes name (a-z 0-9 -, at most 63)")
    ip = entry.get("ip")
    try:
        if not isinstance(ip, str) or not ip.isprintable() or ip != ip.strip() or "%" in ip:
            raise TypeError(ip)
        addr = ipaddress.ip_address(ip)
    except (ValueError, TypeError):
        raise CNIError(code, f"invalid service ip in {where} for {name}: {str(ip)[:60]!r}",
                       "an IPv4 or IPv6 address") from None
    return Service(ip=str(addr), name=str(name))


def read_services_file(path: str) -> tuple[Service, ...]:
    """The controller's list; a missing file is an empty list, a broken one an error."""
    if not path:
        return ()
    try:
        data = _read_json(path)
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as e:
        raise CNIError(SERVICES_FILE_ERROR, f"cannot read ignoredServicesFile {path}",
                       str(e)[:200]) from None
    if not isinstance(data, list):
        raise CNIError(SERVICES_FILE_ERROR, f"ignoredServicesFile {path} must hold a JSON list",
                       'of {"ip": ..., "name": "<namespace>/<name>"}')
    return tuple(check_service(s, f"ignoredServicesFile {path}", SERVICES_FILE_ERROR) for s in data)


def _read_json(path: str, max_bytes: int = 4 << 20):
    """A JSON document from a regular file, never blocking (a FIFO is refused, not opened for
    reading), bounded, decoded as Go does (no 1e999, no NaN). Symlinks are followed: a ConfigMap
    mounted by the kubelet is one."""
    from libcni_py.records import loads
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    return loads(data)


def pod_comment(network: str, container_id: str) -> str:
    """The tag on a pod's rules: what DEL and GC look for (portmap's habit)."""
    text = f"edgemesh net={network} id={container_id}"
    if len(text) > COMMENT_MAX:
        raise CNIError(INVALID_CONFIG, "network name and container ID too long for a rule comment",
                       f"{len(text)} characters, at most {COMMENT_MAX}")
    return text


def parse_pod_comment(text: str) -> tuple[str, str] | None:
    """'edgemesh net=N id=C' -> (N, C)."""
    m = re.fullmatch(r"edgemesh net=(\S+) id=(\S+)", text)
    return (m.group(1), m.group(2)) if m else None


def _release(value: str) -> str:
    if value and not _RELEASE_RE.fullmatch(value):
        raise CNIError(INVALID_CONFIG, f"invalid config field 'kernelRelease': {value[:60]!r}",
                       "a kernel release such as 4.19.12-1.el7.x86_64")
    return value


def family_of(addr: str) -> str:
    """"6" for an IPv6 address or CIDR (text), else "4"."""
    return "6" if ":" in addr else "4"


def _service_cidrs(value) -> tuple[str, str]:
    """serviceCIDR: one CIDR (either family) or a list of one or two, at most one per family;
    (IPv4 CIDR or "", IPv6 CIDR or "")."""
    if isinstance(value, list):
        if not 1 <= len(value) <= 2:
            raise CNIError(INVALID_CONFIG, "invalid config field 'serviceCIDR': a list of one or two CIDRs",
                           "one per family, e.g. [\"10.96.0.0/12\", \"fd00:10:96::/112\"]")
        nets = [_network(v, "serviceCIDR") for v in value]
    else:
        nets = [_network(value, "serviceCIDR")]
    out = {"4": "", "6": ""}
    for n in nets:
        fam = family_of(n)
        if out[fam]:
            raise CNIError(INVALID_CONFIG, f"invalid config field 'serviceCIDR': two IPv{fam} CIDRs",
                           f"{out[fam]} and {n}: at most one CIDR per family")
        out[fam] = n
    return out["4"], out["6"]


def _network(value, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise CNIError(INVALID_CONFIG, f"missing config field {field!r}",
                       "an IPv4 or IPv6 CIDR, e.g. 10.96.0.0/12 or fd00:10:96::/112")
    if ":" not in value:
        return _ipv4_network(value, field)
    return _cidr(value, field, ipaddress.IPv6Network, "IPv6", "fd00:10:96::/112")


def _ipv6_address(value, field: str) -> str:
    """A unicast IPv6 address a proxy can listen on from every interface (no link-local: it
    would need a zone; no multicast, loopback or unspecified)."""
    try:
        if not isinstance(value, str) or "%" in value or value != value.strip():
            raise TypeError(value)
        addr = ipaddress.IPv6Address(value)
        if addr.is_link_local or addr.is_multicast or addr.is_unspecified or addr.is_loopback \
                or addr.ipv4_mapped is not None:
            raise ValueError(value)
    except (ValueError, TypeError):
        raise CNIError(INVALID_CONFIG, f"invalid config field {field!r}: {str(value)[:60]!r} is not a "
                       "global or unique-local IPv6 address", "e.g. fd00:a9fe:6010::1") from None
    return str(addr)


def _ipv4_network(value, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise CNIError(INVALID_CONFIG, f"missing config field {field!r}", "an IPv4 CIDR, e.g. 10.96.0.0/12")
    return _cidr(value, field, ipaddress.IPv4Network, "IPv4", "10.96.0.0/12")


def _cidr(value: str, field: str, cls, family: str, example: str) -> str:
    """`value` as a `cls` (IPv4Network, IPv6Network; host bits dropped), normalised; no zone, no
    surrounding or unprintable characters."""
    try:
        if not value.isprintable() or value != value.strip() or "%" in value:
            raise ValueError(value)
        net = cls(value, strict=False)
    except ValueError:
        raise CNIError(INVALID_CONFIG, f"invalid config field {field!r}: {value[:60]!r} is not an {family} CIDR",
                       f"e.g. {example}") from None
    return str(net)


def _ipv4_address(value, field: str) -> str:
    try:
        if not isinstance(value, str):
            raise TypeError(value)
        return str(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        raise CNIError(INVALID_CONFIG, f"invalid config field {field!r}: {str(value)[:60]!r} is not an IPv4 address",
                       "e.g. 169.254.96.16") from None
