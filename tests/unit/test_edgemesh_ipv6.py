"""edgemesh's IPv6 half without root: the config, the rules each backend renders for a family, and
the plan against an ip6tables-save reading (checked against the real tools by
tests/integration/test_edgemesh_ipv6.py)."""
import pytest

from libcni_py.errors import CNIError
from plugins.meta.edgemesh import backend_iptables as ipt
from plugins.meta.edgemesh import backend_nft as nftb
from plugins.meta.edgemesh import backends, config
from plugins.meta.edgemesh import rules as R
from plugins.pkg.schema import validate

BASE = {"cniVersion": "1.1.0", "name": "emnet", "type": "edgemesh", "serviceCIDR": ["10.96.0.0/12", "fd00:10:96::/112"],
        "protocols": ["tcp"], "ignoredServices": [{"ip": "10.96.0.10", "name": "kube-system/kube-dns"},
                                                  {"ip": "fd00:10:96::a", "name": "kube-system/kube-dns6"}]}
EMPTY6 = ("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
          "COMMIT\n")
ONE_POD6 = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:EDGE-MESH - [0:0]
:EDGE-MESH-SVC - [0:0]
:EDGE-MESH-TCP - [0:0]
-A PREROUTING -m comment --comment "edgemesh root chain" -j EDGE-MESH
-A OUTPUT -m comment --comment "edgemesh root chain" -j EDGE-MESH
-A EDGE-MESH -s fd00:22::5/128 -m comment --comment "edgemesh net=emnet id=c1" -j EDGE-MESH-SVC
-A EDGE-MESH-SVC -d fd00:10:96::a/128 -m comment --comment "ignore kube-system/kube-dns6 service" -j RETURN
-A EDGE-MESH-SVC -d fd00:10:96::/112 -p tcp -m comment --comment "tcp service proxy" -j EDGE-MESH-TCP
-A EDGE-MESH-TCP -p tcp -j DNAT --to-destination [fd00:a9fe:6010::1]:40001
COMMIT
"""


def test_service_cidr_one_per_family_as_a_string_or_a_list():
    c = config.load(BASE)
    assert (c.service_cidr, c.service_cidr6, c.families) == ("10.96.0.0/12", "fd00:10:96::/112", ("4", "6"))
    assert c.listen("6") == config.DEFAULT_LISTEN6 == "fd00:a9fe:6010::1" and c.listen("4") == "169.254.96.16"
    c6 = config.load(dict(BASE, serviceCIDR="FD00:10:96:0::1/112", listenAddress6="fd00:0:0::9"))
    assert (c6.service_cidr, c6.service_cidr6, c6.families, c6.listen_address6) == (
        "", "fd00:10:96::/112", ("6",), "fd00::9")
    assert config.load(dict(BASE, serviceCIDR=["10.96.0.0/12"])).families == ("4",)
    validate(dict(BASE), "edgemesh")
    validate(dict(BASE, serviceCIDR="fd00:10:96::/112", listenAddress6="fd00::1"), "edgemesh")


@pytest.mark.parametrize("keys,word", [
    ({"serviceCIDR": ["fd00:10:96::/112", "fd00:20::/64"]}, "two IPv6"),
    ({"serviceCIDR": ["10.96.0.0/12", "10.100.0.0/16"]}, "two IPv4"),
    ({"serviceCIDR": ["10.96.0.0/12", "fd00::/64", "10.1.0.0/16"]}, "one or two"),
    ({"serviceCIDR": "fd00:10:96::/129"}, "not an IPv6 CIDR"),
    ({"serviceCIDR": "fd00::%eth0/64"}, "not an IPv6 CIDR"),
    ({"listenAddress6": "fe80::1"}, "listenAddress6"),
    ({"listenAddress6": "ff02::1"}, "listenAddress6"),
    ({"listenAddress6": "::1"}, "listenAddress6"),
    ({"listenAddress6": "::ffff:10.0.0.1"}, "listenAddress6"),
    ({"listenAddress6": "169.254.96.16"}, "listenAddress6"),
    ({"ignoredServices": [{"ip": "fd00::g", "name": "a/b"}]}, "ignoredServices"),
])
def test_bad_ipv6_values_name_the_field(keys, word):
    with pytest.raises(CNIError) as e:
        config.load(dict(BASE, **keys))
    assert e.value.code == 7 and word in e.value.msg + e.value.details


def test_shared_keys_of_an_ipv4_only_config_are_those_of_the_previous_release():
    """A record written by a release before IPv6 compares equal with an IPv4-only config."""
    old = {"serviceCIDR": "10.96.0.0/12", "listenAddress": "169.254.96.16", "listenPort": 40001,
           "protocols": ["tcp"], "scope": "pod", "ignoredServices": [["10.96.0.10", "kube-system/kube-dns"]],
           "ignoredServicesFile": ""}
    v4 = dict(BASE, serviceCIDR="10.96.0.0/12", ignoredServices=BASE["ignoredServices"][:1])
    assert config.load(v4).shared() == old
    assert config.load(dict(v4, serviceCIDR=["10.96.0.0/12"])).shared() == old
    dual = config.load(BASE).shared()
    assert dual["serviceCIDR"] == ["10.96.0.0/12", "fd00:10:96::/112"] and dual["listenAddress6"] == "fd00:a9fe:6010::1"


def test_each_family_gets_its_own_ignored_services_cidr_and_listen_address():
    c = config.load(BASE)
    ignored = c.all_ignored()
    six = R.shared_items(c, ignored, "6")
    assert [ipt.render(i) for i in six["services"]] == [
        ("-d", "fd00:10:96::a/128", "-m", "comment", "--comment", "ignore kube-system/kube-dns6 service",
         "-j", "RETURN"),
        ("-d", "fd00:10:96::/112", "-p", "tcp", "-m", "comment", "--comment", "tcp service proxy",
         "-j", "EDGE-MESH-TCP")]
    assert [ipt.render(i) for i in six["proxy_tcp"]] == [
        ("-p", "tcp", "-j", "DNAT", "--to-destination", "[fd00:a9fe:6010::1]:40001")]
    assert [nftb.render(i) for i in six["services"]] == [
        'ip6 daddr fd00:10:96::a return comment "ignore kube-system/kube-dns6 service"',
        'ip6 daddr fd00:10:96::/112 meta l4proto tcp jump proxy_tcp comment "tcp service proxy"']
    assert [nftb.render(i) for i in six["proxy_tcp"]] == ["meta l4proto tcp dnat to [fd00:a9fe:6010::1]:40001"]
    four = R.shared_items(c, ignored, "4")
    assert [i.ip for i in four["services"] if isinstance(i, R.Ignore)] == ["10.96.0.10"]
    assert [ipt.render(i) for i in R.shared_items(c, ignored)["services"]] == [
        ipt.render(i) for i in four["services"]]                  # the default family is IPv4, as before


def test_pod_rules_split_by_family_and_render_per_family():
    pods = R.pod_items(["10.22.0.5", "fd00:22::5"], config.pod_comment("emnet", "c1"), True)
    split = R.by_family(pods)
    assert [m.src for m in split["4"]] == ["10.22.0.5"] and [m.src for m in split["6"]] == ["fd00:22::5"]
    assert ipt.render(split["6"][0])[:2] == ("-s", "fd00:22::5/128")
    assert nftb.render(split["6"][0]) == 'ip6 saddr fd00:22::5 jump services comment "edgemesh net=emnet id=c1"'


def test_first_ipv6_add_is_one_ip6tables_restore_and_the_reading_round_trips():
    c = config.load(BASE)
    b = backends.get("iptables", "6")
    assert (b.name, b.family, b.binary, b.label) == ("iptables", "6", "ip6tables", "ip6tables")
    pods = R.by_family(R.pod_items(["fd00:22::5"], config.pod_comment("emnet", "c1"), True))["6"]
    shared = R.shared_items(c, c.all_ignored(), "6")
    current = b.read(EMPTY6)
    lines = b.restore_lines(R.plan(current, b.render, shared=shared, pods=pods), current)
    assert lines[:3] == [":EDGE-MESH - [0:0]", ":EDGE-MESH-SVC - [0:0]", ":EDGE-MESH-TCP - [0:0]"]
    assert "-A EDGE-MESH-TCP -p tcp -j DNAT --to-destination [fd00:a9fe:6010::1]:40001" in lines
    again = b.read(ONE_POD6)                     # what ip6tables-save 1.8.9 prints after that restore
    assert R.plan(again, b.render, shared=shared, pods=pods).empty()


def test_nft_ipv6_script_goes_to_table_ip6_edgemesh():
    c = config.load(BASE)
    b = backends.get("nftables", "6")
    assert (b.table_family, b.label) == ("ip6", "nftables ip6 edgemesh")
    plan = R.plan({"prerouting": [], "output": []}, b.render, shared=R.shared_items(c, c.all_ignored(), "6"))
    script = b.script(plan, b.table_family)
    assert script[0] == "add table ip6 edgemesh" and all("ip6 edgemesh" in x for x in script)
    assert nftb.Backend.script(plan)[0] == "add table ip edgemesh"          # the default stays IPv4


def test_a_family_whose_tools_are_missing_is_142(monkeypatch):
    import shutil
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda n: None if n.startswith("ip6tables") else real(n))
    v4 = backends.get("iptables")
    with pytest.raises(CNIError) as e:
        backends.family_view(v4, "6")
    assert e.value.code == 142 and "ip6tables" in e.value.msg
