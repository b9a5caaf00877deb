"""edgemesh with several networks on one node (same config shares the chains, a different one is
refused with 147 naming the other network, with both backends), STATUS, lenient DEL/GC/CHECK, and
the xtables lock held by another program (148), in test host namespaces."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.integration.test_edgemesh_kit import EDGEMESH, chains, prev_result, ruleset, run_plugin

pytestmark = pytest.mark.root
BACKENDS = ["iptables", "nftables"]
DNS = {"ip": "10.96.0.10", "name": "kube-system/kube-dns"}


class Host:
    def __init__(self, ns, tmp):
        self.ns, self.tmp = ns, tmp

    def conf(self, name="neta", ip="10.22.0.5", version="1.1.0", **keys) -> dict:
        c = {"cniVersion": version, "name": name, "type": "edgemesh", "serviceCIDR": "10.96.0.0/12",
             "protocols": ["tcp", "udp"], "ignoredServices": [DNS], "stateDir": f"{self.tmp}/state",
             "checkProxy": False,    # about the shared chains and the records: no proxy, no listen device
             "prevResult": prev_result(ip, self.ns.path, version)}
        c.update(keys)
        return {k: v for k, v in c.items() if v is not None}

    def run(self, command, conf, cid="c1", netns=None):
        return run_plugin(command, conf, netns=self.ns.path if netns is None else netns, cid=cid,
                          args="K8S_POD_NAMESPACE=default", inside=self.ns.name)

    def status(self, conf):
        return run_plugin("STATUS", dict(conf, prevResult=None) if "prevResult" in conf else conf,
                          netns="", cid="", ifname="", inside=self.ns.name)

    def rules(self) -> str:
        nat = "".join(line + "\n" for line in self.ns.run("iptables-save", "-t", "nat").stdout.splitlines()
                      if not line.startswith("#"))
        return nat + ruleset(self.ns)

    def records(self) -> list[str]:
        d = f"{self.tmp}/state/networks"
        return sorted(os.listdir(d)) if os.path.isdir(d) else []


@pytest.fixture
def host(netns, tmp_path):
    return Host(netns("emn"), str(tmp_path))


def _strip(conf: dict) -> dict:
    return {k: v for k, v in conf.items() if v is not None}


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_config_on_two_networks_shares_the_chains(host, backend):
    a = host.conf("neta", backend=backend)
    b = host.conf("netb", ip="10.23.0.5", backend=backend)
    assert host.run("ADD", a, cid="c1")[0] == 0
    one = host.rules()
    rc, out, _ = host.run("ADD", b, cid="c2")
    assert rc == 0, out
    both = host.rules()
    assert "net=neta id=c1" in both and "net=netb id=c2" in both
    assert both.count("kube-system/kube-dns") == one.count("kube-system/kube-dns") == 1
    assert host.records() == ["neta.json", "netb.json"]
    for conf, cid in ((a, "c1"), (b, "c2")):
        rc, out, _ = host.run("CHECK", conf, cid=cid)
        assert rc == 0, out
        assert host.status(conf)[0] == 0
    assert host.run("DEL", a, cid="c1")[0] == 0
    left = host.rules()
    assert "net=neta" not in left and "net=netb id=c2" in left and "kube-system/kube-dns" in left
    assert host.records() == ["netb.json"]
    assert host.run("CHECK", b, cid="c2")[0] == 0
    assert host.run("DEL", b, cid="c2")[0] == 0
    assert "EDGE-MESH" not in host.rules() and "table ip edgemesh" not in host.rules()
    assert host.records() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_different_config_is_refused_naming_the_other_network(host, backend):
    a = host.conf("neta", backend=backend)
    assert host.run("ADD", a, cid="c1")[0] == 0
    before = host.rules()
    # netb would drop the UDP hijack and the ignored service of neta's pods.
    b = host.conf("netb", ip="10.23.0.5", backend=backend, protocols=["tcp"], ignoredServices=None)
    rc, out, err = host.run("ADD", b, cid="c2")
    assert rc == 1 and out["code"] == 147, out
    assert "'neta'" in out["msg"] and "protocols" in out["details"] and "ignoredServices" in out["details"]
    assert "Traceback" not in err
    assert host.rules() == before                           # nothing rewritten, nothing added
    assert host.records() == ["neta.json"]
    rc, out, _ = host.status(b)
    assert rc == 1 and out["code"] == 50 and "neta" in out["msg"], out
    rc, out, _ = host.run("CHECK", b, cid="c2")
    assert rc == 1 and out["code"] == 147
    assert host.run("CHECK", a, cid="c1")[0] == 0           # neta keeps its UDP hijack and ignore
    sync_conf = f"{host.tmp}/netb.conflist"
    with open(sync_conf, "w") as f:
        json.dump({k: v for k, v in b.items() if k != "prevResult"}, f)
    r = host.ns.run(EDGEMESH, "sync", "--config", sync_conf, check=False)
    assert r.returncode == 1 and "error 147" in r.stderr and host.rules() == before
    # Once neta has no pod left, netb's config is free to shape the chains.
    assert host.run("DEL", a, cid="c1")[0] == 0
    rc, out, _ = host.run("ADD", b, cid="c2")
    assert rc == 0, out
    assert "kube-system/kube-dns" not in host.rules()
    assert host.run("DEL", b, cid="c2")[0] == 0


def test_another_network_without_a_record_blocks_a_rewrite(host):
    """netb keeps its lock and records elsewhere: its config is unknown here, so a config that
    would change the shared chains is refused; one that changes nothing is fine."""
    b = host.conf("netb", ip="10.23.0.5", backend="iptables", stateDir=f"{host.tmp}/other")
    assert host.run("ADD", b, cid="c2")[0] == 0
    rc, out, _ = host.run("ADD", host.conf("neta", backend="iptables", listenPort=40002), cid="c1")
    assert rc == 1 and out["code"] == 147 and "'netb'" in out["msg"] and "no record" in out["msg"], out
    assert host.run("ADD", host.conf("neta", backend="iptables"), cid="c1")[0] == 0
    assert host.run("DEL", host.conf("neta", backend="iptables"), cid="c1")[0] == 0
    assert host.run("DEL", b, cid="c2")[0] == 0
    assert chains(host.rules()) == []


def test_status_says_why_a_new_pod_cannot_be_served(host):
    conf = host.conf(backend="nftables")
    rc, out, err = host.status(conf)
    assert rc == 0, (out, err)
    rc, out, _ = host.status(host.conf(kernelRelease="4.15.6-1.el7.elrepo.x86_64"))
    assert rc == 1 and out["code"] == 50 and "4.15" in out["msg"], out
    services = f"{host.tmp}/ignored.json"
    with open(services, "w") as f:
        f.write("[{")
    rc, out, _ = host.status(host.conf(ignoredServicesFile=services))
    assert rc == 1 and out["code"] == 50 and "ignoredServicesFile" in out["msg"], out
    # The backend's tools missing from PATH: STATUS 50 naming the fix.
    env = dict(os.environ, CNI_COMMAND="STATUS", CNI_PATH="/usr/lib/cni", PATH="/nonexistent")
    p = subprocess.run([shutil.which("ip"), "netns", "exec", host.ns.name, EDGEMESH], input=json.dumps(_strip(
        dict(conf, prevResult=None))), env=env, capture_output=True, text=True, timeout=60)
    out = json.loads(p.stdout)
    assert p.returncode == 1 and out["code"] == 50 and "nftables" in out["msg"], out
    assert "Traceback" not in p.stderr
    assert host.records() == []                                # STATUS writes nothing


LENIENT: list[dict[str, object]] = [
    {"capabilities": {"portMappings": True}, "dns": {"nameservers": ["10.96.0.10"]}},
    {"runtimeConfig": {"portMappings": []}, "cni.dev/attachments": [], "nonsense": 1},
    {"serviceCIDR": "not a cidr", "listenPort": "x", "protocols": "tcp"},
    {"serviceCIDR": "10.96.0.0/40", "listenAddress": "300.1.2.3", "kernelRelease": "4.15.6"},
    {"serviceCIDR": None, "backend": "ipvs", "ignoredServices": [{"ip": "x", "name": "y"}]},
    {"ignoredServicesFile": "/nonexistent/dir/../x", "excludeNamespaces": ["BAD_NS"], "scope": 3},
]


@pytest.mark.parametrize("keys", LENIENT, ids=[",".join(sorted(k))[:40] for k in LENIENT])
@pytest.mark.parametrize("netns_kind", ["present", "gone", "empty"])
def test_del_with_injected_unknown_or_bad_keys_removes_everything(host, keys, netns_kind):
    assert host.run("ADD", host.conf())[0] == 0
    conf = _strip(dict(host.conf(prevResult=None), **keys))
    netns = {"present": None, "gone": f"{host.tmp}/not-a-netns", "empty": ""}[netns_kind]
    if netns_kind == "gone":
        open(netns, "w").close()
    rc, out, err = host.run("DEL", conf, netns=netns)
    assert rc == 0, (out, err)
    assert "EDGE-MESH" not in host.rules() and "net=neta" not in host.rules()
    assert host.records() == []
    assert host.run("DEL", conf, netns=netns)[0] == 0           # idempotent


def test_gc_and_check_ignore_unknown_keys_but_del_needs_a_usable_state_dir(host):
    assert host.run("ADD", host.conf())[0] == 0
    rc, out, _ = host.run("CHECK", dict(host.conf(), nonsense=True, dns={"nameservers": ["10.96.0.10"]}))
    assert rc == 0, out
    gc = _strip(dict(host.conf(prevResult=None), nonsense=1, listenPort="x"))
    gc["cni.dev/valid-attachments"] = []
    assert run_plugin("GC", gc, netns="", cid="", ifname="", inside=host.ns.name)[0] == 0
    assert "EDGE-MESH" not in host.rules() and host.records() == []
    afile = f"{host.tmp}/a-file"
    open(afile, "w").close()
    rc, out, _ = host.run("DEL", host.conf(stateDir=afile))
    assert rc == 1 and out["code"] == 7 and "stateDir" in out["msg"], out


# The xtables lock: only inside a private mount namespace with a tmpfs on /run, so the machine's
# /run/xtables.lock is never touched, with iptables-legacy (iptables-nft takes no xtables lock).
LOCK_HELPER = r"""
import fcntl, json, os, subprocess, sys
edgemesh, bindir, conf = sys.argv[1], sys.argv[2], sys.argv[3]
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "pycni-test-run", "/run"], check=True)
assert "pycni-test-run" in open("/proc/self/mounts").read()
fd = os.open("/run/xtables.lock", os.O_CREAT | os.O_RDWR, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
env = dict(os.environ, PATH=bindir + ":" + os.environ.get("PATH", ""), CNI_COMMAND="ADD",
           CNI_CONTAINERID="c1", CNI_NETNS="/proc/self/ns/net", CNI_IFNAME="eth0", CNI_PATH="/usr/lib/cni")
out = []
p = subprocess.run([edgemesh], input=conf, env=env, capture_output=True, text=True, timeout=60)
out.append([p.returncode, p.stdout, p.stderr])
os.close(fd)                                     # the other program lets go: ADD works
for verb in ("ADD", "DEL"):
    p = subprocess.run([edgemesh], input=conf, env=dict(env, CNI_COMMAND=verb), capture_output=True,
                       text=True, timeout=60)
    out.append([p.returncode, p.stdout, p.stderr])
print(json.dumps(out))
"""


def test_xtables_lock_held_by_another_program_is_148(host, tmp_path):
    legacy = "/usr/sbin/xtables-legacy-multi"
    if not os.path.exists(legacy):
        pytest.skip("iptables-legacy is not installed")
    if host.ns.run("iptables-legacy-save", "-t", "nat", check=False).returncode != 0:
        pytest.skip("legacy iptables (ip_tables) is not usable on this kernel")
    bindir = tmp_path / "legacy-bin"
    bindir.mkdir()
    for name in ("iptables-restore", "iptables-save"):
        os.symlink(legacy, bindir / name)
    real_lock = os.path.exists("/run/xtables.lock")
    conf = json.dumps(host.conf(backend="iptables", prevResult=prev_result("10.22.0.5", "/proc/self/ns/net")))
    p = subprocess.run(["ip", "netns", "exec", host.ns.name, "unshare", "--mount", "--propagation", "private",
                        sys.executable, "-c", LOCK_HELPER, EDGEMESH, str(bindir), conf],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    (rc, stdout, stderr), (rc_add, add_out, _), (rc_del, _, _) = json.loads(p.stdout)
    out = json.loads(stdout)
    assert rc == 1 and out["code"] == 148, out
    assert "xtables lock" in out["msg"] and "fuser" in out["details"] and "Traceback" not in stderr
    assert rc_add == 0, add_out
    assert rc_del == 0
    assert os.path.exists("/run/xtables.lock") == real_lock     # the machine's /run untouched
