"""The packaging kit: the PyInstaller bundle as a session fixture, running a program with no
Python on the host, and every CNI plugin of the suite driven from an install dir.

- `bundle`: `./build.sh bin` once per test session into a tmp dir (about 10-30 s), never into
  the checkout's dist/. A test module that needs it says `pytest_plugins = ["tests.kit.bundle"]`
  and asks for `bundle`. Registered as a plugin the fixture exists once, so the packaging
  tests and the bench smoke test share one build (imported into each module, it would build
  once per module).
- `without_python(argv, env)`: the argv that runs `argv` with only `env`, cwd /, in a private
  mount namespace where every Python of the host is covered up.
- `Tool(bindir, tmp)`: an install's own `pycnitool` run as a runtime runs it, in a test host
  netns, with CNI_PATH = the install dir + the Go plugins (`/usr/lib/cni`); `Tool(..., hide=True)`
  runs it without Python, so the whole chain (pycnitool, our plugins, host-local, bridge) runs
  from the install alone.
- `CASES`: one function per CNI plugin that builds its test world (reusing tests/kit/vxlan_hosts,
  tests/kit/dp_steering and tests/integration/test_edgemesh_kit), runs ADD, CHECK and DEL of
  a conflist holding it through a Tool, and checks what each verb did to the pod and host.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GO_CNI_DIR = "/usr/lib/cni"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    """`./build.sh bin` into a tmp dir; returns the dist dir (bin/ and pycni/)."""
    top = tmp_path_factory.mktemp("pycni-build")
    env = dict(os.environ, PYCNI_DIST=str(top / "cni"), PYCNI_WORK=str(top / "work"))
    start = time.monotonic()
    p = subprocess.run([os.path.join(ROOT, "build.sh"), "bin"], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    print(f"\n./build.sh bin took {time.monotonic() - start:.1f} s")
    return top / "cni"


# ---- no Python on the host ---------------------------------------------------------------
# Runs under `unshare -m`: covers every Python on the host (interpreters on PATH, the build
# interpreter's prefix, libpython, the checkout with the venv) with empty mounts private
# to this process, checks none is left, then execs the program with a bare environment.
HIDE_PYTHON = r"""
import glob, json, os, shutil, subprocess, sys
spec = json.loads(sys.argv[1])
dirs = {os.path.realpath(d) for d in spec["dirs"] + glob.glob("/usr/lib/python3*")
        + glob.glob("/usr/local/lib/python3*") if os.path.isdir(d)}
files = {os.path.realpath(f) for d in spec["path"].split(":") for f in glob.glob(d + "/python*")}
files |= set(glob.glob("/usr/lib/*/libpython3*")) | set(glob.glob("/usr/lib/libpython3*"))
for d in sorted(dirs):              # parents first: what lies under a covered dir is gone
    if os.path.isdir(d):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "nopython", d], check=True)
for f in sorted(files):
    if os.path.isfile(f):
        subprocess.run(["mount", "--bind", "/dev/null", f], check=True)
left = [p for d in spec["path"].split(":") for p in glob.glob(d + "/python*") if os.access(p, os.X_OK)]
assert not left and not os.path.exists(os.path.join(sys.base_prefix, "lib")), left
os.chdir("/")
os.execve(spec["argv"][0], spec["argv"], spec["env"])
"""


def without_python(argv: list[str], env: dict[str, str]) -> list[str]:
    """The argv that runs `argv` with only `env` in its environment, cwd /, and no Python on
    the host (the hiding itself runs in this interpreter before it execs `argv`)."""
    spec = {"argv": [str(a) for a in argv], "env": env,
            "path": os.environ.get("PATH", "") + ":" + HOST_PATH,
            "dirs": [sys.base_prefix, sys.prefix, ROOT]}
    return ["unshare", "-m", "--propagation", "private", sys.executable, "-c", HIDE_PYTHON, json.dumps(spec)]


# ---- every plugin, from an install dir -------------------------------------------------
class Tool:
    """`<bindir>/pycnitool VERB NET NETNS` run inside a host netns, as a runtime runs it."""

    def __init__(self, bindir, tmp, hide: bool = False):
        self.bindir, self.tmp, self.hide = str(bindir), str(tmp), hide
        self.runs: list[str] = []

    def run(self, verb: str, host, lst: dict, pod, cid: str) -> subprocess.CompletedProcess:
        confdir = os.path.join(self.tmp, "netconf", lst["name"])
        os.makedirs(confdir, exist_ok=True)
        with open(os.path.join(confdir, lst["name"] + ".conflist"), "w") as f:
            json.dump(lst, f)
        tool_env = {"PATH": HOST_PATH, "NETCONFPATH": confdir, "CNI_PATH": f"{self.bindir}:{GO_CNI_DIR}",
                    "CNI_CACHE_DIR": os.path.join(self.tmp, "cni-cache"), "CNI_CONTAINERID": cid,
                    "CNI_IFNAME": "eth0", "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={cid}"}
        argv = [os.path.join(self.bindir, "pycnitool"), verb, lst["name"], pod.path]
        env: dict[str, str] | None = tool_env
        if self.hide:
            argv, env = without_python(argv, tool_env), None   # the hiding step gets ours, the tool `env`
        p = subprocess.run(["ip", "netns", "exec", host.name, *argv], env=env, cwd="/", capture_output=True,
                           text=True, timeout=120)
        self.runs.append(f"pycnitool {verb} {lst['name']}: exit {p.returncode}\n{p.stdout}{p.stderr}")
        return p

    def __call__(self, verb: str, host, lst: dict, pod, cid: str) -> subprocess.CompletedProcess:
        """Run one verb; it must succeed."""
        p = self.run(verb, host, lst, pod, cid)
        assert p.returncode == 0 and "Traceback" not in p.stderr, self.runs[-1]
        return p

    def add(self, host, lst: dict, pod, cid: str) -> dict:
        """ADD, which must succeed; its result."""
        return json.loads(self("add", host, lst, pod, cid).stdout)


def answers(ns_path: str, dst: str, tries: int = 3) -> bool:
    """One of `tries` ICMP echoes from netns `ns_path` to `dst` is answered."""
    from plugins.pkg import probe
    return any(probe.ping(ns_path, dst, count=1, timeout=2) == [0] for _ in range(tries))


def links(ns) -> list[str]:
    return [line.split(":")[1].strip().split("@")[0] for line in ns.run("ip", "-o", "link", "show").stdout.splitlines()]


def case_passthrough(tool: Tool, netns, tmp: str) -> None:
    """Go bridge + host-local, then pycni-passthrough."""
    host, pod = netns("pkph"), netns("pkpp")
    lst = {"cniVersion": "1.0.0", "name": "pkpass", "plugins": [
        {"type": "bridge", "bridge": "cni-pkg0", "isGateway": True,
         "ipam": {"type": "host-local", "dataDir": os.path.join(tmp, "ipam"),
                  "ranges": [[{"subnet": "10.66.0.0/24"}]]}},
        {"type": "pycni-passthrough"}]}
    res = tool.add(host, lst, pod, "pkg-pass1")
    assert [ip["address"] for ip in res["ips"]] == ["10.66.0.2/24"], res
    assert answers(host.path, "10.66.0.2")
    tool("check", host, lst, pod, "pkg-pass1")
    tool("del", host, lst, pod, "pkg-pass1")
    assert links(pod) == ["lo"]


def case_vxlan(tool: Tool, netns, tmp: str) -> None:
    """One vxlan test host (tests/kit/vxlan_hosts.py), the real host-local as its IPAM."""
    from plugins.pkg.names import host_veth
    from tests.kit.vxlan_hosts import NETWORK, Cluster
    cluster = Cluster(netns, os.path.join(tmp, "vxlan"), segments=[0])
    host, pod, cid = cluster.hosts[0], netns("pkvp"), "pkg-vx1"
    lst = {"cniVersion": "1.0.0", "name": cluster.network_name, "plugins": [dict(host.conf)]}
    res = tool.add(host.ns, lst, pod, cid)
    state_dir = host.conf["stateDir"]
    assert isinstance(state_dir, str), host.conf
    with open(os.path.join(state_dir, "lease.json")) as f:
        subnet = ipaddress.IPv4Network(json.load(f)["subnet"])         # vxlan's overlay is IPv4
    ip = ipaddress.ip_interface(res["ips"][0]["address"])
    assert ip.ip in subnet and subnet.subnet_of(ipaddress.IPv4Network(NETWORK)), (res, subnet)
    assert "vxlan.1" in links(host.ns) and host_veth(cid, "eth0") in links(host.ns)
    assert answers(pod.path, res["ips"][0]["gateway"])
    tool("check", host.ns, lst, pod, cid)
    tool("del", host.ns, lst, pod, cid)
    assert host_veth(cid, "eth0") not in links(host.ns) and links(pod) == ["lo"]
    assert os.listdir(os.path.join(state_dir, "attachments")) == []


def case_dp_steering(tool: Tool, netns, tmp: str) -> None:
    """Go bridge + host-local, then dp-steering inline through the install's own pycni-dp
    (started as the install has it: without Python when the tool hides it)."""
    from tests.kit.dp_steering import World
    w = World(netns, os.path.join(tmp, "dp"), dpSocket=os.path.join(tmp, "dp", "dp.sock"))
    os.makedirs(w.tmp, exist_ok=True)
    lst = {"cniVersion": w.version, "name": "dpnet", "plugins": [w.bridge(), w.steer]}
    dp = w.dp()
    dp.argv[0] = os.path.join(tool.bindir, "pycni-dp")
    if tool.hide:
        dp.argv = without_python(dp.argv, {"PATH": HOST_PATH})
    pod, cid = netns("pkdp"), "pkg-dp1"
    with dp:
        res = tool.add(w.host, lst, pod, cid)
        with open(os.path.join(w.state_dir, "pods", cid, "eth0.json")) as f:
            record = json.load(f)
        assert record["installed"] == "inline", record
        assert record["mac"] in dp.stats()["pods"], dp.stats()            # registered over dpSocket
        ip = res["ips"][0]["address"].split("/")[0]
        assert answers(w.host.path, ip), dp.output()                       # through the dp
        tool("check", w.host, lst, pod, cid)
        tool("del", w.host, lst, pod, cid)
        assert record["mac"] not in dp.stats()["pods"]
    assert links(w.enf) == ["lo"] and links(pod) == ["lo"]


def case_edgemesh(tool: Tool, netns, tmp: str) -> None:
    """Go bridge + host-local, then edgemesh (tests/integration/test_edgemesh_kit.py)."""
    from tests.integration.test_edgemesh_kit import Node, conflist, edgemesh_conf
    node, pod, cid = Node(netns("pkeh"), tmp), netns("pkep"), "pkg-em1"
    lst = conflist(tmp, edgemesh=edgemesh_conf(tmp, checkProxy=False))    # the frozen binary's verbs, no proxy
    before = node.nat()
    res = tool.add(node.ns, lst, pod, cid)
    assert res["ips"][0]["address"].startswith("10.22.0."), res
    mark = f"edgemesh net={lst['name']} id={cid}"
    assert mark in node.nat() + node.ruleset(), (node.nat(), node.ruleset())
    assert "edgemesh0" in links(node.ns)
    tool("check", node.ns, lst, pod, cid)
    tool("del", node.ns, lst, pod, cid)
    # iptables' view is as before; nft's keeps the empty nat chains iptables-nft made
    assert node.nat() == before and "edgemesh" not in node.ruleset().lower(), (before, node.nat(), node.ruleset())
    assert "edgemesh0" not in links(node.ns) and links(pod) == ["lo"]


CASES = {"pycni-passthrough": case_passthrough, "vxlan": case_vxlan, "dp-steering": case_dp_steering,
         "edgemesh": case_edgemesh}
