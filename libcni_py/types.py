"""CNI result types and conversion between result versions.

One internal model (the 1.1.0 shape) decoded from and encoded to every supported
version, the way the Go library converts through types100/types040: 1.0.0 and 1.1.0
share one shape; 0.3.x/0.4.0 drop the interfaces' mtu/socketPath/pciID and get the IPs'
"version" back; routes keep every field at every version (Go shares types.Route).
"""
from __future__ import annotations

import ipaddress

from . import version as _v
from .errors import CNIError, DECODING_FAILURE, INCOMPATIBLE_VERSION

_V04 = ("0.3.0", "0.3.1", "0.4.0")


class _Record:
    """Field-wise == and a repr naming the fields: what @dataclass would give, without
    importing dataclasses (inspect, ast, dis: ~8 ms of every plugin exec)."""
    FIELDS: tuple = ()
    __hash__ = None  # type: ignore[assignment]  # mutable records are unhashable, as dataclasses' eq=True

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.FIELDS)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self.FIELDS)})"


class Interface(_Record):
    FIELDS = ("name", "mac", "sandbox", "mtu", "socket_path", "pci_id")

    def __init__(self, name: str, mac: str = "", sandbox: str = "",
                 mtu: int = 0, socket_path: str = "", pci_id: str = ""):     # the last three: 1.1.0
        self.name, self.mac, self.sandbox = name, mac, sandbox
        self.mtu, self.socket_path, self.pci_id = mtu, socket_path, pci_id

    def encode(self, ver: str) -> dict:
        d: dict = {"name": self.name}
        if self.mac:
            d["mac"] = self.mac
        if self.mtu and ver not in _V04:
            d["mtu"] = self.mtu
        if self.sandbox:
            d["sandbox"] = self.sandbox
        if ver not in _V04:        # Go's types100 serves 1.0.0 and 1.1.0 alike
            if self.socket_path:
                d["socketPath"] = self.socket_path
            if self.pci_id:
                d["pciID"] = self.pci_id
        return d

    @classmethod
    def decode(cls, d: dict) -> Interface:
        return cls(name=_str(d, "name"), mac=_str(d, "mac"), sandbox=_str(d, "sandbox"),
                   mtu=int(d.get("mtu") or 0), socket_path=_str(d, "socketPath"),
                   pci_id=_str(d, "pciID"))


class IPConfig(_Record):
    FIELDS = ("address", "gateway", "interface")

    def __init__(self, address: str, gateway: str = "", interface: int | None = None):
        self.address = address       # CIDR, e.g. "10.1.0.5/24"
        self.gateway, self.interface = gateway, interface

    @property
    def family(self) -> str:
        return "4" if ipaddress.ip_interface(self.address).version == 4 else "6"

    def encode(self, ver: str) -> dict:
        d: dict = {}
        if ver in _V04:
            d["version"] = self.family
        if self.interface is not None:
            d["interface"] = self.interface
        d["address"] = self.address
        if self.gateway:
            d["gateway"] = self.gateway
        return d

    @classmethod
    def decode(cls, d: dict) -> IPConfig:
        addr = _str(d, "address")
        try:
            ipaddress.ip_interface(addr)
        except ValueError:
            raise CNIError(DECODING_FAILURE, f"invalid IP address {addr!r} in result") from None
        iface = d.get("interface")
        return cls(address=addr, gateway=_str(d, "gateway"),
                   interface=int(iface) if iface is not None else None)


class Route(_Record):
    FIELDS = ("dst", "gw", "mtu", "advmss", "priority", "table", "scope")

    def __init__(self, dst: str, gw: str = "", mtu: int = 0, advmss: int = 0,      # mtu on: 1.1.0
                 priority: int = 0, table: int | None = None, scope: int | None = None):
        self.dst, self.gw, self.mtu, self.advmss = dst, gw, mtu, advmss
        self.priority, self.table, self.scope = priority, table, scope

    def encode(self, ver: str) -> dict:
        """Go's types.Route is shared by every result version, so it keeps all fields."""
        d: dict = {"dst": self.dst}
        if self.gw:
            d["gw"] = self.gw
        for key in ("mtu", "advmss", "priority"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        if self.table is not None:
            d["table"] = self.table
        if self.scope is not None:
            d["scope"] = self.scope
        return d

    @classmethod
    def decode(cls, d: dict) -> Route:
        return cls(dst=_str(d, "dst"), gw=_str(d, "gw"), mtu=int(d.get("mtu") or 0),
                   advmss=int(d.get("advmss") or 0), priority=int(d.get("priority") or 0),
                   table=d.get("table"), scope=d.get("scope"))


class DNS(_Record):
    FIELDS = ("nameservers", "domain", "search", "options")

    def __init__(self, nameservers: list[str] | None = None, domain: str = "",
                 search: list[str] | None = None, options: list[str] | None = None):
        self.nameservers = [] if nameservers is None else nameservers
        self.domain = domain
        self.search = [] if search is None else search
        self.options = [] if options is None else options

    def encode(self) -> dict:
        d: dict = {}
        if self.nameservers:
            d["nameservers"] = list(self.nameservers)
        if self.domain:
            d["domain"] = self.domain
        if self.search:
            d["search"] = list(self.search)
        if self.options:
            d["options"] = list(self.options)
        return d

    @classmethod
    def decode(cls, d: dict | None) -> DNS:
        d = d or {}
        return cls(nameservers=list(d.get("nameservers") or []), domain=_str(d, "domain"),
                   search=list(d.get("search") or []), options=list(d.get("options") or []))


class Result(_Record):
    FIELDS = ("cni_version", "interfaces", "ips", "routes", "dns")

    def __init__(self, cni_version: str = _v.CURRENT, interfaces: list[Interface] | None = None,
                 ips: list[IPConfig] | None = None, routes: list[Route] | None = None, dns: DNS | None = None):
        self.cni_version = cni_version
        self.interfaces = [] if interfaces is None else interfaces
        self.ips = [] if ips is None else ips
        self.routes = [] if routes is None else routes
        self.dns = DNS() if dns is None else dns

    def encode(self, ver: str | None = None) -> dict:
        """The result as the JSON object of version `ver` (default: its own)."""
        ver = ver or self.cni_version
        if ver not in _v.ALL:
            raise CNIError(INCOMPATIBLE_VERSION, f"cannot convert result to version {ver!r}",
                           f"supported: {list(_v.ALL)}")
        d: dict = {"cniVersion": ver}
        if self.interfaces:
            d["interfaces"] = [i.encode(ver) for i in self.interfaces]
        if self.ips:
            d["ips"] = [ip.encode(ver) for ip in self.ips]
        if self.routes:
            d["routes"] = [r.encode(ver) for r in self.routes]
        d["dns"] = self.dns.encode()   # Go always writes it (omitempty ignores structs)
        return d

    def convert(self, ver: str) -> Result:
        """A copy tagged with another version (what Go's GetAsVersion does)."""
        return decode(self.encode(ver))

    @classmethod
    def decode(cls, d: dict) -> Result:
        return decode(d)


def decode(d: dict, ver: str | None = None) -> Result:
    """Parse a result object; `ver` overrides its cniVersion (prevResult in a config)."""
    if not isinstance(d, dict):
        raise CNIError(DECODING_FAILURE, "result must be a JSON object")
    ver = ver or d.get("cniVersion") or ""
    if ver not in _v.ALL:
        raise CNIError(INCOMPATIBLE_VERSION, f"unsupported result version {ver!r}",
                       f"supported: {list(_v.ALL)}")
    try:
        return Result(
            cni_version=ver,
            interfaces=[Interface.decode(i) for i in d.get("interfaces") or []],
            ips=[IPConfig.decode(ip) for ip in d.get("ips") or []],
            routes=[Route.decode(r) for r in d.get("routes") or []],
            dns=DNS.decode(d.get("dns")),
        )
    except (TypeError, ValueError, AttributeError) as e:
        raise CNIError(DECODING_FAILURE, f"malformed {ver} result", str(e)) from None


def _str(d: dict, key: str) -> str:
    v = d.get(key, "")
    if v is None:
        return ""
    if not isinstance(v, str):
        raise CNIError(DECODING_FAILURE, f"field {key!r} must be a string", repr(v))
    return v
