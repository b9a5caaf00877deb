"""Load network configurations the way Go's libcni does (conf.go).

A NetworkConfigList keeps the raw bytes of the list and of each plugin config;
per-invocation values (name, cniVersion, prevResult, runtimeConfig) are injected
into a copy of the plugin's JSON, never into what was loaded.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from . import version as V
from .errors import CNIError, DECODING_FAILURE, INVALID_CONFIG


class NoConfigsFound(CNIError):
    def __init__(self, d: str):
        super().__init__(INVALID_CONFIG, f"no net configurations found in {d}")


class NotFound(CNIError):
    def __init__(self, d: str, name: str):
        super().__init__(INVALID_CONFIG, f'no net configuration with name "{name}" in {d}')


@dataclass
class NetworkConfig:
    """One plugin's config: its parsed JSON object and the bytes it came from."""
    network: dict
    raw: bytes

    @property
    def type(self) -> str:
        return self.network.get("type", "")

    @property
    def name(self) -> str:
        return self.network.get("name", "")

    @property
    def cni_version(self) -> str:
        return self.network.get("cniVersion", "")

    @property
    def capabilities(self) -> dict:
        caps = self.network.get("capabilities") or {}
        return caps if isinstance(caps, dict) else {}


@dataclass
class NetworkConfigList:
    name: str
    cni_version: str
    plugins: list[NetworkConfig] = field(default_factory=list)
    raw: bytes = b""
    disable_check: bool = False
    disable_gc: bool = False


def conf_from_bytes(data: bytes) -> NetworkConfig:
    obj = _json_object(data, "configuration")
    if not obj.get("type"):
        raise CNIError(INVALID_CONFIG, "error parsing configuration: missing 'type'")
    return NetworkConfig(network=obj, raw=bytes(data))


def conf_from_file(path: str) -> NetworkConfig:
    return conf_from_bytes(_read(path))


def conflist_from_bytes(data: bytes) -> NetworkConfigList:
    obj = _json_object(data, "configuration list")
    name = obj.get("name")
    if name is None:
        raise CNIError(INVALID_CONFIG, "error parsing configuration list: no name")
    if not isinstance(name, str):
        raise CNIError(INVALID_CONFIG, f"error parsing configuration list: invalid name type {type(name).__name__}")
    ver = _list_version(obj)
    flags = {}
    for key in ("disableCheck", "disableGC"):
        v = obj.get(key, False)
        if not isinstance(v, bool):
            raise CNIError(INVALID_CONFIG, f"error parsing configuration list: invalid {key} type {type(v).__name__}")
        flags[key] = v
    plugins = obj.get("plugins")
    if plugins is None:
        raise CNIError(INVALID_CONFIG, "error parsing configuration list: no 'plugins' key")
    if not isinstance(plugins, list):
        raise CNIError(INVALID_CONFIG,
                       f"error parsing configuration list: invalid 'plugins' type {type(plugins).__name__}")
    if not plugins:
        raise CNIError(INVALID_CONFIG, "error parsing configuration list: no plugins in list")
    out = NetworkConfigList(name=name, cni_version=ver, raw=bytes(data),
                            disable_check=flags["disableCheck"], disable_gc=flags["disableGC"])
    for i, p in enumerate(plugins):
        try:
            out.plugins.append(conf_from_bytes(json.dumps(p).encode()))
        except CNIError as e:
            raise CNIError(e.code, f"failed to parse plugin config {i}: {e.msg}", e.details) from None
    return out


def conflist_from_dict(obj: dict) -> NetworkConfigList:
    return conflist_from_bytes(json.dumps(obj).encode())


def conflist_from_file(path: str) -> NetworkConfigList:
    return conflist_from_bytes(_read(path))


def conflist_from_conf(conf: NetworkConfig) -> NetworkConfigList:
    """Wrap a single .conf into a list of one, as libcni's ConfListFromConf."""
    return conflist_from_dict({"name": conf.name, "cniVersion": conf.cni_version,
                               "plugins": [conf.network]})


def conf_files(d: str, extensions: tuple[str, ...]) -> list[str]:
    """Files in `d` with one of the extensions, sorted by name; a missing dir is empty."""
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        p = os.path.join(d, n)
        if os.path.splitext(n)[1] in extensions and not os.path.isdir(p):
            out.append(p)
    return sorted(out)


def load_conf(d: str, name: str) -> NetworkConfig:
    files = conf_files(d, (".conf", ".json"))
    if not files:
        raise NoConfigsFound(d)
    for f in files:
        c = conf_from_file(f)
        if c.name == name:
            return c
    raise NotFound(d, name)


def load_conflist(d: str, name: str) -> NetworkConfigList:
    """The network `name` from `d`: .conflist files first, then .conf/.json (libcni order)."""
    files = conf_files(d, (".conflist",))
    for f in files:
        lst = conflist_from_file(f)
        if lst.name == name:
            return lst
    try:
        single = load_conf(d, name)
    except NoConfigsFound:
        if files:
            raise NotFound(d, name) from None
        raise
    return conflist_from_conf(single)


def inject(conf: NetworkConfig, values: dict) -> NetworkConfig:
    """A copy of `conf` with top-level keys set (libcni's InjectConf)."""
    obj = json.loads(conf.raw)
    for k, v in values.items():
        if not k:
            raise CNIError(INVALID_CONFIG, "keys cannot be empty")
        if v is None:
            raise CNIError(INVALID_CONFIG, f"key '{k}' value must not be nil")
        obj[k] = v
    return conf_from_bytes(json.dumps(obj).encode())


def _list_version(obj: dict) -> str:
    ver = obj.get("cniVersion", "")
    if not isinstance(ver, str):
        raise CNIError(INVALID_CONFIG,
                       f"error parsing configuration list: invalid cniVersion type {type(ver).__name__}")
    versions = obj.get("cniVersions")
    if versions is not None:          # 1.1.0: the highest of cniVersions + cniVersion we implement
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise CNIError(INVALID_CONFIG, "error parsing configuration list: cniVersions must be a list of strings")
        candidates = versions + ([ver] if ver else [])
        usable = [v for v in candidates if V.parse(v) <= V.parse(V.CURRENT)]
        if usable:
            ver = max(usable, key=V.parse)
    return ver


def _json_object(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CNIError(DECODING_FAILURE, f"error parsing {what}: {e}") from None
    if not isinstance(obj, dict):
        raise CNIError(DECODING_FAILURE, f"error parsing {what}: not a JSON object")
    return obj


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CNIError(INVALID_CONFIG, f"error reading {path}: {e.strerror}") from None
