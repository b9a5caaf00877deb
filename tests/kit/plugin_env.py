"""The environment of a plugin exec in the tests: one helper, so PYCNI_TEST_DAEMON=1 reaches every exec.

    env = plugin_env({"CNI_COMMAND": "ADD", ...})            # a kit's own CNI environment
    env = plugin_env(dict(os.environ, CNI_COMMAND="DEL"))     # (os.environ carries it already)
    env = plugin_env({...}, daemon=False)                     # this exec must run in-process

In daemon mode (tests/conftest.py's session fixture: one pycni-node, its socket in
$PYCNI_NODE_SOCKET of the test process) the exec's environment gets that socket, so the thin client
hands the request to the daemon; without it, no socket is added and the client finds none (the
host guard keeps /run/pycni, the default socket's place, empty). daemon=False pins the exec
in-process (PYCNI_NODE_SOCKET=off) in both modes: for a kit whose test is the exec'd process itself
(tests/kit/crash.py kills it; a daemon's worker would go on and finish the ADD).

node_served(): how many requests the session's daemon served so far, per plugin name (its debug
log's "served" lines), and the ones it refused ("refused: <why>": that exec ran in-process); {}
without a daemon.
"""
from __future__ import annotations

import os
import re

SOCKET_ENV = "PYCNI_NODE_SOCKET"
LOG_ENV = "PYCNI_TEST_DAEMON_LOG"     # set by the session fixture next to the socket


def plugin_env(env: dict | None = None, *, daemon: bool = True, **cni_vars: str) -> dict:
    """A copy of `env` (default: empty) with `cni_vars`, and the session daemon's socket (or "off")."""
    out = dict(env or {}, **cni_vars)
    if not daemon:
        out[SOCKET_ENV] = "off"
    elif os.environ.get(SOCKET_ENV):
        out[SOCKET_ENV] = os.environ[SOCKET_ENV]
    return out


def daemon_mode() -> bool:
    return bool(os.environ.get(SOCKET_ENV)) and bool(os.environ.get(LOG_ENV))


_SERVED = re.compile(r"^pycni-node: served (\S+) ", re.M)
_REFUSED = re.compile(r"^pycni-node: (?:refused a request|request refused or cut short): (.*)$", re.M)


def node_served() -> dict[str, int]:
    """Requests served by the session daemon, per plugin ({} when there is none)."""
    path = os.environ.get(LOG_ENV)
    return served_in(path) if path else {}


def served_in(path: str) -> dict[str, int]:
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    counts: dict[str, int] = {}
    for why in _REFUSED.findall(text):           # execs that fell back to in-process: a gap in the pass
        counts["refused: " + why] = counts.get("refused: " + why, 0) + 1
    for name in _SERVED.findall(text):
        counts[name] = counts.get(name, 0) + 1
    return counts
