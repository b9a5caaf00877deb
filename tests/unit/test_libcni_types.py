"""Result types and conversion, 0.3.0 .. 1.1.0, both ways, as Go's pkg/types converts.

Go keeps one struct for 1.0.0 and 1.1.0 (types100), one for 0.3.x/0.4.0 (types040),
and converts through them: 0.x IPs carry "version", interfaces lose the 1.1.0 fields
below 1.0.0, routes (the shared types.Route) keep all their fields at every version.
The second half checks our conversion against the real Go library (Debian's libcni
1.1.2, which knows versions up to 1.0.0) through tests/golibcni.
"""
import copy
import json
import subprocess

import pytest

from libcni_py import errors as E
from libcni_py import types as T
from libcni_py import version as V
from libcni_py.errors import CNIError
from tests.golibcni.build import driver_path

OLD = ("0.3.0", "0.3.1", "0.4.0")
NEW = ("1.0.0", "1.1.0")

DNS = {"nameservers": ["10.1.0.53", "fd00::53"], "domain": "example.org",
       "search": ["a.example.org", "b.example.org"], "options": ["ndots:2", "rotate"]}

# A 1.1.0 result using every field the spec defines.
FULL_110 = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "eth0", "mac": "0a:58:0a:01:00:05", "mtu": 1400, "sandbox": "/run/netns/pod",
         "socketPath": "/run/vhost/sock0", "pciID": "0000:03:00.1"},
        {"name": "veth1234abcd", "mac": "0a:58:0a:01:00:01"},
    ],
    "ips": [
        {"interface": 0, "address": "10.1.0.5/24", "gateway": "10.1.0.1"},
        {"interface": 0, "address": "fd00::5/64", "gateway": "fd00::1"},
        {"address": "10.2.0.5/32"},
    ],
    "routes": [
        {"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400, "advmss": 1360, "priority": 10,
         "table": 100, "scope": 0},
        {"dst": "::/0", "gw": "fd00::1"},
        {"dst": "10.96.0.0/12"},
    ],
    "dns": DNS,
}


def as_old(res: dict, ver: str) -> dict:
    """What Go's convertTo04x makes of a types100 result."""
    out = copy.deepcopy(res)
    out["cniVersion"] = ver
    for i in out.get("interfaces", []):
        for k in ("mtu", "socketPath", "pciID"):
            i.pop(k, None)
    for ip in out.get("ips", []):
        ip["version"] = "6" if ":" in ip["address"] else "4"
    return out


def as_new(res: dict, ver: str) -> dict:
    """What Go's convertFrom04x makes of a types040 result."""
    out = copy.deepcopy(res)
    out["cniVersion"] = ver
    for ip in out.get("ips", []):
        ip.pop("version", None)
    return out


@pytest.mark.parametrize("ver", NEW)
def test_new_versions_carry_every_field(ver):
    """1.0.0 and 1.1.0 share Go's types100: converting between them only relabels."""
    res = T.decode(FULL_110)
    assert res.encode(ver) == {**FULL_110, "cniVersion": ver}
    assert T.decode({**FULL_110, "cniVersion": ver}).encode("1.1.0") == FULL_110


@pytest.mark.parametrize("ver", OLD)
def test_down_to_0x_adds_ip_version_and_drops_interface_extras(ver):
    out = T.decode(FULL_110).encode(ver)
    assert out == as_old(FULL_110, ver)
    assert [ip["version"] for ip in out["ips"]] == ["4", "6", "4"]
    assert "mtu" not in out["interfaces"][0] and "pciID" not in out["interfaces"][0]
    # types.Route is shared by every version: Go keeps its 1.1.0 fields.
    assert out["routes"][0]["table"] == 100 and out["routes"][0]["advmss"] == 1360


@pytest.mark.parametrize("src", OLD)
@pytest.mark.parametrize("dst", NEW)
def test_up_from_0x_drops_ip_version(src, dst):
    old = as_old(FULL_110, src)
    out = T.decode(old).encode(dst)
    assert out == as_new(old, dst)
    assert all("version" not in ip for ip in out["ips"])


@pytest.mark.parametrize("src", OLD)
@pytest.mark.parametrize("dst", OLD)
def test_between_0x_versions_only_the_label_changes(src, dst):
    old = as_old(FULL_110, src)
    assert T.decode(old).encode(dst) == {**old, "cniVersion": dst}


@pytest.mark.parametrize("ver", OLD + NEW)
def test_round_trips(ver):
    """0.x results survive any round trip; 1.x ones lose only what 0.x cannot hold."""
    start = T.decode(FULL_110).encode(ver)
    for via in OLD + NEW:
        back = T.decode(T.decode(start).encode(via)).encode(ver)
        if ver in NEW and via in OLD:
            assert back == as_new(as_old(start, via), ver), via
            assert "mtu" not in back["interfaces"][0]
        else:
            assert back == start, via


def test_go_reference_vector_100_to_040():
    """pkg/types/100/types_test.go 'correctly encodes a 0.4.0 Result'."""
    r100 = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "00:11:22:33:44:55", "sandbox": "/proc/3553/ns/net"}],
        "ips": [{"interface": 0, "address": "1.2.3.30/24", "gateway": "1.2.3.1"},
                {"interface": 0, "address": "abcd:1234:ffff::cdde/64", "gateway": "abcd:1234:ffff::1"}],
        "routes": [{"dst": "15.5.6.0/24", "gw": "15.5.6.8"}, {"dst": "1111:dddd::/80", "gw": "1111:dddd::aaaa"}],
        "dns": {"nameservers": ["1.2.3.4", "1::cafe"], "domain": "acompany.com",
                "search": ["somedomain.com", "otherdomain.net"], "options": ["foo", "bar"]},
    }
    want = copy.deepcopy(r100)
    want["cniVersion"] = "0.4.0"
    want["ips"][0]["version"] = "4"
    want["ips"][1]["version"] = "6"
    assert T.decode(r100).encode("0.4.0") == want
    assert T.decode(r100).encode() == r100


def test_interface_index_zero_survives_and_absent_index_stays_absent():
    res = T.decode({"cniVersion": "1.0.0", "ips": [{"interface": 0, "address": "10.1.2.3/24"},
                                                    {"address": "10.1.2.4/24"}]})
    assert res.ips[0].interface == 0 and res.ips[1].interface is None
    for ver in OLD + NEW:
        ips = res.encode(ver)["ips"]
        assert ips[0]["interface"] == 0 and "interface" not in ips[1]


@pytest.mark.parametrize("ver", OLD + NEW)
def test_empty_result_is_version_and_empty_dns(ver):
    # libcni 1.1.2 (Debian, and the Go plugins built with it) always writes "dns".
    assert T.Result(cni_version=ver).encode() == {"cniVersion": ver, "dns": {}}
    assert T.decode({"cniVersion": ver}).encode() == {"cniVersion": ver, "dns": {}}


def test_convert_returns_a_result_tagged_with_the_new_version():
    r = T.decode(FULL_110).convert("0.3.1")
    assert isinstance(r, T.Result) and r.cni_version == "0.3.1"
    assert r.encode() == as_old(FULL_110, "0.3.1")


@pytest.mark.parametrize("target", ["0.1.0", "0.2.0", "0.5.0", "1.2.0", "2.0.0", "junk"])
def test_encode_to_a_version_we_do_not_implement_is_incompatible(target):
    with pytest.raises(CNIError) as ei:
        T.decode(FULL_110).encode(target)
    assert ei.value.code == E.INCOMPATIBLE_VERSION


@pytest.mark.parametrize("ver", ["", "0.2.0", "0.5.0", "9.9.9"])
def test_decode_of_an_unknown_result_version_is_incompatible(ver):
    with pytest.raises(CNIError) as ei:
        T.decode({"cniVersion": ver, "ips": [{"address": "10.0.0.1/24"}]})
    assert ei.value.code == E.INCOMPATIBLE_VERSION


@pytest.mark.parametrize("bad", [
    [],
    "a result",
    {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.300/24"}]},
    {"cniVersion": "1.0.0", "ips": [{"address": "not-an-ip"}]},
    {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "interface": "zero"}]},
    {"cniVersion": "1.0.0", "interfaces": [{"name": 5}]},
    {"cniVersion": "1.0.0", "interfaces": "eth0"},
    {"cniVersion": "1.0.0", "routes": [{"dst": ["0.0.0.0/0"]}]},
])
def test_malformed_results_are_decoding_failures(bad):
    with pytest.raises(CNIError) as ei:
        T.decode(bad)
    assert ei.value.code == E.DECODING_FAILURE


def test_decode_version_override_reads_prev_result_in_the_config_version():
    """prevResult is read in the config's version (Go: create.Create(conf.CNIVersion, ...))."""
    prev = as_old(FULL_110, "0.4.0")
    del prev["cniVersion"]                      # pre-1.0 results may omit it
    res = T.decode(prev, ver="0.4.0")
    assert res.cni_version == "0.4.0" and res.encode() == as_old(FULL_110, "0.4.0")


def test_versions_module():
    assert V.ALL == ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0") and V.CURRENT == "1.1.0"
    assert V.gte("1.0.0", "0.4.0") and V.lt("0.3.1", "0.4.0") and not V.lt("1.1.0", "1.1.0")
    assert V.parse("0.10.2") == (0, 10, 2) and V.lt("0.9.0", "0.10.0")
    for junk in ("1.0", "a.b.c", "", "1.0.0.0", None):
        with pytest.raises(CNIError) as ei:
            V.parse(junk)
        assert ei.value.code == E.DECODING_FAILURE
    assert V.config_version({}) == "0.1.0" and V.config_version({"cniVersion": ""}) == "0.1.0"


# ---- the same conversions done by the real Go library ----

GO_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")   # Debian libcni 1.1.2 stops at 1.0.0


@pytest.fixture(scope="module")
def golibcni():
    return driver_path()


def go_convert(exe: str, res: dict, to: str) -> dict:
    p = subprocess.run([exe, "convert", "-to", to], input=json.dumps(res), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout)


def go_shaped(ver: str) -> dict:
    """FULL_110 without the 1.1.0-only fields, in `ver`'s shape."""
    r = as_new(FULL_110, "1.0.0")
    for i in r["interfaces"]:
        for k in ("mtu", "socketPath", "pciID"):
            i.pop(k, None)
    for rt in r["routes"]:
        for k in ("mtu", "advmss", "priority", "table", "scope"):
            rt.pop(k, None)
    return r if ver == "1.0.0" else as_old(r, ver)


@pytest.mark.parametrize("src", GO_VERSIONS)
def test_conversions_equal_go_libcni(golibcni, src):
    start = go_shaped(src)
    for dst in GO_VERSIONS:
        assert T.decode(start).encode(dst) == go_convert(golibcni, start, dst), (src, dst)
