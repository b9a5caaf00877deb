"""The edgemesh executable driven as a runtime drives it (env + stdin), inside a test host
netns: bad input, hostile names, the kernel hazard, DEL/GC/CHECK, backend choice."""
import json

import pytest

from tests.integration.test_edgemesh_kit import chains, prev_result, ruleset, run_plugin, sync

pytestmark = pytest.mark.root
BAD_KERNEL = "4.15.6-1.el7.elrepo.x86_64"


class Host:
    def __init__(self, ns, tmp):
        self.ns, self.tmp = ns, tmp

    def conf(self, version="1.0.0", name="emnet", ip="10.22.0.5", **keys) -> dict:
        c = {"cniVersion": version, "name": name, "type": "edgemesh", "serviceCIDR": "10.96.0.0/12",
             "ensureListenDevice": True, "stateDir": f"{self.tmp}/state",
             # these tests are about input, rules and verbs, with no proxy: CHECK judges the rules
             # (CHECK's 151 with no proxy: test_doctor_edgemesh_ipv6.py, test_check_runs_doctor.py)
             "checkProxy": False,
             "prevResult": prev_result(ip, self.ns.path, version)}
        c.update(keys)
        return {k: v for k, v in c.items() if v is not None}

    def run(self, command, conf, cid="c1", netns=None, args="K8S_POD_NAMESPACE=default"):
        return run_plugin(command, conf, netns=netns or self.ns.path, cid=cid, args=args, inside=self.ns.name)

    def snapshot(self):
        nat = "".join(line + "\n" for line in self.ns.run("iptables-save", "-t", "nat").stdout.splitlines()
                      if not line.startswith("#"))
        dev = self.ns.run("ip", "link", "show", "edgemesh0", check=False).returncode == 0
        return nat, ruleset(self.ns), dev


@pytest.fixture
def host(netns, tmp_path):
    return Host(netns("emh"), str(tmp_path))


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_add_passes_prev_result_through_unchanged(host, version):
    conf = host.conf(version)
    if version == "0.4.0":
        conf["prevResult"]["ips"][0]["version"] = "4"
    rc, out, err = host.run("ADD", conf)
    assert rc == 0, out
    assert out == conf["prevResult"]
    assert host.run("DEL", conf)[0] == 0


BAD = [
    ({"serviceCIDR": None}, 7, "serviceCIDR"),
    ({"serviceCIDR": "10.96.0.0/40"}, 7, "serviceCIDR"),
    ({"serviceCIDR": ["10.96.0.0/12", "10.100.0.0/16"]}, 7, "serviceCIDR"),     # two of one family
    ({"listenAddress": "fe80::1"}, 7, "listenAddress"),
    ({"listenAddress": "300.1.2.3"}, 7, "listenAddress"),
    ({"kernelRelease": BAD_KERNEL}, 140, BAD_KERNEL),
    ({"prevResult": None}, 146, "prevResult"),
    ({"ignoredServices": [{"ip": "10.96.0.1", "name": 'a/b"\n-A PREROUTING -j DROP\n#'}]}, 7, "ignoredServices"),
    ({"ignoredServices": [{"ip": "10.96.0.1", "name": 'a/b" -j ACCEPT -m comment --comment "x'}]}, 7, "ignoredServices"),  # noqa: E501
    ({"ignoredServices": [{"ip": "10.96.0.1", "name": "kube-system/" + "x" * 64}]}, 7, "ignoredServices"),
    ({"ignoredServices": [{"ip": "10.96.0.1 -j DROP", "name": "a/b"}]}, 7, "ignoredServices"),
    ({"name": "n" * 240}, 7, "too long"),
]


@pytest.mark.parametrize("keys,code,word", BAD, ids=[f"{c}-{w[:12]}" for _, c, w in BAD])
def test_bad_input_is_refused_and_leaves_nothing(host, keys, code, word):
    before = host.snapshot()
    rc, out, err = host.run("ADD", host.conf(**keys))
    assert rc == 1 and out["code"] == code, out
    assert word in out["msg"] + out.get("details", ""), out
    assert "Traceback" not in err
    assert host.snapshot() == before
    assert "-j DROP" not in before[0] and "-j ACCEPT" not in before[0]


def test_kernel_hazard_error_names_kernel_and_fix(host):
    rc, out, _ = host.run("ADD", host.conf(kernelRelease=BAD_KERNEL))
    text = out["msg"] + " " + out["details"]
    for word in (BAD_KERNEL, "4.15", "SO_ORIGINAL_DST", "allowKnownBadKernel", "kubeedge/edgemesh/issues/227", "4.19"):
        assert word in text


HOSTILE_FILES = [
    '[{"ip": "10.96.0.1", "name": "a/b\\n-A PREROUTING -j DROP"}]',
    '[{"ip": "10.96.0.1", "name": "a/b\\" -j ACCEPT \\""}]',
    '[{"ip": "10.96.0.1\\n-A OUTPUT -j DROP", "name": "a/b"}]',
    '{"ip": "10.96.0.1", "name": "a/b"}',
    '[{"ip": "10.96.0.1", "name": "a/b"',
]


@pytest.mark.parametrize("text", HOSTILE_FILES)
def test_hostile_services_file_cannot_inject_a_rule(host, text):
    path = f"{host.tmp}/ignored.json"
    good = host.conf(ignoredServicesFile=path, backend="iptables")
    with open(path, "w") as f:
        f.write('[{"ip": "10.96.0.10", "name": "kube-system/kube-dns"}]')
    assert host.run("ADD", good)[0] == 0                     # chains exist already
    before = host.snapshot()
    with open(path, "w") as f:
        f.write(text)
    rc, out, _ = host.run("ADD", host.conf(ignoredServicesFile=path, backend="iptables", ip="10.22.0.6"), cid="c2")
    assert rc == 1 and out["code"] == 144, out
    conflist = f"{host.tmp}/mesh.conflist"
    with open(conflist, "w") as f:
        json.dump({k: v for k, v in good.items() if k != "prevResult"}, f)
    r = sync(host, conflist)
    assert r.returncode == 1 and "error 144" in r.stderr
    after = host.snapshot()
    assert after == before
    assert "-j DROP" not in after[0] and "-j ACCEPT" not in after[0]


def test_known_bad_kernel_allowed_then_check_reports_it(host):
    conf = host.conf(kernelRelease=BAD_KERNEL, allowKnownBadKernel=True)
    rc, out, err = host.run("ADD", conf)
    assert rc == 0 and BAD_KERNEL in err                    # a warning, on stderr
    rc, out, err = host.run("CHECK", conf)
    assert rc == 0 and BAD_KERNEL in err and "allowKnownBadKernel" in err
    rc, out, _ = host.run("CHECK", host.conf(kernelRelease=BAD_KERNEL))
    assert rc == 1 and out["code"] == 140
    assert host.run("CHECK", host.conf(kernelRelease="4.19.12-1.el7.elrepo.x86_64"))[0] == 0
    assert host.run("DEL", conf)[0] == 0
    assert chains(host.snapshot()[0]) == []


def test_del_is_idempotent_without_prev_result_or_netns(host):
    assert host.run("ADD", host.conf())[0] == 0
    assert host.run("ADD", host.conf(ip="10.22.0.6"), cid="c2")[0] == 0
    bare = host.conf(prevResult=None)
    assert host.run("DEL", bare)[0] == 0
    nat = host.snapshot()[0]
    assert "id=c1" not in nat and "id=c2" in nat
    assert host.run("DEL", bare)[0] == 0
    assert host.run("DEL", bare, cid="c2", netns="/run/netns/gone-already")[0] == 0
    assert chains(host.snapshot()[0]) == []
    assert host.snapshot()[2] is False                       # our edgemesh0 went with the last pod


def test_gc_removes_only_this_networks_stale_pods(host):
    for cid, ip in (("c1", "10.22.0.5"), ("c2", "10.22.0.6"), ("c3", "10.22.0.7")):
        assert host.run("ADD", host.conf("1.1.0", ip=ip), cid=cid)[0] == 0
    assert host.run("ADD", host.conf("1.1.0", name="other", ip="10.22.0.9"), cid="c9")[0] == 0
    gc = host.conf("1.1.0", prevResult=None)
    gc["cni.dev/valid-attachments"] = [{"containerID": "c1", "ifname": "eth0"}]
    assert run_plugin("GC", gc, netns="", cid="", ifname="", inside=host.ns.name)[0] == 0
    nat = host.snapshot()[0]
    assert "net=emnet id=c1" in nat and "id=c2" not in nat and "id=c3" not in nat and "net=other id=c9" in nat
    gc["cni.dev/valid-attachments"] = []
    assert run_plugin("GC", gc, netns="", cid="", ifname="", inside=host.ns.name)[0] == 0
    assert "net=other id=c9" in host.snapshot()[0] and "net=emnet" not in host.snapshot()[0]
    other = host.conf("1.1.0", name="other", prevResult=None)
    other["cni.dev/valid-attachments"] = []
    assert run_plugin("GC", other, netns="", cid="", ifname="", inside=host.ns.name)[0] == 0
    assert chains(host.snapshot()[0]) == []


def test_check_finds_a_missing_rule_and_add_repairs_it(host):
    conf = host.conf(backend="iptables")
    assert host.run("ADD", conf)[0] == 0
    host.ns.run("iptables", "-t", "nat", "-D", "EDGE-MESH-TCP", "1")
    rc, out, _ = host.run("CHECK", conf)
    assert rc == 1 and out["code"] == 145 and "DNAT" in out["details"]
    assert host.run("ADD", conf)[0] == 0                      # ADD converges again
    assert host.run("CHECK", conf)[0] == 0
    assert host.run("DEL", conf)[0] == 0


def test_failed_add_leaves_nothing_behind(host):
    # A stale `ip edgemesh` table whose services chain is a base chain: nothing may jump to
    # it, so the transaction that adds the pod fails as a whole.
    host.ns.run("nft", "-f", "-", input="table ip edgemesh {\n chain services { type filter hook "
                "input priority 0; policy accept; }\n}\n")
    before = host.snapshot()
    rc, out, _ = host.run("ADD", host.conf(backend="nftables"))
    assert rc == 1 and out["code"] == 141, out
    assert host.snapshot() == before                          # and the new edgemesh0 is gone


def test_listen_name_taken_by_another_kind_of_link(host):
    host.ns.run("ip", "link", "add", "edgemesh0", "type", "veth", "peer", "name", "emx-peer")
    rc, out, _ = host.run("ADD", host.conf())
    assert rc == 1 and out["code"] == 143, out
    assert chains(host.snapshot()[0]) == [] and "edgemesh" not in host.snapshot()[1]


AUTO_CASES = {
    "empty node": ([], "iptables"),
    "iptables rules": ([("iptables", "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")], "iptables"),  # noqa: E501
    "native nft": ([("nft", "add", "table", "inet", "fw")], "nftables"),
    "both": ([("nft", "add", "table", "inet", "fw"), ("iptables", "-t", "nat", "-N", "DOCKER")], "iptables"),
}


@pytest.mark.parametrize("case", list(AUTO_CASES))
def test_auto_backend_follows_what_the_node_uses(host, case):
    setup, expected = AUTO_CASES[case]
    for argv in setup:
        host.ns.run(*argv)
    assert host.run("ADD", host.conf())[0] == 0
    nat, nft, _ = host.snapshot()
    assert (chains(nat) != []) == (expected == "iptables")
    assert ("table ip edgemesh" in nft) == (expected == "nftables")
    # Our own rules decide from now on, whatever else appears on the node.
    host.ns.run("nft", "add", "table", "inet", "late")
    host.ns.run("iptables", "-t", "nat", "-N", "LATE")
    assert host.run("ADD", host.conf(ip="10.22.0.6"), cid="c2")[0] == 0
    nat, nft, _ = host.snapshot()
    assert nat.count("-A EDGE-MESH -s") + nft.count("jump services comment \"edgemesh net=") == 2
    assert host.run("DEL", host.conf(prevResult=None))[0] == 0
    assert host.run("DEL", host.conf(prevResult=None), cid="c2")[0] == 0
    nat, nft, dev = host.snapshot()
    assert chains(nat) == [] and "table ip edgemesh" not in nft and not dev


def test_auto_after_a_full_cycle_stays_on_iptables(host):
    """iptables-nft leaves an empty `ip nat` table behind: that is not a native nft ruleset."""
    assert host.run("ADD", host.conf())[0] == 0
    assert host.run("DEL", host.conf())[0] == 0
    assert "table ip nat" in host.snapshot()[1]
    assert host.run("ADD", host.conf())[0] == 0
    assert chains(host.snapshot()[0]) != []
    assert host.run("DEL", host.conf())[0] == 0



@pytest.mark.parametrize("own", ["/proc/self/ns/net", "/proc/thread-self/ns/net"])
def test_host_own_namespace_as_cni_netns_changes_nothing_else(host, own):
    """issue 9 point 8: edgemesh never enters or changes CNI_NETNS (it writes the node's rules from
    prevResult's address, where it runs), so the plugin's own namespace as the "pod's" is accepted
    and changes exactly what a pod's namespace does: no route, link or address besides edgemesh0."""
    def routes():
        return host.ns.run("ip", "route", "show", "table", "all").stdout
    before = routes()
    for _ in range(2):                  # the first cycle leaves iptables-nft's `ip nat` table behind
        assert host.run("ADD", host.conf())[0] == 0
        as_pod = host.snapshot()
        assert host.run("DEL", host.conf())[0] == 0
    assert host.run("ADD", host.conf())[0] == 0
    assert host.snapshot() == as_pod
    assert host.run("DEL", host.conf())[0] == 0
    conf = host.conf(prevResult=prev_result("10.22.0.5", own))
    rc, out, _ = host.run("ADD", conf, netns=own)
    assert rc == 0, out
    assert host.snapshot() == as_pod
    links = [line.split()[1] for line in host.ns.run("ip", "-o", "link", "show").stdout.splitlines()]
    assert links == ["lo:", "edgemesh0:"]
    assert host.run("CHECK", conf, netns=own)[0] == 0
    assert host.run("DEL", conf, netns=own)[0] == 0
    assert routes() == before and host.snapshot()[2] is False
