"""Demo: pycni-doctor on a vxlan overlay of three test hosts (the vxlan demo's world): a clean
report, then two breakages made on purpose, the ones that cost operators days (a policy route on
host0 stealing its pod's replies; an NFQUEUE rule in the pod with no reader in the pod's
namespace), traffic failing, the doctor's findings, its printed fix commands applied as printed,
traffic back, and a clean report again. Cleans up after itself.

    sudo python -m plugins.doctor.demo          (root; touches only its own namespaces)

The doctor is pointed at the demo's namespaces only (--netns), with host0's conflist (--conf),
so the machine's other namespaces do not show in its report.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

from plugins.main.vxlan.demo import Demo, pod_ip, run, sh
from plugins.pkg import probe

DOCTOR = os.path.join(os.path.dirname(sys.executable), "pycni-doctor")
QUEUE = 7


def doctor(argv: list[str]) -> tuple[int, str]:
    """Run pycni-doctor (the table, as an operator reads it), print it indented."""
    print("  $ pycni-doctor " + " ".join(shlex.quote(a) for a in argv))
    p = subprocess.run([DOCTOR, *argv], capture_output=True, text=True, timeout=120)
    for line in p.stdout.splitlines():
        print(f"    {line}")
    if p.returncode not in (0, 1) or "Traceback" in p.stderr:
        raise RuntimeError(f"pycni-doctor could not run (exit {p.returncode}): {p.stdout}{p.stderr}")
    print(f"  (exit {p.returncode})")
    return p.returncode, p.stdout


def fix_commands(report: str) -> list[str]:
    """The fix commands the table prints (`$ ...` lines)."""
    return [line.strip()[2:] for line in report.splitlines() if line.strip().startswith("$ ")]


def traffic(src: str, dst_ns: str, dst_ip: str, port: int) -> tuple[int, bool]:
    """(ICMP echoes answered of 3, a TCP exchange done) from pod netns `src` to `dst_ip`."""
    answered = probe.ping(f"/run/netns/{src}", dst_ip, count=3, interval=0.2, timeout=1.0)
    try:
        reply = probe.tcp_exchange(f"/run/netns/{src}", dst_ip, port, b"hello doctor", timeout=1.5)
    except OSError:
        reply = b""
    return len(answered), reply == b"rotcod olleh"


def _demo(demo: Demo) -> None:
    print("== doctor: three vxlan test hosts, a pod on each (the vxlan demo's world)")
    hosts = demo.underlay()
    pods = [demo.attach(i, h) for i, h in enumerate(hosts)]
    for i, h in enumerate(hosts):
        demo.reconcile(i, h)
    conf = os.path.join(demo.tmp, "host0.conflist")
    with open(conf, "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": "demo", "plugins": [demo.conflist(0).plugins[0].network]}, f)
    ips = [pod_ip(p) for p in pods]
    argv = ["--netns", f"/run/netns/{hosts[0]}", "--netns", f"/run/netns/{pods[0]}", "--conf", conf]
    with probe.TCPEcho(f"/run/netns/{pods[0]}") as srv:
        def show(when: str) -> tuple[int, bool]:
            echoes, tcp = traffic(pods[1], pods[0], ips[0], srv.port)
            print(f"  {when}: pod on host1 -> pod on host0 ({ips[0]}): ping {echoes}/3 answered, "
                  f"TCP :{srv.port} {'answered' if tcp else 'no answer'}")
            return echoes, tcp

        print("== doctor: a clean report (host0 and its pod)")
        if show("traffic") != (3, True):
            raise RuntimeError("the overlay does not work before the breakage")
        rc, _ = doctor(argv)
        if rc != 0:
            raise RuntimeError("the doctor found problems on a healthy overlay")

        print("== doctor: broken on purpose")
        print(f"  host0: table 100 sends everything out of eth0; `ip rule add from {ips[0]} lookup 100` "
              "(replies of host0's pod now leave by the underlay)")
        sh("ip", "route", "add", "default", "via", "198.18.0.254", "dev", "eth0", "table", "100", netns=hosts[0])
        sh("ip", "rule", "add", "from", ips[0], "lookup", "100", "pref", "32000", netns=hosts[0])
        print(f"  pod on host0: TCP to :{srv.port} goes to NFQUEUE {QUEUE}, and nothing in the pod's namespace "
              "reads that queue")
        sh("iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(srv.port), "-j", "NFQUEUE",
           "--queue-num", str(QUEUE), netns=pods[0])
        if show("traffic") != (0, False):
            raise RuntimeError("the breakage did not break the traffic")

        print("== doctor: the findings")
        rc, report = doctor(argv)
        commands = fix_commands(report)
        if rc != 1 or "policy-route-steals-replies" not in report or "nfqueue-no-reader" not in report:
            raise RuntimeError("the doctor did not find both breakages")

        print("== doctor: the fix, the commands it printed, run as printed")
        for command in commands:
            print(f"  $ {command}")
            subprocess.run(shlex.split(command), check=True, capture_output=True, text=True, timeout=60)
        if show("traffic") != (3, True):
            raise RuntimeError("the printed fixes did not bring the traffic back")

        print("== doctor: a clean report again")
        rc, _ = doctor(argv)
        if rc != 0:
            raise RuntimeError("problems left after the fixes")
    for i, (h, p) in enumerate(zip(hosts, pods)):
        demo.detach(i, h, p)


def main() -> int:
    return run("pycni-doctor-demo-", "doctor: ", _demo)


if __name__ == "__main__":
    sys.exit(main())
