"""Demo: a pod behind the reference dp, inline, a policy blocking one port, a live switch to tap.

    sudo .venv/bin/python -m plugins.meta.dp_steering.demo

Three scratch network namespaces stand in for a node (the Go bridge's host side), the
enforcer (vbr/vth and pycni-dp) and a pod; the pod is plumbed by the Go bridge + host-local
and then dp-steering, in one conflist through libcni_py. Everything is removed at the end.
Exit status 0 when every step did what it says.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from libcni_py import records
from libcni_py.api import CNIConfig, RuntimeConf
from libcni_py.conf import conflist_from_dict
from plugins.pkg import ns, probe

BIN = os.path.dirname(os.path.abspath(sys.executable))
TAG = f"pycni-demo-dpst{os.getpid() % 100000}"
DENIED_PORT, OPEN_PORT = 5201, 8080


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True).stdout


class Demo:
    def __init__(self, tmp: str):
        self.tmp, self.failed = tmp, 0
        self.names = {k: f"{TAG}-{k}" for k in ("host", "enf", "pod")}
        for name in self.names.values():
            sh("ip", "netns", "add", name)
            sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        self.path = {k: f"/run/netns/{v}" for k, v in self.names.items()}
        self.sock = os.path.join(tmp, "dp.sock")
        self.conflist = conflist_from_dict({"cniVersion": "1.0.0", "name": "demo", "plugins": [
            {"type": "bridge", "bridge": "cni-demo0", "isGateway": True,
             "ipam": {"type": "host-local", "dataDir": os.path.join(tmp, "ipam"),
                      "ranges": [[{"subnet": "10.45.0.0/24", "gateway": "10.45.0.1"}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "dp-steering", "enforcerNetns": self.path["enf"], "mode": "inline", "dpSocket": self.sock,
             "vbrName": "vbr", "vthName": "vth", "stateDir": os.path.join(tmp, "state")}]})
        self.cni = CNIConfig(path=[BIN, "/usr/lib/cni"], cache_dir=os.path.join(tmp, "cache"))
        self.rt = RuntimeConf(container_id="demo-pod", netns=self.path["pod"], ifname="eth0",
                              args=[("IgnoreUnknown", "1"), ("K8S_POD_NAME", "web")])
        self.dp: subprocess.Popen | None = None

    def expect(self, what: str, ok: bool) -> None:
        print(f"  [{'ok' if ok else 'FAILED'}] {what}")
        self.failed += not ok

    def start_dp(self) -> None:
        policy = os.path.join(self.tmp, "policy.json")
        records.write(policy, {"rules": [{"action": "deny", "proto": "tcp", "dport": DENIED_PORT,
                                          "direction": "ingress", "pod": "web"}]}, mode=0o644)
        self.dp = subprocess.Popen([os.path.join(BIN, "pycni-dp"), "--netns", self.path["enf"], "--socket", self.sock,
                                    "--iface", "vth", "--policy", policy], stderr=subprocess.DEVNULL)
        from plugins.meta.dp_steering import dpctl
        for _ in range(500):
            if dpctl.ping(self.sock, timeout=0.2) is not None:
                return
            time.sleep(0.02)
        raise RuntimeError("pycni-dp did not come up")

    def counters(self, mac: str) -> dict:
        from plugins.meta.dp_steering import dpctl
        pod = (dpctl.stats(self.sock) or {}).get("pods", {}).get(mac, {})
        return {k: pod.get(k, 0) for k in ("allowed", "denied", "tap")}

    def tcp(self, ip: str, port: int) -> bool:
        try:
            return probe.tcp_exchange(self.path["host"], ip, port, b"hello", timeout=2) == b"olleh"
        except OSError:
            return False

    def run(self) -> int:
        print("1. pycni-dp in the enforcer netns, policy: deny TCP to port 5201 of pod 'web'")
        self.start_dp()
        print("2. ADD bridge + host-local + dp-steering (inline) through libcni_py")
        with ns.enter(self.path["host"]):
            result = self.cni.add_network_list(self.conflist, self.rt)
        ip, mac = result.ips[0].address.split("/")[0], result.interfaces[2].mac
        print(f"   pod eth0 {mac} {ip}; the pod still sees one eth0 with that MAC and address:")
        print("   " + sh("ip", "-n", self.names["pod"], "-br", "addr", "show", "eth0").strip())
        print("   enforcer netns links: " + ", ".join(
            line.split()[0] for line in sh("ip", "-n", self.names["enf"], "-br", "link").splitlines()))
        with probe.TCPEcho(self.path["pod"], port=OPEN_PORT), probe.TCPEcho(self.path["pod"], port=DENIED_PORT):
            print("3. traffic through the dp, inline")
            self.expect("ping host -> pod", probe.ping(self.path["host"], ip, count=2, timeout=2) == [0, 1])
            self.expect(f"TCP host -> pod:{OPEN_PORT}", self.tcp(ip, OPEN_PORT))
            self.expect(f"TCP host -> pod:{DENIED_PORT} is blocked by the dp", not self.tcp(ip, DENIED_PORT))
            c = self.counters(mac)
            print(f"   dp counters for the pod: allowed {c['allowed']}, denied {c['denied']}")
            self.expect("the dp counted allowed and denied frames", c["allowed"] > 0 and c["denied"] > 0)
            print("4. live switch to tap: `dp-steering mode demo-pod eth0 tap`")
            out = sh(os.path.join(BIN, "dp-steering"), "mode", "demo-pod", "eth0", "tap",
                     "--state-dir", os.path.join(self.tmp, "state"))
            print("   " + out.strip())
            self.expect(f"TCP host -> pod:{DENIED_PORT} flows (the dp only watches a copy)", self.tcp(ip, DENIED_PORT))
            self.expect("ping host -> pod", probe.ping(self.path["host"], ip, count=1, timeout=2) == [0])
            after = self.counters(mac)
            print(f"   dp counters: allowed {after['allowed']}, denied {after['denied']}, tap {after['tap']}")
            self.expect("the dp still sees (and would deny) the copies", after["denied"] > c["denied"])
        print("5. DEL")
        with ns.enter(self.path["host"]):
            self.cni.del_network_list(self.conflist, self.rt)
        self.expect("nothing of ours left in the enforcer netns",
                    sh("ip", "-n", self.names["enf"], "-br", "link").split()[0] == "lo"
                    and len(sh("ip", "-n", self.names["enf"], "-br", "link").splitlines()) == 1)
        return 1 if self.failed else 0

    def close(self) -> None:
        if self.dp is not None:
            self.dp.terminate()
            self.dp.wait(10)
        for name in self.names.values():
            sh("ip", "netns", "del", name, check=False)


def main() -> int:
    if os.geteuid() != 0:
        print("the demo needs root (network namespaces)", file=sys.stderr)
        return 1
    tmp = tempfile.mkdtemp(prefix="pycni-demo-dpst-")
    demo = Demo(tmp)
    try:
        status = demo.run()
    finally:
        demo.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print("demo " + ("passed" if status == 0 else "FAILED"))
    return status


if __name__ == "__main__":
    sys.exit(main())
