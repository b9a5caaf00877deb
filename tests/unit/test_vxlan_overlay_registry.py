"""The file registry: atomic document, flock for concurrent writers, revisions, TTL, watch."""
import ipaddress
import json
import multiprocessing
import os
import threading
import time

import pytest

from libcni_py.errors import CNIError
from plugins.main.vxlan import errors as codes
from plugins.main.vxlan.registry import Lease, NetworkRecord, open_registry

NET = NetworkRecord(ipaddress.IPv4Network("10.244.0.0/16"), 24, 1)


def lease(node, third, ip="198.18.0.1", mac="02:00:00:00:00:01"):
    return Lease(node, ipaddress.IPv4Network(f"10.244.{third}.0/24"), ipaddress.IPv4Address(ip), mac, 1)


def put(reg, *leases):
    def mutate(draft):
        draft.network = NET
        for item in leases:
            draft.leases[item.node] = reg.stamp(item)
    return reg.update(mutate)


def test_missing_file_is_empty_and_update_writes_one_document(tmp_path):
    reg = open_registry("file", str(tmp_path / "r" / "reg.json"))
    assert reg.snapshot().revision == 0 and reg.snapshot().leases == {}
    snap = put(reg, lease("a", 1), lease("b", 2, "198.18.0.2"))
    assert snap.revision == 1
    doc = json.loads((tmp_path / "r" / "reg.json").read_text())
    assert doc["network"] == {"network": "10.244.0.0/16", "subnetLen": 24, "vni": 1}
    assert doc["leases"]["b"] == {"subnet": "10.244.2.0/24", "publicIP": "198.18.0.2",
                                  "vtepMAC": "02:00:00:00:00:01", "vni": 1}
    assert reg.snapshot().leases == snap.leases
    assert [p.name for p in (tmp_path / "r").iterdir() if ".tmp" in p.name] == []


def test_an_update_that_changes_nothing_writes_nothing(tmp_path):
    reg = open_registry("file", str(tmp_path / "reg.json"))
    put(reg, lease("a", 1))
    mtime = os.stat(tmp_path / "reg.json").st_mtime_ns
    assert put(reg, lease("a", 1)).revision == 1
    assert os.stat(tmp_path / "reg.json").st_mtime_ns == mtime


def test_an_aborted_update_writes_nothing(tmp_path):
    reg = open_registry("file", str(tmp_path / "reg.json"))
    put(reg, lease("a", 1))

    def mutate(draft):
        draft.leases.clear()
        raise CNIError(codes.NETWORK_MISMATCH, "no")
    with pytest.raises(CNIError):
        reg.update(mutate)
    assert set(reg.snapshot().leases) == {"a"}


def _writer(path, node, third):
    reg = open_registry("file", path)
    for _ in range(5):
        reg.update(lambda d: d.leases.__setitem__(node, lease(node, third)))
        reg.update(lambda d: d.leases.pop(node))
    reg.update(lambda d: d.leases.__setitem__(node, lease(node, third)))


def test_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "reg.json")
    procs = [multiprocessing.Process(target=_writer, args=(path, f"n{i}", i)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 8
    snap = open_registry("file", path).snapshot()
    assert sorted(snap.leases) == [f"n{i}" for i in range(8)]
    assert snap.revision == 8 * 11


def test_ttl_leases_expire_for_readers(tmp_path):
    reg = open_registry("file", str(tmp_path / "reg.json"), ttl=60)
    put(reg, lease("a", 1))
    stored = reg.snapshot().leases["a"]
    assert stored.expires is not None and 59 < stored.expires - time.time() <= 60
    doc = json.loads((tmp_path / "reg.json").read_text())
    doc["leases"]["a"]["expires"] = time.time() - 1
    (tmp_path / "reg.json").write_text(json.dumps(doc))
    assert reg.snapshot().leases == {}


@pytest.mark.parametrize("text, code", [
    ("not json", codes.REGISTRY_CORRUPT),
    ('["a list"]', codes.REGISTRY_CORRUPT),
    ('{"leases": {"a": {"subnet": "10.244.1.0/24"}}}', codes.REGISTRY_CORRUPT),
    ('{"leases": {"a": {"subnet": "x", "publicIP": "1.2.3.4", "vtepMAC": "02:00:00:00:00:01", "vni": 1}}}',
     codes.REGISTRY_CORRUPT),
    ('{"leases": {"a": {"subnet": "10.244.1.0/24", "publicIP": "1.2.3.4", "vtepMAC": "02:00:00:00:00:01\\n",'
     ' "vni": 1}}}', codes.REGISTRY_CORRUPT),
])
def test_malformed_documents(tmp_path, text, code):
    (tmp_path / "reg.json").write_text(text)
    reg = open_registry("file", str(tmp_path / "reg.json"))
    with pytest.raises(CNIError) as e:
        reg.snapshot()
    assert e.value.code == code
    with pytest.raises(CNIError):
        put(reg, lease("a", 1))
    assert (tmp_path / "reg.json").read_text() == text
    assert not (tmp_path / "reg.json.lock").exists()


def test_unknown_type():
    with pytest.raises(CNIError) as e:
        open_registry("consul", "/nonexistent")
    assert e.value.code == codes.REGISTRY_UNKNOWN_TYPE and "file" in e.value.details


def test_watch_wakes_on_a_write_and_times_out_without_one(tmp_path):
    reg = open_registry("file", str(tmp_path / "reg.json"))
    rev = put(reg, lease("a", 1)).revision
    assert reg.watch(rev, timeout=0.2) is None
    writer = threading.Timer(0.2, put, args=(open_registry("file", str(tmp_path / "reg.json")), lease("b", 2)))
    writer.start()
    snap = reg.watch(rev, timeout=10)
    writer.join()
    assert snap is not None and set(snap.leases) == {"a", "b"}
    assert reg.watch(rev, timeout=0) is not None        # already newer: returns at once
    reg.close()


def test_a_reader_reuses_unchanged_leases_and_parses_changed_ones(tmp_path):
    reg = open_registry("file", str(tmp_path / "reg.json"))
    put(reg, lease("a", 1), lease("b", 2))
    first = reg.snapshot()
    put(reg, lease("b", 2, "198.18.0.9"))
    second = reg.snapshot()
    assert second.leases["a"] is first.leases["a"]
    assert str(second.leases["b"].public_ip) == "198.18.0.9"
