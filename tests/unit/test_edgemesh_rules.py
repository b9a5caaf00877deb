"""The desired rule set and the plan (no root): what ADD, DEL, GC and sync would write.

The iptables backend reads iptables-save text, so states here are iptables-save text as
iptables 1.8.9 prints it (checked against the real thing by the integration tests).
"""
import pytest

from libcni_py.errors import CNIError
from plugins.meta.edgemesh import backend_iptables as ipt
from plugins.meta.edgemesh import backend_nft as nftb
from plugins.meta.edgemesh import config
from plugins.meta.edgemesh import rules as R
from plugins.pkg import nft

CONF = config.load({"name": "emnet", "serviceCIDR": "10.96.0.1/12", "protocols": ["udp", "tcp"]})
DNS = config.Service("10.96.0.10", "kube-system/kube-dns")
EMPTY = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
ONE_POD = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:EDGE-MESH - [0:0]
:EDGE-MESH-SVC - [0:0]
:EDGE-MESH-TCP - [0:0]
:EDGE-MESH-UDP - [0:0]
-A PREROUTING -m comment --comment "edgemesh root chain" -j EDGE-MESH
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -m comment --comment "edgemesh root chain" -j EDGE-MESH
-A OUTPUT -m comment --comment "someone else's" -j EDGE-MESH
-A EDGE-MESH -s 10.22.0.5/32 -m comment --comment "edgemesh net=emnet id=c1" -j EDGE-MESH-SVC
-A EDGE-MESH-SVC -d 10.96.0.10/32 -m comment --comment "ignore kube-system/kube-dns service" -j RETURN
-A EDGE-MESH-SVC -d 10.96.0.0/12 -p tcp -m comment --comment "tcp service proxy" -j EDGE-MESH-TCP
-A EDGE-MESH-SVC -d 10.96.0.0/12 -p udp -m comment --comment "udp service proxy" -j EDGE-MESH-UDP
-A EDGE-MESH-TCP -p tcp -j DNAT --to-destination 169.254.96.16:40001
-A EDGE-MESH-UDP -p udp -j DNAT --to-destination 169.254.96.16:40001
COMMIT
"""


def pod(cid, ip, hijack=True):
    return R.pod_items([ip], config.pod_comment("emnet", cid), hijack)


def lines(state_text, **kw):
    b = ipt.Backend()
    current = b.read(state_text)
    return b.restore_lines(R.plan(current, b.render, **kw), current)


def test_first_add_creates_everything_in_one_restore():
    out = lines(EMPTY, shared=R.shared_items(CONF, [DNS]), pods=pod("c1", "10.22.0.5"))
    assert out == [
        ":EDGE-MESH - [0:0]", ":EDGE-MESH-SVC - [0:0]", ":EDGE-MESH-TCP - [0:0]", ":EDGE-MESH-UDP - [0:0]",
        '-I EDGE-MESH 1 -s 10.22.0.5/32 -m comment --comment "edgemesh net=emnet id=c1" -j EDGE-MESH-SVC',
        '-I EDGE-MESH-SVC 1 -d 10.96.0.10/32 -m comment --comment "ignore kube-system/kube-dns service" -j RETURN',
        '-I OUTPUT 1 -m comment --comment "edgemesh root chain" -j EDGE-MESH',
        '-I PREROUTING 1 -m comment --comment "edgemesh root chain" -j EDGE-MESH',
        '-A EDGE-MESH-SVC -d 10.96.0.0/12 -p tcp -m comment --comment "tcp service proxy" -j EDGE-MESH-TCP',
        '-A EDGE-MESH-SVC -d 10.96.0.0/12 -p udp -m comment --comment "udp service proxy" -j EDGE-MESH-UDP',
        "-A EDGE-MESH-TCP -p tcp -j DNAT --to-destination 169.254.96.16:40001",
        "-A EDGE-MESH-UDP -p udp -j DNAT --to-destination 169.254.96.16:40001",
    ]


def test_second_pod_adds_one_rule_and_no_root_jump():
    assert lines(ONE_POD, shared=R.shared_items(CONF, [DNS]), pods=pod("c2", "10.22.0.6")) == [
        '-I EDGE-MESH 1 -s 10.22.0.6/32 -m comment --comment "edgemesh net=emnet id=c2" -j EDGE-MESH-SVC']


def test_add_again_is_a_no_op():
    assert lines(ONE_POD, shared=R.shared_items(CONF, [DNS]), pods=pod("c1", "10.22.0.5")) == []


def test_a_duplicated_root_jump_is_removed_foreign_jumps_are_not():
    text = ONE_POD.replace("-A OUTPUT -m comment --comment \"someone",
                           '-A OUTPUT -m comment --comment "edgemesh root chain" -j EDGE-MESH\n'
                           '-A OUTPUT -m comment --comment "someone')
    assert lines(text, shared=R.shared_items(CONF, [DNS]), pods=pod("c1", "10.22.0.5")) == [
        '-D OUTPUT -m comment --comment "edgemesh root chain" -j EDGE-MESH']


def test_pod_ip_changed_replaces_its_rule():
    assert lines(ONE_POD, shared=R.shared_items(CONF, [DNS]), pods=pod("c1", "10.22.0.9")) == [
        "-D EDGE-MESH 1",
        '-I EDGE-MESH 1 -s 10.22.0.9/32 -m comment --comment "edgemesh net=emnet id=c1" -j EDGE-MESH-SVC']


def test_del_of_the_last_pod_removes_jumps_and_chains():
    c1 = config.pod_comment("emnet", "c1")
    assert lines(ONE_POD, shared=None, drop=lambda c: c == c1, teardown_when_empty=True) == [
        '-D PREROUTING -m comment --comment "edgemesh root chain" -j EDGE-MESH',
        '-D OUTPUT -m comment --comment "edgemesh root chain" -j EDGE-MESH',
        "-F EDGE-MESH", "-F EDGE-MESH-SVC", "-F EDGE-MESH-TCP", "-F EDGE-MESH-UDP",
        "-X EDGE-MESH", "-X EDGE-MESH-SVC", "-X EDGE-MESH-TCP", "-X EDGE-MESH-UDP"]


def test_del_of_an_unknown_pod_and_del_on_a_clean_node_do_nothing():
    assert lines(ONE_POD, shared=None, drop=lambda c: c.endswith("id=zz"), teardown_when_empty=True) == []
    assert lines(EMPTY, shared=None, drop=lambda c: True, teardown_when_empty=True) == []


def test_sync_touches_return_rules_only():
    ns = [config.Service("10.96.0.30", "default/b")]
    assert lines(ONE_POD, shared=R.shared_items(CONF, ns)) == [
        "-D EDGE-MESH-SVC 1",
        '-I EDGE-MESH-SVC 1 -d 10.96.0.30/32 -m comment --comment "ignore default/b service" -j RETURN']


def test_node_scope_catch_all_stays_last_and_excluded_pods_return():
    node = config.load({"name": "emnet", "serviceCIDR": "10.96.0.0/12", "protocols": ["udp", "tcp"],
                         "scope": "node"})
    out = lines(ONE_POD, shared=R.shared_items(node, [DNS]), pods=pod("c2", "10.22.0.6", hijack=False))
    assert out == [
        '-I EDGE-MESH 1 -s 10.22.0.6/32 -m comment --comment "edgemesh net=emnet id=c2" -j RETURN',
        '-A EDGE-MESH -m comment --comment "edgemesh node scope" -j EDGE-MESH-SVC']


def test_service_cidr_is_normalised():
    assert CONF.service_cidr == "10.96.0.0/12"


@pytest.mark.parametrize("bad", ['x"\n-A PREROUTING -j DROP', 'x" -j ACCEPT', "x\\", "x" * 256, ""])
def test_a_hostile_comment_never_reaches_restore_input(bad):
    with pytest.raises(CNIError):
        ipt.render(R.Ignore("10.96.0.1", bad))
    with pytest.raises(CNIError):
        nftb.render(R.Ignore("10.96.0.1", bad))


def test_restore_lines_refuse_unsafe_tokens_even_past_the_checks():
    with pytest.raises(CNIError):
        ipt._line("-A", "EDGE-MESH", ("-s", "10.0.0.1/32\n-A OUTPUT -j DROP"))


@pytest.mark.parametrize("line", ["add rule ip edgemesh mesh # x", "add rule ip edgemesh mesh counter\nflush ruleset",
                                  "add rule ip edgemesh mesh meta mark set $x", "include '/etc/passwd'"])
def test_nft_input_is_refused_outside_its_alphabet(line):
    with pytest.raises(nft.NftInputRefused):
        nft.run([line])


NFT_TABLE = """table ip edgemesh { # handle 2
	chain prerouting { # handle 1
		type nat hook prerouting priority dstnat - 1; policy accept;
		jump mesh comment "edgemesh root chain" # handle 7
	}
	chain output { # handle 2
		type nat hook output priority -101; policy accept;
		jump mesh comment "edgemesh root chain" # handle 8
	}
	chain mesh { # handle 3
		ip saddr 10.22.0.5 jump services comment "edgemesh net=emnet id=c1" # handle 9
	}
	chain services { # handle 4
		ip daddr 10.96.0.10 return comment "ignore kube-system/kube-dns service" # handle 11
		ip daddr 10.96.0.0/12 meta l4proto tcp jump proxy_tcp comment "tcp service proxy" # handle 12
		ip daddr 10.96.0.0/12 meta l4proto udp jump proxy_udp comment "udp service proxy" # handle 13
	}
	chain proxy_tcp { # handle 5
		meta l4proto tcp dnat to 169.254.96.16:40001 # handle 14
	}
	chain proxy_udp { # handle 6
		meta l4proto udp dnat to 169.254.96.16:40001 # handle 15
	}
}
"""


def nft_plan(**kw):
    current = {"prerouting": [], "output": []}
    for chain, rules in nft.parse_table(NFT_TABLE).items():
        current[chain] = [R.Entry(t, nftb._comment_of(t), h) for t, h in rules]
    return nftb.Backend.script(R.plan(current, nftb.render, **kw))


def test_nft_state_in_sync_needs_no_transaction():
    assert nft_plan(shared=R.shared_items(CONF, [DNS]), pods=pod("c1", "10.22.0.5")) == []


def test_nft_second_pod_and_sync_and_last_del():
    assert nft_plan(shared=R.shared_items(CONF, [DNS]), pods=pod("c2", "10.22.0.6")) == [
        'insert rule ip edgemesh mesh ip saddr 10.22.0.6 jump services comment "edgemesh net=emnet id=c2"']
    assert nft_plan(shared=R.shared_items(CONF, [])) == ["delete rule ip edgemesh services handle 11"]
    assert nft_plan(shared=None, drop=lambda c: "id=c1" in c, teardown_when_empty=True) == [
        "delete table ip edgemesh"]


def test_nft_first_add_creates_table_chains_then_rules():
    script = nftb.Backend.script(R.plan({"prerouting": [], "output": []}, nftb.render,
                                        shared=R.shared_items(CONF, [DNS]), pods=pod("c1", "10.22.0.5")))
    assert script[:7] == ["add table ip edgemesh", "add chain ip edgemesh mesh", "add chain ip edgemesh services",
                          "add chain ip edgemesh proxy_tcp", "add chain ip edgemesh proxy_udp",
                          "add chain ip edgemesh prerouting { type nat hook prerouting priority dstnat - 1; policy accept; }",  # noqa: E501
                          "add chain ip edgemesh output { type nat hook output priority -101; policy accept; }"]
    assert set(script[7:]) == {f"{op} rule ip edgemesh {r}" for op, r in [
        ("insert", 'mesh ip saddr 10.22.0.5 jump services comment "edgemesh net=emnet id=c1"'),
        ("insert", 'prerouting jump mesh comment "edgemesh root chain"'),
        ("insert", 'output jump mesh comment "edgemesh root chain"'),
        ("insert", 'services ip daddr 10.96.0.10 return comment "ignore kube-system/kube-dns service"'),
        ("add", 'services ip daddr 10.96.0.0/12 meta l4proto tcp jump proxy_tcp comment "tcp service proxy"'),
        ("add", 'services ip daddr 10.96.0.0/12 meta l4proto udp jump proxy_udp comment "udp service proxy"'),
        ("add", "proxy_tcp meta l4proto tcp dnat to 169.254.96.16:40001"),
        ("add", "proxy_udp meta l4proto udp dnat to 169.254.96.16:40001")]}
