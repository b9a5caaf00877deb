"""containerd 1.6's CRI plugin runs our chain (vxlan + dp-steering + edgemesh + Go portmap) as kubelet
would drive it: RunPodSandbox, a container, exec, a hostPort, StopPodSandbox, RemovePodSandbox.

containerd runs in a sandbox in a test host netns (tests/kit/runtimes.py); dp-steering is in tap mode
with failOpen, so no dp is needed (the pod's frames are forwarded by tc, a copy goes to vbr).
"""
from __future__ import annotations

import ipaddress

import pytest

from plugins.pkg import probe
from tests.kit import runtimes

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def world(netns, tmp_path):
    yield from runtimes.running(runtimes.Containerd, netns, str(tmp_path), "cd")


def test_pod_lifecycle_through_cri(world):
    cd, chain, host, client = world
    assert cd.runtime.Version(cd.api.VersionRequest(), timeout=5).runtime_api_version == "v1"
    cfg = cd.sandbox_config("web", "uid-web-1", port_mappings=[(80, 18080)])
    pod_id = cd.run_pod(cfg)
    ip = cd.pod_ip(pod_id)
    lease = ipaddress.ip_network(runtimes.node_subnet(host))
    assert ipaddress.ip_address(ip) in lease, (ip, lease)
    gateway = str(next(lease.hosts()))

    ctr = cd.start_container(pod_id, cfg, "web", ["sh", "-c", "exec httpd -f -p 80 -h /www"])
    addr = cd.exec(ctr, "ip", "-4", "addr", "show", "dev", "eth0")
    assert f"inet {ip}/{lease.prefixlen}" in addr, addr
    route = cd.exec(ctr, "ip", "-4", "route", "show")
    assert f"default via {gateway} dev eth0" in route, route

    # dp-steering pulled the pod's port through the enforcer (tap, failOpen: no dp)
    enf_links = chain.enforcer.run("ip", "-o", "link", "show").stdout
    assert ": vex" in enf_links and ": vin" in enf_links, enf_links
    # edgemesh's per-pod rule, in the host netns
    nat = host.run("iptables-save", "-t", "nat").stdout
    assert f"-s {ip}/32" in nat and "EDGE-MESH" in nat, nat

    # the hostPort: from the other test host across the underlay to host0's address
    answer = probe.tcp_exchange(client.path, str(host.ip.ip), 18080, b"GET / HTTP/1.0\r\n\r\n")
    assert b"pod-ok" in answer, answer
    # the hostPort from the test host's own netns (portmap's OUTPUT rules, snat for the hairpin)
    answer = probe.tcp_exchange(host.path, str(host.ip.ip), 18080, b"GET / HTTP/1.0\r\n\r\n")
    assert b"pod-ok" in answer, answer
    # and the pod from the host's own netns (the overlay bridge)
    answer = probe.tcp_exchange(host.path, ip, 80, b"GET / HTTP/1.0\r\n\r\n")
    assert b"pod-ok" in answer, answer

    # what the teardown must remove is there now (so the check below can fail)
    live = chain.leftovers(cd.cni_cache)
    for kind in ("cache rtnet-", "vxlan attachment", "ipam", "dp-steering", "host link veth",
                 "enforcer link vex", "enforcer link vin", "nat rule"):
        assert any(item.startswith(kind) for item in live), (kind, live)

    cd.stop_pod(pod_id)
    cd.remove_pod(pod_id)
    assert cd.list_pods() == []
    left = chain.leftovers(cd.cni_cache)
    assert not left, left

