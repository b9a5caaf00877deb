"""The real Go libcni (Debian's golang-github-appc-cni-dev, tests/golibcni) and libcni_py
side by side on one conflist: Go bridge + host-local, then our pycni-passthrough.

Go ADD/CHECK/DEL succeed on our plugin; Go's parsed result equals what the plugin printed
and what our API returns for the same list on a twin host; the cache files match field by
field; and each side CHECKs and DELs attachments the other one ADDed, from its cache.
"""
import base64
import json
import subprocess

import pytest

from libcni_py.api import CNIConfig, RuntimeConf
from libcni_py.conf import conflist_from_file
from libcni_py.types import decode
from plugins.pkg import ns
from tests.conftest import GO_CNI_DIR, VENV_BIN
from tests.golibcni.build import driver_path
from tests.golibcni.recorder import Recorder

pytestmark = pytest.mark.root

NET = "pycni-go"
ARGS = [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default")]
CAPS = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}


@pytest.fixture(scope="session")
def golibcni():
    return driver_path()


class Host:
    """A host netns with its own cache and IPAM dirs; Go and our API both run inside it."""

    def __init__(self, netns, tmp_path, tag, exe, ver):
        self.dir = tmp_path / tag
        self.dir.mkdir()
        self.ns = netns(tag)
        self.pod = netns(tag + "pod")
        self.exe = exe
        self.rec = Recorder(self.dir / "rec", {"bridge": f"{GO_CNI_DIR}/bridge",
                                               "pycni-passthrough": f"{VENV_BIN}/pycni-passthrough"})
        self.path = [self.rec.bin, VENV_BIN, GO_CNI_DIR]
        self.cache = self.dir / "cache"
        self.conflist = self.dir / f"{NET}.conflist"
        self.conflist.write_text(json.dumps({"cniVersion": ver, "name": NET, "plugins": [
            {"type": "bridge", "bridge": "cni-go0", "isGateway": True,
             "ipam": {"type": "host-local", "dataDir": str(self.dir / "ipam"),
                      "ranges": [[{"subnet": "10.78.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "pycni-passthrough"},
        ]}, indent=2))
        self.lst = conflist_from_file(str(self.conflist))
        self.rt = RuntimeConf(container_id="c1", netns=self.pod.path, ifname="eth0", args=ARGS,
                              capability_args=CAPS)
        self.cni = CNIConfig(path=self.path, cache_dir=str(self.cache))

    def go(self, verb):
        argv = [self.exe, verb, "-conflist", str(self.conflist), "-netns", self.pod.path, "-cid", "c1",
                "-ifname", "eth0", "-cache", str(self.cache), "-path", ":".join(self.path),
                "-args", ";".join(f"{k}={v}" for k, v in ARGS), "-capargs", json.dumps(CAPS)]
        with ns.enter(self.ns.path):
            p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, f"golibcni {verb}: {p.stdout} {p.stderr}"
        return json.loads(p.stdout)

    def py(self, verb):
        with ns.enter(self.ns.path):
            return getattr(self.cni, f"{verb}_network_list")(self.lst, self.rt)

    def cache_file(self):
        return self.cache / "results" / f"{NET}-c1-eth0"

    def cached(self):
        return json.loads(self.cache_file().read_text())

    def pod_has_eth0(self):
        return self.pod.run("ip", "link", "show", "eth0", check=False).returncode == 0


@pytest.fixture(params=["0.4.0", "1.0.0"])
def twins(request, netns, tmp_path, golibcni):
    """Two identical hosts: one for Go libcni, one for ours."""
    return (Host(netns, tmp_path, "goh", golibcni, request.param),
            Host(netns, tmp_path, "pyh", golibcni, request.param), request.param)


def printed(call):
    return json.loads(call["stdout"])


def normalized(res):
    """A result with what legitimately differs between two hosts blanked out."""
    res = json.loads(json.dumps(res))
    for i in res.get("interfaces", []):
        i["mac"] = "MAC"
        if "sandbox" in i:
            i["sandbox"] = "SANDBOX"
        elif i["name"].startswith("veth"):
            i["name"] = "VETH"
    return res


def test_go_libcni_runs_our_plugin_and_parses_what_we_parse(twins):
    go, py, ver = twins
    go_res = go.go("add")
    bridge_add, pt_add = go.rec.calls("ADD")
    assert (bridge_add["plugin"], pt_add["plugin"]) == ("bridge", "pycni-passthrough")
    assert json.loads(pt_add["stdin"])["prevResult"] == printed(bridge_add)
    assert go_res == printed(pt_add) == printed(bridge_add)       # pass-through: unchanged
    assert go_res["cniVersion"] == ver and go_res["ips"][0]["address"] == "10.78.0.2/24"
    assert decode(go_res).encode() == go_res                      # we read Go's result the same

    py_res = py.py("add")
    assert normalized(py_res.encode()) == normalized(go_res)       # same list on a twin host

    assert go.go("check") == {} and all(c["rc"] == 0 for c in go.rec.calls("CHECK"))
    assert go.go("del") == {} and [c["plugin"] for c in go.rec.calls("DEL")] == ["pycni-passthrough", "bridge"]
    assert not go.pod_has_eth0() and not go.cache_file().exists()
    assert go.go("del") == {}                                      # DEL again
    py.py("del")


def test_cache_files_match_field_by_field(twins):
    go, py, _ = twins
    go.go("add")
    py.py("add")
    g, p = go.cached(), py.cached()
    # libcni 1.1.2 predates the "netns" field that libcni 1.2 writes and we write.
    assert set(p) == set(g) | {"netns"} and p["netns"] == py.pod.path
    for key in ("kind", "containerId", "ifName", "networkName", "cniArgs", "capabilityArgs"):
        assert p[key] == g[key], key
    # config: the list file's bytes, base64; the twins' files differ only in their IPAM dataDir
    assert base64.b64decode(g["config"]) == go.conflist.read_bytes()
    assert base64.b64decode(p["config"]) == py.conflist.read_bytes() == py.lst.raw
    assert base64.b64decode(p["config"]).replace(str(py.dir).encode(), str(go.dir).encode()) == \
        base64.b64decode(g["config"])
    assert normalized(p["result"]) == normalized(g["result"])
    go.go("del")
    py.py("del")


def test_our_api_reads_a_cache_go_libcni_wrote(twins):
    go, _, _ = twins
    go_res = go.go("add")
    go.rec.clear()
    ours = CNIConfig(path=go.path, cache_dir=str(go.cache))        # the cache Go wrote
    with ns.enter(go.ns.path):
        assert ours.get_cached_result(go.lst, go.rt).encode() == go_res == go.go("cached")
        ours.check_network_list(go.lst, go.rt)
        ours.del_network_list(go.lst, go.rt)
    calls = go.rec.calls()
    assert [(c["command"], c["plugin"]) for c in calls] == [
        ("CHECK", "bridge"), ("CHECK", "pycni-passthrough"), ("DEL", "pycni-passthrough"), ("DEL", "bridge")]
    assert all(c["rc"] == 0 and json.loads(c["stdin"])["prevResult"] == go_res for c in calls)
    assert not go.pod_has_eth0() and not go.cache_file().exists()


def test_go_libcni_reads_a_cache_our_api_wrote(twins):
    _, py, _ = twins
    py_res = py.py("add").encode()
    py.rec.clear()
    assert py.go("cached") == py_res                               # Go parses our cache file
    assert py.go("check") == {}
    assert py.go("del") == {}
    calls = py.rec.calls()
    assert [(c["command"], c["plugin"]) for c in calls] == [
        ("CHECK", "bridge"), ("CHECK", "pycni-passthrough"), ("DEL", "pycni-passthrough"), ("DEL", "bridge")]
    assert all(c["rc"] == 0 and json.loads(c["stdin"])["prevResult"] == py_res for c in calls)
    assert not py.pod_has_eth0() and not py.cache_file().exists()
