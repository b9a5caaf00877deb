"""The runtime side (Go's libcni api.go): run a network list's plugins for a container.

ADD runs the plugins in order, passing prevResult along, and caches the final result
in libcni's own format and place (<cacheDir>/results/<net>-<cid>-<ifname>, kind
cniCacheV1), so containerd's libcni and this library read each other's caches.
CHECK and DEL (>= 0.4.0) hand the cached result to the plugins; DEL runs in reverse.
GC DELs cached attachments not in the valid list, then (>= 1.1.0) sends GC to every
plugin. STATUS (>= 1.1.0) asks every plugin. Before the first ADD of a list, each
plugin's VERSION is asked and a list whose version a plugin does not support is refused.
"""
from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field

from . import records
from . import version as V
from .conf import NetworkConfig, NetworkConfigList, inject
from .errors import CNIError, DECODING_FAILURE, INCOMPATIBLE_VERSION, INTERNAL
from .invoke import exec_plugin, exec_with_result, find_in_path, plugin_env, version_info
from .skel import validate_container_id, validate_ifname, validate_network_name
from .types import Result, decode

CACHE_DIR = "/var/lib/cni"
CACHE_KIND = "cniCacheV1"


@dataclass
class RuntimeConf:
    container_id: str
    netns: str = ""
    ifname: str = "eth0"
    args: list[tuple[str, str]] = field(default_factory=list)
    capability_args: dict = field(default_factory=dict)
    cache_dir: str = ""

    @property
    def args_str(self) -> str:
        return ";".join(f"{k}={v}" for k, v in self.args)


class CNIConfig:
    def __init__(self, path: list[str], cache_dir: str = "", check_versions: bool = True,
                 stderr=None):
        self.path = list(path)
        self.cache_dir = cache_dir
        self.check_versions = check_versions
        self.stderr = stderr
        self._versions: dict[tuple, list[str]] = {}
        self.gc_skipped: list[str] = []     # the last GC's unreadable cache files

    # ---- public verbs ----
    def add_network_list(self, lst: NetworkConfigList, rt: RuntimeConf) -> Result:
        if self.check_versions:
            self.validate_network_list(lst)
        result: Result | None = None
        for net in lst.plugins:
            try:
                result = self._add(lst, net, result, rt)
            except CNIError as e:
                raise _wrap(e, net, "add") from None
        if result is None:
            raise CNIError(INTERNAL, f"network list {lst.name!r} has no plugins")
        self._cache_add(result, lst, rt)
        return result

    def check_network_list(self, lst: NetworkConfigList, rt: RuntimeConf) -> None:
        if not V.gte(lst.cni_version, "0.4.0"):
            raise CNIError(INCOMPATIBLE_VERSION,
                           f'configuration version "{lst.cni_version}" does not support the CHECK command')
        if lst.disable_check:
            return
        cached = self.get_cached_result(lst, rt)
        for net in lst.plugins:
            self._run("CHECK", lst, net, cached, rt)

    def del_network_list(self, lst: NetworkConfigList, rt: RuntimeConf) -> None:
        cached = None
        if V.gte(lst.cni_version, "0.4.0"):
            try:
                cached = self.get_cached_result(lst, rt)
            except CNIError:          # as libcni 1.2: drop a cache we cannot read, DEL anyway
                self._cache_remove(lst, rt)
        for net in reversed(lst.plugins):
            try:
                self._run("DEL", lst, net, cached, rt)
            except CNIError as e:
                raise _wrap(e, net, "delete") from None
        self._cache_remove(lst, rt)

    def gc_network_list(self, lst: NetworkConfigList, valid_attachments: list[dict]) -> None:
        if lst.disable_gc:
            return
        valid = {(a.get("containerID"), a.get("ifname")) for a in valid_attachments}
        errors: list[str] = []
        unreadable: list[str] = []
        attachments = self.get_cached_attachments(unreadable=unreadable)
        if unreadable and self.stderr is not None:      # skipped, never fatal: reported
            self.stderr.write(f"pycni: GC skipped cache files it cannot read: {', '.join(unreadable)}\n")
        self.gc_skipped = unreadable
        for att in attachments:
            if att["networkName"] != lst.name or (att["containerId"], att["ifName"]) in valid:
                continue
            rt = RuntimeConf(container_id=att["containerId"], netns=att.get("netns", ""),
                             ifname=att["ifName"], args=[tuple(a) for a in att.get("cniArgs") or []],
                             capability_args=att.get("capabilityArgs") or {}, cache_dir=self.cache_dir)
            try:
                self.del_network_list(lst, rt)
            except CNIError as e:
                errors.append(f"failed to delete stale attachment {rt.container_id} {rt.ifname}: {e}")
        if V.gte(lst.cni_version, "1.1.0"):
            # libcni >= 1.2.3 sets both keys: the spec's and the one 1.2.0 used.
            extra = {"cni.dev/valid-attachments": list(valid_attachments),
                     "cni.dev/attachments": list(valid_attachments)}
            for net in lst.plugins:
                try:
                    self._run_bare("GC", lst, net, extra)
                except CNIError as e:
                    errors.append(str(_wrap(e, net, "gc")))
        if errors:
            raise CNIError(INTERNAL, "; ".join(errors))

    def get_status_network_list(self, lst: NetworkConfigList) -> None:
        if not V.gte(lst.cni_version, "1.1.0"):
            return
        for net in lst.plugins:
            self._run_bare("STATUS", lst, net, {})   # first error wins, code preserved

    def validate_network_list(self, lst: NetworkConfigList) -> None:
        """Refuse a list whose cniVersion one of its plugins does not support."""
        ver = lst.cni_version or "0.1.0"
        for net in lst.plugins:
            supported = self.plugin_versions(net.type)
            if ver not in supported:
                raise CNIError(INCOMPATIBLE_VERSION,
                               f'plugin {net.type} does not support config version "{ver}"',
                               f"plugin supports {supported}")

    def plugin_versions(self, plugin_type: str) -> list[str]:
        path = find_in_path(plugin_type, self.path)
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        if key not in self._versions:
            self._versions[key] = version_info(path)
        return self._versions[key]

    # ---- cache ----
    def _cache_dir(self, rt: RuntimeConf | None = None) -> str:
        return self.cache_dir or (rt.cache_dir if rt and rt.cache_dir else CACHE_DIR)

    def _cache_path(self, net_name: str, rt: RuntimeConf) -> str:
        if not net_name or not rt.container_id or not rt.ifname:
            raise CNIError(INTERNAL, f"cache file path requires network name ({net_name!r}), container ID "
                                     f"({rt.container_id!r}), and interface name ({rt.ifname!r})")
        validate_network_name(net_name)          # all three name a file: no '/' or '..' gets through
        validate_container_id(rt.container_id)
        validate_ifname(rt.ifname)
        return os.path.join(self._cache_dir(rt), "results", f"{net_name}-{rt.container_id}-{rt.ifname}")

    def _cache_add(self, result: Result, lst: NetworkConfigList, rt: RuntimeConf) -> None:
        cached: dict[str, object] = {"kind": CACHE_KIND, "containerId": rt.container_id,
                  "config": base64.b64encode(lst.raw).decode(), "ifName": rt.ifname,
                  "networkName": lst.name, "netns": rt.netns}
        if rt.args:
            cached["cniArgs"] = [list(a) for a in rt.args]
        if rt.capability_args:
            cached["capabilityArgs"] = rt.capability_args
        cached["result"] = result.encode()
        path = self._cache_path(lst.name, rt)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        records.write(path, None, text=json.dumps(cached))

    def _cache_remove(self, lst: NetworkConfigList, rt: RuntimeConf) -> None:
        try:
            os.remove(self._cache_path(lst.name, rt))
        except (OSError, CNIError):
            pass

    def get_cached_result(self, lst: NetworkConfigList, rt: RuntimeConf) -> Result | None:
        try:
            data = records.read(self._cache_path(lst.name, rt))
        except (OSError, ValueError):      # ValueError: records.RecordError, any content
            return None
        raw = data.get("result") if isinstance(data, dict) and data.get("kind") == CACHE_KIND else data
        if not isinstance(raw, dict):          # legacy caches held the bare result
            return None
        try:
            return decode(raw).convert(lst.cni_version)
        except CNIError as e:
            raise CNIError(e.code, f"failed to convert cached result to config version "
                                   f"{lst.cni_version!r}: {e.msg}", e.details) from None
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:   # any content
            raise CNIError(DECODING_FAILURE, "cached result is malformed", f"{type(e).__name__}: {e}") from None

    def get_cached_config(self, lst: NetworkConfigList, rt: RuntimeConf) -> tuple[bytes, RuntimeConf] | None:
        try:
            data = records.read(self._cache_path(lst.name, rt))
        except (OSError, ValueError):
            return None
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind != CACHE_KIND:
            raise CNIError(INTERNAL, f"read cached network {lst.name!r} config has wrong kind: {kind}")
        new = RuntimeConf(**{**rt.__dict__})
        if data.get("cniArgs") is not None:
            new.args = [tuple(a) for a in data["cniArgs"]]
        new.capability_args = data.get("capabilityArgs") or {}
        return base64.b64decode(data.get("config", "")), new

    def get_cached_attachments(self, container_id: str = "", unreadable: list | None = None) -> list[dict]:
        """Every readable cniCacheV1 attachment; the names of files that are not are appended
        to `unreadable` (any content: too large, not JSON, nested too deep, 1e999, a FIFO)."""
        d = os.path.join(self._cache_dir(), "results")
        try:
            names = sorted(os.listdir(d))
        except OSError:
            return []
        out = []
        for n in names:
            if container_id and container_id not in n:
                continue
            if records.is_temp(n):
                continue
            try:
                data = records.read(os.path.join(d, n))
            except (OSError, ValueError):
                if unreadable is not None:
                    unreadable.append(n)
                continue
            if not isinstance(data, dict) or data.get("kind") != CACHE_KIND:
                continue
            if not all(data.get(k) for k in ("networkName", "containerId", "ifName")):
                continue
            if container_id and data["containerId"] != container_id:
                continue
            out.append(data)
        return out

    # ---- one plugin ----
    def _build(self, lst: NetworkConfigList, net: NetworkConfig, prev: Result | None,
               rt: RuntimeConf | None, extra: dict) -> bytes:
        values = {"name": lst.name, "cniVersion": lst.cni_version, **extra}
        if prev is not None:
            values["prevResult"] = prev.encode(lst.cni_version)
        conf = inject(net, values)
        if rt is not None:
            rc = {cap: rt.capability_args[cap] for cap, on in net.capabilities.items()
                  if on and cap in rt.capability_args}
            if rc:
                conf = inject(conf, {"runtimeConfig": rc})
        return conf.raw

    def _env(self, command: str, rt: RuntimeConf | None) -> dict:
        path = os.pathsep.join(self.path)
        if rt is None:
            return plugin_env(command, path=path)
        return plugin_env(command, rt.container_id, rt.netns, rt.ifname, rt.args_str, path)

    def _add(self, lst, net, prev, rt) -> Result:
        plugin = find_in_path(net.type, self.path)
        validate_container_id(rt.container_id)
        validate_network_name(lst.name)
        validate_ifname(rt.ifname)
        stdin = self._build(lst, net, prev, rt, {})
        return exec_with_result(plugin, stdin, self._env("ADD", rt), self.stderr)

    def _run(self, command, lst, net, prev, rt) -> None:
        plugin = find_in_path(net.type, self.path)
        exec_plugin(plugin, self._build(lst, net, prev, rt, {}), self._env(command, rt), self.stderr)

    def _run_bare(self, command, lst, net, extra) -> None:
        plugin = find_in_path(net.type, self.path)
        exec_plugin(plugin, self._build(lst, net, None, None, extra), self._env(command, None), self.stderr)


def _wrap(e: CNIError, net: NetworkConfig, action: str) -> CNIError:
    desc = f'type="{net.type}"' + (f' name="{net.name}"' if net.name else "")
    return CNIError(e.code, f"plugin {desc} failed ({action}): {e.msg}", e.details)
