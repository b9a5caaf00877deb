"""The etcd registry backend against real etcd 3.4 members in test namespaces (tests/kit/etcd.py).

Nothing is mocked: a three-member cluster on the underlay (198.19.250.0/24), the test's client in
the switch netns. Each test uses its own network name, so its own prefix.
"""
from __future__ import annotations

import ipaddress
import multiprocessing
import os
import time
import types

import pytest

from libcni_py import records
from libcni_py.errors import CNIError
from plugins.main.vxlan import errors, lease
from plugins.main.vxlan.registry import open_registry
from plugins.main.vxlan.registry.base import Lease, NetworkRecord
from plugins.main.vxlan.registry.etcd import EtcdRegistry
from tests.kit.etcd import EtcdCluster

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.skipif(not os.path.exists("/usr/bin/etcd"),
                                 reason="etcd-server is not installed (./build.sh test installs it)")]

NET = ipaddress.IPv4Network("10.244.0.0/16")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    with EtcdCluster(tmp_path_factory.mktemp("etcd"), members=3) as cluster:
        yield cluster


def node(tmp, name: str, network: str = "vxnet", net=NET, subnet_len: int = 24, vni: int = 1):
    state = os.path.join(str(tmp), name)
    os.makedirs(state, exist_ok=True)
    return types.SimpleNamespace(name=network, node_name=name, state_dir=state, network=net,
                                 subnet_len=subnet_len, vni=vni, device_name="vxlan.1",
                                 network6=None, subnet_len6=64)


def a_lease(name: str, third: int) -> Lease:
    return Lease(name, ipaddress.IPv4Network(f"10.244.{third}.0/24"), ipaddress.IPv4Address(f"198.18.0.{third}"),
                 f"02:00:00:00:00:{third:02x}", 1)


def put_lease(reg, name: str, third: int):
    def mutate(d):
        d.network = NetworkRecord(NET, 24, 1)
        d.leases[name] = reg.stamp(a_lease(name, third))
    return reg.update(mutate)


def test_open_registry_by_type_and_key_layout(etcd, tmp_path):
    with etcd.inside():
        reg = open_registry("etcd", etcd.registry_conf(prefix="/pycni/layout/"), 0)
        try:
            mine, snap = lease.acquire(reg, node(tmp_path, "a", "layout"), ipaddress.IPv4Address("198.18.0.1"))
            assert mine.subnet == ipaddress.IPv4Network("10.244.1.0/24") and mine.expires is None
            keys = sorted(reg._kvs) if reg.snapshot() else []
            assert keys == ["/pycni/layout/leases/a", "/pycni/layout/network",
                            "/pycni/layout/subnets/10.244.1.0-24"]
            assert reg._kvs["/pycni/layout/network"].lease == 0          # the record outlives nodes
            assert snap.leases["a"] == mine
        finally:
            reg.close()


def test_lease_put_get_and_expire_after_ttl(etcd, tmp_path):
    with etcd.inside():
        reg = EtcdRegistry(etcd.options("ttlnet"), ttl=2)
        other = EtcdRegistry(etcd.options("ttlnet"))
        try:
            mine, _ = lease.acquire(reg, node(tmp_path, "a", "ttlnet"), ipaddress.IPv4Address("198.18.0.1"))
            kv = other.snapshot() and other._kvs[reg.lease_key("a")]
            assert kv.lease and other._kvs[reg.subnet_key(mine.subnet)].lease == kv.lease
            for _ in range(3):                     # kept alive: outlives its TTL
                time.sleep(1)
                assert reg.keepalive("a") > 0
            assert "a" in other.snapshot().leases
            deadline = time.monotonic() + 6        # not kept alive: gone after the TTL, with its subnet key
            while "a" in other.snapshot().leases and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "a" not in other.snapshot().leases
            assert not [k for k in other._kvs if "/subnets/" in k]
            assert reg.keepalive("a") == 0
            again, _ = lease.acquire(reg, node(tmp_path, "a", "ttlnet"), ipaddress.IPv4Address("198.18.0.1"))
            assert again.subnet == mine.subnet      # the local lease copy: the same subnet back
            assert "a" in other.snapshot().leases and reg.keepalive("a") > 0
        finally:
            reg.close()
            other.close()


def test_a_restarted_agent_keeps_its_lease_alive(etcd, tmp_path):
    """A new process adopts the etcd lease its keys are bound to (no rewrite, no churn for peers)."""
    with etcd.inside():
        first = EtcdRegistry(etcd.options("adopt"), ttl=2)
        lease.acquire(first, node(tmp_path, "a", "adopt"), ipaddress.IPv4Address("198.18.0.1"))
        first.close()                              # the agent died; its etcd lease lives on for 2 s
        second = EtcdRegistry(etcd.options("adopt"), ttl=2)
        try:
            lease.acquire(second, node(tmp_path, "a", "adopt"), ipaddress.IPv4Address("198.18.0.1"))
            rev = second.snapshot().revision
            for _ in range(3):
                assert second.keepalive("a") > 0
                time.sleep(1)
            snap = second.snapshot()
            assert "a" in snap.leases and second._kvs[second.lease_key("a")].mod <= rev
        finally:
            second.close()


def test_network_record_is_created_once_and_a_disagreement_is_103(etcd, tmp_path):
    with etcd.inside():
        reg = EtcdRegistry(etcd.options("recnet"))
        try:
            lease.acquire(reg, node(tmp_path, "a", "recnet"), ipaddress.IPv4Address("198.18.0.1"))
            reg.snapshot()
            created = reg._kvs[reg.network_key()].mod
            lease.acquire(reg, node(tmp_path, "b", "recnet"), ipaddress.IPv4Address("198.18.0.2"))
            reg.snapshot()
            assert reg._kvs[reg.network_key()].mod == created          # not rewritten by b
            for bad in (dict(net=ipaddress.IPv4Network("10.245.0.0/16")), dict(subnet_len=26), dict(vni=2)):
                with pytest.raises(CNIError) as e:
                    lease.acquire(reg, node(tmp_path, "c", "recnet", **bad), ipaddress.IPv4Address("198.18.0.3"))
                assert e.value.code == errors.NETWORK_MISMATCH
            snap = reg.snapshot()
            assert sorted(snap.leases) == ["a", "b"] and snap.network == NetworkRecord(NET, 24, 1)
        finally:
            reg.close()


def _racer(opts, cfg, rounds, barrier, out):
    reg = EtcdRegistry(opts, ttl=30)
    try:
        for _ in range(rounds):
            records.write(os.path.join(cfg.state_dir, "lease.json"),      # both prefer 10.244.7.0/24
                          {"node": cfg.node_name, "subnet": "10.244.7.0/24", "vtepMAC": "02:00:00:00:07:07"})
            barrier.wait(30)
            mine, _ = lease.acquire(reg, cfg, ipaddress.IPv4Address(f"198.18.1.{len(cfg.node_name)}"))
            out.put((cfg.node_name, str(mine.subnet)))
            barrier.wait(30)                       # the parent checked the round
            lease.release(reg, cfg)
            barrier.wait(30)
        out.put((cfg.node_name, "done"))
    except BaseException as e:    # noqa: BLE001 - reported to the parent
        out.put((cfg.node_name, f"error {type(e).__name__}: {e}"))
        barrier.abort()
    finally:
        reg.close()


def test_two_processes_racing_for_the_same_subnet_get_distinct_ones(etcd, tmp_path):
    rounds = 50
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    opts = etcd.options("race")
    cfgs = [node(tmp_path, "a", "race"), node(tmp_path, "bb", "race")]
    with etcd.inside():                          # forked children stay in the client netns
        procs = [ctx.Process(target=_racer, args=(opts, cfg, rounds, barrier, out)) for cfg in cfgs]
        for p in procs:
            p.start()
    try:
        wins = {"a": 0, "bb": 0}
        for _ in range(rounds):
            barrier.wait(30)
            got = dict(out.get(timeout=30) for _ in range(2))
            assert not any(v.startswith("error") for v in got.values()), got
            assert got["a"] != got["bb"], got
            assert "10.244.7.0/24" in got.values()                  # one of them got the preferred one
            wins["a" if got["a"] == "10.244.7.0/24" else "bb"] += 1
            barrier.wait(30)
            barrier.wait(30)
        assert dict(out.get(timeout=30) for _ in range(2)) == {"a": "done", "bb": "done"}
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)


def test_watch_from_the_read_revision_sees_every_change(etcd):
    with etcd.inside():
        watcher = EtcdRegistry(etcd.options("watchnet"))
        writer = EtcdRegistry(etcd.options("watchnet"))
        try:
            start = watcher.snapshot()
            revisions = [put_lease(writer, f"n{i}", i + 1).revision for i in range(5)]   # before the watch
            writer.update(lambda d: d.leases.pop("n1"))
            seen, snap, rev = [], None, start.revision
            while True:
                snap2 = watcher.watch(rev, timeout=0.5)
                if snap2 is None:
                    break
                snap, rev = snap2, snap2.revision
                seen.append(rev)
            assert snap is not None and sorted(snap.leases) == ["n0", "n2", "n3", "n4"]
            assert seen == sorted(seen) and seen[-1] > revisions[-1] and watcher.relists == 0
            assert snap.leases["n3"] == a_lease("n3", 4)
            put_lease(writer, "n9", 9)                     # and a change after the watch started
            snap = watcher.watch(rev, timeout=3)
            assert snap is not None and "n9" in snap.leases
        finally:
            watcher.close()
            writer.close()


def test_compaction_past_the_watchers_revision_lists_again_and_converges(etcd):
    with etcd.inside():
        watcher = EtcdRegistry(etcd.options("compactnet"))
        writer = EtcdRegistry(etcd.options("compactnet"))
        try:
            put_lease(writer, "gone", 20)
            start = watcher.snapshot()
            assert "gone" in start.leases
            writer.update(lambda d: d.leases.pop("gone"))
            for i in range(3):
                put_lease(writer, f"n{i}", i + 1)
            writer.compact(writer.snapshot().revision)
            snap = watcher.watch(start.revision, timeout=3)
            assert watcher.relists == 1
            assert snap is not None and sorted(snap.leases) == ["n0", "n1", "n2"]
            put_lease(writer, "n5", 5)                     # and it goes on watching from there
            snap = watcher.watch(snap.revision, timeout=3)
            assert snap is not None and "n5" in snap.leases and watcher.relists == 1
        finally:
            watcher.close()
            writer.close()


def test_one_member_killed_still_works(etcd, tmp_path):
    with etcd.inside():
        watcher = EtcdRegistry(etcd.options("killnet"))
        writer = EtcdRegistry(etcd.options("killnet", endpoints=etcd.endpoints[::-1]))
        try:
            start = watcher.snapshot()                           # the watcher talks to member 0
            assert watcher.watch(start.revision, timeout=0.3) is None and watcher.client._good == 0
            etcd.kill(0)
            t = time.monotonic()
            put_lease(writer, "after", 3)
            snap = watcher.watch(start.revision, timeout=5)      # its stream moves to another member
            assert snap is not None and "after" in snap.leases
            mine, _ = lease.acquire(watcher, node(tmp_path, "x", "killnet"), ipaddress.IPv4Address("198.18.0.9"))
            assert mine.subnet != ipaddress.IPv4Network("10.244.3.0/24")
            assert time.monotonic() - t < 5
        finally:
            watcher.close()
            writer.close()
            etcd.start(0)


def test_unreachable_etcd_is_100_promptly_never_a_hang(etcd):
    with etcd.inside():
        reg = EtcdRegistry(etcd.options("downnet", dialTimeout=0.5))
        try:
            start = reg.snapshot()
            etcd.pause()                                         # SIGSTOP: connects hang, nothing answers
            try:
                for call in (reg.snapshot, lambda: put_lease(reg, "a", 1),
                             lambda: reg.watch(start.revision + 100, 1)):
                    t = time.monotonic()
                    with pytest.raises(CNIError) as e:
                        call()
                    assert e.value.code == errors.REGISTRY_UNREADABLE and "unreachable" in e.value.msg
                    assert time.monotonic() - t < 2.5, e.value.details
                    assert "dialTimeout" in e.value.details
            finally:
                etcd.resume()
            deadline = time.monotonic() + 10
            while True:
                try:
                    reg.snapshot()
                    break
                except CNIError:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
        finally:
            reg.close()


def test_tls_with_client_certs_and_a_wrong_ca_is_a_clear_error(tmp_path):
    from tests.kit.etcd import TLS
    with EtcdCluster(tmp_path, members=1, tls=True, subnet="198.19.251") as etcd:
        with etcd.inside():
            reg = EtcdRegistry(etcd.options("tlsnet"), ttl=5)
            try:
                put_lease(reg, "a", 1)
                assert "a" in reg.snapshot().leases and reg.keepalive("a") > 0
                start = reg.snapshot()
                put_lease(reg, "b", 2)
                snap = reg.watch(start.revision, timeout=3)                      # the watch stream over TLS
                assert snap is not None and "b" in snap.leases
            finally:
                reg.close()
            wrong = TLS(str(tmp_path / "other"), [etcd.members[0].ip], name="wrong")
            for conf, words in ((dict(caFile=wrong.ca), "caFile"),
                                (dict(certFile=wrong.client, keyFile=wrong.client_key), "TLS")):
                reg = EtcdRegistry(etcd.options("tlsnet", **conf))
                t = time.monotonic()
                with pytest.raises(CNIError) as e:
                    reg.snapshot()
                assert e.value.code == errors.REGISTRY_UNREADABLE and words in e.value.details
                assert time.monotonic() - t < 3
                reg.close()
            nocert = etcd.registry_conf()
            del nocert["certFile"], nocert["keyFile"]
            reg = EtcdRegistry(nocert, network_name="tlsnet")
            with pytest.raises(CNIError) as e:
                reg.snapshot()
            assert e.value.code == errors.REGISTRY_UNREADABLE and "TLS" in e.value.details
            reg.close()


def test_etcd_auth_with_username_and_password_file(tmp_path):
    from plugins.main.vxlan.registry.etcd import Client
    with EtcdCluster(tmp_path, members=1, subnet="198.19.252") as etcd:
        with etcd.inside():
            admin = Client(etcd.options("authnet"))
            admin.call("auth/role/add", {"name": "root"})
            admin.call("auth/user/add", {"name": "root", "password": "s3cret"})
            admin.call("auth/user/grant", {"user": "root", "role": "root"})
            admin.call("auth/enable", {})
            admin.close()
            (tmp_path / "pw").write_text("s3cret\n")
            (tmp_path / "bad").write_text("guess\n")
            reg = EtcdRegistry(etcd.options("authnet", username="root", passwordFile=str(tmp_path / "pw")), ttl=5)
            try:
                put_lease(reg, "a", 1)
                start = reg.snapshot()
                assert "a" in start.leases and reg.keepalive("a") > 0
                put_lease(reg, "b", 2)
                snap = reg.watch(start.revision, timeout=3)           # the watch stream carries the token
                assert snap is not None and "b" in snap.leases
                for member in reg.client.members:                    # what etcd says of an expired token:
                    member.session.headers["Authorization"] = "expired.1"    # "invalid auth token"
                put_lease(reg, "c", 3)                               # authenticated again, once
                assert "c" in reg.snapshot().leases and reg.client._token != "expired.1"
            finally:
                reg.close()
            wrong = dict(username="root", passwordFile=str(tmp_path / "bad"))
            for conf, words in ((wrong, "invalid user ID or password"),
                                ({}, "set registry.username and registry.passwordFile")):
                reg = EtcdRegistry(etcd.options("authnet", **conf))
                with pytest.raises(CNIError) as e:
                    reg.snapshot()
                assert e.value.code == errors.REGISTRY_UNREADABLE and words in e.value.details, e.value
                reg.close()


def test_a_write_on_a_stale_view_loses_and_is_decided_again_on_a_list(etcd):
    """update() decides on what the process knows (no list per write); a view another node made
    stale loses its transaction (compare-create on the subnet) or finds nothing to write, and is
    decided again on a full list: never a duplicate subnet, never a lost write."""
    with etcd.inside():
        a = EtcdRegistry(etcd.options("stale"))
        b = EtcdRegistry(etcd.options("stale"))
        lists = []
        real = a.snapshot
        a.snapshot = lambda: lists.append(1) or real()        # type: ignore[method-assign]

        def take_free(name):
            def mutate(d):
                d.network = NetworkRecord(NET, 24, 1)
                used = {lz.subnet for lz in d.leases.values()}
                third = next(t for t in range(1, 250) if ipaddress.IPv4Network(f"10.244.{t}.0/24") not in used)
                d.leases[name] = a.stamp(a_lease(name, third))
            return mutate
        try:
            put_lease(a, "a1", 1)
            assert len(lists) == 1                              # the first write lists once
            for i in range(2, 6):
                put_lease(a, f"a{i}", i)
            assert len(lists) == 1                              # later ones write the change only
            put_lease(b, "b6", 6)                               # a does not know it
            snap = a.update(take_free("a7"))
            assert snap.leases["a7"].subnet == ipaddress.IPv4Network("10.244.7.0/24")   # not b6's 6
            assert len(lists) == 2                              # lost on 6's compare-create: listed
            assert b.snapshot().leases["a7"].subnet != b.snapshot().leases["b6"].subnet
            b.update(lambda d: d.leases.pop("a2"))              # a still thinks a2 is there

            def ensure_a2(d):
                if "a2" not in d.leases:
                    d.leases["a2"] = a.stamp(a_lease("a2", 2))
            a.update(ensure_a2)
            assert "a2" in b.snapshot().leases and len(lists) == 3      # nothing to write: checked on a list
        finally:
            a.close()
            b.close()


def test_a_dual_stack_lease_holds_a_subnet_key_per_family(etcd):
    """The lease document is stored as the lease layer makes it (its IPv6 half too), and each
    family's subnet has its compare-create key: a second node wanting the same IPv6 subnet loses."""
    net6 = ipaddress.IPv6Network("fd10:244::/48")

    def dual(name: str, third: int, sixth: int) -> Lease:
        return Lease(name, ipaddress.IPv4Network(f"10.244.{third}.0/24"), ipaddress.IPv4Address(f"198.18.0.{third}"),
                     f"02:00:00:00:00:{third:02x}", 1, subnet6=ipaddress.IPv6Network(f"fd10:244:0:{sixth:x}::/64"),
                     public_ip6=ipaddress.IPv6Address(f"fd00::{third:x}"))
    with etcd.inside():
        a = EtcdRegistry(etcd.options("dual"))
        b = EtcdRegistry(etcd.options("dual"))
        try:
            a.update(lambda d: d.leases.__setitem__("a", dual("a", 1, 1)))
            b.snapshot()
            assert sorted(k for k in b._kvs if "/subnets/" in k) == [
                "/pycni/dual/subnets/10.244.1.0-24", "/pycni/dual/subnets/fd10:244:0:1::-64"]
            assert b.snapshot().leases["a"] == dual("a", 1, 1) and dual("a", 1, 1).subnet6.subnet_of(net6)
            c = EtcdRegistry(etcd.options("dual"))
            c.snapshot()
            b.update(lambda d: d.leases.__setitem__("b", dual("b", 2, 2)))     # c does not know it
            tries = []

            def want_six_2(d):
                taken = {lz.subnet6 for lz in d.leases.values()}
                tries.append(len(d.leases))
                six = 2 if ipaddress.IPv6Network("fd10:244:0:2::/64") not in taken else 3
                d.leases["c"] = dual("c", 3, six)
            snap = c.update(want_six_2)
            assert tries == [1, 2]                  # lost on fd10:244:0:2::/64's key, decided again
            assert snap.leases["c"].subnet6 == ipaddress.IPv6Network("fd10:244:0:3::/64")
            a.update(lambda d: d.leases.__setitem__("a", dual("a", 1, 9)))       # a moves its IPv6 subnet
            assert sorted(k for k in (b.snapshot() and b._kvs) if "/subnets/fd10:244:0:" in k and "-64" in k) == [
                "/pycni/dual/subnets/fd10:244:0:2::-64", "/pycni/dual/subnets/fd10:244:0:3::-64",
                "/pycni/dual/subnets/fd10:244:0:9::-64"]
            c.close()
        finally:
            a.close()
            b.close()
