"""Foundation demo: libcni_py runs Go bridge + host-local, then pycni-passthrough, for a pod.

    sudo .venv/bin/python -m plugins.meta.passthrough.demo

Everything happens in two network namespaces made for the demo (a "host" and a "pod");
the machine's own namespace is not touched, and both are removed at the end, as is the
temporary cache and IPAM directory. Prints each step; exit status 0 when all worked.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from libcni_py.api import CNIConfig, RuntimeConf
from libcni_py.conf import conflist_from_dict
from plugins.pkg import ns, probe

GO_PLUGINS = "/usr/lib/cni"
SUBNET, GATEWAY = "10.88.0.0/24", "10.88.0.1"


def conflist(ipam_dir: str) -> dict:
    return {"cniVersion": "1.0.0", "name": "pycni-demo", "plugins": [
        {"type": "bridge", "bridge": "cni-demo0", "isGateway": True,
         "ipam": {"type": "host-local", "dataDir": ipam_dir, "ranges": [[{"subnet": SUBNET}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "pycni-passthrough"}]}


def ip(*argv: str, netns: str | None = None) -> str:
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(argv)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def step(title: str, body: str = "") -> None:
    print(f"\n== {title}")
    if body:
        print(body.rstrip())


def demo(host: str, pod: str, tmp: str) -> None:
    path = [os.path.dirname(sys.executable), GO_PLUGINS]
    cni = CNIConfig(path=path, cache_dir=os.path.join(tmp, "cache"))
    nets = conflist_from_dict(conflist(os.path.join(tmp, "ipam")))
    rt = RuntimeConf(container_id="demo-pod-1", netns=f"/run/netns/{pod}", ifname="eth0",
                     args=[("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default")])
    step("conflist", json.dumps(conflist("<tmp>/ipam"), indent=2))
    step("CNI_PATH", ":".join(path))
    with ns.enter(f"/run/netns/{host}"):        # the plugins' host side lives in the demo host
        result = cni.add_network_list(nets, rt)
        step("ADD: the result libcni_py got at the end of the chain", json.dumps(result.encode("1.0.0"), indent=2))
        step("pod eth0", ip("-br", "addr", "show", "eth0", netns=pod))
        answered = probe.ping(rt.netns, GATEWAY, count=3)
        step(f"ICMP echo pod -> gateway {GATEWAY}: {len(answered)} of 3 answered")
        if not answered:
            raise SystemExit("the pod cannot reach its gateway")
        cni.check_network_list(nets, rt)
        step("CHECK: ok")
        cni.del_network_list(nets, rt)
        cni.del_network_list(nets, rt)
        step("DEL, and DEL again: ok", ip("-br", "link", "show", netns=pod))


def main() -> int:
    if os.geteuid() != 0:
        print("the demo needs root: it makes network namespaces", file=sys.stderr)
        return 1
    tag = os.getpid()
    host, pod = f"pycni-demo-host-{tag}", f"pycni-demo-pod-{tag}"
    tmp = tempfile.mkdtemp(prefix="pycni-demo-")
    made = []
    try:
        for name in (host, pod):
            ip("netns", "add", name)
            made.append(name)
            ip("link", "set", "lo", "up", netns=name)
        demo(host, pod, tmp)
        print("\ndemo: ok")
        return 0
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
