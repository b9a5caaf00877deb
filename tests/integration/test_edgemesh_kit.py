"""Helpers for the edgemesh integration tests (no tests in this file).

A test "node" is a host netns; pods are netns attached by the real Go bridge +
host-local, then edgemesh, in one conflist run through libcni_py.api from inside the
host netns (plugins inherit the netns of the thread that execs them). The mesh proxy
is plugins/meta/edgemesh/origdst.py, started in the host netns.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, field

from libcni_py.api import CNIConfig, RuntimeConf
from libcni_py.conf import conflist_from_dict
from plugins.pkg import ns as nsmod
from tests.kit.netns import NetNS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CNI_PATH = [os.path.join(ROOT, ".venv", "bin"), "/usr/lib/cni"]
PY = os.path.join(ROOT, ".venv", "bin", "python")
EDGEMESH = os.path.join(ROOT, ".venv", "bin", "edgemesh")
SERVICE_CIDR = "10.96.0.0/12"
SVC = "10.96.0.5"          # a service edgemesh hijacks
IGNORED = "10.96.0.20"     # a service on the ignore list


def edgemesh_conf(tmp, **keys) -> dict:
    conf = {"type": "edgemesh", "serviceCIDR": SERVICE_CIDR, "ensureListenDevice": True,
            "stateDir": os.path.join(str(tmp), "edgemesh-state")}
    conf.update(keys)
    return conf


def conflist(tmp, name="emnet", subnet="10.22.0.0/24", bridge="cni0", edgemesh: dict | None = None,
             version="1.0.0") -> dict:
    plugins = [{"type": "bridge", "bridge": bridge, "isDefaultGateway": True, "ipMasq": False,
                "ipam": {"type": "host-local", "subnet": subnet,
                         "dataDir": os.path.join(str(tmp), f"ipam-{name}")}}]
    if edgemesh is not None:
        plugins.append(edgemesh)
    return {"cniVersion": version, "name": name, "plugins": plugins}


@dataclass
class Node:
    """A host netns with a libcni cache of its own."""
    ns: NetNS
    tmp: str
    procs: list = field(default_factory=list)

    def __post_init__(self):
        for i, br in enumerate(("cni0", "cni1")):        # the bridges conflist() names
            self.ns.fixed_mac_bridge(br, f"02:00:00:00:0e:{i:02x}")
        self.cni = CNIConfig(path=CNI_PATH, cache_dir=os.path.join(self.tmp, f"cache-{self.ns.name}"))

    def rt(self, pod_ns, cid: str, namespace="default") -> RuntimeConf:
        return RuntimeConf(container_id=cid, netns=pod_ns.path, ifname="eth0",
                           args=[("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", namespace),
                                 ("K8S_POD_NAME", cid)])

    def add(self, lst: dict, pod_ns, cid: str, namespace="default"):
        with nsmod.enter(self.ns.path):
            return self.cni.add_network_list(conflist_from_dict(lst), self.rt(pod_ns, cid, namespace))

    def check(self, lst: dict, pod_ns, cid: str, namespace="default"):
        with nsmod.enter(self.ns.path):
            self.cni.check_network_list(conflist_from_dict(lst), self.rt(pod_ns, cid, namespace))

    def delete(self, lst: dict, pod_ns, cid: str):
        with nsmod.enter(self.ns.path):
            self.cni.del_network_list(conflist_from_dict(lst), self.rt(pod_ns, cid))

    def nat(self, counters=False) -> str:
        """iptables-save -t nat without the "# Generated/Completed" lines (they carry the time)."""
        argv = ["iptables-save", "-t", "nat"] + (["-c"] if counters else [])
        return "".join(line + "\n" for line in self.ns.run(*argv).stdout.splitlines()
                       if not line.startswith("#"))

    def ruleset(self) -> str:
        return ruleset(self.ns)

    def serve(self, *args: str) -> subprocess.Popen:
        """Start origdst in the host netns; return once it listens."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns.name, PY, "-m",
                              "plugins.meta.edgemesh.origdst", "serve", *args],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stdout is not None and p.stderr is not None      # both are pipes
        line = p.stdout.readline()
        if line.strip() != "ready":
            p.kill()
            raise RuntimeError(f"origdst did not start: {line!r} {p.stderr.read()}")
        return p

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()
        self.procs.clear()

    def real_services(self, *ips: str, udp=False):
        """Addresses on the host's lo with a plain server behind them: what a non-hijacked
        connection to a service IP reaches."""
        for ip in ips:
            self.ns.run("ip", "addr", "add", f"{ip}/32", "dev", "lo")
        args = []
        for ip in ips:
            args += ["--listen", f"{ip}:80"]
        self.serve("--real", *args, *(["--udp"] if udp else []))


def ruleset(ns) -> str:
    """`nft list ruleset` with packet counters zeroed: iptables-nft rules carry counters, and a
    stray packet (edgemesh0's IGMP report when it comes up) may count on a foreign rule."""
    return re.sub(r"counter packets \d+ bytes \d+", "counter", ns.run("nft", "list", "ruleset").stdout)


def ask(ns, proto: str, ip: str, port: int = 80) -> str:
    """Connect from inside `ns` (pod or host), return the answer or 'error: ...'."""
    p = ns.run(PY, "-m", "plugins.meta.edgemesh.origdst", "ask", proto, ip, str(port),
               check=False, timeout=30)
    return p.stdout.strip() or p.stderr.strip()


def run_plugin(command: str, conf: dict, *, netns: str, cid="c1", ifname="eth0", args="",
               inside: str | None = None, env: dict | None = None) -> tuple[int, dict | None, str]:
    """Exec the edgemesh plugin directly (as a runtime does) in netns `inside`, with `env` added
    to the CNI environment; (rc, json, stderr)."""
    env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=netns,
               CNI_IFNAME=ifname, CNI_ARGS=args, CNI_PATH=":".join(CNI_PATH), **(env or {}))
    argv = [EDGEMESH] if inside is None else ["ip", "netns", "exec", inside, EDGEMESH]
    p = subprocess.run(argv, input=json.dumps(conf), env=env, capture_output=True, text=True, timeout=60)
    out = json.loads(p.stdout) if p.stdout.strip() else None
    return p.returncode, out, p.stderr


def prev_result(ip: str, netns: str, version="1.0.0") -> dict:
    return {"cniVersion": version,
            "interfaces": [{"name": "cni0", "mac": "02:00:00:00:00:01"},
                           {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": netns}],
            "ips": [{"address": f"{ip}/24", "gateway": "10.22.0.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1"}],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}}


def chains(nat_text: str) -> list[str]:
    return re.findall(r"^:(EDGE-MESH\S*)", nat_text, re.M)


def sync(node, conf_path: str) -> subprocess.CompletedProcess:
    return node.ns.run(EDGEMESH, "sync", "--config", conf_path, check=False)

