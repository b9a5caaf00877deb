"""Loading network configurations the way Go's libcni does, and building each plugin's stdin.

Directory loading is checked against the real Go libcni (tests/golibcni `load`) on the
same directory: same file chosen, same list name/version, same plugin objects.
"""
import json
import subprocess

import pytest

from libcni_py import conf as C
from libcni_py.api import CNIConfig, RuntimeConf
from libcni_py.errors import CNIError
from libcni_py.types import decode
from tests.golibcni.build import driver_path


def plugin(t="bridge", **kw):
    return {"type": t, **kw}


def conflist(name, ver="1.0.0", plugins=None, **kw):
    return {"cniVersion": ver, "name": name, "plugins": plugins or [plugin()], **kw}


def single(name, ver="0.4.0", t="bridge", **kw):
    return {"cniVersion": ver, "name": name, "type": t, **kw}


def write(d, fname, obj):
    p = d / fname
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


@pytest.fixture(scope="module")
def golibcni():
    return driver_path()


def go_load(exe, d, name):
    p = subprocess.run([exe, "load", "-dir", str(d), "-name", name], capture_output=True, text=True, timeout=60)
    out = json.loads(p.stdout)
    return (p.returncode, out)


def same_as_go(exe, d, name):
    """Our load_conflist(d, name) equals Go's LoadConfList(d, name)."""
    rc, go = go_load(exe, d, name)
    try:
        ours = C.load_conflist(str(d), name)
    except CNIError as e:
        assert rc == 1, f"Go loaded it, we failed: {e}"
        return None
    assert rc == 0, f"we loaded it, Go failed: {go}"
    assert (ours.name, ours.cni_version, ours.disable_check) == (go["name"], go["cniVersion"], go["disableCheck"])
    assert [p.network for p in ours.plugins] == go["plugins"]
    assert json.loads(ours.raw) == json.loads(go["bytes"])
    return ours


# ---- directory order ----

@pytest.fixture
def confdir(tmp_path):
    d = tmp_path / "net.d"
    d.mkdir()
    write(d, "10-first.conflist", conflist("alpha", plugins=[plugin(tag="10-first")]))
    write(d, "20-shared.conflist", conflist("shared", plugins=[plugin(tag="20-shared.conflist")]))
    write(d, "30-shared.conflist", conflist("shared", plugins=[plugin(tag="30-shared.conflist")]))
    write(d, "05-shared.conf", single("shared", tag="05-shared.conf"))
    write(d, "15-single.json", single("only-single", tag="15-single.json"))
    write(d, "25-single.conf", single("only-single", tag="25-single.conf"))
    write(d, "00-ignored.conf.bak", single("ignored", tag="bak"))
    write(d, "01-ignored.yaml", single("ignored", tag="yaml"))
    write(d, "02-ignored", single("ignored", tag="noext"))
    (d / "03-dir.conf").mkdir()
    (d / "03-dir.conflist").mkdir()
    return d


def test_conflist_files_win_and_the_first_by_name_is_taken(confdir, golibcni):
    lst = same_as_go(golibcni, confdir, "shared")
    assert lst.plugins[0].network["tag"] == "20-shared.conflist"


def test_single_conf_and_json_are_sorted_together_and_wrapped_into_a_list(confdir, golibcni):
    lst = same_as_go(golibcni, confdir, "only-single")
    assert lst.plugins[0].network["tag"] == "15-single.json"
    assert (lst.name, lst.cni_version, len(lst.plugins)) == ("only-single", "0.4.0", 1)
    assert lst.plugins[0].network == single("only-single", tag="15-single.json")
    assert json.loads(lst.raw) == {"name": "only-single", "cniVersion": "0.4.0",
                                   "plugins": [single("only-single", tag="15-single.json")]}


@pytest.mark.parametrize("name", ["alpha", "ignored", "nowhere"])
def test_other_extensions_and_directories_are_ignored(confdir, golibcni, name):
    lst = same_as_go(golibcni, confdir, name)
    assert (lst is None) == (name != "alpha")


def test_conf_files_lists_by_extension_sorted(confdir):
    names = [p.rsplit("/", 1)[1] for p in C.conf_files(str(confdir), (".conf", ".json"))]
    assert names == ["05-shared.conf", "15-single.json", "25-single.conf"]
    assert C.conf_files(str(confdir / "missing"), (".conf",)) == []


def test_not_found_and_no_configs(tmp_path, golibcni):
    empty = tmp_path / "empty"
    empty.mkdir()
    for d in (empty, tmp_path / "missing"):
        with pytest.raises(C.NoConfigsFound):
            C.load_conflist(str(d), "x")
        assert go_load(golibcni, d, "x") == (1, {"code": 0, "error": f"no net configurations found in {d}"})
    write(empty, "a.conflist", conflist("a"))
    with pytest.raises(C.NotFound) as ei:           # .conflist files but none named so
        C.load_conflist(str(empty), "x")
    assert ei.value.msg == go_load(golibcni, empty, "x")[1]["error"]


def test_disable_check_and_gc_flags(tmp_path, golibcni):
    write(tmp_path, "a.conflist", conflist("a", disableCheck=True, disableGC=True))
    lst = same_as_go(golibcni, tmp_path, "a")
    assert lst.disable_check and lst.disable_gc


# ---- bad files ----

BAD_LISTS = [
    ("not JSON", '{"name": "bad", '),
    ("not an object", "[1]"),
    ("no name", json.dumps({"cniVersion": "1.0.0", "plugins": [plugin()]})),
    ("name not a string", json.dumps(conflist(5))),
    ("cniVersion not a string", json.dumps(conflist("bad", ver=1))),
    ("disableCheck not a bool", json.dumps(conflist("bad", disableCheck="yes"))),
    ("no plugins key", json.dumps({"cniVersion": "1.0.0", "name": "bad"})),
    ("plugins not a list", json.dumps({"cniVersion": "1.0.0", "name": "bad", "plugins": {"type": "x"}})),
    ("empty plugins", json.dumps({"cniVersion": "1.0.0", "name": "bad", "plugins": []})),
    ("plugin without type", json.dumps(conflist("bad", plugins=[plugin(), {"name": "x"}]))),
]


@pytest.mark.parametrize("text", [b[1] for b in BAD_LISTS], ids=[b[0] for b in BAD_LISTS])
def test_a_bad_conflist_is_an_error_like_go(tmp_path, golibcni, text):
    write(tmp_path, "10-bad.conflist", text)
    write(tmp_path, "20-good.conflist", conflist("good"))
    with pytest.raises(CNIError) as ei:
        C.conflist_from_bytes(text.encode())
    assert ei.value.code in (6, 7)
    # Go reads files in order and stops at the first broken one, even for another name.
    assert same_as_go(golibcni, tmp_path, "good") is None


def test_plugin_error_names_its_index():
    with pytest.raises(CNIError) as ei:
        C.conflist_from_dict(conflist("bad", plugins=[plugin(), {"name": "x"}]))
    assert "plugin config 1" in ei.value.msg and "type" in ei.value.msg


@pytest.mark.parametrize("text", ['{"cniVersion": "0.4.0", "name": "x"}', "{", "[]"])
def test_a_bad_single_conf_is_an_error_like_go(tmp_path, golibcni, text):
    write(tmp_path, "10-bad.conf", text)
    write(tmp_path, "20-good.conf", single("good"))
    with pytest.raises(CNIError):
        C.conf_from_bytes(text.encode())
    assert same_as_go(golibcni, tmp_path, "good") is None


def test_unreadable_file_is_an_error(tmp_path):
    with pytest.raises(CNIError) as ei:
        C.conflist_from_file(str(tmp_path / "missing.conflist"))
    assert "missing.conflist" in ei.value.msg


# ---- cniVersions (spec 1.1.0): the highest version this library implements ----

@pytest.mark.parametrize("obj,want", [
    ({"cniVersion": "1.0.0", "cniVersions": ["0.4.0", "1.1.0"]}, "1.1.0"),
    ({"cniVersions": ["0.3.1", "1.0.0", "2.0.0"]}, "1.0.0"),          # newer than us: skipped
    ({"cniVersion": "1.1.0", "cniVersions": ["0.4.0"]}, "1.1.0"),     # cniVersion takes part
    ({"cniVersion": "2.0.0", "cniVersions": ["0.4.0"]}, "0.4.0"),
    ({"cniVersion": "1.0.0"}, "1.0.0"),
    ({}, ""),
])
def test_cni_versions_pick_the_highest_we_implement(obj, want):
    lst = C.conflist_from_dict({"name": "v", "plugins": [plugin()], **obj})
    assert lst.cni_version == want


@pytest.mark.parametrize("versions", [["1.0.0", "junk"], "1.0.0", [1]])
def test_bad_cni_versions_are_an_error(versions):
    with pytest.raises(CNIError):
        C.conflist_from_dict({"name": "v", "cniVersions": versions, "plugins": [plugin()]})


# ---- what each plugin gets on stdin (libcni buildOneConfig / injectRuntimeConfig) ----

def test_inject_sets_top_level_keys_on_a_copy():
    net = C.conf_from_bytes(json.dumps(plugin("portmap", snat=True)).encode())
    got = C.inject(net, {"name": "n", "cniVersion": "1.0.0"})
    assert got.network == {"type": "portmap", "snat": True, "name": "n", "cniVersion": "1.0.0"}
    assert net.network == {"type": "portmap", "snat": True}
    for bad in ({"": 1}, {"k": None}):
        with pytest.raises(CNIError):
            C.inject(net, bad)


CAPS_LIST = conflist("caps", ver="1.0.0", plugins=[
    plugin("bridge", bridge="cni0"),
    plugin("portmap", capabilities={"portMappings": True, "bandwidth": False}),
    plugin("tuning", capabilities={"mac": True, "ips": True}, runtimeConfig={"stale": 1}),
])
CAP_ARGS = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 1}, "mac": "0a:58:00:00:00:01", "undeclared": True}


def built(lst, prev=None, rt=None):
    cni = CNIConfig(path=["/nonexistent"])
    rt = rt or RuntimeConf(container_id="c1", netns="/proc/self/ns/net", capability_args=CAP_ARGS)
    return [json.loads(cni._build(lst, net, prev, rt, {})) for net in lst.plugins]


def test_runtime_config_only_for_declared_and_enabled_capabilities():
    bridge, portmap, tuning = built(C.conflist_from_dict(CAPS_LIST))
    assert "runtimeConfig" not in bridge
    assert portmap["runtimeConfig"] == {"portMappings": CAP_ARGS["portMappings"]}   # bandwidth: false
    assert tuning["runtimeConfig"] == {"mac": CAP_ARGS["mac"]}   # replaces the file's, "ips" not given
    for p in (bridge, portmap, tuning):
        assert (p["name"], p["cniVersion"]) == ("caps", "1.0.0")


def test_no_capability_args_leaves_runtime_config_alone():
    rt = RuntimeConf(container_id="c1", netns="/proc/self/ns/net")
    _, portmap, tuning = built(C.conflist_from_dict(CAPS_LIST), rt=rt)
    assert "runtimeConfig" not in portmap and tuning["runtimeConfig"] == {"stale": 1}


def test_list_name_and_version_override_the_plugins_and_prev_result_is_in_list_version():
    lst = C.conflist_from_dict(conflist("outer", ver="0.4.0",
                                        plugins=[plugin(name="inner", cniVersion="1.1.0")]))
    prev = decode({"cniVersion": "1.1.0", "ips": [{"address": "10.1.0.2/24"}]})
    (p,) = built(lst, prev=prev)
    assert (p["name"], p["cniVersion"]) == ("outer", "0.4.0")
    assert p["prevResult"] == {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.1.0.2/24"}],
                               "dns": {}}
