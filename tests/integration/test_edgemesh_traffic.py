"""edgemesh end to end: Go bridge + host-local, then edgemesh, through libcni_py; real traffic.

The proxy on 169.254.96.16:40001 answers with the original destination it reads
(SO_ORIGINAL_DST for TCP, conntrack for UDP); the service IPs also sit on the host's lo
with a plain server behind them, so a flow that is not hijacked gets "real=...".
"""
import pytest

from tests.integration.test_edgemesh_kit import (IGNORED, SVC, Node, ask, chains, conflist,
                                                 edgemesh_conf)

pytestmark = pytest.mark.root


@pytest.fixture
def node(netns, tmp_path):
    n = Node(netns("emh"), str(tmp_path))
    yield n
    n.stop()


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_pod_scope_hijacks_attached_pods_only(node, netns, tmp_path, backend):
    em = edgemesh_conf(tmp_path, backend=backend, protocols=["tcp", "udp"],
                       ignoredServices=[{"ip": IGNORED, "name": "kube-system/kube-dns"}],
                       excludeNamespaces=["kube-system"])
    mesh = conflist(tmp_path, edgemesh=em)
    plain = conflist(tmp_path, name="plain", subnet="10.23.0.0/24", bridge="cni1")
    pod, sys_pod, other = netns("pod"), netns("sys"), netns("other")
    node.add(mesh, pod, "c1")
    node.add(mesh, sys_pod, "c2", namespace="kube-system")
    node.add(plain, other, "c3")
    node.real_services(SVC, IGNORED, udp=True)
    node.serve("--listen", "169.254.96.16:40001", "--udp")

    assert ask(pod, "tcp", SVC) == f"orig={SVC}:80"             # hijacked, original dst intact
    assert ask(pod, "tcp", SVC, 8443) == f"orig={SVC}:8443"
    assert ask(pod, "udp", SVC) == f"orig={SVC}:80"             # udp is on
    assert ask(pod, "tcp", IGNORED) == f"real={IGNORED}:80"     # ignored service: the real server
    assert ask(sys_pod, "tcp", SVC) == f"real={SVC}:80"         # excluded namespace
    assert ask(other, "tcp", SVC) == f"real={SVC}:80"           # a pod without the plugin
    assert ask(node.ns, "tcp", SVC) == f"real={SVC}:80"         # the host itself (scope pod)
    node.check(mesh, pod, "c1")
    node.check(mesh, sys_pod, "c2", namespace="kube-system")

    node.delete(mesh, pod, "c1")
    assert ask(sys_pod, "tcp", SVC) == f"real={SVC}:80"
    node.delete(mesh, sys_pod, "c2")
    node.delete(plain, other, "c3")
    assert chains(node.nat()) == []
    assert "edgemesh" not in node.ruleset()
    assert node.ns.run("ip", "link", "show", "edgemesh0", check=False).returncode != 0


def test_tcp_only_leaves_udp_alone(node, netns, tmp_path):
    mesh = conflist(tmp_path, edgemesh=edgemesh_conf(tmp_path))     # protocols default: tcp
    pod = netns("pod")
    node.add(mesh, pod, "c1")
    node.real_services(SVC, udp=True)
    node.serve("--listen", "169.254.96.16:40001", "--udp")
    assert ask(pod, "tcp", SVC) == f"orig={SVC}:80"
    assert ask(pod, "udp", SVC) == f"real={SVC}:80"
    assert "EDGE-MESH-UDP" not in node.nat()
    node.delete(mesh, pod, "c1")


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_scope_node_hijacks_the_hosts_own_traffic_too(node, netns, tmp_path, backend):
    em = edgemesh_conf(tmp_path, backend=backend, scope="node", excludeNamespaces=["kube-system"])
    mesh = conflist(tmp_path, edgemesh=em)
    plain = conflist(tmp_path, name="plain", subnet="10.23.0.0/24", bridge="cni1")
    pod, sys_pod, other = netns("pod"), netns("sys"), netns("other")
    node.add(mesh, pod, "c1")
    node.add(mesh, sys_pod, "c2", namespace="kube-system")
    node.add(plain, other, "c3")
    node.real_services(SVC)
    node.serve("--listen", "169.254.96.16:40001")

    assert ask(node.ns, "tcp", SVC) == f"orig={SVC}:80"         # host OUTPUT
    assert ask(pod, "tcp", SVC) == f"orig={SVC}:80"
    assert ask(other, "tcp", SVC) == f"orig={SVC}:80"           # everything on the node
    assert ask(sys_pod, "tcp", SVC) == f"real={SVC}:80"         # but an excluded namespace
    node.check(mesh, pod, "c1")
    if backend == "iptables":
        mesh_rules = [line for line in node.nat().splitlines() if line.startswith("-A EDGE-MESH ")]
        assert mesh_rules[-1] == '-A EDGE-MESH -m comment --comment "edgemesh node scope" -j EDGE-MESH-SVC'
    node.delete(mesh, pod, "c1")
    node.delete(mesh, sys_pod, "c2")
    assert chains(node.nat()) == [] and "edgemesh" not in node.ruleset()
