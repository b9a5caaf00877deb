"""DEL still deletes, and GC still collects, whatever a result cache file holds (issue: a cached
`"mtu": 1e999` or one deeply nested file in results/ made every later DEL and GC crash)."""
import json
import os

import pytest

from libcni_py.api import CNIConfig, RuntimeConf
from libcni_py.conf import conflist_from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, ".venv", "bin")
BAD = {
    "huge-number": '{"kind": "cniCacheV1", "containerId": "c1", "ifName": "eth0", "networkName": "bc",'
                   ' "result": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "mtu": 1e999}]}}',
    "nested": '{"kind": "cniCacheV1", "result": ' + "[" * 100000 + "]" * 100000 + "}",
    "wrong-types": '{"kind": "cniCacheV1", "containerId": "junk", "ifName": "eth0", "networkName": "bc",'
                   ' "result": {"cniVersion": "1.0.0", "ips": [{"address": {}}], "interfaces": 5}}',
    "not-json": "\x00\xff{",
}


def world(tmp_path):
    lst = conflist_from_dict({"cniVersion": "1.1.0", "name": "bc", "plugins": [{"type": "pycni-passthrough"}]})
    cni = CNIConfig(path=[BIN], cache_dir=str(tmp_path / "cache"), stderr=open(tmp_path / "stderr", "w+"))
    rt = RuntimeConf(container_id="c1", netns="/proc/self/ns/net", ifname="eth0")
    return lst, cni, rt


@pytest.mark.parametrize("content", sorted(BAD))
def test_del_deletes_with_any_cache_content(tmp_path, content):
    lst, cni, rt = world(tmp_path)
    cni.add_network_list(lst, rt)
    path = tmp_path / "cache" / "results" / "bc-c1-eth0"
    assert path.exists()
    path.write_text(BAD[content])
    cni.del_network_list(lst, rt)          # no exception: the plugins ran, the cache is gone
    assert not path.exists()
    cni.del_network_list(lst, rt)          # and again: idempotent


@pytest.mark.parametrize("content", sorted(BAD))
def test_gc_skips_and_reports_unreadable_cache_files(tmp_path, content):
    lst, cni, rt = world(tmp_path)
    cni.add_network_list(lst, rt)
    stale = RuntimeConf(container_id="c2", netns="/proc/self/ns/net", ifname="eth0")
    cni.add_network_list(lst, stale)
    results = tmp_path / "cache" / "results"
    (results / "bc-junk-eth0").write_text(BAD[content])
    os.mkfifo(results / "bc-fifo-eth0")                 # never blocks GC
    cni.gc_network_list(lst, [{"containerID": "c1", "ifname": "eth0"}])
    cni.stderr.flush()
    if content == "wrong-types":         # readable: GC DELs that attachment, malformed result and all
        assert cni.gc_skipped == ["bc-fifo-eth0"] and not (results / "bc-junk-eth0").exists()
    else:
        assert sorted(cni.gc_skipped) == ["bc-fifo-eth0", "bc-junk-eth0"]
        assert "bc-junk-eth0" in (tmp_path / "stderr").read_text()
    assert (results / "bc-c1-eth0").exists() and not (results / "bc-c2-eth0").exists()
    json.loads((results / "bc-c1-eth0").read_text())
