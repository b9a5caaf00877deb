"""Where vxlan's and edgemesh's own per-pod work goes, as pycni-node's worker runs it: counts that
do not depend on the machine's load (execs by program, child processes, netlink requests and
dumps of the plugin process, fsyncs, flocks, sysctl writes) from `strace -f`, and an in-process
cProfile of each verb (its total, and the top functions by cumulative time).

    sudo .venv/bin/python bench/pod_work.py [--pods 4] [--cases chain,nft,dual,agent] [--profile] [--before DIR]

Each verb runs in a child process the way the daemon's worker does: the daemon's PRELOAD and
plugin modules imported and its schemas preloaded first, then setns into the test host, then
skel.run with the request's environment and stdin (markers written around it bound what is
counted). The sequence per case: a first pod (ADD), --pods pods ADD then DEL with the first one
present (the steady state), then the first pod's DEL (the last pod of the node). Cases: "chain"
is conf/runtime-chain.conflist made local by tests/kit/runtimes.py (vxlan with host-local IPAM,
ipMasq off; edgemesh with iptables), "nft" the same with edgemesh's nftables backend, "dual" a
dual-stack vxlan (no edgemesh), "agent" the chain case with vxlan-agent running on the node for
the case's vxlan conf while the verbs run (as `pycni-node --conf <conflist>` runs it on a real
node: ADD reads the agent's state instead of reconciling the node); --keep DIR copies the strace
logs or profiles out.
Root, namespaces only (all removed at the end). Prints a table; writes nothing.
"""
from __future__ import annotations

import argparse
import collections
import glob
import io
import json
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.kit import runtimes  # noqa: E402
from tests.kit.netns import NetNS  # noqa: E402
from tests.kit.vxlan_dual import DualCluster  # noqa: E402

PY = os.path.join(ROOT, ".venv", "bin", "python")

DRIVER = r"""
import importlib, io, json, os, sys
from plugins.node import daemon
for m in (*daemon.PRELOAD, *daemon.PLUGIN_MODULES.values()):
    try:
        importlib.import_module(m)
    except ImportError:
        pass
if hasattr(daemon, "preload_schemas"):      # as pycni-node's main does before it forks workers
    daemon.preload_schemas()
from libcni_py import skel
from plugins.pkg import ns
plugin, host, env_file, stdin_file, out_file, prof = sys.argv[1:7]
mod = importlib.import_module(daemon.PLUGIN_MODULES[plugin])
env = json.load(open(env_file))
data = open(stdin_file, "rb").read()
mark = os.open(os.devnull, os.O_WRONLY)
with ns.enter(host):
    os.environ.clear()
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    os.write(mark, b"PYCNI-BEGIN")
    if prof:
        import cProfile
        p = cProfile.Profile()
        p.enable()
    rc = skel.run(mod.PLUGIN, env, io.BytesIO(data), out, err)
    if prof:
        p.disable()
        p.dump_stats(prof)
    os.write(mark, b"PYCNI-END")
with open(out_file, "w") as f:
    json.dump({"rc": rc, "out": out.getvalue(), "err": err.getvalue()}, f)
os._exit(0)
"""


def step(tag: str, plugin: str, host, env: dict, conf: dict, work: str, out: str, mode: str, tree: str = ROOT):
    envf, inf, outf = (os.path.join(work, f"{tag}.{x}") for x in ("env", "in", "out"))
    with open(envf, "w") as f:
        json.dump(env, f)
    with open(inf, "wb") as f:
        f.write(json.dumps(conf).encode())
    prof = os.path.join(out, f"{tag}.prof") if mode == "profile" else ""
    argv = [PY, "-c", DRIVER, plugin, host.path, envf, inf, outf, prof]
    if mode == "strace":
        argv = ["strace", "-f", "-qq", "-yy", "-e", "signal=none", "-s", "80",
                "-o", os.path.join(out, f"{tag}.strace"), *argv]
    p = subprocess.run(argv, capture_output=True, cwd=tree, timeout=300)     # the tree's code: sys.path[0]
    with open(outf) as f:
        got = json.load(f)
    if got["rc"] != 0:
        raise SystemExit(f"{tag}: rc {got['rc']}: {got['out']} {got['err']} {p.stderr.decode()[-2000:]}")
    return json.loads(got["out"]) if got["out"].strip() else None


def run_case(name: str, vx: dict, em: dict | None, host, factory, pods: int, work: str, out: str, mode: str,
             before: str | None = None):
    """The sequence; with `before`, every steady pod is done twice, by this tree and by that one
    (alternating which goes first), its tag's label ending in "b" for the older tree."""
    cni_path = f"{runtimes.VENV_BIN}:/usr/lib/cni"

    def env(verb, cid, pod):
        return {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_NETNS": pod.path, "CNI_IFNAME": "eth0",
                "CNI_PATH": cni_path, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
                "PATH": os.environ["PATH"]}
    resident = None
    steady = [f"s{i}{t}" for i in range(pods) for t in (("", "b") if i % 2 == 0 else ("b", "")) if t == "" or before]
    for label in ["first", *steady, "last"]:
        tree = before if label.endswith("b") and before else ROOT
        if label == "last":
            cid, pod, res = resident
        else:
            pod, cid = factory("pwp"), f"{name}-{label}"
            res = step(f"{name}.{label}.vxlan.ADD", "vxlan", host, env("ADD", cid, pod), vx, work, out, mode, tree)
            if em is not None:
                step(f"{name}.{label}.edgemesh.ADD", "edgemesh", host, env("ADD", cid, pod),
                     {**em, "prevResult": res}, work, out, mode, tree)
            if label == "first":
                resident = (cid, pod, res)
                continue
        if em is not None:
            step(f"{name}.{label}.edgemesh.DEL", "edgemesh", host, env("DEL", cid, pod),
                 {**em, "prevResult": res}, work, out, mode, tree)
        step(f"{name}.{label}.vxlan.DEL", "vxlan", host, env("DEL", cid, pod), {**vx, "prevResult": res},
             work, out, mode, tree)


class Agent:
    """vxlan-agent (plugins/main/vxlan/agent.py) in the host's netns for `conf`, ready on return
    (its "node ... ready" line), killed by stop()."""

    def __init__(self, host, conf: dict, work: str):
        path, self.log_path = os.path.join(work, "agent.conf"), os.path.join(work, "agent.log")
        with open(path, "w") as f:
            json.dump(conf, f)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", host.name, os.path.join(runtimes.VENV_BIN, "vxlan-agent"),
                                      "--conf", path], stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 30
        while "ready" not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"vxlan-agent not ready:\n{self.text()[-2000:]}")
            time.sleep(0.05)

    def text(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def counts(path: str) -> collections.Counter:
    """What one verb did between the markers of its strace log."""
    c: collections.Counter = collections.Counter()
    on, main, pids = False, None, set()
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"(\d+)\s+(\w+)\((.*)", line)
            if not m:
                continue
            pid, call, rest = m.groups()
            if call == "write" and "PYCNI-BEGIN" in rest:
                on, main = True, pid
                continue
            if call == "write" and "PYCNI-END" in rest:
                on = False
                continue
            if not on:
                continue
            if pid != main:
                pids.add(pid)
            if call == "execve" and "= -1" not in line:
                c["exec " + os.path.basename(rest.split('"')[1])] += 1
            elif call in ("sendto", "sendmsg") and "NETLINK" in rest.split(",")[0] and pid == main:
                c["netlink requests"] += 1
                if "0x300" in rest or "NLM_F_DUMP" in rest:
                    c["netlink dumps"] += 1
            elif call in ("fsync", "fdatasync"):
                c["fsync" if pid == main else "fsync (children)"] += 1
            elif call == "flock" and pid == main:
                c["flock"] += 1
            elif call == "openat" and "/proc/sys/" in rest and ("O_WRONLY" in rest or "O_RDWR" in rest):
                c["sysctl writes"] += 1
            elif call in ("nanosleep", "clock_nanosleep") and pid == main:
                c["sleeps"] += 1
            if pid == main:
                c["syscalls (plugin)"] += 1
    c["child processes"] = len(pids)
    return c


def phase_of(tag: str) -> str:
    case, label, plugin, verb = tag.split(".")
    kind = {"first": "first pod", "last": "last pod"}.get(label, "steady, before" if label.endswith("b") else "steady")
    return f"{case} {plugin} {verb} ({kind})"


def report_counts(out: str) -> str:
    rows: dict[str, list[collections.Counter]] = collections.defaultdict(list)
    for path in sorted(glob.glob(os.path.join(out, "*.strace"))):
        rows[phase_of(os.path.basename(path)[:-len(".strace")])].append(counts(path))
    keys = sorted({k for cs in rows.values() for c in cs for k in c})
    lines = ["| verb | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for what, cs in rows.items():          # the median of each count over the runs of that phase
        lines.append(f"| {what} | " + " | ".join(f"{statistics.median(c.get(k, 0) for c in cs):g}" for k in keys)
                     + " |")
    return "\n".join(lines)


def report_profile(out: str, top: int) -> str:
    rows: dict[str, list[str]] = collections.defaultdict(list)
    for path in sorted(glob.glob(os.path.join(out, "*.prof"))):
        rows[phase_of(os.path.basename(path)[:-len(".prof")])].append(path)
    lines = ["| verb | in-process ms (median) |", "|---|---:|"]
    for what, paths in rows.items():
        lines.append(f"| {what} | {statistics.median(pstats.Stats(p).total_tt * 1000 for p in paths):.1f} |")
    for what, paths in rows.items():
        if not what.endswith("(steady)"):
            continue
        buf = io.StringIO()
        st = pstats.Stats(*paths, stream=buf)
        st.sort_stats("cumulative").print_stats(top)
        lines += ["", f"### {what}: top {top} by cumulative time, {len(paths)} runs summed", "```",
                  *[ln for ln in buf.getvalue().splitlines() if ln.strip()][-top - 1:], "```"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=4)
    ap.add_argument("--cases", default="chain,nft,dual,agent")
    ap.add_argument("--profile", action="store_true", help="cProfile each verb instead of strace")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--keep", metavar="DIR", help="copy the strace logs / profiles there (to read them)")
    ap.add_argument("--before", metavar="DIR", help="an older tree (git archive REV | tar -x -C DIR): every "
                    "steady pod is also done by its code, interleaved, rows '(steady, before)'")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    if not args.profile and shutil.which("strace") is None:
        raise SystemExit("needs strace (or --profile)")
    mode = "profile" if args.profile else "strace"
    before = os.path.abspath(args.before) if args.before else None
    made: list[NetNS] = []

    def factory(tag: str = "ns") -> NetNS:
        n = NetNS(tag)
        made.append(n)
        return n
    cases = args.cases.split(",")
    tmp = tempfile.mkdtemp(prefix="pycni-podwork")
    os.chmod(tmp, 0o755)
    out = os.path.join(tmp, "out")
    os.makedirs(out)
    try:
        chain, host, _client = runtimes.test_hosts(factory, os.path.join(tmp, "a"), "pwnet")
        lst = chain.conflist()
        vx = {**lst["plugins"][0], "cniVersion": lst["cniVersion"], "name": lst["name"]}
        em = {**lst["plugins"][2], "cniVersion": lst["cniVersion"], "name": lst["name"]}
        em.pop("capabilities", None)
        if "chain" in cases:
            run_case("chain", vx, em, host, factory, args.pods, tmp, out, mode, before)
        if "nft" in cases:
            run_case("nft", vx, {**em, "backend": "nftables"}, host, factory, args.pods, tmp, out, mode, before)
        if "agent" in cases:
            agent = Agent(host, vx, tmp)
            try:
                run_case("agent", vx, em, host, factory, args.pods, tmp, out, mode, before)
            finally:
                agent.stop()
        if "dual" in cases:
            dc = DualCluster(factory, os.path.join(tmp, "d"), underlays=["dual", "dual"], network_name="pwdual")
            run_case("dual", {**dc.hosts[0].conf, "cniVersion": "1.0.0"}, None, dc.hosts[0], factory,
                     args.pods, tmp, out, mode, before)
        print(report_profile(out, args.top) if args.profile else report_counts(out))
        if args.keep:
            shutil.copytree(out, args.keep, dirs_exist_ok=True)
    finally:
        for n in reversed(made):
            n.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
