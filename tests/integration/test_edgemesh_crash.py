"""edgemesh killed mid-ADD (issue 9): edgemesh0 exists only marked, DEL and GC then leave nothing
and the next ADD works; the first pod's ADD and the last pod's DEL import no pyroute2."""
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import time

import pytest

from plugins.meta.edgemesh.listen import ALIAS, DEVICE, MARK_GROUP
from plugins.pkg import link
from plugins.pkg import ns as nsmod
from plugins.pkg import rtnl as nl
from tests.kit.crash import group_members
from tests.kit.plugin_env import plugin_env
from tests.integration.test_edgemesh_kit import EDGEMESH, chains, prev_result, ruleset, run_plugin

pytestmark = pytest.mark.root
# 10 here: the 30 seeded kills per plugin that issue 9 asks of CI, each with DEL, GC, the residue
# check and the next ADD, are test_crash.py's (edgemesh-iptables 15 + -nftables 15, plus kills
# the moment edgemesh0 appears and gets its address). This loop adds both backends on one node and
# the device's mark read after every kill; PYCNI_EDGEMESH_CRASH_KILLS for more.
KILLS = int(os.environ.get("PYCNI_EDGEMESH_CRASH_KILLS", "10"))
SEED = int(os.environ.get("PYCNI_EDGEMESH_CRASH_SEED", "9"))
RTMGRP_LINK = 1


class Host:
    def __init__(self, ns, tmp):
        self.ns, self.tmp = ns, tmp
        self.state = f"{tmp}/state"

    def conf(self, backend="iptables", version="1.0.0", **keys) -> dict:
        c = {"cniVersion": version, "name": "emcrash", "type": "edgemesh", "serviceCIDR": "10.96.0.0/12",
             "ensureListenDevice": True, "backend": backend, "stateDir": self.state,
             "prevResult": prev_result("10.22.0.5", self.ns.path, version)}
        c.update(keys)
        return {k: v for k, v in c.items() if v is not None}

    def run(self, command, conf, cid="c1", env=None):
        return run_plugin(command, conf, netns=self.ns.path, cid=cid, args="K8S_POD_NAMESPACE=default",
                          inside=self.ns.name, env=env)

    def gc(self, backend="iptables"):
        conf = self.conf(backend, "1.1.0", prevResult=None)
        conf["cni.dev/valid-attachments"] = []
        return run_plugin("GC", conf, netns="", cid="", ifname="", inside=self.ns.name)

    def device(self):
        with link.open_rtnl(self.ns.path) as rt:
            return link.marks(rt, DEVICE)

    def residue(self):
        """What edgemesh could leave: nat rules, the nft ruleset, links and addresses, state files
        (the lock file aside: it is kept, as every plugin's)."""
        nat = "".join(line + "\n" for line in self.ns.run("iptables-save", "-t", "nat").stdout.splitlines()
                      if not line.startswith("#"))
        links = self.ns.run("ip", "-o", "link", "show").stdout
        addrs = self.ns.run("ip", "-o", "addr", "show").stdout
        files = sorted(os.path.relpath(os.path.join(d, f), self.state)
                       for d, _, names in os.walk(self.state) for f in names if f != "edgemesh.lock")
        return nat, ruleset(self.ns), re.sub(r"\s+", " ", links), addrs, files


@pytest.fixture
def host(netns, tmp_path):
    return Host(netns("emk"), str(tmp_path))


def test_listen_device_is_marked_in_the_request_that_creates_it(host):
    """Every link message the kernel sends about edgemesh0 during the first ADD, the first (its
    creation) included, already carries our device group: there is no moment a kill could leave
    it unmarked."""
    with nsmod.enter(host.ns.path):
        mon = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
    try:
        mon.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        mon.bind((0, RTMGRP_LINK))
        rc, out, _ = host.run("ADD", host.conf())
        assert rc == 0, out
        seen = []
        while True:
            try:
                data = mon.recv(1 << 16)
            except BlockingIOError:
                break
            off = 0
            while off + 16 <= len(data):
                n, kind = struct.unpack_from("=IH", data, off)
                if kind == nl.RTM_NEWLINK:
                    attrs = nl.nla_parse(data, off + 32, off + n)
                    if attrs.get(nl.IFLA_IFNAME, b"").rstrip(b"\0") == DEVICE.encode():
                        group = attrs.get(link.IFLA_GROUP)
                        seen.append(struct.unpack("=I", group)[0] if group else 0)
                off += (n + 3) & ~3
    finally:
        mon.close()
    assert seen and all(g == MARK_GROUP for g in seen), seen
    dev = host.device()
    assert dev.group == MARK_GROUP and dev.alias == ALIAS and dev.kind == "bridge" and dev.up
    assert host.run("DEL", host.conf())[0] == 0
    assert host.device() is None


@pytest.mark.parametrize("verb", ["DEL", "GC"])
@pytest.mark.parametrize("mark", [("group", str(MARK_GROUP)), ("alias", ALIAS)], ids=["group", "alias"])
def test_a_marked_device_without_rules_is_removed(host, verb, mark):
    """What an ADD killed after creating edgemesh0 and before its rules leaves: the device alone.
    Its DEL (or a GC) finds no rule to remove and still removes the device (a release that set
    only the alias marked it so)."""
    host.ns.run("ip", "link", "add", DEVICE, "type", "bridge")
    host.ns.run("ip", "link", "set", DEVICE, *mark)
    rc, out, _ = host.run("DEL", host.conf()) if verb == "DEL" else host.gc()
    assert rc == 0, out
    assert host.device() is None


@pytest.mark.parametrize("verb", ["DEL", "GC"])
def test_an_unmarked_edgemesh0_is_never_removed(host, verb):
    host.ns.run("ip", "link", "add", DEVICE, "type", "bridge")
    assert host.run("ADD", host.conf())[0] == 0                  # uses it, adds the address
    rc, out, _ = host.run("DEL", host.conf()) if verb == "DEL" else host.gc()
    assert rc == 0, out
    assert chains(host.residue()[0]) == []
    dev = host.device()
    assert dev is not None and dev.group == 0 and dev.alias == ""


def test_device_stays_while_the_other_backend_holds_rules(host):
    """The last iptables pod's DEL leaves edgemesh0 to the pod whose rules are in nftables; that
    pod's DEL (or a GC) then removes it."""
    assert host.run("ADD", host.conf("nftables"), cid="c1")[0] == 0
    other = host.conf("iptables", name="emother", prevResult=prev_result("10.22.0.6", host.ns.path))
    assert host.run("ADD", other, cid="c2")[0] == 0
    assert host.run("DEL", other, cid="c2")[0] == 0
    assert chains(host.residue()[0]) == [] and host.device() is not None
    assert host.run("DEL", host.conf("iptables"), cid="gone")[0] == 0      # nothing of it anywhere
    assert host.device() is not None
    assert host.run("DEL", host.conf("nftables"), cid="c1")[0] == 0
    assert host.device() is None and "edgemesh" not in host.residue()[1]


def _killed_add(host, conf, delay: float) -> bool:
    """ADD, SIGKILLed after `delay` s; what it forked (iptables-restore, nft) may finish, as in a
    runtime. True when the plugin was still running at the kill."""
    env = plugin_env(dict(os.environ), CNI_COMMAND="ADD", CNI_CONTAINERID="c1", CNI_NETNS=host.ns.path,
                     CNI_IFNAME="eth0", CNI_ARGS="K8S_POD_NAMESPACE=default", CNI_PATH="/usr/lib/cni",
                     daemon=False)                    # the kill must land on the process doing the ADD
    p = subprocess.Popen(["ip", "netns", "exec", host.ns.name, EDGEMESH], env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    assert p.stdin is not None                        # a pipe
    p.stdin.write(json.dumps(conf).encode())
    p.stdin.close()
    time.sleep(delay)
    mid = p.poll() is None
    try:
        os.kill(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()
    deadline = time.monotonic() + 20
    while group_members(p.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return mid


def test_sigkill_during_add_then_del_and_gc_leave_nothing(host):
    """KILLS ADDs killed at seeded random points (both backends, ensureListenDevice): after each,
    edgemesh0 is absent or marked; DEL then GC succeed and leave what a clean node has; the next
    ADD of the same pod works."""
    rng = random.Random(SEED)
    durations = []
    for backend in ("iptables", "nftables", "iptables", "nftables"):   # iptables-nft leaves `ip nat` once
        t0 = time.monotonic()
        assert host.run("ADD", host.conf(backend), env=plugin_env(daemon=False))[0] == 0   # as the killed ones
        durations.append(time.monotonic() - t0)
        assert host.run("DEL", host.conf(backend))[0] == 0
    typical = sorted(durations)[len(durations) // 2]
    clean = host.residue()
    assert DEVICE not in clean[2]
    mid, with_device = 0, 0
    for i in range(KILLS):
        backend = rng.choice(("iptables", "nftables"))
        conf = host.conf(backend)
        delay = rng.uniform(0, 1.2 * typical)
        mid += _killed_add(host, conf, delay)
        dev = host.device()
        where = f"round {i} ({backend}, killed after {delay * 1000:.0f} ms)"
        if dev is not None:
            with_device += 1
            assert dev.group == MARK_GROUP, f"{where}: {DEVICE} left unmarked: {dev}"
        rc, out, err = host.run("DEL", conf)
        assert rc == 0, f"{where}: DEL {out} {err[-400:]}"
        rc, out, err = host.gc(backend)
        assert rc == 0, f"{where}: GC {out} {err[-400:]}"
        assert host.residue() == clean, where
        rc, out, err = host.run("ADD", conf)
        assert rc == 0, f"{where}: next ADD {out} {err[-400:]}"
        assert host.device().group == MARK_GROUP
        assert host.run("DEL", conf)[0] == 0
        assert host.residue() == clean, where
    print(f"edgemesh crash: {KILLS} kills (seed {SEED}), {mid} mid-ADD, {with_device} left a (marked) "
          f"{DEVICE}; typical ADD {typical * 1000:.0f} ms")
    assert mid >= KILLS // 3                     # the kills did land inside ADDs
    assert with_device > 0                       # and some left edgemesh0: its mark was read after a kill


def test_first_and_last_pod_import_no_pyroute2(host):
    """The first pod's ADD creates edgemesh0 and the last pod's DEL removes it through
    plugins.pkg's raw rtnetlink: neither exec imports pyroute2 (-X importtime lists every import)."""
    trace = plugin_env(PYTHONPROFILEIMPORTTIME="1", daemon=False)      # what the exec itself imports
    rc, out, err = host.run("ADD", host.conf(), env=trace)
    assert rc == 0, out
    assert host.device() is not None
    assert "plugins.pkg.link" in err and "pyroute2" not in err
    rc, out, err = host.run("DEL", host.conf(), env=trace)
    assert rc == 0, out
    assert host.device() is None
    assert "plugins.pkg.link" in err and "pyroute2" not in err
