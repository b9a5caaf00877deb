"""Demo: a dual-stack pod's service traffic answered by the mesh proxy, an ignored service reached directly.

    sudo .venv/bin/python -m plugins.meta.edgemesh.demo

Builds a "node" (a netns) and a pod attached by the Go bridge + host-local (a range per
family), then edgemesh, through libcni_py; starts the stand-in proxy (origdst.py) on
169.254.96.16:40001 and [fd00:a9fe:6010::1]:40001 and plain servers behind two service
IPs per family; connects from the pod; deletes the pod and shows the nat tables of both
families as they were. Removes everything it made.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from libcni_py.api import CNIConfig, RuntimeConf
from libcni_py.conf import conflist_from_dict
from plugins.pkg.ns import enter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PY = sys.executable
TAG = f"emdemo{os.getpid() % 100000}"
HOST, POD = f"{TAG}-node", f"{TAG}-pod"
SVC, DNS = "10.96.0.5", "10.96.0.10"
SVC6, DNS6 = "fd00:10:96::5", "fd00:10:96::a"


def sh(*argv, ns=None, check=True):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)


def serve(*args) -> subprocess.Popen:
    p = subprocess.Popen(["ip", "netns", "exec", HOST, PY, "-m", "plugins.meta.edgemesh.origdst", "serve", *args],
                         cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def ask(proto, ip, port=80) -> str:
    p = sh(PY, "-m", "plugins.meta.edgemesh.origdst", "ask", proto, ip, str(port), ns=POD, check=False)
    return (p.stdout or p.stderr).strip()


def nat() -> str:
    """iptables-save and ip6tables-save of the nat table, without their dated comment lines."""
    return "\n".join(line for tool in ("iptables-save", "ip6tables-save")
                     for line in sh(tool, "-t", "nat", ns=HOST).stdout.splitlines() if not line.startswith("#"))


def main() -> int:
    if os.geteuid() != 0:
        print("the demo needs root (it makes network namespaces)", file=sys.stderr)
        return 1
    tmp = tempfile.mkdtemp(prefix="edgemesh-demo-")
    procs, ok = [], True
    lst = {"cniVersion": "1.0.0", "name": "demo", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isDefaultGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00:22::/64"}]],
                  "dataDir": f"{tmp}/ipam"}},
        {"type": "edgemesh", "serviceCIDR": ["10.96.0.0/12", "fd00:10:96::/112"], "protocols": ["tcp", "udp"],
         "ensureListenDevice": True, "stateDir": f"{tmp}/state",
         "ignoredServices": [{"ip": DNS, "name": "kube-system/kube-dns"},
                             {"ip": DNS6, "name": "kube-system/kube-dns"}]}]}
    cni = CNIConfig(path=[os.path.join(ROOT, ".venv", "bin"), "/usr/lib/cni"], cache_dir=f"{tmp}/cache")
    rt = RuntimeConf(container_id="demo-pod", netns=f"/run/netns/{POD}", ifname="eth0",
                     args=[("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default")])
    try:
        for name in (HOST, POD):
            sh("ip", "netns", "add", name)
            sh("ip", "link", "set", "lo", "up", ns=name)
        before = nat()
        with enter(f"/run/netns/{HOST}"):
            res = cni.add_network_list(conflist_from_dict(lst), rt)
        addrs = " and ".join(ip.address for ip in res.ips)
        print(f"pod {addrs} attached: Go bridge + host-local, then edgemesh\n")
        print("nat tables on the node (iptables, ip6tables):\n" + nat() + "\n")
        for ip in (SVC, DNS, SVC6, DNS6):
            sh("ip", "addr", "add", f"{ip}/{128 if ':' in ip else 32}", "dev", "lo", ns=HOST)
        procs.append(serve("--real", "--listen", f"{SVC}:80", "--listen", f"{DNS}:80", "--listen", f"[{SVC6}]:80",
                           "--listen", f"[{DNS6}]:80", "--udp"))
        procs.append(serve("--listen", "169.254.96.16:40001", "--listen", "[fd00:a9fe:6010::1]:40001", "--udp"))
        checks = [("tcp", SVC, 80, f"orig={SVC}:80", "hijacked to the proxy, which reads SO_ORIGINAL_DST"),
                  ("udp", SVC, 80, f"orig={SVC}:80", "hijacked; the proxy asks conntrack (UDP)"),
                  ("tcp", DNS, 80, f"real={DNS}:80", "ignored service: reaches the real server"),
                  ("tcp", SVC6, 80, f"orig={SVC6}:80", "IPv6: hijacked, IP6T_SO_ORIGINAL_DST"),
                  ("udp", SVC6, 80, f"orig={SVC6}:80", "IPv6: hijacked; conntrack's IPv6 tuple"),
                  ("tcp", DNS6, 80, f"real={DNS6}:80", "IPv6: ignored service: the real server")]
        for proto, ip, port, want, what in checks:
            got = ask(proto, ip, port)
            ok &= got == want
            print(f"pod -> {proto} {ip}:{port}  answer {got!r:32} {'ok' if got == want else 'UNEXPECTED'}  ({what})")
        with enter(f"/run/netns/{HOST}"):
            cni.del_network_list(conflist_from_dict(lst), rt)
        same = nat() == before
        ok &= same
        print(f"\nafter DEL the nat tables are {'exactly as before' if same else 'NOT as before'}:\n{nat()}")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for name in (POD, HOST):
            sh("ip", "netns", "del", name, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    print("\ndemo " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
