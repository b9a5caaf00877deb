"""podman 4.3 with `network_backend = "cni"` (and runc) runs our chain (vxlan + dp-steering + edgemesh
+ Go portmap): containers with and without a static IP (`--ip`, passed as runtimeConfig.ips through
vxlan's `ips` capability), two containers talking, a published port; nothing left after `podman rm`.

podman runs in a sandbox in a test host netns (tests/kit/runtimes.py); dp-steering is in tap mode
with failOpen, so no dp is needed.
"""
from __future__ import annotations

import ipaddress

import pytest

from plugins.pkg import probe
from tests.kit import runtimes

pytestmark = [pytest.mark.root, pytest.mark.slow]
HTTPD = ("httpd", "-f", "-p", "80", "-h", "/www")


@pytest.fixture
def world(netns, tmp_path):
    yield from runtimes.running(runtimes.Podman, netns, str(tmp_path), "pm")


def test_two_containers_talk_and_a_published_port(world):
    pm, chain, host, client = world
    pm.run("web", "-p", "18081:80", command=HTTPD)
    pm.run("peer")
    subnet = ipaddress.ip_network(runtimes.node_subnet(host))
    gateway = str(next(subnet.hosts()))
    web, peer = pm.ip("web"), pm.ip("peer")
    assert ipaddress.ip_address(web) in subnet and ipaddress.ip_address(peer) in subnet, (web, peer, subnet)
    assert web != peer

    addr = pm.exec("peer", "ip", "-4", "addr", "show", "dev", "eth0")
    assert f"inet {peer}/{subnet.prefixlen}" in addr, addr
    route = pm.exec("peer", "ip", "-4", "route", "show")
    assert f"default via {gateway} dev eth0" in route, route

    # container to container, over the node bridge (both steered through the enforcer in tap)
    assert "pod-ok" in pm.http_get("peer", web)
    enf = chain.enforcer.run("ip", "-o", "link", "show").stdout
    assert enf.count(": vex") == 2 and enf.count(": vin") == 2, enf

    # the published port, from the other test host across the underlay
    answer = probe.tcp_exchange(client.path, str(host.ip.ip), 18081, b"GET / HTTP/1.0\r\n\r\n")
    assert b"pod-ok" in answer, answer

    assert chain.leftovers(pm.cni_cache)          # the check below can fail
    pm.podman("rm", "-f", "-t", "0", "web", "peer")
    left = chain.leftovers(pm.cni_cache)
    assert not left, left


def test_static_ip(world):
    pm, chain, host, client = world
    host.ensure()                     # the node's lease (as its agent would hold it): the subnet is known
    subnet = ipaddress.ip_network(runtimes.node_subnet(host))
    wanted = str(subnet.network_address + 50)
    pm.run("fixed", "--ip", wanted, command=HTTPD)
    assert pm.ip("fixed") == wanted
    addr = pm.exec("fixed", "ip", "-4", "addr", "show", "dev", "eth0")
    assert f"inet {wanted}/{subnet.prefixlen}" in addr, addr
    pm.run("dynamic")
    assert pm.ip("dynamic") != wanted
    assert "pod-ok" in pm.http_get("dynamic", wanted)

    pm.podman("rm", "-f", "-t", "0", "fixed", "dynamic")
    left = chain.leftovers(pm.cni_cache)
    assert not left, left
    # the address is free again: the same static IP once more
    pm.run("again", "--ip", wanted)
    assert pm.ip("again") == wanted
    pm.podman("rm", "-f", "-t", "0", "again")
    assert not chain.leftovers(pm.cni_cache)
