"""CNIConfig's result cache (cniCacheV1) with the real pycni-passthrough; no netns needed.

The pass-through plugin only checks that CNI_NETNS exists, so /proc/self/ns/net stands in.
"""
import base64
import json

import pytest

from libcni_py.api import CNIConfig, RuntimeConf
from libcni_py.conf import conflist_from_dict
from libcni_py.errors import CNIError
from tests.conftest import VENV_BIN

NETNS = "/proc/self/ns/net"
PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": NETNS}],
        "ips": [{"interface": 0, "address": "10.81.0.2/24"}], "dns": {}}


@pytest.fixture
def cni(tmp_path):
    return CNIConfig(path=[VENV_BIN], cache_dir=str(tmp_path / "cache"))


def plist(ver="1.0.0", name="pnet"):
    return conflist_from_dict({"cniVersion": ver, "name": name, "plugins": [{"type": "pycni-passthrough"}]})


def rt(cid="c1", ifname="eth0", **kw):
    return RuntimeConf(container_id=cid, netns=NETNS, ifname=ifname, **kw)


def cache_path(tmp_path, net, cid, ifname="eth0"):
    return tmp_path / "cache" / "results" / f"{net}-{cid}-{ifname}"


def test_add_writes_libcni_cache_format(cni, tmp_path):
    lst = plist()
    r = rt(args=[("K", "V")], capability_args={"portMappings": []})
    res = cni.add_network_list(lst, r)
    path = cache_path(tmp_path, "pnet", "c1")
    data = json.loads(path.read_text())
    assert data == {"kind": "cniCacheV1", "containerId": "c1", "config": base64.b64encode(lst.raw).decode(),
                    "ifName": "eth0", "networkName": "pnet", "netns": NETNS, "cniArgs": [["K", "V"]],
                    "capabilityArgs": {"portMappings": []}, "result": res.encode()}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert cni.get_cached_config(lst, rt())[0] == lst.raw


def test_cached_result_is_converted_to_the_list_version(cni, tmp_path):
    cni.add_network_list(plist("1.1.0"), rt())
    assert cni.get_cached_result(plist("0.4.0"), rt()).encode() == {"cniVersion": "0.4.0", "dns": {}}


def test_legacy_cache_holding_a_bare_result_is_read(cni, tmp_path):
    path = cache_path(tmp_path, "pnet", "c1")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(PREV))
    assert cni.get_cached_result(plist(), rt()).encode() == PREV


def test_no_cache_is_no_result(cni):
    assert cni.get_cached_result(plist(), rt()) is None


def test_del_with_an_unreadable_cached_result_still_deletes(cni, tmp_path):
    """libcni 1.2 drops a cache it cannot convert and DELs without prevResult."""
    path = cache_path(tmp_path, "pnet", "c1")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"kind": "cniCacheV1", "containerId": "c1", "ifName": "eth0",
                                "networkName": "pnet", "config": "", "result": {"cniVersion": "0.2.0"}}))
    cni.del_network_list(plist(), rt())
    assert not path.exists()


def test_cached_attachments_filter_by_container(cni, tmp_path):
    for cid, ifname in (("c1", "eth0"), ("c1", "net1"), ("c10", "eth0")):
        cni.add_network_list(plist(), rt(cid, ifname))
    (tmp_path / "cache" / "results" / "junk").write_text("not json")
    got = sorted((a["containerId"], a["ifName"]) for a in cni.get_cached_attachments("c1"))
    assert got == [("c1", "eth0"), ("c1", "net1")]
    assert len(cni.get_cached_attachments()) == 3


def test_gc_only_touches_its_own_network(cni, tmp_path):
    cni.add_network_list(plist(name="pnet"), rt("c1"))
    cni.add_network_list(plist(name="other"), rt("c1"))
    cni.gc_network_list(plist(name="pnet"), [])
    assert not cache_path(tmp_path, "pnet", "c1").exists()
    assert cache_path(tmp_path, "other", "c1").exists()


@pytest.mark.parametrize("bad", [dict(container_id="a/b"), dict(ifname="x" * 16), dict(container_id="")])
def test_add_validates_names_before_running_anything(cni, tmp_path, bad):
    with pytest.raises(CNIError) as ei:
        cni.add_network_list(plist(), RuntimeConf(**{"container_id": "c1", "netns": NETNS, "ifname": "eth0", **bad}))
    assert ei.value.code in (3, 4)
    assert not (tmp_path / "cache").exists()


def test_check_below_0_4_0_is_refused(cni):
    with pytest.raises(CNIError) as ei:
        cni.check_network_list(plist("0.3.1"), rt())
    assert ei.value.code == 1


def test_add_error_names_the_plugin(cni):
    lst = conflist_from_dict({"cniVersion": "1.0.0", "name": "pnet",
                              "plugins": [{"type": "pycni-passthrough", "logLevel": "loud"}]})
    with pytest.raises(CNIError) as ei:
        cni.add_network_list(lst, rt())
    assert ei.value.code == 7 and 'type="pycni-passthrough"' in ei.value.msg and "logLevel" in ei.value.msg


def test_del_with_a_container_id_naming_another_path_touches_no_file_there(cni, tmp_path):
    """The cache path is built from names: one with '/' or '..' is refused, not followed."""
    (tmp_path / "cache" / "results" / "pnet-x").mkdir(parents=True)
    victim = tmp_path / "cache" / "results" / "victim-eth0"
    victim.write_text("{}")
    with pytest.raises(CNIError) as e:
        cni.del_network_list(plist(), rt(cid="x/../victim"))
    assert e.value.code == 4                 # the plugin refuses the container ID too
    assert victim.read_text() == "{}"


@pytest.mark.parametrize("content", [json.dumps(PREV), "[]"])
def test_cached_config_of_a_cache_that_is_not_cniCacheV1_is_an_error(cni, tmp_path, content):
    path = cache_path(tmp_path, "pnet", "c1")
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(CNIError, match="wrong kind"):
        cni.get_cached_config(plist(), rt())
