"""Exec CNI plugins (Go's pkg/invoke): find on CNI_PATH, run, parse result or error.

Used by the runtime side (api.py) and by plugins delegating to IPAM.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import time

from . import version as V
from .errors import CNIError, INTERNAL, DECODING_FAILURE, INVALID_CONFIG

# Every plugin exec'd through here carries its depth in the environment; a plugin that delegates
# (IPAM, a chained delegate) passes it on, +1. A config that makes a plugin delegate to itself,
# or a ring of plugins doing so, stops at MAX_DEPTH with code 7 instead of forking until the
# machine runs out of memory. Go's invoke passes the environment on, so the marker crosses Go
# plugins too.
DEPTH_VAR = "PYCNI_DELEGATION_DEPTH"
MAX_DEPTH = 8


def _depth(env) -> int:
    raw = env.get(DEPTH_VAR, "0")
    return int(raw) if raw.isdigit() and len(raw) < 4 else MAX_DEPTH


def find_in_path(plugin: str, paths: list[str]) -> str:
    if not plugin:
        raise CNIError(INTERNAL, "no plugin name provided")
    if "/" in plugin or plugin in (".", ".."):
        raise CNIError(INTERNAL, f"invalid plugin name {plugin!r}")
    if not paths:
        raise CNIError(INTERNAL, "no paths provided")
    for d in paths:
        p = os.path.join(d, plugin)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    # A plugin that is not installed (or a `type` with a typo) is the user's to fix: code 7, not 999.
    raise CNIError(INVALID_CONFIG, f'failed to find plugin "{plugin}" in path {paths}',
                   "install the plugin into one of these directories, or fix the config's type")


def plugin_env(command: str, container_id: str = "", netns: str = "", ifname: str = "",
               args: str = "", path: str = "", base: dict | None = None) -> dict:
    """The parent's environment with the six CNI variables set (Go's Args.AsEnv)."""
    env = dict(os.environ if base is None else base)
    env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
                "CNI_ARGS": args, "CNI_IFNAME": ifname, "CNI_PATH": path})
    return env


def exec_plugin(plugin_path: str, stdin: bytes, env: dict, stderr=None) -> bytes:
    """Run a plugin; return its stdout, or raise the CNIError it printed."""
    depth = _depth(os.environ) + 1
    if depth > MAX_DEPTH:
        raise CNIError(INVALID_CONFIG, f"refusing to exec {os.path.basename(plugin_path)}: plugins delegated "
                                       f"{MAX_DEPTH} levels deep (a plugin delegating to itself?)",
                       f"{DEPTH_VAR}={os.environ.get(DEPTH_VAR)}")
    env = {**env, DEPTH_VAR: str(depth)}
    for attempt in range(5):
        try:
            p = subprocess.run([plugin_path], input=stdin, env=env, stdout=subprocess.PIPE,
                               stderr=stderr)
            break
        except OSError as e:
            if e.errno == errno.ETXTBSY and attempt < 4:     # being written: retry, as Go does
                time.sleep(1)
                continue
            raise CNIError(INTERNAL, f"failed to exec plugin {plugin_path}: {e.strerror}") from None
    if p.returncode != 0:
        raise _plugin_error(p.stdout, p.stderr or b"", p.returncode)
    return p.stdout


def _plugin_error(stdout: bytes, stderr: bytes, rc: int) -> CNIError:
    if not stdout.strip():
        if stderr:
            return CNIError(INTERNAL, f"netplugin failed: {stderr.decode(errors='replace')!r}")
        return CNIError(INTERNAL, f"netplugin failed with no error message: exit status {rc}")
    try:
        return CNIError.from_dict(json.loads(stdout))
    except (ValueError, AttributeError) as e:
        return CNIError(INTERNAL, f"netplugin failed but error parsing its diagnostic message "
                                  f"{stdout.decode(errors='replace')!r}: {e}")


def exec_with_result(plugin_path: str, netconf: bytes, env: dict, stderr=None):
    """ADD: the result is read in the config's cniVersion, as Go's ExecPluginWithResult."""
    from .types import decode
    out = exec_plugin(plugin_path, netconf, env, stderr)
    conf_version = V.config_version(json.loads(netconf))
    try:
        obj = json.loads(out)
    except ValueError as e:
        raise CNIError(DECODING_FAILURE, f"failed to parse plugin result: {e}",
                       out[:200].decode(errors="replace")) from None
    return decode(obj, ver=conf_version)


def version_info(plugin_path: str, env_base: dict | None = None) -> list[str]:
    """The versions a plugin supports (VERSION command)."""
    env = plugin_env("VERSION", netns="dummy", ifname="dummy", path="dummy", base=env_base)
    out = exec_plugin(plugin_path, json.dumps({"cniVersion": V.CURRENT}).encode(), env)
    try:
        data = json.loads(out)
    except ValueError:
        raise CNIError(DECODING_FAILURE, f"{plugin_path}: bad VERSION answer",
                       out[:200].decode(errors="replace")) from None
    if isinstance(data, dict) and isinstance(data.get("supportedVersions"), list):
        return [str(v) for v in data["supportedVersions"]]
    # Pre-0.3 plugins answered with a bare cniVersion.
    return [str(data.get("cniVersion", "0.1.0"))] if isinstance(data, dict) else []


# --- delegation from inside a plugin (Go's DelegateAdd/Check/Del, plus GC/STATUS) ---

def _located(command: str, plugin: str) -> tuple[str, dict]:
    """The plugin's path on CNI_PATH and this process's environment with CNI_COMMAND set."""
    path = find_in_path(plugin, [p for p in os.environ.get("CNI_PATH", "").split(os.pathsep) if p])
    return path, dict(os.environ, CNI_COMMAND=command)


def _delegate(command: str, plugin: str, netconf: bytes) -> None:
    path, env = _located(command, plugin)
    exec_plugin(path, netconf, env)


def delegate_add(plugin: str, netconf: bytes):
    path, env = _located("ADD", plugin)
    return exec_with_result(path, netconf, env)


def delegate_check(plugin: str, netconf: bytes) -> None:
    _delegate("CHECK", plugin, netconf)


def delegate_del(plugin: str, netconf: bytes) -> None:
    _delegate("DEL", plugin, netconf)


def delegate_gc(plugin: str, netconf: bytes) -> None:
    _delegate("GC", plugin, netconf)


def delegate_status(plugin: str, netconf: bytes) -> None:
    _delegate("STATUS", plugin, netconf)
