"""Demo: three test hosts (network namespaces) on an underlay switch, a pod on each,
attached with the vxlan plugin through libcni_py; a ping and a TCP exchange across the
overlay; the per-peer entries (route, ARP, FDB) on one host. Cleans up after itself.

    sudo python -m plugins.main.vxlan.demo          (root; touches only its own namespaces)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from plugins.pkg import ns, probe

NETWORK = "10.244.0.0/16"
PREFIX = f"pycnidemo{os.getpid() % 100000}-"
HOSTS = 3


def sh(*argv: str, netns: str | None = None) -> str:
    cmd = (["ip", "netns", "exec", netns] if netns else []) + list(argv)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def cni_path() -> list[str]:
    """Where `vxlan` is (this interpreter's bin directory) and the Go plugins."""
    here = os.path.dirname(sys.executable)
    return [p for p in (os.environ.get("CNI_PATH", "").split(":") + [here, "/usr/lib/cni"]) if p]


class Demo:
    def __init__(self, tmp: str):
        self.tmp = tmp
        self.made: list[str] = []
        self.registry = os.path.join(tmp, "registry.json")

    def netns(self, tag: str) -> str:
        name = PREFIX + tag
        sh("ip", "netns", "add", name)
        self.made.append(name)
        sh("ip", "link", "set", "lo", "up", netns=name)
        return name

    def underlay(self) -> list[str]:
        """A switch namespace with bridge `sw`, and HOSTS hosts on it: eth0 198.18.0.<i+1>/24."""
        switch = self.netns("switch")
        sh("ip", "link", "add", "sw", "type", "bridge", netns=switch)
        sh("ip", "addr", "add", "198.18.0.254/24", "dev", "sw", netns=switch)
        sh("ip", "link", "set", "sw", "up", netns=switch)
        hosts = []
        for i in range(HOSTS):
            host = self.netns(f"host{i}")
            sh("ip", "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", host, netns=switch)
            sh("ip", "link", "set", f"p{i}", "master", "sw", "up", netns=switch)
            sh("ip", "addr", "add", f"198.18.0.{i + 1}/24", "dev", "eth0", netns=host)
            sh("ip", "link", "set", "eth0", "up", netns=host)
            sh("ip", "route", "add", "default", "via", "198.18.0.254", netns=host)
            hosts.append(host)
        return hosts

    def conflist(self, i: int):
        from libcni_py.conf import conflist_from_dict
        return conflist_from_dict({"cniVersion": "1.0.0", "name": "demo", "plugins": [{
            "type": "vxlan", "network": NETWORK, "registry": {"type": "file", "path": self.registry},
            "stateDir": os.path.join(self.tmp, f"state-host{i}"), "nodeName": f"host{i}", "hairpinMode": True}]})

    def runtime(self, i: int, pod: str):
        from libcni_py.api import CNIConfig, RuntimeConf
        cni = CNIConfig(path=cni_path(), cache_dir=os.path.join(self.tmp, f"cache-host{i}"))
        return cni, RuntimeConf(container_id=f"demo-pod{i}", netns=f"/run/netns/{pod}", ifname="eth0")

    def attach(self, i: int, host: str) -> str:
        pod = self.netns(f"pod{i}")
        cni, rt = self.runtime(i, pod)
        with ns.enter(f"/run/netns/{host}"):
            result = cni.add_network_list(self.conflist(i), rt)
        ip = result.ips[0].address
        print(f"  host{i}: pod {rt.container_id} eth0 {ip} (gateway {result.ips[0].gateway}, "
              f"host side {result.interfaces[1].name} on {result.interfaces[0].name})")
        return pod

    def detach(self, i: int, host: str, pod: str) -> None:
        cni, rt = self.runtime(i, pod)
        with ns.enter(f"/run/netns/{host}"):
            cni.del_network_list(self.conflist(i), rt)

    def reconcile(self, i: int, host: str) -> None:
        from plugins.main.vxlan import overlay
        conf = {**self.conflist(i).plugins[0].network, "name": "demo", "cniVersion": "1.0.0"}
        with ns.enter(f"/run/netns/{host}"):
            overlay.ensure_node(overlay.node_config(conf))

    def cleanup(self) -> None:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def pod_ip(pod: str) -> str:
    return json.loads(sh("ip", "-j", "-4", "addr", "show", "eth0", netns=pod))[0]["addr_info"][0]["local"]


def run(tmp_prefix: str, tag: str, body) -> int:
    """As root, `body(demo)` on a fresh Demo (a temporary directory from `tmp_prefix`): a failure
    is reported, not raised; namespaces and files always go. The exit status of a demo."""
    if os.geteuid() != 0:
        print("the demo needs root (it creates network namespaces)", file=sys.stderr)
        return 1
    tmp = tempfile.mkdtemp(prefix=tmp_prefix)
    demo = Demo(tmp)
    ok = False
    try:
        body(demo)
        ok = True
    except Exception as e:  # noqa: BLE001 - a demo reports and cleans up
        print(f"demo failed: {e}", file=sys.stderr)
    finally:
        demo.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"== {tag}cleaned up: namespaces and temporary files removed")
    return 0 if ok else 1


def _demo(demo: Demo) -> None:
    print(f"== {HOSTS} test hosts on an underlay switch (198.18.0.0/24), registry {demo.registry}")
    hosts = demo.underlay()
    print("== a pod on each host: ADD of the vxlan conflist through libcni_py (IPAM: Go host-local)")
    pods = [demo.attach(i, h) for i, h in enumerate(hosts)]
    print("== one reconcile per host, so earlier hosts learn the later ones "
          "(vxlan-agent does this on every change)")
    for i, h in enumerate(hosts):
        demo.reconcile(i, h)
    ips = [pod_ip(p) for p in pods]
    print("== across the overlay, from the pod on host0")
    with probe.TCPEcho(f"/run/netns/{pods[1]}") as srv1, probe.TCPEcho(f"/run/netns/{pods[2]}") as srv2:
        for j, srv in ((1, srv1), (2, srv2)):
            answered = probe.ping(f"/run/netns/{pods[0]}", ips[j], count=3, interval=0.2)
            reply = probe.tcp_exchange(f"/run/netns/{pods[0]}", ips[j], srv.port, b"hello over vxlan")
            print(f"  ping {ips[j]} (pod on host{j}): {len(answered)}/3 replies; "
                  f"TCP {ips[j]}:{srv.port}: sent 'hello over vxlan', got {reply.decode()!r}")
            if len(answered) != 3 or reply != b"nalxv revo olleh":
                raise RuntimeError(f"no connectivity to the pod on host{j}")
    print("== per-peer entries on host0: one route, one ARP and one FDB entry per remote host")
    for what, argv in (("routes", ["ip", "route", "show", "dev", "vxlan.1"]),
                       ("ARP", ["ip", "neigh", "show", "dev", "vxlan.1", "nud", "permanent"]),
                       ("FDB", ["bridge", "fdb", "show", "dev", "vxlan.1"])):
        print(f"  {what}:")
        for line in sh(*argv, netns=hosts[0]).splitlines():
            print(f"    {line}")
    print("== DEL of every pod")
    for i, (h, p) in enumerate(zip(hosts, pods)):
        demo.detach(i, h, p)


def main() -> int:
    return run("pycni-vxlan-demo-", "", _demo)


if __name__ == "__main__":
    sys.exit(main())
