"""pycni-doctor on whole test nodes, no broken state built: no false positives.

- A node with none of our plugins (the Go bridge, host-local and portmap, pods behind veths):
  every diagnosis that reads the node runs (1-4, 8, 9, and 7 through --conn) with zero findings,
  and the checks of our plugins' state are skipped, named, without an error.
- A healthy three-host vxlan overlay with dp-steering (tap, the reference dp reading vth) and
  edgemesh (its mesh proxy listening) chained, pods pinging across hosts: every check in
  runner.NAMES with each host's --conf, zero findings.
- Reading the runtime's config dir when no --conf is given (--conf-dir): libcni's order, only
  the networks holding our plugins, an unreadable file an error entry (165), not a crash.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from libcni_py.api import CNIConfig, RuntimeConf
from libcni_py.conf import conflist_from_dict
from plugins.doctor import runner
from plugins.doctor.main import conf_type
from plugins.pkg import ns as nsmod
from plugins.pkg import probe
from tests.conftest import GO_CNI_DIR, VENV_BIN

pytestmark = pytest.mark.root
DOCTOR = os.path.join(VENV_BIN, "pycni-doctor")
PY = os.path.join(VENV_BIN, "python")
NODE_CHECKS = ["nfqueue-no-reader", "mark-bit-clash", "policy-route-steals-replies", "rp-filter-forwarding",
               "kernel-hazards", "edgemesh-hijack"]         # diagnoses 1, 2, 3, 8, 4, 9
LISTENER = """
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
print("listening", flush=True)
while True:
    s.accept()[0].close()
"""


def doctor(*args: str, inside: str | None = None) -> tuple[int, dict]:
    argv = [DOCTOR, "--json", *args]
    if inside is not None:
        argv = ["ip", "netns", "exec", inside, *argv]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, json.loads(p.stdout)


def netns_args(*namespaces) -> list[str]:
    out = []
    for ns in namespaces:
        out += ["--netns", ns.path]
    return out


def clean(rc: int, out: dict) -> None:
    assert (rc, out["findings"], out["errors"], out["healthy"]) == (0, [], [], True), json.dumps(out, indent=1)


def test_node_with_none_of_our_plugins_runs_the_node_checks_and_skips_ours(netns, tmp_path):
    """The Go bridge (ipMasq) + host-local + portmap (hostPort rules, its 0x2000 mark): two pods.
    --conf-dir is the dir the runtime read that conflist from: nothing of ours in it."""
    host, pods = netns("dnhost"), [netns("dnpod"), netns("dnpod")]
    host.fixed_mac_bridge("cni-dn0", "02:00:00:00:0d:11")
    lst = {"cniVersion": "1.0.0", "name": "gonet", "plugins": [
        {"type": "bridge", "bridge": "cni-dn0", "isGateway": True, "ipMasq": True,
         "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                  "ranges": [[{"subnet": "10.67.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}
    confdir = tmp_path / "net.d"
    confdir.mkdir()
    (confdir / "10-gonet.conflist").write_text(json.dumps(lst))
    cni = CNIConfig(path=[GO_CNI_DIR], cache_dir=str(tmp_path / "cache"))
    nets = conflist_from_dict(lst)
    rts = [RuntimeConf(container_id=f"dn-c{i}", netns=p.path, ifname="eth0",
                       capability_args={"portMappings": [{"hostPort": 8080 + i, "containerPort": 80,
                                                          "protocol": "tcp"}]})
           for i, p in enumerate(pods)]
    server = None
    try:
        with nsmod.enter(host.path):
            ips = [cni.add_network_list(nets, rt).ips[0].address.split("/")[0] for rt in rts]
        assert "CNI-HOSTPORT-DNAT" in host.run("iptables-save", "-t", "nat").stdout
        assert probe.ping(pods[0].path, ips[1]) == [0]

        rc, out = doctor("--conf-dir", str(confdir), *netns_args(host, *pods))
        clean(rc, out)
        ours = [n for n in runner.NAMES if conf_type(n)]
        assert out["checks"] == [n for n in runner.NAMES if not conf_type(n)]
        assert set(NODE_CHECKS) <= set(out["checks"]), out["checks"]
        assert out["skipped"] == [{"check": n, "why": f"no {conf_type(n)} network in {confdir}"} for n in ours]
        assert out["confs"] == []
        assert [n["netns"] for n in out["namespaces"]] == [host.path, pods[0].path, pods[1].path]
        # the table says the same, and names what it skipped
        p = subprocess.run([DOCTOR, "--conf-dir", str(confdir), *netns_args(host, *pods)], capture_output=True,
                           text=True, timeout=180)
        assert p.returncode == 0 and p.stdout.splitlines()[-1] == (
            f"pycni-doctor: {len(out['checks'])} check(s) in 3 namespace(s): no problems found"), p.stdout
        assert [ln for ln in p.stdout.splitlines() if ln.startswith("skipped: ")] == [
            f"skipped: {s['check']} ({s['why']})" for s in out["skipped"]]

        # diagnosis 7: who owns a connection, on this node too
        server = subprocess.Popen(["ip", "netns", "exec", pods[0].name, sys.executable, "-c", LISTENER, ips[0], "80"],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        rc, got = doctor("--conn", f"{ips[0]}:80", *netns_args(host, *pods))
        assert rc == 0 and got["errors"] == [], got
        [sock] = got["connections"]
        assert sock["where"] == f"netns {pods[0].name}" and server.pid in [x["pid"] for x in sock["processes"]], sock
    finally:
        if server is not None:
            server.kill()
            server.wait()
        with nsmod.enter(host.path):
            for rt in rts:
                cni.del_network_list(nets, rt)


# ---- a healthy overlay with all three of our plugins ------------------------------------------------

class ChainedPods:
    """tests/kit/vxlan_pods.Pods with, per host, dp-steering (tap, the host's own enforcer
    netns and state) and edgemesh (its own state, the listen device) chained after vxlan."""

    def __init__(self, cluster, netns, tmp_path):
        from tests.kit.vxlan_pods import Pods
        self.tmp = tmp_path
        self.enf = {h.node: netns(f"enf{h.index}-") for h in cluster.hosts}
        outer = self

        class _Pods(Pods):
            def conflist(self, host, **overrides):
                return conflist_from_dict(outer.conflist(host))
        self.pods = _Pods(cluster, netns, tmp_path)

    def conflist(self, host) -> dict:
        steer = {"type": "dp-steering", "mode": "tap", "enforcerNetns": self.enf[host.node].path,
                 "stateDir": str(self.tmp / "dp" / host.node), "vbrName": "vbr", "vthName": "vth", "dpWaitMs": 300}
        mesh = {"type": "edgemesh", "serviceCIDR": "10.96.0.0/12", "ensureListenDevice": True,
                "stateDir": str(self.tmp / "edgemesh" / host.node)}
        return {"cniVersion": "1.0.0", "name": self.pods.cluster.network_name,
                "plugins": [dict(host.conf), steer, mesh]}


def test_healthy_three_host_overlay_with_all_our_plugins_gives_no_findings(netns, tmp_path):
    from tests.kit.dp import DP
    from tests.kit.vxlan_hosts import Cluster
    cluster = Cluster(netns, tmp_path, segments=[0, 0, 0])
    world = ChainedPods(cluster, netns, tmp_path)
    procs: list[subprocess.Popen] = []
    dps: list = []
    attached = []
    try:
        for h in cluster.hosts:
            os.makedirs(tmp_path / "dpw" / h.node)
            dps.append(DP(world.enf[h.node].path, tmp_path / "dpw" / h.node, "--iface", "vth"))
        for h in cluster.hosts:
            attached.append(world.pods.add(h, f"dn{h.index}"))
        cluster.ensure_all()
        for dp in dps:                          # vth exists once the first pod of the host is steered
            dp.start()
        for h in cluster.hosts:                 # the mesh proxy, on the address edgemesh DNATs to
            p = subprocess.Popen(["ip", "netns", "exec", h.name, PY, "-m", "plugins.meta.edgemesh.origdst", "serve",
                                  "--listen", "169.254.96.16:40001"], stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for a in attached:
            for b in attached:
                if a is not b:
                    assert probe.ping(a.ns.path, b.ip) == [0], (a.cid, b.cid)
        assert "EDGE-MESH" in cluster.hosts[0].run("iptables-save", "-t", "nat").stdout + \
            cluster.hosts[0].run("nft", "list", "ruleset").stdout
        for h, pod in zip(cluster.hosts, attached):
            conf = tmp_path / f"{h.node}.conflist"
            conf.write_text(json.dumps(world.conflist(h)))
            rc, out = doctor("--conf", str(conf), *netns_args(h.ns, pod.ns, world.enf[h.node]), inside=h.name)
            clean(rc, out)
            assert out["checks"] == runner.NAMES and out["skipped"] == [], out
            assert out["confs"] == [{"file": str(conf), "network": cluster.network_name,
                                     "types": ["vxlan", "dp-steering", "edgemesh"]}]
            assert len(out["namespaces"]) == 3
        for dp in dps:
            assert dp.alive(), dp.output()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for dp in dps:
            dp.stop()
        for pod in attached:
            world.pods.delete(pod)


# ---- the runtime's config dir ---------------------------------------------------------------------

def _write(path, doc) -> None:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))


def test_conf_dir_is_read_in_libcni_order_ours_only_and_bad_files_are_error_entries(netns, tmp_path):
    ns = netns("dnconf")
    d = tmp_path / "net.d"
    d.mkdir()
    vx = {"cniVersion": "1.0.0", "name": "vxnet", "plugins": [{"type": "vxlan", "network": "10.244.0.0/16"},
                                                               {"type": "edgemesh", "serviceCIDR": "10.96.0.0/12"}]}
    _write(d / "20-vx.conflist", vx)
    _write(d / "10-go.conflist", {"cniVersion": "1.0.0", "name": "gonet", "plugins": [{"type": "bridge"}]})
    _write(d / "30-steer.conf", {"cniVersion": "0.4.0", "name": "steer", "type": "dp-steering",
                                 "enforcerNetns": "/run/netns/enf"})
    _write(d / "40-vx-again.json", {**vx, "plugins": [{"type": "vxlan"}]})      # the same network: libcni takes 20-
    _write(d / "50-notes.txt", "{not a config")                                 # not a config extension: not read
    (d / "60-dir.conf").mkdir()                                                 # a directory: not read
    # one node check: these configs are for reading, there is no overlay nor enforcer behind them
    rc, out = doctor("--conf-dir", str(d), "--netns", ns.path, "--check", "nfqueue-no-reader")
    clean(rc, out)
    assert out["confs"] == [
        {"file": str(d / "20-vx.conflist"), "network": "vxnet", "types": ["vxlan", "edgemesh"]},
        {"file": str(d / "30-steer.conf"), "network": "steer", "types": ["dp-steering"]}]
    assert out["skipped"] == []

    # unreadable: a dangling symlink, a file that is no JSON, a list with no name; the rest is still read
    os.symlink(d / "gone.conflist", d / "05-dangling.conflist")
    _write(d / "25-broken.conflist", '{"cniVersion": "1.0.0", "name": ')
    _write(d / "26-noname.conf", {"type": "vxlan"})
    rc, out = doctor("--conf-dir", str(d), "--netns", ns.path, "--check", "nfqueue-no-reader")
    assert rc == 2 and out["findings"] == [] and not out["healthy"], out
    assert [(e["check"], e["where"], e["code"]) for e in out["errors"]] == [
        ("conf", f"conf {d / name}", 165) for name in ("05-dangling.conflist", "25-broken.conflist", "26-noname.conf")]
    assert "No such file or directory" in out["errors"][0]["details"]
    assert "not a JSON object with a network name" in out["errors"][2]["details"]
    assert [c["network"] for c in out["confs"]] == ["vxnet", "steer"]
    assert out["checks"] == ["nfqueue-no-reader"]
    p = subprocess.run([DOCTOR, "--conf-dir", str(d), "--netns", ns.path, "--check", "nfqueue-no-reader"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"could not read a CNI config (code 165): {d / '25-broken.conflist'}: " in p.stdout, p.stdout


def test_conf_dir_arguments(netns, tmp_path):
    ns = netns("dnconfa")
    rc, out = doctor("--conf-dir", str(tmp_path / "nonexistent"), "--netns", ns.path)
    assert rc == 2 and out["code"] == 165 and "not a directory" in out["details"], out
    (tmp_path / "a.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "a",
                                                     "plugins": [{"type": "vxlan"}]}))
    rc, out = doctor("--conf", str(tmp_path / "a.conflist"), "--conf-dir", str(tmp_path), "--netns", ns.path)
    assert rc == 2 and out["code"] == 161, out
    rc, out = doctor("--conf", str(tmp_path / "a.conflist"), "--netns", ns.path,      # --conf: that file only
                     "--check", "nfqueue-no-reader")
    clean(rc, out)
    assert out["confs"] == [{"file": str(tmp_path / "a.conflist"), "network": "a", "types": ["vxlan"]}]
    # the same namespace given twice is checked once
    rc, out = doctor("--netns", ns.path, "--netns", ns.path, "--check", "nfqueue-no-reader")
    assert rc == 0 and out["namespaces"] == [{"where": f"netns {ns.name}", "netns": ns.path}], out
