"""The ignored-services file: re-read by ADD and CHECK, applied by `edgemesh sync`.

sync must add and remove RETURN rules and touch nothing else: with iptables the
other rules keep their packet counters (a rewritten rule would start again at 0),
with nftables they keep their handles.
"""
import json
import re

import pytest

from tests.integration.test_edgemesh_kit import (IGNORED, SVC, Node, ask, conflist, edgemesh_conf,
                                                 sync)

pytestmark = pytest.mark.root
NEW = "10.96.0.30"


def write(path, services):
    path.write_text(json.dumps([{"ip": ip, "name": name} for ip, name in services]))


def hook_counters_dropped(saved: str) -> list[str]:
    """iptables-save -c lines; the counters of our jumps in PREROUTING/OUTPUT are dropped, as
    a stray host packet (a late RST) can move them while the test runs."""
    return [re.sub(r"^\[\d+:\d+\] (-A (PREROUTING|OUTPUT) )", r"\1", line) for line in saved.splitlines()]


def nft_rules(node) -> dict[str, str]:
    """{handle: rule} of table ip edgemesh."""
    text = node.ns.run("nft", "-a", "list", "table", "ip", "edgemesh").stdout
    return {m.group(2): m.group(1) for m in re.finditer(r"^\s+(.*\S) # handle (\d+)$", text, re.M)
            if "type nat hook" not in m.group(1)}


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_sync_changes_only_return_rules(netns, tmp_path, backend):
    node = Node(netns("emh"), str(tmp_path))
    svc_file = tmp_path / "ignored.json"
    write(svc_file, [(IGNORED, "kube-system/kube-dns"), ("10.96.0.21", "default/a")])
    mesh = conflist(tmp_path, edgemesh=edgemesh_conf(tmp_path, backend=backend,
                                                     ignoredServicesFile=str(svc_file)))
    conf_path = tmp_path / "mesh.conflist"
    conf_path.write_text(json.dumps(mesh))
    pod = netns("pod")
    try:
        node.add(mesh, pod, "c1")
        node.real_services(SVC, IGNORED, NEW)
        node.serve("--listen", "169.254.96.16:40001")
        assert ask(pod, "tcp", SVC) == f"orig={SVC}:80"          # counts on pod, proxy, DNAT rules
        assert ask(pod, "tcp", NEW) == f"orig={NEW}:80"
        assert ask(pod, "tcp", IGNORED) == f"real={IGNORED}:80"
        before = node.nat(counters=True) if backend == "iptables" else nft_rules(node)

        write(svc_file, [(IGNORED, "kube-system/kube-dns"), (NEW, "default/b")])
        with pytest.raises(Exception) as e:                       # CHECK re-reads the file
            node.check(mesh, pod, "c1")
        assert e.value.code == 145 and "default/b" in str(e.value)
        r = sync(node, str(conf_path))
        assert r.returncode == 0, r.stderr
        assert "1 added, 1 removed" in r.stdout
        after = node.nat(counters=True) if backend == "iptables" else nft_rules(node)
        if backend == "iptables":
            b, a = set(hook_counters_dropped(before)), set(hook_counters_dropped(after))
            gone, new = b - a, a - b
            assert [line.split("] ", 1)[1] for line in gone] == [
                '-A EDGE-MESH-SVC -d 10.96.0.21/32 -m comment --comment "ignore default/a service" -j RETURN']
            assert [line.split("] ", 1)[1] for line in new] == [
                f'-A EDGE-MESH-SVC -d {NEW}/32 -m comment --comment "ignore default/b service" -j RETURN']
            dnat = re.search(r"^\[(\d+):\d+\] -A EDGE-MESH-TCP ", after, re.M)
            assert int(dnat.group(1)) >= 2                          # counters survived the sync
        else:
            assert {h: r for h, r in before.items() if h not in after} == {
                h: r for h, r in before.items() if "default/a" in r}
            assert [r for h, r in after.items() if h not in before] == [
                f'ip daddr {NEW} return comment "ignore default/b service"']
        node.check(mesh, pod, "c1")
        assert ask(pod, "tcp", NEW) == f"real={NEW}:80"           # now ignored
        assert ask(pod, "tcp", "10.96.0.21") == "orig=10.96.0.21:80"   # no longer ignored

        write(svc_file, [(NEW, "default/b")])                     # ADD re-reads the file too
        pod2 = netns("pod2")
        node.add(mesh, pod2, "c2")
        assert ask(pod, "tcp", IGNORED) == f"orig={IGNORED}:80"
        node.delete(mesh, pod, "c1")
        node.delete(mesh, pod2, "c2")
        r = sync(node, str(conf_path))                            # no pod: sync creates nothing
        assert r.returncode == 0 and "nothing to sync" in r.stdout
        assert "EDGE-MESH" not in node.nat() and "edgemesh" not in node.ruleset()
    finally:
        node.stop()
