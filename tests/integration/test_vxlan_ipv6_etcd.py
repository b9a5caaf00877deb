"""Dual-stack leases through the etcd registry (real etcd, tests/kit/etcd.py): the lease keys carry
the IPv6 half, v6 subnets are carved through the same update seam, an IPv4-only node mixes in."""
from __future__ import annotations

import ipaddress
import os
import types

import pytest

from plugins.main.vxlan import lease
from plugins.main.vxlan.registry import open_registry
from tests.kit.etcd import EtcdCluster

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.skipif(not os.path.exists("/usr/bin/etcd"),
                                 reason="etcd-server is not installed (./build.sh test installs it)")]


def node(tmp, name: str, v6: bool = True):
    state = os.path.join(str(tmp), name)
    os.makedirs(state, exist_ok=True)
    return types.SimpleNamespace(name="ds", node_name=name, state_dir=state,
                                 network=ipaddress.IPv4Network("10.244.0.0/16"), subnet_len=24, vni=1,
                                 device_name="vxlan.1",
                                 network6=ipaddress.IPv6Network("fd00:10:244::/48") if v6 else None,
                                 subnet_len6=64)


def test_dual_stack_leases_in_etcd(tmp_path):
    with EtcdCluster(tmp_path / "etcd", members=1) as etcd, etcd.inside():
        reg = open_registry("etcd", etcd.registry_conf(prefix="/pycni/ds/"), 0)
        try:
            got = []
            for i, name in enumerate(("a", "b", "c"), 1):
                mine, _ = lease.acquire(reg, node(tmp_path, name, v6=name != "c"),
                                        ipaddress.IPv4Address(f"198.18.0.{i}"),
                                        public_ip6=ipaddress.IPv6Address(f"fd00:198:18::{i}") if name != "c" else None)
                got.append(mine)
            assert [str(x.subnet6) for x in got] == ["fd00:10:244:1::/64", "fd00:10:244:2::/64", "None"]
            snap = reg.snapshot()
            assert snap.leases["a"].public_ip6 == ipaddress.IPv6Address("fd00:198:18::1")
            assert snap.leases["c"].subnet6 is None and snap.leases["b"].same_binding(got[1])
            # what another process reads back from etcd: the IPv6 half was stored with the lease
            other = open_registry("etcd", etcd.registry_conf(prefix="/pycni/ds/"), 0)
            try:
                seen = other.snapshot()
            finally:
                other.close()
            assert seen.leases["a"].to_json() == {"subnet": "10.244.1.0/24", "publicIP": "198.18.0.1",
                                                  "vtepMAC": got[0].vtep_mac, "vni": 1,
                                                  "ipv6Subnet": "fd00:10:244:1::/64", "publicIPv6": "fd00:198:18::1"}
            assert seen.network.to_json()["ipv6Network"] == "fd00:10:244::/48"
            again, _ = lease.acquire(reg, node(tmp_path, "a"), ipaddress.IPv4Address("198.18.0.1"),
                                     public_ip6=ipaddress.IPv6Address("fd00:198:18::1"))
            assert again == got[0] and reg.snapshot().revision == snap.revision     # nothing written
        finally:
            reg.close()


def test_ipv6_only_leases_in_etcd(tmp_path):
    with EtcdCluster(tmp_path / "etcd", members=1) as etcd, etcd.inside():
        reg = open_registry("etcd", etcd.registry_conf(prefix="/pycni/v6/"), 0)
        try:
            got = []
            for i, name in enumerate(("a", "b"), 1):
                cfg = node(tmp_path, name)
                cfg.network = None
                got.append(lease.acquire(reg, cfg, None, public_ip6=ipaddress.IPv6Address(f"fd00:198:18::{i}"))[0])
            assert [(x.subnet, str(x.subnet6)) for x in got] == [(None, "fd00:10:244:1::/64"),
                                                                 (None, "fd00:10:244:2::/64")]
            snap = reg.snapshot()
            assert snap.network.network is None and snap.leases["b"] == got[1]
            assert "subnet" not in snap.leases["a"].to_json()
        finally:
            reg.close()
