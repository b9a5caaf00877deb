"""A dp-steering test world: a host netns with the Go bridge, an enforcer netns, pods.

    w = World(netns, tmp_path, mode="inline")        # extra keys go to dp-steering's config
    pod = w.add("c1")                                  # pod netns + ADD of bridge+host-local+dp-steering
    with w.dp(policy={...}) as dp: ...                 # the reference pycni-dp reading vth
    w.mode(pod, "tap"); w.check(pod); w.delete(pod)
    w.plugin("DEL", pod, prev, **conf_overrides); w.status(**conf_overrides)   # one exec, its answer

Plugins run through libcni_py with the host netns as the runtime's own, so the Go
bridge builds its bridge there; every directory is under tmp_path.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

from libcni_py.api import CNIConfig, RuntimeConf
from libcni_py.conf import conflist_from_dict
from libcni_py.types import Result
from plugins.meta.dp_steering import datapath_ebpf, datapath_pedit
from plugins.pkg import ns as nsmod
from plugins.pkg import probe
from tests.kit.dp import DP
from tests.kit.netns import NetNS
from tests.kit.plugin_env import plugin_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CNI_PATH = [os.path.join(ROOT, ".venv", "bin"), "/usr/lib/cni"]
STEERING = os.path.join(ROOT, ".venv", "bin", "dp-steering")
SUBNET, GATEWAY = "10.44.0.0/24", "10.44.0.1"


@dataclass
class Pod:
    cid: str
    ns: NetNS
    result: Result | None = None
    ifname: str = "eth0"

    @property
    def added(self) -> Result:
        """The result of the pod's ADD (it must have one)."""
        if self.result is None:
            raise AssertionError(f"pod {self.cid} has no ADD result")
        return self.result

    @property
    def ip(self) -> str:
        return self.added.ips[0].address.split("/")[0]

    @property
    def rt(self) -> RuntimeConf:
        return RuntimeConf(container_id=self.cid, netns=self.ns.path, ifname=self.ifname,
                           args=[("IgnoreUnknown", "1"), ("K8S_POD_NAME", self.cid)])


class World:
    def __init__(self, netns_factory, tmp_path, version: str = "1.0.0", stderr=None, daemon: bool = True,
                 **steer):
        self.netns_factory, self.tmp, self.version = netns_factory, str(tmp_path), version
        self.daemon = daemon         # False: plugin/spawn/gc/status in-process in both modes (plugin_env)
        self.host, self.enf = netns_factory("host"), netns_factory("enf")
        self.host.fixed_mac_bridge("cni-dp0", "02:00:00:00:0d:01")
        self.state_dir = os.path.join(self.tmp, "state")
        self.steer = {"type": "dp-steering", "enforcerNetns": self.enf.path, "stateDir": self.state_dir,
                      "vbrName": "vbr", "vthName": "vth", "dpWaitMs": 300, **steer}
        self.cni = CNIConfig(path=CNI_PATH, cache_dir=os.path.join(self.tmp, "cache"), stderr=stderr)

    def bridge(self) -> dict:
        return {"type": "bridge", "bridge": "cni-dp0", "isGateway": True, "ipMasq": False,
                "ipam": {"type": "host-local", "dataDir": os.path.join(self.tmp, "ipam"),
                         "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
                         "routes": [{"dst": "0.0.0.0/0"}]}}

    def conflist(self, steer: bool = True, **overrides):
        plugins = [self.bridge()] + ([{**self.steer, **overrides}] if steer else [])
        return conflist_from_dict({"cniVersion": self.version, "name": "dpnet", "plugins": plugins})

    def _on(self, verb: str, pod: Pod, lst):
        with nsmod.enter(self.host.path):
            return getattr(self.cni, f"{verb}_network_list")(lst, pod.rt)

    def add(self, cid: str, steer: bool = True, **overrides) -> Pod:
        pod = Pod(cid, self.netns_factory("pod"))
        pod.result = self._on("add", pod, self.conflist(steer, **overrides))
        return pod

    def check(self, pod: Pod, **overrides) -> None:
        self._on("check", pod, self.conflist(**overrides))

    def delete(self, pod: Pod, **overrides) -> None:
        self._on("del", pod, self.conflist(**overrides))

    def mode(self, pod: Pod, mode: str) -> dict:
        p = subprocess.run([STEERING, "mode", pod.cid, pod.ifname, mode, "--state-dir", self.state_dir],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def plugin(self, command: str, pod: Pod, prev: dict | None, ifname: str | None = None,
               netns: str | None = None, inside: str | None = None, **overrides) -> tuple[int, dict, str]:
        """Exec dp-steering alone (as a runtime would, chained): (status, stdout JSON, stderr).
        `netns` replaces the pod's CNI_NETNS ("" leaves it out); an override None drops a key;
        `inside` (a test netns name) runs the plugin in that netns instead of the test's own."""
        argv, env, stdin = self._exec(command, pod, prev, ifname, netns, inside, overrides)
        p = subprocess.run(argv, input=stdin, env=env, capture_output=True, text=True, timeout=60)
        return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {}, p.stderr

    def spawn(self, command: str, pod: Pod, prev: dict | None, **overrides) -> subprocess.Popen:
        """plugin(), started and not waited for (its stdin written and closed)."""
        argv, env, stdin = self._exec(command, pod, prev, None, None, None, overrides)
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env, text=True)
        assert p.stdin is not None
        p.stdin.write(stdin)
        p.stdin.close()
        p.stdin = None               # communicate() must not flush it again
        return p

    def _exec(self, command, pod, prev, ifname, netns, inside, overrides):
        conf = {"cniVersion": self.version, "name": "dpnet", **self.steer, **overrides}
        conf = {k: v for k, v in conf.items() if v is not None}
        if prev is not None:
            conf["prevResult"] = prev
        env = plugin_env(daemon=self.daemon, CNI_COMMAND=command, CNI_CONTAINERID=pod.cid,
                         CNI_NETNS=pod.ns.path if netns is None else netns, CNI_IFNAME=ifname or pod.ifname,
                         CNI_PATH=":".join(CNI_PATH), PATH=os.environ["PATH"])
        if not env["CNI_NETNS"]:
            del env["CNI_NETNS"]
        argv = ([STEERING] if inside is None else ["ip", "netns", "exec", inside, STEERING])
        return argv, env, json.dumps(conf)

    def gc(self, valid: list[Pod], **overrides) -> tuple[int, dict, str]:
        """Exec dp-steering GC (cniVersion 1.1.0) with `valid` as cni.dev/valid-attachments."""
        conf = {"cniVersion": "1.1.0", "name": "dpnet", **self.steer, **overrides,
                "cni.dev/valid-attachments": [{"containerID": p.cid, "ifname": p.ifname} for p in valid]}
        env = plugin_env(daemon=self.daemon, CNI_COMMAND="GC", CNI_PATH=":".join(CNI_PATH), PATH=os.environ["PATH"])
        p = subprocess.run([STEERING], input=json.dumps(conf), env=env, capture_output=True, text=True,
                           timeout=60)
        return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {}, p.stderr

    def enforcer_links(self) -> list[str]:
        return [ln.split(":")[1].strip().split("@")[0]
                for ln in self.enf.run("ip", "-o", "link", "show").stdout.splitlines()]

    def state_files(self) -> list[str]:
        """Every file under stateDir but the lock (records, journals, temp files)."""
        out = []
        for top, _, files in os.walk(self.state_dir):
            out += [os.path.relpath(os.path.join(top, f), self.state_dir) for f in files]
        return sorted(f for f in out if f != "lock")

    def status(self, **overrides) -> tuple[int, dict, str]:
        """Exec dp-steering STATUS (cniVersion 1.1.0) with the world's config: (status, JSON, stderr)."""
        conf = {"cniVersion": "1.1.0", "name": "dpnet", **self.steer, **overrides}
        env = plugin_env(daemon=self.daemon, CNI_COMMAND="STATUS", CNI_PATH=":".join(CNI_PATH), PATH=os.environ["PATH"])
        p = subprocess.run([STEERING], input=json.dumps(conf), env=env, capture_output=True, text=True,
                           timeout=60)
        return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {}, p.stderr

    def dp(self, policy: dict | None = None, *args: str) -> DP:
        argv = ["--iface", "vth", *args]
        if policy is not None:
            path = os.path.join(self.tmp, "policy.json")
            with open(path, "w") as f:
                json.dump(policy, f)
            argv += ["--policy", path]
        return DP(self.enf.path, self.tmp, *argv)

    def record(self, pod: Pod) -> dict:
        with open(os.path.join(self.state_dir, "pods", pod.cid, pod.ifname + ".json")) as f:
            return json.load(f)


def pod_view(netns) -> str:
    """What a pod sees of its network: links (name, MAC, MTU), addresses, routes, neighbours."""
    out = []
    for argv in (["ip", "-o", "link", "show"], ["ip", "-o", "addr", "show"],
                 ["ip", "route", "show", "table", "all"], ["ip", "neigh", "show", "nud", "permanent"]):
        text = netns.run(*argv).stdout
        out.append("\n".join(_strip_link_ids(line) for line in text.splitlines()
                             if "table local" not in line and "fe80::" not in line))
    return "\n".join(out)


def _strip_link_ids(line: str) -> str:
    """Drop what changes with the veth swap yet is not the pod's config: ifindexes, peers, stats."""
    import re
    line = re.sub(r"^\d+: ", "", line)
    line = re.sub(r"@if\d+", "", line)
    line = re.sub(r" link-netns\S* \S+", "", line)
    return re.sub(r"\\\s+valid_lft.*$", "", line)


def tcp_ok(src_ns, ip, port, timeout=5.0) -> bool:
    """A TCP exchange with a probe.TCPEcho at ip:port from netns `src_ns` answered (not refused,
    dropped or timed out)."""
    try:
        return probe.tcp_exchange(src_ns, ip, port, b"steer me", timeout=timeout) == b"em reets"
    except OSError:
        return False


def allowed(dp, mac: str) -> int:
    """The reference dp's count of frames it let through for the pod of `mac`."""
    return dp.stats()["pods"].get(mac, {}).get("allowed", 0)


DATAPATHS = ("ebpf", "pedit")        # the params of a test module's `datapath` fixture
_AVAILABLE = {"ebpf": datapath_ebpf.available, "pedit": datapath_pedit.available}
_NAMES = {"ebpf": "ebpf", "pedit": "tc-pedit"}


def datapath_or_skip(param: str) -> str:
    """The `datapath` config value for a DATAPATHS param; the test is skipped when this kernel
    cannot run that datapath."""
    if not _AVAILABLE[param]():
        import pytest
        pytest.skip(f"this kernel cannot run the {_NAMES[param]} datapath "
                    "(test_dp_steering_pedit.py runs tc-pedit in a stock-kernel VM)")
    return _NAMES[param]
