"""The programs a pod's vxlan and edgemesh verbs exec, counted as pycni-node's worker runs them
(the plugin's skel.run in-process, in the host's netns; an audit hook records every
subprocess.Popen, nothing is replaced): a DEL runs no exec whose answer the kernel gives over
netlink (iptables.chains, nft.tables), and still removes every rule when there are some.

Only with iptables-nft (its chains are nf_tables ones the netlink dump lists); iptables-legacy
keeps the iptables-save path, which the other edgemesh and vxlan tests cover.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from plugins.pkg import iptables
from tests.kit.vxlan_hosts import Cluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CNI_PATH = f"{os.path.join(ROOT, '.venv', 'bin')}:/usr/lib/cni"
MODULES = {"vxlan": "plugins.main.vxlan.cmd", "edgemesh": "plugins.meta.edgemesh.cmd"}

# One verb in a child process as the daemon's worker: modules imported first, then the netns,
# then skel.run with an audit hook that writes each exec's program name.
WORKER = r"""
import importlib, io, json, os, sys
from libcni_py import skel
from plugins.pkg import ns
module, host, conf = sys.argv[1], sys.argv[2], sys.stdin.buffer.read()
plugin = importlib.import_module(module).PLUGIN
execs = []
def hook(event, args):
    if event == "subprocess.Popen":
        execs.append([os.path.basename(os.fsdecode(args[0]))] + [os.fsdecode(a) for a in args[1][1:]])
with ns.enter(host):
    out, err = io.StringIO(), io.StringIO()
    sys.addaudithook(hook)
    rc = skel.run(plugin, dict(os.environ), io.BytesIO(conf), out, err)
print(json.dumps({"rc": rc, "out": out.getvalue(), "err": err.getvalue(), "execs": execs}))
"""

pytestmark = pytest.mark.skipif(not iptables.nft_backed("iptables"),
                                reason="iptables is not iptables-nft here")

# The same worker under strace: markers around skel.run bound the rtnetlink requests counted.
MARKED = WORKER.replace("    rc = skel.run(", "    mark = os.open(os.devnull, os.O_WRONLY)\n"
                        "    os.write(mark, b'PYCNI-BEGIN')\n    rc = skel.run(").replace(
    "print(json.dumps(", "os.write(mark, b'PYCNI-END')\nprint(json.dumps(")


class Node:
    def __init__(self, netns, tmp_path):
        self.cluster = Cluster(netns, tmp_path, segments=[0], network_name="pwexec")
        self.host = self.cluster.hosts[0]
        self.netns, self.tmp = netns, str(tmp_path)

    def vxlan(self, **keys) -> dict:
        return {**self.host.conf, "cniVersion": "1.0.0", **keys}

    def edgemesh(self, **keys) -> dict:
        return {"cniVersion": "1.0.0", "name": "pwexec", "type": "edgemesh", "serviceCIDR": "10.96.0.0/12",
                "listenAddress": "169.254.96.16", "listenPort": 40001, "protocols": ["tcp"],
                "backend": "iptables", "stateDir": os.path.join(self.tmp, "edgemesh"), **keys}

    def run(self, plugin: str, verb: str, cid: str, pod, conf: dict) -> tuple[dict, list[list[str]]]:
        env = dict(os.environ, CNI_COMMAND=verb, CNI_CONTAINERID=cid, CNI_NETNS=pod.path, CNI_IFNAME="eth0",
                   CNI_PATH=CNI_PATH, CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default",
                   PYCNI_NODE_SOCKET="off")
        p = subprocess.run([sys.executable, "-c", WORKER, MODULES[plugin], self.host.path],
                           input=json.dumps(conf).encode(), env=env, capture_output=True, cwd=ROOT, timeout=120)
        assert p.returncode == 0, p.stderr.decode()
        got = json.loads(p.stdout)
        assert got["rc"] == 0, (plugin, verb, got["out"], got["err"])
        return (json.loads(got["out"]) if got["out"].strip() else {}), got["execs"]

    def requests(self, verb: str, cid: str, pod, conf: dict, trace: str) -> tuple[dict, list[tuple[int, bytes]]]:
        """A vxlan verb as run(), under strace: (its result, (type, body) of each netlink message
        the plugin process sent during skel.run: rtnetlink, netfilter's)."""
        env = dict(os.environ, CNI_COMMAND=verb, CNI_CONTAINERID=cid, CNI_NETNS=pod.path, CNI_IFNAME="eth0",
                   CNI_PATH=CNI_PATH, CNI_ARGS="IgnoreUnknown=1", PYCNI_NODE_SOCKET="off")
        p = subprocess.run(["strace", "-f", "-qq", "-xx", "-s", "4096", "-e", "trace=sendto,sendmsg,write",
                            "-e", "signal=none", "-o", trace, sys.executable, "-c", MARKED, MODULES["vxlan"],
                            self.host.path], input=json.dumps(conf).encode(), env=env, capture_output=True,
                           cwd=ROOT, timeout=120)
        assert p.returncode == 0, p.stderr.decode()
        got = json.loads(p.stdout)
        assert got["rc"] == 0, (verb, got["out"], got["err"])
        sent, on = [], False
        with open(trace) as f:
            for line in f:
                if "write(" in line and "\\x50\\x59\\x43\\x4e\\x49\\x2d\\x42" in line:      # -xx: PYCNI-B
                    on = True
                elif "write(" in line and "\\x50\\x59\\x43\\x4e\\x49\\x2d\\x45" in line:    # PYCNI-E
                    on = False
                elif on and "nlmsg_type=" in line:
                    for kind, body in re.findall(r"nlmsg_type=(0x[0-9a-f]+|RTM_\w+)[^\]]*\}, \"((?:\\x[0-9a-f]{2})*)\"",
                                                 line):
                        sent.append((kind, bytes.fromhex(body.replace("\\x", ""))))
        return json.loads(got["out"]) if got["out"].strip() else {}, sent

    def nat(self, binary: str = "iptables") -> str:
        return self.host.run(f"{binary}-save", "-t", "nat").stdout


def programs(execs: list[list[str]]) -> list[str]:
    return [e[0] for e in execs]


@pytest.fixture
def node(netns, tmp_path):
    return Node(netns, tmp_path)


@pytest.mark.parametrize("masq", [False, True], ids=["ipMasq-off", "ipMasq-on"])
def test_vxlan_del_reads_iptables_only_when_the_pod_has_masq_rules(node, netns, masq):
    conf = node.vxlan(ipMasq=masq)
    pod = netns("pwx")
    result, execs = node.run("vxlan", "ADD", "pw1", pod, conf)
    assert programs(execs) == ["host-local"] + (["iptables-save", "iptables-restore"] if masq else [])
    assert ("PYCNI-VX-" in node.nat()) == masq
    _, execs = node.run("vxlan", "DEL", "pw1", pod, {**conf, "prevResult": result})
    # ipMasq off: the chain is not in the kernel's list, so no iptables-save; on: the save and
    # the restore that removes the rules
    assert programs(execs) == (["iptables-save", "iptables-restore"] if masq else []) + ["host-local"]
    assert "PYCNI-VX-" not in node.nat() and "pw1" not in node.nat()
    _, execs = node.run("vxlan", "DEL", "pw1", pod, {**conf, "prevResult": result})     # idempotent
    assert "iptables-save" not in programs(execs)


def test_vxlan_dual_stack_masq_off_del_runs_neither_save(node, netns):
    conf = node.vxlan(ipv6Network="fd00:10:244::/48")          # DEL looks in ip6tables too
    pod = netns("pwx")
    _, execs = node.run("vxlan", "DEL", "pw2", pod, conf)
    assert "iptables-save" not in programs(execs) and "ip6tables-save" not in programs(execs)


def _two_pods(node, netns, em: dict, tag: str) -> tuple[dict, dict, dict]:
    vx = node.vxlan()
    pods = {f"{tag}a": netns("pwe"), f"{tag}b": netns("pwe")}
    results = {}
    for cid, pod in pods.items():
        results[cid], _ = node.run("vxlan", "ADD", cid, pod, vx)
        node.run("edgemesh", "ADD", cid, pod, {**em, "prevResult": results[cid]})
    return vx, pods, results


def test_edgemesh_del_is_one_restore_of_exactly_its_deletions(node, netns):
    em = node.edgemesh()
    vx, pods, results = _two_pods(node, netns, em, "pw")
    node.host.run("iptables", "-t", "nat", "-A", "PREROUTING", "-s", "10.9.9.9/32", "-j", "RETURN")   # not ours
    # a pod of several: the mesh chain's comments from the kernel (netlink), then one restore
    # deleting its rule by spec: no iptables-save, no ip6tables-save
    _, execs = node.run("edgemesh", "DEL", "pwb", pods["pwb"], {**em, "prevResult": results["pwb"]})
    assert programs(execs) == ["iptables-restore"]
    nat = node.nat()
    assert "id=pwb" not in nat and "id=pwa" in nat and "EDGE-MESH-TCP" in nat
    # the last pod: the same one restore tears everything down
    _, execs = node.run("edgemesh", "DEL", "pwa", pods["pwa"], {**em, "prevResult": results["pwa"]})
    assert programs(execs) == ["iptables-restore"]
    nat = node.nat()
    assert "EDGE-MESH" not in nat and "edgemesh" not in nat and "-s 10.9.9.9/32 -j RETURN" in nat
    # nothing left: a DEL reads nothing and writes nothing
    _, execs = node.run("edgemesh", "DEL", "pwa", pods["pwa"], {**em, "prevResult": results["pwa"]})
    assert programs(execs) == []
    for cid, pod in pods.items():
        node.run("vxlan", "DEL", cid, pod, {**vx, "prevResult": results[cid]})


def test_edgemesh_del_reads_when_it_cannot_delete_by_spec(node, netns):
    """No prevResult: the pod's address is not known, DEL reads (one iptables-save) as before. A
    rule changed by hand: the restore by spec is refused, DEL reads and removes it by position.
    A rule in the mesh chain without a comment of ours: the chain's owner cannot be told from the
    kernel's list, DEL reads and the last pod's teardown flushes the chain as before."""
    em = node.edgemesh()
    vx, pods, results = _two_pods(node, netns, em, "pr")
    _, execs = node.run("edgemesh", "DEL", "prb", pods["prb"], em)                 # no prevResult
    assert programs(execs) == ["iptables-save", "iptables-restore"]
    assert "id=prb" not in node.nat() and "id=pra" in node.nat()
    node.run("edgemesh", "ADD", "prb", pods["prb"], {**em, "prevResult": results["prb"]})
    mesh = [ln for ln in node.nat().splitlines() if ln.startswith("-A EDGE-MESH ")]
    position = next(i for i, ln in enumerate(mesh, 1) if "id=prb" in ln)
    addr = results["prb"]["ips"][0]["address"].split("/")[0]
    # by hand: the pod's rule now returns instead of jumping to the services chain
    node.host.run("iptables", "-t", "nat", "-R", "EDGE-MESH", str(position), "-s", f"{addr}/32", "-m", "comment",
                  "--comment", "edgemesh net=pwexec id=prb", "-j", "RETURN")
    _, execs = node.run("edgemesh", "DEL", "prb", pods["prb"], {**em, "prevResult": results["prb"]})
    assert programs(execs) == ["iptables-restore", "iptables-save", "iptables-restore"]
    assert "id=prb" not in node.nat() and "id=pra" in node.nat()
    node.host.run("iptables", "-t", "nat", "-A", "EDGE-MESH", "-s", "10.9.9.8/32", "-j", "RETURN")
    _, execs = node.run("edgemesh", "DEL", "pra", pods["pra"], {**em, "prevResult": results["pra"]})
    assert programs(execs) == ["iptables-save", "iptables-restore"]
    assert "EDGE-MESH" not in node.nat() and "edgemesh" not in node.nat()
    for cid, pod in pods.items():
        node.run("vxlan", "DEL", cid, pod, {**vx, "prevResult": results[cid]})


def test_edgemesh_last_del_with_a_second_root_jump_leaves_none(node, netns):
    """The last pod's one restore deletes one root jump per hook by spec; a second one (added by
    hand) keeps -X EDGE-MESH from working, the restore is refused, DEL reads and removes both."""
    em = node.edgemesh()
    vx, pods, results = _two_pods(node, netns, em, "pj")
    node.run("edgemesh", "DEL", "pjb", pods["pjb"], {**em, "prevResult": results["pjb"]})
    node.host.run("iptables", "-t", "nat", "-A", "OUTPUT", "-m", "comment", "--comment", "edgemesh root chain",
                  "-j", "EDGE-MESH")
    _, execs = node.run("edgemesh", "DEL", "pja", pods["pja"], {**em, "prevResult": results["pja"]})
    assert programs(execs) == ["iptables-restore", "iptables-save", "iptables-restore"]
    assert "EDGE-MESH" not in node.nat() and "edgemesh" not in node.nat()
    for cid, pod in pods.items():
        node.run("vxlan", "DEL", cid, pod, {**vx, "prevResult": results[cid]})


def test_edgemesh_nftables_del_writes_once_without_listing(node, netns):
    em = node.edgemesh(backend="nftables")
    vx, pods, results = _two_pods(node, netns, em, "pn")
    # the mesh chain's handles and comments from the kernel (netlink): one nft -f, no nft list
    _, execs = node.run("edgemesh", "DEL", "pnb", pods["pnb"], {**em, "prevResult": results["pnb"]})
    assert execs == [["nft", "-f", "-"]], execs
    table = node.host.run("nft", "list", "table", "ip", "edgemesh").stdout
    assert "id=pnb" not in table and "id=pna" in table
    _, execs = node.run("edgemesh", "DEL", "pnb", pods["pnb"], {**em, "prevResult": results["pnb"]})
    assert execs == []                                                      # again: nothing to do
    _, execs = node.run("edgemesh", "DEL", "pna", pods["pna"], {**em, "prevResult": results["pna"]})
    assert execs == [["nft", "-f", "-"]], execs
    assert "edgemesh" not in node.host.run("nft", "list", "tables").stdout
    for cid, pod in pods.items():
        node.run("vxlan", "DEL", cid, pod, {**vx, "prevResult": results[cid]})


def test_edgemesh_nftables_del_reads_a_chain_it_cannot_place(node, netns):
    em = node.edgemesh(backend="nftables")
    vx, pods, results = _two_pods(node, netns, em, "pm")
    node.host.run("nft", "add", "rule", "ip", "edgemesh", "mesh", "ip", "saddr", "10.9.9.7", "return")
    _, execs = node.run("edgemesh", "DEL", "pmb", pods["pmb"], {**em, "prevResult": results["pmb"]})
    assert programs(execs) == ["nft", "nft"]                                # list table, -f
    table = node.host.run("nft", "list", "table", "ip", "edgemesh").stdout
    assert "id=pmb" not in table and "id=pma" in table and "10.9.9.7" in table
    for cid, pod in pods.items():
        node.run("edgemesh", "DEL", cid, pod, {**em, "prevResult": results[cid]})
        node.run("vxlan", "DEL", cid, pod, {**vx, "prevResult": results[cid]})
    assert "edgemesh" not in node.host.run("nft", "list", "tables").stdout


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_vxlan_add_with_a_live_agent_looks_the_bridge_up_once(node, netns, tmp_path):
    """With vxlan-agent alive (pycni-node --conf runs it), ADD reads the agent's state and checks
    the device and the bridge: the bridge's link is asked for once and its addresses dumped once
    for the whole ADD (the reconcile's vet, its stale-gateway check and the pod's ensure_bridge
    share them), and the gateway it already holds is not added again."""
    agent = node.host.start_agent()
    try:
        agent.wait_ready()
        vx = node.vxlan()
        first, second = netns("pwg"), netns("pwg")
        res1, _ = node.run("vxlan", "ADD", "pg1", first, vx)             # makes the bridge and its gateway
        res2, sent = node.requests("ADD", "pg2", second, vx, str(tmp_path / "add.strace"))
        bridge = b"cni0\0"
        getlink = [b for k, b in sent if k in ("0x12", "RTM_GETLINK") and bridge in b]
        assert len(getlink) == 1, sent
        assert len([k for k, _ in sent if k in ("0x16", "RTM_GETADDR")]) == 1, sent
        gateway = ipaddress.ip_address(res2["ips"][0]["gateway"]).packed
        assert not [b for k, b in sent if k in ("0x14", "RTM_NEWADDR") and gateway in b], sent   # it is there
        assert node.host.run("ip", "-4", "addr", "show", "cni0").stdout.count("inet ") == 1
        for cid, pod, res in (("pg1", first, res1), ("pg2", second, res2)):
            node.run("vxlan", "DEL", cid, pod, {**vx, "prevResult": res})
    finally:
        agent.stop()


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_vxlan_del_asks_netfilter_nothing_when_the_record_says_no_masq(node, netns, tmp_path):
    """ADD records ipMasq in the attachment record: a DEL whose record says false looks for no masq
    chain (no netfilter dump); a record without the key (an older release's) or none at all, and
    ipMasq true, keep the look (test_vxlan_del_reads_iptables_only_when_the_pod_has_masq_rules)."""
    getchain = "0xa04"                                  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETCHAIN
    vx = node.vxlan()
    pods = {cid: netns("pwm") for cid in ("pm1", "pm2")}
    results = {cid: node.run("vxlan", "ADD", cid, pod, vx)[0] for cid, pod in pods.items()}
    _, sent = node.requests("DEL", "pm1", pods["pm1"], {**vx, "prevResult": results["pm1"]},
                            str(tmp_path / "del1.strace"))
    assert not [k for k, _ in sent if k == getchain], sent
    records = os.path.join(vx["stateDir"], "attachments")
    (path,) = [os.path.join(records, f) for f in os.listdir(records) if f.endswith(".json")]
    with open(path) as f:
        rec = json.load(f)
    assert rec["ipMasq"] is False and rec["containerID"] == "pm2"
    del rec["ipMasq"]
    with open(path, "w") as f:
        json.dump(rec, f)
    _, sent = node.requests("DEL", "pm2", pods["pm2"], {**vx, "prevResult": results["pm2"]},
                            str(tmp_path / "del2.strace"))
    assert [k for k, _ in sent if k == getchain], sent
    assert not os.listdir(records)
    _, sent = node.requests("DEL", "pm2", pods["pm2"], vx, str(tmp_path / "del3.strace"))     # no record
    assert [k for k, _ in sent if k == getchain], sent
