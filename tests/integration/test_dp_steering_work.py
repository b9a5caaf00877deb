"""The request shapes of dp-steering's leaner ADD and DEL, against the kernel.

- eBPF: rules whose programs are the same bytes (a pod's IPv6 rule and its IPv4 one differ only
  in the filter's protocol) share one loaded program: each filter still has its own name (device,
  priority, hash), CHECK passes, and the pod's 12 filters hold 10 programs.
- DEL: only the filters no deletion or move takes with its device are deleted (vbr's, while the
  pair stays); vex is moved back without being set down first (the move closes it and drops its
  qdiscs). The pod's interface after DEL is what it was before ADD: link (flags, MTU, MAC, state,
  qdisc), no ingress qdisc or filter left, addresses, routes, permanent neighbours; the pair
  keeps exactly the other pod's vbr filters, and goes with the last pod.
"""
import re
import struct

import pytest

from plugins.meta.dp_steering import datapath_ebpf, rules, state, steering
from plugins.pkg import link, tc
from tests.kit.dp_steering import GATEWAY, World

pytestmark = pytest.mark.root
TCA_BPF_ID = 11          # linux/pkt_cls.h: the loaded program's id


def _filters(w, dev: str) -> dict[int, tc.Filter]:
    with link.open_rtnl(w.enf.path) as rt:
        index = link.index_of(rt, dev)
        assert index is not None, dev
        return {f.pref: f for f in tc.filters(rt, index)}


@pytest.mark.parametrize("mode", ["tap", "inline"])
def test_ebpf_rules_of_the_same_bytes_share_one_program(netns, tmp_path, mode):
    if not datapath_ebpf.available():
        pytest.skip("no eBPF here")
    w = World(netns, tmp_path, datapath="ebpf", mode=mode, failOpen=True)
    pod = w.add("c1")
    rec = w.record(pod)
    found = {dev: _filters(w, dev) for dev in (rec["vex"], rec["vin"], rec["vbr"])}
    want = rules.rules_for(rec["installed"], steering.port(state.load_pod(w.state_dir, "c1", "eth0")))
    with link.open_rtnl(w.enf.path) as rt:
        index = {name: link.index_of(rt, name) for name in (rec["vex"], rec["vin"], rec["vbr"])}
    ids = {}
    for r in want:
        f = found[r.dev][r.pref]
        assert f.kind == "bpf" and f.protocol == tc.PROTOCOLS[r.protocol]
        name = f.options[tc.TCA_BPF_NAME].rstrip(b"\0").decode()
        assert name == datapath_ebpf.filter_name(r, datapath_ebpf.program(r, index))
        ids[(r.dev, r.pref)] = struct.unpack("=I", f.options[TCA_BPF_ID])[0]
    for dev in (rec["vex"], rec["vin"]):
        assert ids[(dev, rules.POD_PREF)] == ids[(dev, rules.POD6_PREF)]
    assert len(ids) == 12 and len(set(ids.values())) == 10
    w.check(pod)                                     # CHECK compares every filter's name
    w.delete(pod)
    assert w.enforcer_links() == ["lo"]


def _pod_state(pod) -> str:
    """The pod's interface as the kernel shows it, with the ifindexes (which the swap may change
    by design) and IPv6's nodad flag left out: link details and state, qdiscs, ingress filters, addresses, routes,
    permanent neighbours."""
    out = []
    for argv in (["ip", "-d", "-o", "link", "show", "dev", "eth0"], ["tc", "qdisc", "show", "dev", "eth0"],
                 ["tc", "filter", "show", "dev", "eth0", "ingress"], ["ip", "-o", "addr", "show", "dev", "eth0"],
                 ["ip", "route", "show", "table", "all"], ["ip", "neigh", "show", "nud", "permanent"]):
        text = pod.ns.run(*argv).stdout
        text = re.sub(r"^\d+: ", "", text, flags=re.M)
        text = re.sub(r"@if\d+", "", text)
        text = re.sub(r"valid_lft.*$", "", text, flags=re.M)
        text = text.replace(" nodad", "")       # IPv6 addresses come back without DAD (README: by design)
        out.append(text)
    return "\n".join(out)


def test_del_gives_the_interface_back_as_it_was_and_leaves_the_pair_its_other_pod(netns, tmp_path):
    w = World(netns, tmp_path, mode="tap", failOpen=True)
    first, second = w.add("c1", steer=False), w.add("c2", steer=False)
    first.ns.run("ip", "route", "add", "10.50.0.0/16", "via", GATEWAY, "table", "100")
    first.ns.run("ip", "neigh", "add", "10.44.0.200", "lladdr", "02:00:00:00:00:c8", "dev", "eth0",
                 "nud", "permanent")
    before = {p.cid: _pod_state(p) for p in (first, second)}
    for p in (first, second):
        status, out, _ = w.plugin("ADD", p, p.added.encode())
        assert status == 0, out
    recs = {p.cid: w.record(p) for p in (first, second)}
    vbr_prefs = {p.cid: {recs[p.cid]["vex_pref"], recs[p.cid]["vin_pref"]} for p in (first, second)}
    assert set(_filters(w, "vbr")) == vbr_prefs["c1"] | vbr_prefs["c2"]

    status, out, _ = w.plugin("DEL", first, first.added.encode())       # the pair stays
    assert status == 0, out
    assert _pod_state(first) == before["c1"]
    assert "ingress" not in before["c1"] and "filter" not in before["c1"]
    assert set(_filters(w, "vbr")) == vbr_prefs["c2"]                # the other pod's, exactly
    assert sorted(w.enforcer_links()) == sorted(["lo", "vbr", "vth", recs["c2"]["vex"], recs["c2"]["vin"]])
    w.check(second)

    status, out, _ = w.plugin("DEL", second, second.added.encode())     # the last: the pair goes too
    assert status == 0, out
    assert _pod_state(second) == before["c2"]
    assert w.enforcer_links() == ["lo"]
    status, out, _ = w.plugin("DEL", second, second.added.encode())     # idempotent
    assert status == 0, out


def _journal_writes(w, pod, **overrides) -> list:
    """ADD run in-process in a fork (as pycni-node's worker runs it): the (phase, steps) of every
    write of the pod's journal/record, in order, and the exit status."""
    import io
    import json
    import os

    from libcni_py import records, skel
    from plugins.meta.dp_steering.cmd import PLUGIN
    from plugins.pkg import ns
    conf = {"cniVersion": w.version, "name": "dpnet", **w.steer, **overrides, "prevResult": pod.added.encode()}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": pod.cid, "CNI_NETNS": pod.ns.path, "CNI_IFNAME": "eth0",
           "CNI_PATH": "/usr/lib/cni", "PATH": os.environ["PATH"]}
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:                          # pragma: no cover - the child reports through the pipe
        try:
            os.close(r)
            got = []
            write = records.write

            def counted(path, obj, *a, **k):
                if os.sep + "pods" + os.sep in path:
                    got.append([obj.get("phase"), list(obj.get("steps") or [])])     # as written
                return write(path, obj, *a, **k)
            records.write = counted
            with ns.enter(w.host.path):
                status = skel.run(PLUGIN, env, io.BytesIO(json.dumps(conf).encode()), io.StringIO(), io.StringIO())
            os.write(wfd, json.dumps([status, got]).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    status, got = json.loads(data)
    assert status == 0
    return got


def test_a_tap_add_without_dp_socket_journals_no_dp_step_of_its_own(netns, tmp_path):
    w = World(netns, tmp_path, mode="tap", failOpen=True)
    tap, inline = w.add("c1", steer=False), w.add("c2", steer=False)
    assert _journal_writes(w, tap) == [["adding", ["pull"]], ["adding", ["pull", "pair"]],
                                       ["adding", ["pull", "pair", "dp", "rules"]],
                                       ["done", ["pull", "pair", "dp", "rules"]]]
    assert w.record(tap)["installed"] == "tap"
    # inline (no dp here: awaited dpWaitMs unlocked, then tap by failOpen): the wait is journaled
    assert _journal_writes(w, inline, mode="inline", dpWaitMs=50) == [
        ["adding", ["pull"]], ["adding", ["pull", "pair"]], ["adding", ["pull", "pair", "dp"]],
        ["adding", ["pull", "pair", "dp", "rules"]], ["done", ["pull", "pair", "dp", "rules"]]]
    for pod in (tap, inline):
        status, out, _ = w.plugin("DEL", pod, pod.added.encode())
        assert status == 0, out
    assert w.enforcer_links() == ["lo"] and w.state_files() == []


def test_add_when_the_pod_already_has_a_link_at_vex_s_ifindex(netns, tmp_path):
    """The pod has a link at the enforcer's first free vex ifindex: vex takes one free in both, so
    the new CNI_IFNAME still gets vex's ifindex and vin the host peer's (the Go bridge's CHECK
    compares the peering), and vin is brought up where it is."""
    from plugins.meta.dp_steering.triad import VEX_INDEX_BASE

    def factory(tag: str = "ns"):
        ns = netns(tag)
        if tag == "pod":
            ns.run("ip", "link", "add", "d0", "index", str(VEX_INDEX_BASE), "type", "veth", "peer", "name", "d1")
        return ns
    w = World(factory, tmp_path, mode="tap", failOpen=True)
    pod = w.add("c1")
    rec = w.record(pod)
    assert rec["vex_index"] == VEX_INDEX_BASE + 1        # the first free in the enforcer and the pod
    eth0 = pod.ns.run("ip", "-o", "link", "show", "eth0").stdout
    assert eth0.startswith(f"{VEX_INDEX_BASE + 1}: eth0@"), eth0
    assert "UP" in w.enf.run("ip", "-o", "link", "show", rec["vin"]).stdout
    w.check(pod)
    w.delete(pod)
    assert w.enforcer_links() == ["lo"]
