"""The dp's policy: compile errors name the field, first match wins, default applies."""
import ipaddress
import json

import pytest

from plugins.dp import policy
from plugins.dp.policy import PolicyError, compile_policy, verdict

V4 = lambda a: int(ipaddress.IPv4Address(a))      # noqa: E731
V6 = lambda a: int(ipaddress.IPv6Address(a))      # noqa: E731


def decide(doc, *, ingress=True, family=4, proto=6, src="10.0.0.1", dst="10.0.0.2",
           sport=40000, dport=80, pod_ids=frozenset({"02:00:00:00:00:01"})):
    p = compile_policy(doc)
    to_int = V4 if family == 4 else V6
    return verdict(p.rules_for(set(pod_ids)), p.default_allow, ingress, family, proto,
                   to_int(src) if family else 0, to_int(dst) if family else 0, sport, dport)


def test_empty_policy_allows_everything():
    assert decide({}) is True
    assert decide({"default": "deny"}) is False


def test_first_match_wins():
    rules = [{"action": "allow", "proto": "tcp", "dport": 80},
             {"action": "deny", "proto": "tcp"}]
    assert decide({"rules": rules}, dport=80) is True
    assert decide({"rules": rules}, dport=81) is False
    assert decide({"rules": rules}, proto=17, dport=81) is True       # default


def test_protocol_names_and_numbers():
    assert decide({"rules": [{"action": "deny", "proto": "udp"}]}, proto=17) is False
    assert decide({"rules": [{"action": "deny", "proto": 17}]}, proto=17) is False
    assert decide({"rules": [{"action": "deny", "proto": "icmp"}]}, proto=1, sport=-1,
                  dport=-1) is False
    assert decide({"rules": [{"action": "deny", "proto": "any"}]}, proto=47) is False
    assert decide({"rules": [{"action": "deny", "proto": "udp"}]}, proto=6) is True


def test_cidr_src_dst_and_lists():
    rule = {"action": "deny", "src": ["192.168.0.0/16", "10.1.0.0/16"], "dst": "10.0.0.2"}
    assert decide({"rules": [rule]}, src="10.1.200.3") is False
    assert decide({"rules": [rule]}, src="10.2.0.1") is True
    assert decide({"rules": [rule]}, src="10.1.0.1", dst="10.0.0.3") is True


def test_ipv6_and_family_never_crosses():
    rule = {"action": "deny", "dst": "fd00::/64"}
    assert decide({"rules": [rule]}, family=6, src="fd00::1", dst="fd00::2") is False
    assert decide({"rules": [rule]}, family=6, src="fd00::1", dst="fd01::2") is True
    # ::/0 does not catch IPv4, 0.0.0.0/0 does not catch IPv6
    assert decide({"rules": [{"action": "deny", "dst": "::/0"}]}) is True
    assert decide({"rules": [{"action": "deny", "dst": "0.0.0.0/0"}]}, family=6,
                  src="fd00::1", dst="fd00::2") is True


def test_ipv6_next_header_ports_and_family():
    six = {"family": 6, "src": "fd00::1", "dst": "fd00::2"}
    rules = [{"action": "deny", "proto": "udp", "dst": "fd00::/64"},                 # next header 17
             {"action": "deny", "proto": 6, "dport": "5200-5201", "dst": ["10.0.0.0/8", "fd00::/64"]},
             {"action": "deny", "family": "ipv6", "proto": 132}]
    assert decide({"rules": rules}, proto=17, **six) is False
    assert decide({"rules": rules}, proto=6, dport=5201, **six) is False
    assert decide({"rules": rules}, proto=6, dport=5201) is False                   # the IPv4 half of the list
    assert decide({"rules": rules}, proto=6, dport=80, **six) is True
    assert decide({"rules": rules}, proto=58, dport=-1, sport=-1, **six) is True     # ICMPv6 allowed
    assert decide({"rules": rules}, proto=132, **six) is False
    assert decide({"rules": rules}, proto=132) is True                                # family 6 only
    assert decide({"rules": [{"action": "deny", "family": 4}]}, **six) is True
    assert decide({"rules": [{"action": "deny", "family": "any"}]}, **six) is False
    for bad in (5, "ip6", True, None, [6]):
        with pytest.raises(PolicyError, match=r"rules\[0\]\.family"):
            compile_policy({"rules": [{"action": "deny", "family": bad}]})


def test_port_ranges_and_portless_packets():
    rule = {"action": "deny", "proto": "tcp", "dport": ["8000-8099", 443]}
    assert decide({"rules": [rule]}, dport=8050) is False
    assert decide({"rules": [rule]}, dport=443) is False
    assert decide({"rules": [rule]}, dport=8100) is True
    assert decide({"rules": [{"action": "deny", "sport": 40000}]}, sport=40000) is False
    # a fragment without ports (-1) never matches a port rule
    assert decide({"rules": [{"action": "deny", "dport": "0-65535"}]}, dport=-1) is True


def test_direction():
    rule = {"action": "deny", "direction": "ingress"}
    assert decide({"rules": [rule]}, ingress=True) is False
    assert decide({"rules": [rule]}, ingress=False) is True
    assert decide({"rules": [{"action": "deny", "direction": "egress"}]}, ingress=False) is False


def test_per_pod_rules_by_name_or_mac():
    rules = [{"action": "deny", "pod": "Web-1"}, {"action": "deny", "pod": ["02:00:00:00:00:09"]}]
    assert decide({"rules": rules}, pod_ids={"web-1", "02:00:00:00:00:01"}) is False
    assert decide({"rules": rules}, pod_ids={"02:00:00:00:00:09"}) is False
    assert decide({"rules": rules}, pod_ids={"db", "02:00:00:00:00:02"}) is True


def test_non_ip_frames_only_match_rules_without_l3_fields():
    assert decide({"rules": [{"action": "deny", "proto": "tcp"}]}, family=0, proto=-1,
                  sport=-1, dport=-1) is True
    assert decide({"rules": [{"action": "deny", "direction": "ingress"}]}, family=0,
                  proto=-1, sport=-1, dport=-1) is False


@pytest.mark.parametrize("doc, field", [
    ([], "policy"),
    ({"rulez": []}, "unknown key"),
    ({"default": "maybe"}, "default"),
    ({"rules": {}}, "rules"),
    ({"rules": ["x"]}, "rules[0]"),
    ({"rules": [{"proto": "tcp"}]}, "rules[0].action"),
    ({"rules": [{"action": "allow"}, {"action": "deny", "proto": "tcpp"}]}, "rules[1].proto"),
    ({"rules": [{"action": "deny", "proto": 256}]}, "rules[0].proto"),
    ({"rules": [{"action": "deny", "src": "10.0.0.300"}]}, "rules[0].src"),
    ({"rules": [{"action": "deny", "dst": []}]}, "rules[0].dst"),
    ({"rules": [{"action": "deny", "dport": 70000}]}, "rules[0].dport"),
    ({"rules": [{"action": "deny", "dport": "90-80"}]}, "rules[0].dport"),
    ({"rules": [{"action": "deny", "sport": "a-b"}]}, "rules[0].sport"),
    ({"rules": [{"action": "deny", "dport": True}]}, "rules[0].dport"),
    ({"rules": [{"action": "deny", "proto": "icmp", "dport": 1}]}, "rules[0]: ports"),
    ({"rules": [{"action": "deny", "direction": "in"}]}, "rules[0].direction"),
    ({"rules": [{"action": "deny", "pod": ""}]}, "rules[0].pod"),
    ({"rules": [{"action": "deny", "port": 80}]}, "rules[0]: unknown key"),
])
def test_bad_policies_name_the_field(doc, field):
    with pytest.raises(PolicyError) as e:
        compile_policy(doc)
    assert field in str(e.value)


def test_load_file_errors(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        policy.load(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PolicyError, match="not valid JSON"):
        policy.load(str(bad))


def test_example_policy_compiles():
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "dp-policy.example.json")
    p = policy.load(path)
    with open(path) as f:
        assert len(p.rules) == len(json.load(f)["rules"])
    # its first rule denies iperf3 towards any pod
    assert verdict(p.rules_for({"x"}), p.default_allow, True, 4, 6, 1, 2, 1234, 5201) is False
