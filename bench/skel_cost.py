"""What libcni_py.skel.run costs around a plugin's cmd_*, per verb, as pycni-node's worker runs it.

    .venv/bin/python bench/skel_cost.py [--runs 200] [--mode worker|driver|exec] [--profile] [--before DIR]

Each plugin's handlers are replaced by one that returns the answer its cmd_* gives (a fixed result for
ADD, None otherwise), so what is timed is skel.run's own work: the environment and name checks, the
config decode, the version gates, logging set-up, the plugin's `validate` hook (its schema check), the
result's encoding and write. The plugin's module, its config and its validate hook are the real ones.
Modes: "worker" imports the daemon's PRELOAD and plugin modules and then drops `logging` from
sys.modules as the worker's _fresh_logging does; "driver" keeps logging imported (what
bench/pod_work.py's driver does: its numbers include a logging set-up per verb that the real worker
does not do); "exec" imports only the plugin module. Runs each verb --runs times in this process
(CNI_NETNS is /proc/self/ns/net: a network namespace; nothing is changed in it) and prints the median
microseconds per verb; --profile prints cProfile call counts per verb instead. --before DIR: the
same loop with an older tree's code (git archive REV | tar -x -C DIR), interleaved run by run with
this tree's in two child processes, medians of each (for A/B on a loaded machine); compile DIR first
(.venv/bin/python -m compileall -q DIR): with PYTHONDONTWRITEBYTECODE set, what "exec" imports
lazily would be compiled from source in every run of that tree only.
Writes only a log file under a temporary directory (case edgemesh+log), removed at the end.
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PASSTHROUGH = {"cniVersion": "1.0.0", "name": "pycni-runtime", "type": "pycni-passthrough"}
VXLAN = {"cniVersion": "1.0.0", "name": "pycni-runtime", "type": "vxlan", "network": "10.244.0.0/16",
         "registry": {"type": "file", "path": "/var/lib/cni/pycni/vxlan/registry.json"},
         "capabilities": {"ips": True}, "ipMasq": False,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]}}
EDGEMESH = {"cniVersion": "1.0.0", "name": "pycni-runtime", "type": "edgemesh", "serviceCIDR": "10.96.0.0/12",
            "listenAddress": "169.254.96.16", "listenPort": 40001, "protocols": ["tcp"], "backend": "iptables"}
PREV = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "02:42:0a:f4:01:05", "sandbox": "/proc/self/ns/net"}],
        "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}], "dns": {}}
LOG_DIR = tempfile.mkdtemp(prefix="skel-cost-")
CASES = {"pycni-passthrough": PASSTHROUGH, "vxlan": VXLAN, "edgemesh": EDGEMESH,
         # conf/edgemesh.conflist's logging keys (its logFile under a temporary directory)
         "edgemesh+log": {**EDGEMESH, "logLevel": "info", "logFile": os.path.join(LOG_DIR, "edgemesh.log")}}
VERBS = ("ADD", "DEL")
# plugins.node.daemon.PLUGIN_MODULES's, copied: "exec" must not import the daemon (nor its logging)
MODULES = {"vxlan": "plugins.main.vxlan.cmd", "edgemesh": "plugins.meta.edgemesh.cmd",
           "pycni-passthrough": "plugins.meta.passthrough.cmd"}


def prepare(mode: str):
    if mode != "exec":
        from plugins.node import daemon
        for m in (*daemon.PRELOAD, *daemon.PLUGIN_MODULES.values()):
            try:
                importlib.import_module(m)
            except ImportError:
                pass
        from plugins.pkg import schema
        for name in sorted(os.listdir(schema.schema_dir())):
            if name.endswith(".json"):
                schema.load(name[:-5])
        if mode == "worker":
            for name in [m for m in sys.modules if m == "logging" or m.startswith("logging.")]:
                del sys.modules[name]
    from libcni_py import skel
    plugins = {}
    for name in CASES:
        real = importlib.import_module(MODULES[name.partition("+")[0]]).PLUGIN

        def answer(args, _prev=PREV):
            return dict(_prev) if args.command == "ADD" else None
        plugins[name] = skel.Plugin(add=answer, check=answer, delete=answer, gc=answer, status=answer,
                                    supported=real.supported, about=real.about, validate=real.validate,
                                    needs_netns=real.needs_netns, translate=real.translate)
    return skel, plugins


def one(skel, plugin, name: str, verb: str) -> tuple[int, str, float]:
    env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": "skelcost-1", "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"}
    data = json.dumps({**CASES[name], "prevResult": PREV}).encode()
    out, err = io.StringIO(), io.StringIO()
    t = time.perf_counter_ns()
    rc = skel.run(plugin, env, io.BytesIO(data), out, err)
    dt = time.perf_counter_ns() - t
    if "logging" in sys.modules:              # what the worker does after skel.run
        sys.modules["logging"].shutdown()
    return rc, out.getvalue() + err.getvalue(), dt / 1000


def forked(skel, plugin, name: str, verb: str, profile: bool):
    """One request in a process forked from this one, as a worker forked from the daemon's main:
    whatever skel caches per process (compiled patterns, the logger's handlers) starts as the
    main left it. The child's answer (its time, or its profile) comes back through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            if profile:
                import cProfile
                import pstats
                p = cProfile.Profile()
                p.enable()
                rc, text, dt = one(skel, plugin, name, verb)
                p.disable()
                st = pstats.Stats(p)
                calls = sum(v[1] for v in st.stats.values())      # type: ignore[attr-defined]
                buf = io.StringIO()
                pstats.Stats(p, stream=buf).sort_stats("ncalls").print_stats(25)
                ans: object = {"calls": calls, "top": buf.getvalue()}
            else:
                rc, text, dt = one(skel, plugin, name, verb)
                ans = dt
            if rc != 0:
                ans = {"error": f"{name} {verb}: rc {rc}: {text}"}
            os.write(w, json.dumps(ans).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    os.waitpid(pid, 0)
    ans = json.loads(b"".join(chunks))
    if isinstance(ans, dict) and "error" in ans:
        raise SystemExit(ans["error"])
    return ans


def child(mode: str, runs: int, profile: bool) -> None:
    skel, plugins = prepare(mode)
    res = {}
    for name, plugin in plugins.items():
        for verb in VERBS:
            if profile:
                res[f"{name} {verb}"] = forked(skel, plugin, name, verb, profile)
            else:
                res[f"{name} {verb}"] = [forked(skel, plugin, name, verb, profile) for _ in range(runs)]
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5, help="with --before: interleaved child pairs")
    ap.add_argument("--mode", default="worker", choices=("worker", "driver", "exec"))
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--before", metavar="DIR")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    try:
        if a.child:
            sys.path.insert(0, os.getcwd())
            child(a.mode, a.runs, a.profile)
            return
        report(a)
    finally:
        shutil.rmtree(LOG_DIR, ignore_errors=True)


def report(a) -> None:
    trees = [("this tree", ROOT)] + ([("before", a.before)] if a.before else [])
    got: dict[str, dict[str, list]] = {t: {} for t, _ in trees}
    for r in range(a.rounds if a.before else 1):
        for label, tree in (trees if r % 2 == 0 else trees[::-1]):
            argv = [sys.executable, os.path.abspath(__file__), "--child", "--mode", a.mode, "--runs", str(a.runs)]
            p = subprocess.run(argv + (["--profile"] if a.profile else []), cwd=tree, capture_output=True,
                               timeout=600, env={**os.environ, "PYTHONPATH": tree})
            if p.returncode:
                raise SystemExit(p.stderr.decode()[-3000:])
            for k, v in json.loads(p.stdout).items():
                got[label].setdefault(k, []).append(v)
    if a.profile:
        for label, rows in got.items():
            for k, vs in rows.items():
                print(f"## {label}: {k}: {vs[0]['calls']} calls")
                print(vs[0]["top"])
        return
    head = "| verb (us, median) | " + " | ".join(t for t, _ in trees) + " |"
    print(f"mode {a.mode}, load {os.getloadavg()[0]:.1f}\n{head}\n|---|" + "---:|" * len(trees))
    for k in got["this tree"]:
        cells = [statistics.median(x for run in got[t][k] for x in run) for t, _ in trees]
        print(f"| {k} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
