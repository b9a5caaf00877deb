"""dp-steering's netlink layer on its own: plugins/pkg/link.py, rtnl.py and tc.py (raw rtnetlink,
no pyroute2) doing what the triad needs, and an exec guard that no command imports pyroute2."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from plugins.meta.dp_steering import bpfasm as B
from plugins.pkg import link, ns, tc
from plugins.pkg import rtnl as nl
from tests.kit.dp_steering import CNI_PATH, ROOT, World

pytestmark = pytest.mark.root


def test_veth_with_chosen_ifindexes_txqlen_and_moves(netns):
    a, b = netns("a"), netns("b")
    with link.open_rtnl(a.path) as rt_a, link.open_rtnl(b.path) as rt_b:
        idx = link.create_veth(rt_a, "va0", "vb0", b.path, mtu=1400, txqlen=77, index=4242, peer_index=4343)
        have = rt_a.link(index=4242)
        assert (idx, have.name, have.mtu, have.txqlen, have.peer) == (4242, "va0", 1400, 77, 4343)
        assert rt_b.link("vb0")[:2] == (4343, "vb0") and rt_b.link("vb0").peer == 4242
        with pytest.raises(FileExistsError):                         # ifindex taken
            link.create_veth(rt_a, "va1", "vb1", index=4242)
        assert link.index_of(rt_a, "va1") is None and link.index_of(rt_a, "vb1") is None
        assert link.free_index(rt_a, 4242) == 4243 and link.free_index(rt_a, 1) == 2       # lo is 1
        link.set_link(rt_a, idx, txqlen=500, name="va2", mac="02:00:00:00:00:22")
        assert rt_a.link(index=idx)[1:5] == ("va2", "veth", 1400, "02:00:00:00:00:22")
        assert rt_a.link(index=idx).txqlen == 500

        link.move_to_netns(rt_b, 4343, a.path, new_index=4242)       # taken there: the kernel's choice
        moved = link.find(rt_a, "vb0")
        assert moved is not None and moved.index != 4242 and rt_b.link("vb0") is None
        link.move_to_netns(rt_a, moved.index, b.path, new_index=5005)
        wanted = tuple(int(x) for x in os.uname().release.split(".")[:2]) >= (6, 5)
        assert rt_b.link("vb0").index == (5005 if wanted else moved.index)   # IFLA_NEW_IFINDEX from 6.5
        assert link.delete_if_exists(rt_b, "vb0") and rt_a.link(index=idx) is None


def test_addresses_routes_and_neighbours_carry_over_to_another_link(netns):
    """What the triad moves from the pod's old interface to its new one, IPv4 and IPv6, every table."""
    a = netns("a")
    with link.open_rtnl(a.path) as rt:
        old = link.create_veth(rt, "old0", "old1", up=True)
        new = link.create_veth(rt, "new0", "new1", up=True)
        for peer in ("old1", "new1"):
            link.set_link(rt, link.index_of(rt, peer), up=True)
        for cmd in (["ip", "addr", "add", "10.9.0.1/24", "brd", "+", "dev", "old0"],
                    ["ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "old0", "nodad"],
                    ["ip", "route", "add", "10.50.0.0/16", "via", "10.9.0.254", "dev", "old0", "table", "100"],
                    ["ip", "route", "add", "10.60.0.0/16", "dev", "old0", "metric", "50", "mtu", "1300"],
                    ["ip", "route", "add", "10.70.0.0/16", "via", "10.9.0.254", "dev", "old0", "table", "1000"],
                    ["ip", "-6", "route", "add", "2001:db8:5::/64", "via", "2001:db8::fe", "dev", "old0"],
                    ["ip", "neigh", "add", "10.9.0.200", "lladdr", "02:00:00:00:00:c8", "dev", "old0",
                     "nud", "permanent"],
                    ["ip", "-6", "neigh", "add", "2001:db8::c8", "lladdr", "02:00:00:00:00:c9", "dev", "old0",
                     "nud", "permanent"]):
            a.run(*cmd)

        addrs = [x for x in rt.addrs(old, socket.AF_UNSPEC) if not x.address.is_link_local]
        assert {str(x.address) for x in addrs} == {"10.9.0.1/24", "2001:db8::1/64"}
        assert [str(x.broadcast) for x in addrs if x.address.version == 4] == ["10.9.0.255"]
        routes = [r for r in link.routes_through(rt, old) if r.table != 255 and r.protocol != 2]
        assert sorted(str(r) for r in routes) == ["10.50.0.0/16 table 100", "10.60.0.0/16 table 254",
                                                  "10.70.0.0/16 table 1000", "2001:db8:5::/64 table 254"]
        neighs = [n for n in rt.neighs(socket.AF_UNSPEC, old) if n.state & nl.NUD_PERMANENT]
        assert {(str(n.dst), n.lladdr) for n in neighs} == {("10.9.0.200", "02:00:00:00:00:c8"),
                                                             ("2001:db8::c8", "02:00:00:00:00:c9")}

        def shown(dev: str) -> list[str]:
            out = []
            for argv in (["ip", "-o", "addr", "show", "dev", dev, "scope", "global"],
                         ["ip", "route", "show", "table", "all", "dev", dev],          # IPv4 and IPv6
                         ["ip", "neigh", "show", "dev", dev, "nud", "permanent"]):
                lines = a.run(*argv).stdout.replace(dev, "DEV").splitlines()
                out += sorted(re.sub(r"^\d+: ", "", ln) for ln in lines
                              if "table local" not in ln and "fe80::" not in ln and "proto kernel" not in ln)
            return out

        before = shown("old0")
        a.run("ip", "link", "set", "old0", "down")
        a.run("ip", "addr", "flush", "dev", "old0")
        assert rt.batch([nl.addr_msg(True, new, x.address, x.broadcast, x.flags | (2 if x.address.version == 6 else 0))
                         for x in addrs]) == [0, 0]
        direct_first = sorted(routes, key=lambda r: r.gateway)
        assert rt.batch([link.route_through_msg(r, new) for r in direct_first]) == [0] * 4
        assert rt.batch([nl.neigh_msg(True, new, n.dst, n.lladdr) for n in neighs]) == [0, 0]
        assert shown("new0") == before and len(before) == 8
        assert rt.batch([link.route_through_msg(routes[0], new)]) == [17]    # EEXIST: add does not replace


def test_tc_ingress_bpf_filters_listed_and_deleted(netns):
    a = netns("a")
    prog = B.Asm().mov_imm(B.R0, B.TC_ACT_UNSPEC).exit().assemble()
    with link.open_rtnl(a.path) as rt:
        idx = link.create_veth(rt, "t0", "t1")
        assert tc.filters(rt, idx) == [] and tc.filters(rt, 99999) == []
        tc.ensure_ingress(rt, idx)
        tc.ensure_ingress(rt, idx)                                    # already there: fine
        fd = B.load_sched_cls(prog, "pycni_test")
        try:
            tc.add_bpf_filter(rt, idx, 300, tc.ETH_P_IP, fd, "first")
            tc.add_bpf_filter(rt, idx, 301, tc.ETH_P_ALL, fd, "second")
            with pytest.raises(OSError):                             # same pref and handle
                tc.add_bpf_filter(rt, idx, 300, tc.ETH_P_IP, fd, "again")
        finally:
            os.close(fd)
        found = [(f.pref, f.protocol, f.kind, f.options[tc.TCA_BPF_NAME]) for f in tc.filters(rt, idx)]
        assert found == [(300, 0x0800, "bpf", b"first\0"), (301, 0x0003, "bpf", b"second\0")]
        assert "direct-action" in a.run("tc", "filter", "show", "dev", "t0", "ingress").stdout
        assert tc.delete_filter(rt, idx, 300) is True and tc.delete_filter(rt, idx, 300) is False
        assert [f.pref for f in tc.filters(rt, idx)] == [301]


def test_no_command_imports_pyroute2(netns, tmp_path):
    """The exec cost guard: VERSION, ADD, CHECK, DEL of a steered pod speak netlink themselves, and
    load none of the other modules the start-up diet keeps out (logging is left to the failOpen
    warning this dp-less ADD gives; failOpen, so that CHECK passes without a dp)."""
    w = World(netns, tmp_path)
    pod = w.add("imports", steer=False)                              # the Go bridge only
    conf = json.dumps({"cniVersion": w.version, "name": "dpnet", **w.steer, "failOpen": True,
                       "prevResult": pod.result.encode()})
    code = ("import io, os, sys; from libcni_py import skel; from plugins.meta.dp_steering import cmd\n"
            "conf = sys.stdin.buffer.read()\n"
            "for verb in ('VERSION', 'ADD', 'CHECK', 'DEL'):\n"
            "    out = io.StringIO()\n"
            "    assert skel.run(cmd.PLUGIN, {**os.environ, 'CNI_COMMAND': verb}, io.BytesIO(conf), out, sys.stderr)"
            " == 0, (verb, out.getvalue())\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pyroute2', 'jsonschema', 'dataclasses', 'hashlib', 'typing')))\n")
    env = dict(os.environ, CNI_CONTAINERID=pod.cid, CNI_NETNS=pod.ns.path, CNI_IFNAME="eth0",
               CNI_PATH=":".join(CNI_PATH))
    with ns.enter(w.host.path):
        p = subprocess.run([sys.executable, "-c", code], input=conf, env=env, capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
    assert [ln.split(":")[1].strip() for ln in w.enf.run("ip", "-o", "link", "show").stdout.splitlines()] == ["lo"]
