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

    def run(self, plugin: str, verb: str, cid: str, pod, conf: dict,
            path: str = CNI_PATH) -> tuple[dict, list[list[str]]]:
        env = dict(os.environ, CNI_COMMAND=verb, CNI_CONTAINERID=cid, CNI_NETNS=pod.path, CNI_IFNAME="eth0",
                   CNI_PATH=path, CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default",
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


def test_edgemesh_del_runs_nothing_and_removes_exactly_its_rules(node, netns):
    """iptables-nft: the mesh chain's rules from a netfilter netlink dump, its deletions (or the
    last pod's teardown) as one nf_tables transaction over netlink: no exec at all."""
    em = node.edgemesh()
    vx, pods, results = _two_pods(node, netns, em, "pw")
    node.host.run("iptables", "-t", "nat", "-A", "PREROUTING", "-s", "10.9.9.9/32", "-j", "RETURN")   # not ours
    before = node.nat()
    _, execs = node.run("edgemesh", "DEL", "pwb", pods["pwb"], {**em, "prevResult": results["pwb"]})
    assert execs == []
    nat = node.nat()
    assert "id=pwb" not in nat and "id=pwa" in nat and "EDGE-MESH-TCP" in nat
    assert [ln for ln in before.splitlines() if "id=pwb" not in ln and not ln.startswith("#")] == \
        [ln for ln in nat.splitlines() if not ln.startswith("#")]              # only its rule went
    _, execs = node.run("edgemesh", "DEL", "pwb", pods["pwb"], em)              # again, no prevResult
    assert execs == [] and node.nat() == nat
    # the last pod: chains and jumps go, a rule not ours stays
    _, execs = node.run("edgemesh", "DEL", "pwa", pods["pwa"], em)
    assert execs == []
    nat = node.nat()
    assert "EDGE-MESH" not in nat and "edgemesh" not in nat and "-s 10.9.9.9/32 -j RETURN" in nat
    _, execs = node.run("edgemesh", "DEL", "pwa", pods["pwa"], em)               # nothing left
    assert execs == []
    for cid, pod in pods.items():
        node.run("vxlan", "DEL", cid, pod, {**vx, "prevResult": results[cid]})


def test_edgemesh_last_del_removes_a_second_root_jump_too(node, netns):
    """The root jumps are found as read() finds them (comment and target), however many."""
    em = node.edgemesh()
    vx, pods, results = _two_pods(node, netns, em, "pj")
    node.run("edgemesh", "DEL", "pjb", pods["pjb"], em)
    node.host.run("iptables", "-t", "nat", "-A", "OUTPUT", "-m", "comment", "--comment", "edgemesh root chain",
                  "-j", "EDGE-MESH")
    _, execs = node.run("edgemesh", "DEL", "pja", pods["pja"], em)
    assert execs == []
    assert "EDGE-MESH" not in node.nat() and "edgemesh" not in node.nat()
    for cid, pod in pods.items():
        node.run("vxlan", "DEL", cid, pod, {**vx, "prevResult": results[cid]})


def test_edgemesh_del_reads_a_mesh_chain_it_cannot_place(node, netns):
    """A rule in the mesh chain without a comment of ours: whose it is cannot be told from the
    kernel's list, so DEL reads and plans as before (the last pod's teardown flushes the chain)."""
    em = node.edgemesh()
    vx, pods, results = _two_pods(node, netns, em, "pr")
    node.host.run("iptables", "-t", "nat", "-A", "EDGE-MESH", "-s", "10.9.9.8/32", "-j", "RETURN")
    _, execs = node.run("edgemesh", "DEL", "prb", pods["prb"], em)
    assert programs(execs) == ["iptables-save", "iptables-restore"]
    assert "id=prb" not in node.nat() and "id=pra" in node.nat() and "10.9.9.8" in node.nat()
    _, execs = node.run("edgemesh", "DEL", "pra", pods["pra"], em)
    assert programs(execs) == ["iptables-save", "iptables-restore"]
    assert "EDGE-MESH" not in node.nat() and "edgemesh" not in node.nat()
    for cid, pod in pods.items():
        node.run("vxlan", "DEL", cid, pod, {**vx, "prevResult": results[cid]})


def test_edgemesh_del_refused_by_the_kernel_changes_nothing(node, netns):
    """The last pod's teardown while a rule not ours jumps to one of our chains: the kernel
    refuses to delete that chain, the whole transaction with it; DEL then reads and plans, whose
    restore is refused too (as it always was): DEL fails and every rule is where it was."""
    em = node.edgemesh()
    vx, pods, results = _two_pods(node, netns, em, "pf")
    node.run("edgemesh", "DEL", "pfb", pods["pfb"], em)
    node.host.run("iptables", "-t", "nat", "-A", "PREROUTING", "-s", "10.9.9.6/32", "-j", "EDGE-MESH-SVC")
    before = node.nat()
    env = dict(os.environ, CNI_COMMAND="DEL", CNI_CONTAINERID="pfa", CNI_NETNS=pods["pfa"].path,
               CNI_IFNAME="eth0", CNI_PATH=CNI_PATH, CNI_ARGS="IgnoreUnknown=1", PYCNI_NODE_SOCKET="off")
    p = subprocess.run([sys.executable, "-c", WORKER, MODULES["edgemesh"], node.host.path],
                       input=json.dumps(em).encode(), env=env, capture_output=True, cwd=ROOT, timeout=120)
    got = json.loads(p.stdout)
    assert got["rc"] == 1 and json.loads(got["out"])["code"] == 141, got
    assert programs(got["execs"]) == ["iptables-save", "iptables-restore"]
    assert node.nat().splitlines()[1:-1] == before.splitlines()[1:-1]
    node.host.run("iptables", "-t", "nat", "-D", "PREROUTING", "-s", "10.9.9.6/32", "-j", "EDGE-MESH-SVC")
    node.run("edgemesh", "DEL", "pfa", pods["pfa"], em)
    assert "EDGE-MESH" not in node.nat()
    for cid, pod in pods.items():
        node.run("vxlan", "DEL", cid, pod, {**vx, "prevResult": results[cid]})


def test_edgemesh_nftables_del_runs_nothing(node, netns):
    em = node.edgemesh(backend="nftables")
    vx, pods, results = _two_pods(node, netns, em, "pn")
    # the mesh chain's handles and comments from the kernel, the deletion over netlink: no nft
    _, execs = node.run("edgemesh", "DEL", "pnb", pods["pnb"], {**em, "prevResult": results["pnb"]})
    assert execs == []
    table = node.host.run("nft", "list", "table", "ip", "edgemesh").stdout
    assert "id=pnb" not in table and "id=pna" in table
    _, execs = node.run("edgemesh", "DEL", "pnb", pods["pnb"], em)             # again: nothing to do
    assert execs == []
    _, execs = node.run("edgemesh", "DEL", "pna", pods["pna"], em)
    assert execs == []
    assert "edgemesh" not in node.host.run("nft", "list", "tables").stdout
    for cid, pod in pods.items():
        node.run("vxlan", "DEL", cid, pod, {**vx, "prevResult": results[cid]})


def test_edgemesh_nftables_del_reads_a_chain_it_cannot_place(node, netns):
    em = node.edgemesh(backend="nftables")
    vx, pods, results = _two_pods(node, netns, em, "pm")
    node.host.run("nft", "add", "rule", "ip", "edgemesh", "mesh", "ip", "saddr", "10.9.9.7", "return")
    _, execs = node.run("edgemesh", "DEL", "pmb", pods["pmb"], em)
    assert programs(execs) == ["nft", "nft"]                                # list table, -f
    table = node.host.run("nft", "list", "table", "ip", "edgemesh").stdout
    assert "id=pmb" not in table and "id=pma" in table and "10.9.9.7" in table
    for cid, pod in pods.items():
        node.run("edgemesh", "DEL", cid, pod, em)
        node.run("vxlan", "DEL", cid, pod, {**vx, "prevResult": results[cid]})
    assert "edgemesh" not in node.host.run("nft", "list", "tables").stdout


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_vxlan_add_with_a_live_agent_looks_the_bridge_up_once(node, netns, tmp_path):
    """With vxlan-agent alive (pycni-node --conf runs it), ADD reads the agent's state and checks
    the device and the bridge: the bridge's link is asked for once and its addresses dumped once
    for the whole ADD (the reconcile's vet, its stale-gateway check and the pod's ensure_bridge
    share them); the gateway is sent once (the kernel's EEXIST: it may have gone since the read)."""
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
        # the gateway is sent all the same (EEXIST): the read is older than the IPAM exec
        assert len([b for k, b in sent if k in ("0x14", "RTM_NEWADDR") and gateway in b]) == 1, sent
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


def test_edgemesh_auto_backend_reads_iptables_once_per_add_and_not_at_del(node, netns):
    """backend auto: where our rules are comes from the kernel's lists (nf_tables tables, the nat
    chains), so an ADD reads iptables once (to converge the shared chains), not once more to find
    them, and a DEL runs nothing."""
    em = node.edgemesh(backend="auto")
    vx, pods, results = _two_pods(node, netns, em, "pa")
    cid, pod = "pac", netns("pwe")
    res, _ = node.run("vxlan", "ADD", cid, pod, vx)
    _, execs = node.run("edgemesh", "ADD", cid, pod, {**em, "prevResult": res})
    assert programs(execs) == ["iptables-save", "iptables-restore"]
    for c, p, r in ((cid, pod, res), *((c, p, results[c]) for c, p in pods.items())):
        _, execs = node.run("edgemesh", "DEL", c, p, em)
        assert execs == []
        node.run("vxlan", "DEL", c, p, {**vx, "prevResult": r})
    assert "EDGE-MESH" not in node.nat()


@pytest.mark.parametrize("how", ["flush", "delete"])
def test_vxlan_add_puts_back_a_gateway_gone_during_ipam(node, netns, tmp_path, how):
    """The bridge as the reconcile read it under the node lock is older than the pod's
    ensure_bridge (the lock is gone, the IPAM plugin ran): an IPAM plugin that takes the
    bridge's gateway away (flush; as a leave or another ADD's repair would) or the bridge itself
    (delete) while it runs. ADD still leaves the pod on an up bridge holding its gateway."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    act = ["ip", "addr", "flush", "dev", "cni0"] if how == "flush" else ["ip", "link", "del", "cni0"]
    (bindir / "racing-ipam").write_text(
        f"#!{sys.executable}\nimport os, subprocess, sys\n"
        f"if os.environ.get('CNI_COMMAND') == 'ADD':\n    subprocess.run({act!r}, check=True, timeout=30)\n"
        "os.execv('/usr/lib/cni/host-local', ['host-local'])\n")
    (bindir / "racing-ipam").chmod(0o755)
    vx = node.vxlan()
    first, second = netns("pwr"), netns("pwr")
    res1, _ = node.run("vxlan", "ADD", "pr1", first, vx)
    subnet = str(ipaddress.ip_interface(res1["ips"][0]["address"]).network)
    racing = {**vx, "ipam": {"type": "racing-ipam", "ranges": [[{"subnet": subnet}]],
                             "dataDir": os.path.join(vx["stateDir"], "ipam")}}
    res2, _ = node.run("vxlan", "ADD", "pr2", second, racing, path=f"{bindir}:{CNI_PATH}")
    gateway = res2["ips"][0]["gateway"]
    shown = node.host.run("ip", "-4", "addr", "show", "cni0").stdout
    assert f"inet {gateway}/" in shown and "UP" in shown.split("\n")[0], shown
    veth = res2["interfaces"][1]["name"]
    assert "master cni0" in node.host.run("ip", "link", "show", veth).stdout
    node.run("vxlan", "DEL", "pr2", second, {**racing, "prevResult": res2}, path=f"{bindir}:{CNI_PATH}")
    node.run("vxlan", "DEL", "pr1", first, {**vx, "prevResult": res1})


# The worker with a real process (argv in HOOK_ARGV) run once right after a step of the verb
# returns (HOOK_AFTER: module:function, the step itself runs as always; HOOK_ARG: only a call
# with that argument counts): what another stateDir's ADD, an agent or an admin does outside our
# lock, between that step and the next.
HOOKED = WORKER.replace("with ns.enter(host):", """import subprocess
_where, _name = os.environ["HOOK_AFTER"].split(":")
_module = importlib.import_module(_where)
_step, _argv, _only = getattr(_module, _name), json.loads(os.environ["HOOK_ARGV"]), os.environ.get("HOOK_ARG")
def _step_then_hook(*args, **kwargs):
    global _argv
    got = _step(*args, **kwargs)
    if _argv is not None and (_only is None or _only in args):
        subprocess.run(_argv, check=True, timeout=30)
        _argv = None
    return got
setattr(_module, _name, _step_then_hook)
with ns.enter(host):""")


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_edgemesh_last_del_holds_to_what_it_dumped(node, netns, backend):
    """The last pod's DEL dumps the mesh chain (no pod left), then a rule of another pod is added
    (a process of its own, as another stateDir's ADD would) before the teardown's transaction:
    the kernel refuses it (the generation read before the dump is no longer its own), DEL reads
    and plans instead and leaves the new pod's rule where it is."""
    em = node.edgemesh(backend=backend)
    vx, pods, results = _two_pods(node, netns, em, "pg")
    node.run("edgemesh", "DEL", "pgb", pods["pgb"], em)
    other = "edgemesh net=pwexec id=pgother"
    if backend == "iptables":
        argv = ["iptables", "-t", "nat", "-A", "EDGE-MESH", "-d", "10.96.0.0/12", "-m", "comment", "--comment",
                other, "-j", "RETURN"]
    else:
        argv = ["nft", "add", "rule", "ip", "edgemesh", "mesh", "ip", "daddr", "10.96.0.0/12", "return",
                "comment", f'"{other}"']
    env = dict(os.environ, CNI_COMMAND="DEL", CNI_CONTAINERID="pga", CNI_NETNS=pods["pga"].path,
               CNI_IFNAME="eth0", CNI_PATH=CNI_PATH, CNI_ARGS="IgnoreUnknown=1", PYCNI_NODE_SOCKET="off",
               HOOK_ARGV=json.dumps(["ip", "netns", "exec", node.host.name, *argv]),
               HOOK_AFTER="plugins.pkg.nft:rules", HOOK_ARG="EDGE-MESH" if backend == "iptables" else "mesh")
    p = subprocess.run([sys.executable, "-c", HOOKED, MODULES["edgemesh"], node.host.path],
                       input=json.dumps(em).encode(), env=env, capture_output=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    got = json.loads(p.stdout)
    assert got["rc"] == 0, got
    assert programs(got["execs"]) == ["ip"] + (["iptables-save", "iptables-restore"] if backend == "iptables"
                                               else ["nft", "nft"]), got["execs"]      # the hook, then the read
    shown = node.nat() if backend == "iptables" else node.host.run("nft", "list", "table", "ip", "edgemesh").stdout
    assert "id=pgother" in shown and "id=pga" not in shown, shown
    for cid, pod in pods.items():
        node.run("edgemesh", "DEL", cid, pod, em)
        node.run("vxlan", "DEL", cid, pod, {**vx, "prevResult": results[cid]})


@pytest.mark.skipif(not iptables.nft_backed("ip6tables"), reason="ip6tables is not ip6tables-nft here")
def test_edgemesh_dual_stack_del_runs_nothing_in_either_family(node, netns):
    """Dual-stack pods: the IPv4 rules in iptables-nft's ip nat, the IPv6 ones in ip6 nat; DEL
    deletes each family's over netlink (one transaction each), no exec; the last pod's DEL takes
    both families' chains and jumps. (The kit's node has no IPv6 underlay: the pod's IPv6
    address is the test's, in the prevResult edgemesh reads, as in test_edgemesh_ipv6.)"""
    vx = node.vxlan()
    em = node.edgemesh(serviceCIDR=["10.96.0.0/12", "fd00:10:96::/112"])
    pods = {cid: netns("pw6") for cid in ("p6a", "p6b")}
    results = {}
    for n, (cid, pod) in enumerate(pods.items()):
        results[cid], _ = node.run("vxlan", "ADD", cid, pod, vx)
        pod.run("ip", "-6", "addr", "add", f"fd00:2{n}::5/64", "dev", "eth0", "nodad")
        prev = {**results[cid], "ips": [*results[cid]["ips"], {"address": f"fd00:2{n}::5/64", "interface": 2}]}
        node.run("edgemesh", "ADD", cid, pod, {**em, "prevResult": prev})
    assert "id=p6b" in node.nat("ip6tables") and "id=p6b" in node.nat()
    _, execs = node.run("edgemesh", "DEL", "p6b", pods["p6b"], em)
    assert execs == []
    for binary in ("iptables", "ip6tables"):
        nat = node.nat(binary)
        assert "id=p6b" not in nat and "id=p6a" in nat, (binary, nat)
    _, execs = node.run("edgemesh", "DEL", "p6a", pods["p6a"], em)
    assert execs == []
    for binary in ("iptables", "ip6tables"):
        assert "EDGE-MESH" not in node.nat(binary) and "edgemesh" not in node.nat(binary), binary
    for cid, pod in pods.items():
        node.run("vxlan", "DEL", cid, pod, {**vx, "prevResult": results[cid]})


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_edgemesh_gc_drops_several_pods_in_one_transaction(node, netns, backend):
    """GC with one valid attachment of three: the other two pods' rules go in one nf_tables
    transaction over netlink (no exec); the valid pod's rule, chains and jumps stay."""
    em = node.edgemesh(backend=backend)
    vx = node.vxlan()
    pods = {cid: netns("pwc") for cid in ("gca", "gcb", "gcc")}
    results = {}
    for cid, pod in pods.items():
        results[cid], _ = node.run("vxlan", "ADD", cid, pod, vx)
        node.run("edgemesh", "ADD", cid, pod, {**em, "prevResult": results[cid]})
    gc = {**em, "cniVersion": "1.1.0", "cni.dev/valid-attachments": [{"containerID": "gcb", "ifname": "eth0"}]}
    _, execs = node.run("edgemesh", "GC", "", pods["gca"], gc)
    assert execs == []

    def shown() -> str:
        return node.nat() if backend == "iptables" else \
            node.host.run("nft", "list", "table", "ip", "edgemesh").stdout
    now = shown()
    assert "id=gca" not in now and "id=gcc" not in now and "id=gcb" in now, now
    _, execs = node.run("edgemesh", "DEL", "gcb", pods["gcb"], em)
    assert execs == []
    assert "EDGE-MESH" not in node.nat() and "edgemesh" not in node.host.run("nft", "list", "tables").stdout
    for cid, pod in pods.items():
        node.run("vxlan", "DEL", cid, pod, {**vx, "prevResult": results[cid]})


def test_edgemesh_two_networks_share_the_chains_del_keeps_the_other_networks(node, netns, tmp_path):
    """Two edgemesh networks with the same service CIDR share EDGE-MESH*: the last pod of one
    deletes only its own rule by handle (no exec) and leaves the chains and jumps to the other
    network's pod; that one's DEL then tears them down, also without an exec."""
    vx = node.vxlan()
    nets = {"pwexec": node.edgemesh(), "pwother": node.edgemesh(name="pwother", stateDir=str(tmp_path / "em2"))}
    pods = {"tna": netns("pwn"), "tnb": netns("pwn")}
    results = {}
    for (cid, pod), em in zip(pods.items(), nets.values()):
        results[cid], _ = node.run("vxlan", "ADD", cid, pod, vx)
        node.run("edgemesh", "ADD", cid, pod, {**em, "prevResult": results[cid]})
    nat = node.nat()
    assert "net=pwexec id=tna" in nat and "net=pwother id=tnb" in nat, nat
    _, execs = node.run("edgemesh", "DEL", "tna", pods["tna"], nets["pwexec"])
    assert execs == []
    nat = node.nat()
    assert "id=tna" not in nat and "net=pwother id=tnb" in nat and "edgemesh root chain" in nat, nat
    _, execs = node.run("edgemesh", "DEL", "tnb", pods["tnb"], nets["pwother"])
    assert execs == []
    assert "EDGE-MESH" not in node.nat()
    for cid, pod in pods.items():
        node.run("vxlan", "DEL", cid, pod, {**vx, "prevResult": results[cid]})


def test_vxlan_add_makes_the_bridge_again_when_it_goes_before_the_veth(node, netns):
    """The bridge deleted right after ensure_bridge (a real `ip link del`, before the veth's
    creation names it as master): the kernel refuses the veth (EINVAL, nothing made), ADD makes
    and addresses the bridge again and attaches the pod to it."""
    vx = node.vxlan()
    first, second = netns("pwb"), netns("pwb")
    res1, _ = node.run("vxlan", "ADD", "pb1", first, vx)
    env = dict(os.environ, CNI_COMMAND="ADD", CNI_CONTAINERID="pb2", CNI_NETNS=second.path, CNI_IFNAME="eth0",
               CNI_PATH=CNI_PATH, CNI_ARGS="IgnoreUnknown=1", PYCNI_NODE_SOCKET="off",
               HOOK_ARGV=json.dumps(["ip", "netns", "exec", node.host.name, "ip", "link", "del", "cni0"]),
               HOOK_AFTER="plugins.main.vxlan.pod:ensure_bridge")
    p = subprocess.run([sys.executable, "-c", HOOKED, MODULES["vxlan"], node.host.path],
                       input=json.dumps(vx).encode(), env=env, capture_output=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    got = json.loads(p.stdout)
    assert got["rc"] == 0, got
    res2 = json.loads(got["out"])
    shown = node.host.run("ip", "-4", "addr", "show", "cni0").stdout
    assert f"inet {res2['ips'][0]['gateway']}/" in shown, shown
    assert "master cni0" in node.host.run("ip", "link", "show", res2["interfaces"][1]["name"]).stdout
    node.run("vxlan", "DEL", "pb2", second, {**vx, "prevResult": res2})
    node.run("vxlan", "DEL", "pb1", first, {**vx, "prevResult": res1})
