"""edgemesh with IPv6 service CIDRs: dual-stack and IPv6-only pods, both backends, real traffic.

A test "host" is a netns; each pod a netns on a veth with an IPv4 and an IPv6 address (no DAD),
routes both ways, and a prevResult naming both. The plugin is exec'd as a runtime does. The mesh
proxy (origdst) listens on 169.254.96.16:40001 and [fd00:a9fe:6010::1]:40001 and answers with the
original destination it reads (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST for TCP, conntrack for
UDP); the service IPs also sit on the host's lo with a plain server behind them, so a flow that is
not hijacked gets "real=...".
"""
from __future__ import annotations

import json
import re

import pytest

from tests.integration.test_edgemesh_kit import EDGEMESH, Node, ask, ruleset, run_plugin

pytestmark = pytest.mark.root

CIDR4, CIDR6 = "10.96.0.0/12", "fd00:10:96::/112"
SVC4, IGN4 = "10.96.0.5", "10.96.0.20"
SVC6, IGN6 = "fd00:10:96::5", "fd00:10:96::20"
LISTEN6 = "fd00:a9fe:6010::1"
IGNORED = [{"ip": IGN4, "name": "kube-system/kube-dns"}, {"ip": IGN6, "name": "kube-system/kube-dns6"}]


class Host:
    """A host netns with veth pods (no bridge, no IPAM: the addresses are the test's)."""

    def __init__(self, ns, tmp):
        self.ns, self.tmp, self.pods = ns, tmp, 0
        self.node = Node(ns, tmp)                # for serve()/stop() (its bridges stay unused)

    def pod(self, netns, v4=True, v6=True):
        """A pod netns on veth vh<n>: 10.2<n>.0.5/24 and fd00:2<n>::5/64, default routes to the host."""
        n = self.pods
        self.pods += 1
        host_if = f"vh{n}"
        self.ns.run("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns.name)
        self.ns.run("ip", "link", "set", host_if, "up")
        netns.run("ip", "link", "set", "eth0", "up")
        ips = []
        if v4:
            self.ns.run("ip", "addr", "add", f"10.2{n}.0.1/24", "dev", host_if)
            netns.run("ip", "addr", "add", f"10.2{n}.0.5/24", "dev", "eth0")
            netns.run("ip", "route", "add", "default", "via", f"10.2{n}.0.1")
            ips.append({"address": f"10.2{n}.0.5/24", "gateway": f"10.2{n}.0.1", "interface": 1})
        if v6:
            self.ns.run("ip", "-6", "addr", "add", f"fd00:2{n}::1/64", "dev", host_if, "nodad")
            netns.run("ip", "-6", "addr", "add", f"fd00:2{n}::5/64", "dev", "eth0", "nodad")
            netns.run("ip", "-6", "route", "add", "default", "via", f"fd00:2{n}::1")
            ips.append({"address": f"fd00:2{n}::5/64", "gateway": f"fd00:2{n}::1", "interface": 1})
        prev = {"cniVersion": "1.0.0",
                "interfaces": [{"name": host_if}, {"name": "eth0", "sandbox": netns.path}], "ips": ips,
                "dns": {}}
        return netns, prev

    def conf(self, prev, **keys) -> dict:
        c = {"cniVersion": "1.0.0", "name": "emnet", "type": "edgemesh", "serviceCIDR": [CIDR4, CIDR6],
             "protocols": ["tcp", "udp"], "ignoredServices": IGNORED, "ensureListenDevice": True,
             "stateDir": f"{self.tmp}/state", "prevResult": prev}
        c.update(keys)
        return {k: v for k, v in c.items() if v is not None}

    def run(self, command, conf, cid, pod_ns):
        return run_plugin(command, conf, netns=pod_ns.path, cid=cid, args="K8S_POD_NAMESPACE=default",
                          inside=self.ns.name)

    def ok(self, command, conf, cid, pod_ns):
        rc, out, err = self.run(command, conf, cid, pod_ns)
        assert rc == 0, (command, out, err)
        assert "Traceback" not in err
        return out

    def save(self, binary="ip6tables") -> str:
        """`<binary>-save -t nat` without its dated comment lines."""
        return "".join(line + "\n" for line in self.ns.run(f"{binary}-save", "-t", "nat").stdout.splitlines()
                       if not line.startswith("#"))

    def serve(self, *args):
        return self.node.serve(*args)

    def real_services(self, *ips):
        for ip in ips:
            self.ns.run("ip", "addr", "add", f"{ip}/{128 if ':' in ip else 32}", "dev", "lo")
        args = []
        for ip in ips:
            args += ["--listen", f"[{ip}]:80" if ":" in ip else f"{ip}:80"]
        self.serve("--real", *args, "--udp")

    def proxy(self, v4=True, v6=True):
        """The stand-in mesh proxy on the listen addresses edgemesh0 holds."""
        listen = ["--listen", "169.254.96.16:40001"] if v4 else []
        listen += ["--listen", f"[{LISTEN6}]:40001"] if v6 else []
        self.serve(*listen, "--udp")


@pytest.fixture
def host(netns, tmp_path):
    h = Host(netns("em6h"), str(tmp_path))
    yield h
    h.node.stop()


def rules_in(text: str) -> list[str]:
    """The rule lines of an `nft list ruleset` (not tables, chains, their type lines or braces)."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("table ", "chain ", "type ", "}", "#")):
            continue
        out.append(line)
    return out


def root_jumps(host, backend) -> dict[str, int]:
    """How many root jumps each family's prerouting and output hold."""
    if backend == "iptables":
        out = {}
        for fam, binary in (("4", "iptables"), ("6", "ip6tables")):
            text = host.save(binary)
            for hook in ("PREROUTING", "OUTPUT"):
                out[f"{fam}{hook.lower()}"] = len(re.findall(
                    rf'^-A {hook} -m comment --comment "edgemesh root chain" -j EDGE-MESH$', text, re.M))
        return out
    out = {}
    for fam, table in (("4", "ip"), ("6", "ip6")):
        text = host.ns.run("nft", "list", "table", table, "edgemesh").stdout
        for hook in ("prerouting", "output"):
            body = re.search(rf"chain {hook} {{(.*?)}}", text, re.S)
            out[f"{fam}{hook}"] = body.group(1).count("jump mesh") if body else 0
    return out


def zero_residue(host):
    """Nothing of ours in any table of either family, no rule at all in nft, no edgemesh0."""
    for binary in ("iptables", "ip6tables"):
        text = host.save(binary)
        assert "EDGE-MESH" not in text and "-A " not in text, (binary, text)
    rs = ruleset(host.ns)
    assert "edgemesh" not in rs and rules_in(rs) == [], rs
    assert host.ns.run("ip", "link", "show", "edgemesh0", check=False).returncode != 0


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_dual_stack_pods_ipv6_services_reach_the_proxy_with_their_original_destination(host, netns, backend):
    before6 = host.save("ip6tables")
    pod, prev = host.pod(netns("pod"))
    pod2, prev2 = host.pod(netns("pod2"))
    other, _ = host.pod(netns("other"))                  # no edgemesh
    conf, conf2 = host.conf(prev, backend=backend), host.conf(prev2, backend=backend)
    assert host.ok("ADD", conf, "c1", pod) == prev      # prevResult through unchanged
    host.ok("ADD", conf2, "c2", pod2)
    host.ok("ADD", conf, "c1", pod)                      # again: nothing doubles
    host.real_services(SVC4, IGN4, SVC6, IGN6)
    host.proxy()

    assert ask(pod, "tcp", SVC6) == f"orig={SVC6}:80"          # hijacked, original dst intact
    assert ask(pod, "tcp", SVC6, 8443) == f"orig={SVC6}:8443"
    assert ask(pod2, "tcp", SVC6) == f"orig={SVC6}:80"
    assert ask(pod, "udp", SVC6) == f"orig={SVC6}:80"          # udp (conntrack's IPv6 tuple)
    assert ask(pod, "tcp", SVC4) == f"orig={SVC4}:80"          # IPv4 as before
    assert ask(pod, "tcp", IGN6) == f"real={IGN6}:80"          # an ignored IPv6 service: RETURN
    assert ask(pod, "udp", IGN6) == f"real={IGN6}:80"
    assert ask(pod, "tcp", IGN4) == f"real={IGN4}:80"
    assert ask(other, "tcp", SVC6) == f"real={SVC6}:80"        # scope pod: a pod without the plugin
    assert ask(host.ns, "tcp", SVC6) == f"real={SVC6}:80"      # and the host itself
    assert root_jumps(host, backend) == {f"{f}{h}": 1 for f in "46" for h in ("prerouting", "output")}
    line = [x for x in host.ns.run("ip", "-6", "addr", "show", "dev", "edgemesh0").stdout.splitlines()
            if LISTEN6 in x]
    assert len(line) == 1 and f"{LISTEN6}/128" in line[0] and "tentative" not in line[0], line    # nodad
    host.ok("CHECK", conf, "c1", pod)
    host.ok("CHECK", conf2, "c2", pod2)
    status = dict(conf, cniVersion="1.1.0")
    del status["prevResult"]
    assert host.run("STATUS", status, "", pod)[0] == 0

    host.ok("DEL", conf, "c1", pod)
    assert ask(pod, "tcp", SVC6) == f"real={SVC6}:80"          # its rules gone, both families
    assert ask(pod, "tcp", SVC4) == f"real={SVC4}:80"
    assert ask(pod2, "tcp", SVC6) == f"orig={SVC6}:80"         # the other pod's kept
    host.ok("DEL", conf, "c1", pod)                             # idempotent
    host.ok("DEL", conf2, "c2", pod2)
    zero_residue(host)
    assert host.save("ip6tables") == before6 or backend == "iptables"   # (iptables-nft made ip6 nat)


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_check_sees_a_missing_ipv6_rule(host, netns, backend):
    pod, prev = host.pod(netns("pod"))
    conf = host.conf(prev, backend=backend)
    host.ok("ADD", conf, "c1", pod)
    if backend == "iptables":
        host.ns.run("ip6tables", "-t", "nat", "-D", "EDGE-MESH-SVC", "-d", IGN6 + "/128", "-m", "comment",
                    "--comment", "ignore kube-system/kube-dns6 service", "-j", "RETURN")
    else:
        table = host.ns.run("nft", "-a", "list", "table", "ip6", "edgemesh").stdout
        handle = re.search(rf"ip6 daddr {IGN6} return .* # handle (\d+)", table).group(1)
        host.ns.run("nft", "delete", "rule", "ip6", "edgemesh", "services", "handle", handle)
    rc, out, _ = host.run("CHECK", conf, "c1", pod)
    assert rc == 1 and out["code"] == 145, out
    assert ("ip6tables" if backend == "iptables" else "ip6 edgemesh") in out["msg"]
    assert IGN6 in out["details"]
    host.ok("DEL", conf, "c1", pod)
    zero_residue(host)


def test_ipv6_only_config_leaves_ipv4_alone(host, netns):
    pod, prev = host.pod(netns("pod"))
    conf = host.conf(prev, serviceCIDR=CIDR6, backend="nftables")       # a plain string, IPv6
    host.ok("ADD", conf, "c1", pod)
    host.real_services(SVC4, SVC6)
    host.proxy(v4=False)
    assert ask(pod, "tcp", SVC6) == f"orig={SVC6}:80"
    assert ask(pod, "tcp", SVC4) == f"real={SVC4}:80"
    assert host.ns.run("nft", "list", "table", "ip", "edgemesh", check=False).returncode != 0
    assert "EDGE-MESH" not in host.save("iptables")
    assert "169.254.96.16" not in host.ns.run("ip", "addr", "show", "dev", "edgemesh0").stdout
    host.ok("CHECK", conf, "c1", pod)
    v4pod, v4prev = host.pod(netns("v4pod"), v6=False)
    rc, out, _ = host.run("ADD", host.conf(v4prev, serviceCIDR=CIDR6), "c2", v4pod)
    assert rc == 1 and out["code"] == 146 and "IPv6" in out["msg"], out
    host.ok("DEL", conf, "c1", pod)
    zero_residue(host)


def test_ipv4_only_config_with_a_dual_stack_pod_is_as_before(host, netns):
    pod, prev = host.pod(netns("pod"))
    conf = host.conf(prev, serviceCIDR=CIDR4, ignoredServices=None, protocols=None, backend="iptables")
    host.ok("ADD", conf, "c1", pod)
    host.real_services(SVC4, SVC6)
    host.proxy(v6=False)
    assert ask(pod, "tcp", SVC4) == f"orig={SVC4}:80"
    assert ask(pod, "tcp", SVC6) == f"real={SVC6}:80"
    assert "EDGE-MESH" not in host.save("ip6tables")
    assert LISTEN6 not in host.ns.run("ip", "-6", "addr", "show", "dev", "edgemesh0").stdout
    with open(f"{host.tmp}/state/networks/emnet.json") as f:
        shared = json.load(f)["shared"]
    assert "listenAddress6" not in shared and shared["serviceCIDR"] == CIDR4       # the record as before
    # The same network's config made dual-stack (an upgrade): the next pod gets both families;
    # the first pod's IPv4 rules (as an earlier release made them) are found and removed by DEL.
    pod2, prev2 = host.pod(netns("pod2"))
    conf2 = host.conf(prev2, ignoredServices=None, protocols=None, backend="iptables")
    host.ok("ADD", conf2, "c2", pod2)
    host.proxy(v4=False)
    assert ask(pod2, "tcp", SVC6) == f"orig={SVC6}:80"
    assert ask(pod2, "tcp", SVC4) == f"orig={SVC4}:80"
    host.ok("DEL", conf2, "c1", pod)
    host.ok("DEL", conf2, "c2", pod2)
    zero_residue(host)


def test_a_failed_ipv6_write_undoes_the_ipv4_one(host, netns):
    """The IPv4 table is written first; when the IPv6 write fails (a foreign `ip6 edgemesh`
    whose prerouting is no nat hook chain), the ADD fails and leaves nothing of its own."""
    pod, prev = host.pod(netns("pod"))
    host.ns.run("nft", "add", "table", "ip6", "edgemesh")
    host.ns.run("nft", "add", "chain", "ip6", "edgemesh", "prerouting", "{", "type", "filter", "hook",
                "input", "priority", "0", ";", "}")
    rc, out, err = host.run("ADD", host.conf(prev, backend="nftables"), "c1", pod)
    assert rc == 1 and out["code"] == 141, (out, err)
    assert host.ns.run("nft", "list", "table", "ip", "edgemesh", check=False).returncode != 0
    assert host.ns.run("ip", "link", "show", "edgemesh0", check=False).returncode != 0
    host.ns.run("nft", "delete", "table", "ip6", "edgemesh")
    zero_residue(host)


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_gc_and_sync_handle_both_families(host, netns, tmp_path, backend):
    svc_file = tmp_path / "ignored.json"
    svc_file.write_text(json.dumps([{"ip": IGN6, "name": "default/ign6"}]))
    pods = [host.pod(netns(f"pod{i}")) for i in range(2)]
    confs = [host.conf(prev, cniVersion="1.1.0", backend=backend, ignoredServices=None,
                       ignoredServicesFile=str(svc_file)) for _, prev in pods]
    for i, ((pod, _), conf) in enumerate(zip(pods, confs)):
        host.ok("ADD", conf, f"c{i}", pod)
    host.real_services(SVC6, IGN6, "fd00:10:96::21")
    host.proxy()
    assert ask(pods[0][0], "tcp", IGN6) == f"real={IGN6}:80"
    assert ask(pods[0][0], "tcp", "fd00:10:96::21") == "orig=fd00:10:96::21:80"

    # The controller ignores another IPv6 service instead: sync moves the RETURN, in ip6 only.
    svc_file.write_text(json.dumps([{"ip": "fd00:10:96::21", "name": "default/ign21"}]))
    conf_path = tmp_path / "em.conf"
    conf_path.write_text(json.dumps({k: v for k, v in confs[0].items() if k != "prevResult"}))
    p = host.ns.run(EDGEMESH, "sync", "--config", str(conf_path), check=False)
    assert p.returncode == 0, p.stderr
    six = "ip6tables" if backend == "iptables" else "nftables ip6 edgemesh"
    assert f"{six}: 1 added, 1 removed" in p.stdout and f"{backend}: 0 added, 0 removed" in p.stdout, p.stdout
    assert ask(pods[0][0], "tcp", IGN6) == f"orig={IGN6}:80"
    assert ask(pods[0][0], "tcp", "fd00:10:96::21") == "real=fd00:10:96::21:80"
    host.ok("CHECK", confs[1], "c1", pods[1][0])

    # GC with only c1 valid drops c0 in both families; with none, everything goes.
    gc = {k: v for k, v in confs[0].items() if k != "prevResult"}
    gc["cni.dev/valid-attachments"] = [{"containerID": "c1", "ifname": "eth0"}]
    assert run_plugin("GC", gc, netns="", cid="", ifname="", inside=host.ns.name)[0] == 0
    assert ask(pods[0][0], "tcp", SVC6) == f"real={SVC6}:80"
    assert ask(pods[1][0], "tcp", SVC6) == f"orig={SVC6}:80"
    gc["cni.dev/valid-attachments"] = []
    assert run_plugin("GC", gc, netns="", cid="", ifname="", inside=host.ns.name)[0] == 0
    zero_residue(host)


def test_go_bridge_and_host_local_dual_stack_chain_then_edgemesh(netns, tmp_path):
    """The real chain: Go bridge + host-local with a range per family, then edgemesh, through
    libcni_py (ADD, CHECK, DEL), both families hijacked, the cached result carried through."""
    node = Node(netns("em6g"), str(tmp_path))
    try:
        em = {"type": "edgemesh", "serviceCIDR": [CIDR4, CIDR6], "ensureListenDevice": True,
              "ignoredServices": [{"ip": IGN6, "name": "kube-system/kube-dns6"}],
              "stateDir": str(tmp_path / "edgemesh-state")}
        lst = {"cniVersion": "1.0.0", "name": "emnet", "plugins": [
            {"type": "bridge", "bridge": "cni0", "isDefaultGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00:22::/64"}]],
                      "dataDir": str(tmp_path / "ipam")}},
            em]}
        pod = netns("pod")
        result = node.add(lst, pod, "c1")
        addrs = sorted(ip.address for ip in result.ips)
        assert addrs[0].startswith("10.22.0.") and addrs[1].startswith("fd00:22::"), addrs
        node.ns.run("ip", "addr", "add", f"{SVC6}/128", "dev", "lo")
        node.ns.run("ip", "addr", "add", f"{IGN6}/128", "dev", "lo")
        node.serve("--real", "--listen", f"[{SVC6}]:80", "--listen", f"[{IGN6}]:80")
        node.serve("--listen", "169.254.96.16:40001", "--listen", f"[{LISTEN6}]:40001")
        assert ask(pod, "tcp", SVC6) == f"orig={SVC6}:80"
        assert ask(pod, "tcp", IGN6) == f"real={IGN6}:80"
        node.check(lst, pod, "c1")
        node.delete(lst, pod, "c1")                   # (the pod's veth goes with it)
        for binary in ("iptables", "ip6tables"):
            assert "EDGE-MESH" not in node.ns.run(f"{binary}-save", "-t", "nat").stdout
        assert "edgemesh" not in ruleset(node.ns)
    finally:
        node.stop()


def test_ipv6_disabled_on_the_node_is_143_and_leaves_nothing(host, netns):
    """A dual-stack pod on a node whose IPv6 is off: listenAddress6 cannot be put on edgemesh0."""
    pod, prev = host.pod(netns("pod"))
    host.ns.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    rc, out, err = host.run("ADD", host.conf(prev), "c1", pod)
    assert rc == 1 and out["code"] == 143 and LISTEN6 in out["msg"], (out, err)
    assert "Traceback" not in err
    zero_residue(host)


# Foreign rules in both families' PREROUTING and OUTPUT (with iptables-nft, a base chain our first
# write creates stays behind, empty, after the last DEL: see README; here they exist before).
FOREIGN_NAT = """*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d {lo} -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s {net} ! -o docker0 -j MASQUERADE
COMMIT
"""


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_concurrent_dual_stack_adds_then_dels_restore_the_node(netns, tmp_path, backend):
    """10 dual-stack pods (Go bridge + host-local, a range per family) added at once, then deleted
    at once: one root jump per hook per family, every pod in both families, and the node's nat
    tables of both families (with foreign rules in them) and its nft ruleset as they were."""
    from concurrent.futures import ThreadPoolExecutor
    n = 10
    node = Node(netns("em6c"), str(tmp_path))
    try:
        node.ns.run("iptables-restore", "--noflush", input=FOREIGN_NAT.format(lo="127.0.0.0/8", net="172.17.0.0/16"))
        node.ns.run("ip6tables-restore", "--noflush", input=FOREIGN_NAT.format(lo="::1/128", net="fd00:172:17::/64"))
        save6 = lambda: "".join(x + "\n" for x in node.ns.run("ip6tables-save", "-t", "nat").stdout.splitlines()  # noqa: E731
                                if not x.startswith("#"))
        before = (node.nat(), save6(), ruleset(node.ns))
        em = {"type": "edgemesh", "serviceCIDR": [CIDR4, CIDR6], "ensureListenDevice": True, "backend": backend,
              "protocols": ["tcp", "udp"], "ignoredServices": IGNORED, "stateDir": str(tmp_path / "state"),
              "checkProxy": False}                      # rules under concurrency, no proxy
        lst = {"cniVersion": "1.0.0", "name": "emnet", "plugins": [
            {"type": "bridge", "bridge": "cni0", "isDefaultGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00:22::/64"}]],
                      "dataDir": str(tmp_path / "ipam")}}, em]}
        pods = [netns(f"p{i}") for i in range(n)]
        with ThreadPoolExecutor(n) as ex:
            results = list(ex.map(lambda i: node.add(lst, pods[i], f"c{i}"), range(n)))
        six = {ip.address.split("/")[0] for r in results for ip in r.ips if ":" in ip.address}
        assert len(six) == n
        if backend == "iptables":
            text = save6()
            for hook in ("PREROUTING", "OUTPUT"):
                assert text.count(f'-A {hook} -m comment --comment "edgemesh root chain" -j EDGE-MESH\n') == 1
            assert text.index("-A PREROUTING -m comment") < text.index("-A PREROUTING -m addrtype")   # on top
            assert {ip for ip in six if f"-A EDGE-MESH -s {ip}/128 " in text} == six
            assert text.count(f"-j DNAT --to-destination [{LISTEN6}]:40001") == 2
        else:
            text = node.ns.run("nft", "list", "table", "ip6", "edgemesh").stdout
            assert text.count('jump mesh comment "edgemesh root chain"') == 2
            assert {ip for ip in six if f"ip6 saddr {ip} jump services" in text} == six
            assert text.count(f"dnat to [{LISTEN6}]:40001") == 2
        node.check(lst, pods[0], "c0")
        with ThreadPoolExecutor(n) as ex:
            list(ex.map(lambda i: node.delete(lst, pods[i], f"c{i}"), range(n)))
        assert (node.nat(), save6(), ruleset(node.ns)) == before
        assert node.ns.run("ip", "link", "show", "edgemesh0", check=False).returncode != 0
    finally:
        node.stop()
