"""Find the namespaces, run the diagnoses: each namespace once (by the nsfs inode), in a forked
child that enters it, so /proc/thread-self/net, /proc/sys/net, iptables-save, nft and netlink all
answer for that namespace; the child sends its findings back as JSON."""
from __future__ import annotations

import json
import os
import select
import signal
import time
from typing import Any

from . import edgemesh_hijack, kernel, marks, nfqueue, overlay, policy_routing, steering, sysctl
from .checkctx import PluginContext
from .finding import Finding, Namespace, finding_from_dict
from .netlink import Kernel, Pyroute2Kernel

# the order they run and report in
CHECKS = [nfqueue, marks, policy_routing, sysctl, kernel, edgemesh_hijack, overlay, steering]
NAMES = [c.NAME for c in CHECKS]
# The checks of our plugins' state, by the plugin type whose configs they read (ctx.confs, from
# --conf or the runtime's config dir): with no config of that type they are skipped, not run.
# A check module may say it itself: CONF_TYPE = "vxlan".
CONF_CHECKS = {"overlay-drift": "vxlan", "steering-integrity": "dp-steering"}
RUN_DIR = "/run/netns"
NS_TIMEOUT = 60.0
PARALLEL = 4            # namespaces checked at once (each child mostly waits for iptables-save, nft)


def _key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def discover() -> list[Namespace]:
    """The doctor's own namespace, the named ones under /run/netns, then those of processes; each once."""
    seen: dict[tuple[int, int], Namespace] = {}
    own = _key("/proc/self/ns/net")
    if own is not None:
        seen[own] = Namespace("/proc/self/ns/net", pid=None, own=True)
    try:
        names = sorted(os.listdir(RUN_DIR))
    except OSError:
        names = []
    for name in names:
        path = os.path.join(RUN_DIR, name)
        k = _key(path)
        if k is not None and k == own:              # run by `ip netns exec NAME`: call it by its name
            seen[k] = Namespace(path, name=name, own=True)
        elif k is not None and k not in seen:
            seen[k] = Namespace(path, name=name)
    pids = sorted(int(d) for d in os.listdir("/proc") if d.isdigit())
    for pid in pids:
        path = f"/proc/{pid}/ns/net"
        k = _key(path)
        if k is not None and k not in seen:
            seen[k] = Namespace(path, pid=pid)
    return list(seen.values())


def namespace_for(path: str) -> Namespace:
    """--netns PATH: raises NetnsError when it is not a network namespace."""
    from libcni_py.netns import open_netns
    os.close(open_netns(path))
    if _key(path) == _key("/proc/self/ns/net"):
        return Namespace(path, own=True)
    real = os.path.realpath(path)
    if os.path.dirname(real) == RUN_DIR:
        return Namespace(path, name=os.path.basename(real))
    parts = real.split("/")
    if len(parts) == 5 and parts[1] == "proc" and parts[2].isdigit():
        return Namespace(path, pid=int(parts[2]))
    return Namespace(path)


class Context(PluginContext):
    """What a diagnosis gets when the doctor runs as a tool: PluginContext's tools (and their
    shortcuts), with netlink through pyroute2 (ctx.ipr(), and ctx.kernel() read through it)."""

    def __init__(self, ns: Namespace, kernel_release: str | None = None, confs: list[dict] | None = None):
        super().__init__(ns, kernel_release, confs)
        self._ipr: Any = None

    def ipr(self) -> Any:
        """Netlink in this namespace (pyroute2's IPRoute); its dumps answered once per namespace."""
        if self._ipr is None:
            from pyroute2 import IPRoute
            self._ipr = _DumpsOnce(IPRoute())
        return self._ipr

    def kernel(self) -> Kernel:
        if self._kernel is None:
            self._kernel = Pyroute2Kernel(self.ipr())
        return self._kernel

    def close(self) -> None:
        super().close()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None


class _DumpsOnce:
    """An IPRoute whose dumps (links, addresses, routes, rules, neighbours) are asked of the kernel
    once per namespace and the answer shared: the diagnoses each build their view of the same
    namespace (the routing checks twice per family), and decoding the dumps is most of their time.
    Read-only, one look, like the tools' answers. Everything else (route get, sock_diag) goes through."""
    DUMPS = ("get_links", "get_addr", "get_routes", "get_rules", "get_neighbours")

    def __init__(self, ipr: Any):
        self._ipr = ipr
        self._seen: dict[str, list] = {}

    def _once(self, what: str, call, args: tuple, kw: dict) -> list:
        key = f"{what} {args!r} {sorted(kw.items())!r}"
        if key not in self._seen:
            self._seen[key] = list(call(*args, **kw))
        return list(self._seen[key])

    def route(self, command: str, *args: Any, **kw: Any) -> Any:
        if command == "dump":
            return self._once("route dump", self._ipr.route, (command, *args), kw)
        return self._ipr.route(command, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ipr, name)
        if name in self.DUMPS:
            return lambda *args, **kw: self._once(name, attr, args, kw)
        return attr


def run_checks(ctx: Context, checks: list, check_s: dict[str, float] | None = None
               ) -> tuple[list[dict], list[dict]]:
    """Each check's findings and errors in `ctx`; `check_s` gets the seconds each took."""
    findings: list[dict] = []
    errors: list[dict] = []
    for c in checks:
        ctx.errors = []
        start = time.monotonic()
        try:
            findings += [f.to_dict() for f in c.check(ctx)]
        except Exception as e:  # noqa: BLE001 - one diagnosis failing must not stop the others
            ctx.errors.append(f"{type(e).__name__}: {e}")
        if check_s is not None:
            check_s[c.NAME] = time.monotonic() - start
        errors += [{"check": c.NAME, "where": ctx.ns.label, "netns": ctx.ns.path, "details": t} for t in ctx.errors]
    return findings, errors


def confs_of(ctx: Context, plugin_type: str) -> list[dict]:
    """The --conf plugin configs of one plugin type (a check of that plugin's state reads these)."""
    return [c for c in ctx.confs if c.get("type") == plugin_type]


def _start(ns: Namespace, checks: list, confs: list[dict]) -> tuple[int, int]:
    """Fork, enter `ns` in the child, run the checks there; the child answers JSON on a pipe.
    Returns (pid, read end)."""
    from plugins.pkg.ns import _setns, open_netns
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # child
        code = 0
        try:
            start = time.monotonic()
            os.close(r)
            fd = open_netns(ns.path)
            _setns(fd)
            entered = time.monotonic()
            ctx = Context(ns, confs=confs)
            check_s: dict[str, float] = {}
            out = run_checks(ctx, checks, check_s)
            ctx.close()
            timing = {"enter_s": entered - start, "checks_s": check_s, "tools_s": ctx.tool_s,
                      "child_s": time.monotonic() - start}
            data = json.dumps({"findings": out[0], "errors": out[1], "timing": timing}).encode()
        except BaseException as e:  # noqa: BLE001
            data = json.dumps({"findings": [], "errors": [{"check": "*", "where": ns.label, "netns": ns.path,
                                                           "details": f"{type(e).__name__}: {e}"}]}).encode()
            code = 1
        try:
            while data:
                data = data[os.write(w, data):]
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _in_namespaces(namespaces: list[Namespace], checks: list, confs: list[dict], parallel: int = 0,
                   timing: list[dict] | None = None) -> list[tuple[list[dict], list[dict]]]:
    """Each namespace's (findings, errors), in the order given; `parallel` (default PARALLEL)
    children at a time, each killed after NS_TIMEOUT. `timing` gets each namespace's times."""
    answers: list[tuple[list[dict], list[dict]]] = [([], [])] * len(namespaces)
    running: dict[int, tuple[int, int, float, list[bytes]]] = {}     # read fd -> (index, pid, deadline, chunks)
    started: dict[int, float] = {}
    todo = list(enumerate(namespaces))
    while todo or running:
        while todo and len(running) < (parallel or PARALLEL):
            i, ns = todo.pop(0)
            started[i] = time.monotonic()
            pid, r = _start(ns, checks, confs)
            running[r] = (i, pid, time.monotonic() + NS_TIMEOUT, [])
        wait = max(0.0, min(d for _, _, d, _ in running.values()) - time.monotonic())
        ready = select.select(list(running), [], [], wait)[0]
        now = time.monotonic()
        for r in list(running):
            i, pid, deadline, chunks = running[r]
            if r in ready:
                chunk = os.read(r, 65536)
                if chunk:
                    chunks.append(chunk)
                    continue
                os.waitpid(pid, 0)
                answer = json.loads(b"".join(chunks) or b'{"findings": [], "errors": []}')
                answers[i] = (answer["findings"], answer["errors"])
                if timing is not None and "timing" in answer:
                    timing.append({"where": namespaces[i].label, "wall_s": time.monotonic() - started[i],
                                   **answer["timing"]})
            elif now >= deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                ns = namespaces[i]
                answers[i] = ([], [{"check": "*", "where": ns.label, "netns": ns.path,
                                    "details": f"no answer within {NS_TIMEOUT:.0f} s"}])
            else:
                continue
            os.close(r)
            del running[r]
    return answers


def _vanished(ns: Namespace, errors: list[dict]) -> bool:
    """A namespace deleted (or whose last process exited) while we looked: not an error."""
    return bool(errors) and not ns.own and not os.path.exists(ns.path)


def run(namespaces: list[Namespace], names: list[str], kernel_release: str | None = None,
        confs: list[dict] | None = None, parallel: int = 0, timing: list[dict] | None = None
        ) -> tuple[list[Finding], list[dict], list[Namespace]]:
    """All findings (check order, then namespace order), the errors, and the namespaces visited.
    `confs`: our plugins' configs (--conf), handed to every diagnosis as ctx.confs. `parallel`:
    namespaces checked at once (0: PARALLEL). `timing`: gets each namespace's times (--profile)."""
    confs = confs or []
    checks = [c for c in CHECKS if c.NAME in names]
    per_ns = [c for c in checks if c.PER_NAMESPACE]
    node = [c for c in checks if not c.PER_NAMESPACE]
    found: list[dict] = []
    errors: list[dict] = []
    visited: list[Namespace] = []
    if per_ns:
        from pyroute2 import IPRoute  # noqa: F401 - loaded once here, not in every forked child (~100 ms)
    answers = _in_namespaces(namespaces, per_ns, confs, parallel, timing) if per_ns else []
    for ns, (f, e) in zip(namespaces, answers):
        if _vanished(ns, e):
            continue
        visited.append(ns)
        found += f
        errors += e
    if node:
        check_s: dict[str, float] = {}
        ctx = Context(Namespace("/proc/self/ns/net", own=True), kernel_release, confs)
        f, e = run_checks(ctx, node, check_s)
        ctx.close()
        if timing is not None:
            timing.append({"where": "node", "checks_s": check_s, "tools_s": ctx.tool_s})
        found += f
        errors += e
    order = {n: i for i, n in enumerate(NAMES)}
    findings = sorted((finding_from_dict(d) for d in found), key=lambda x: order[x.check])  # stable
    return findings, errors, visited
