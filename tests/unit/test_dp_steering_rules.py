"""dp-steering's rules and the tc-pedit commands made from them, checked against the
commands NeuVector's agent (agent/pipe/tc.go) runs for inline and tap, and the u32 keys the kernel keeps."""
import pytest

from plugins.meta.dp_steering import datapath_pedit as P
from plugins.meta.dp_steering import rules as R


def tc_commands(text: str) -> list[str]:
    """One `tc` command a line; an indented line continues the command above it."""
    out: list[str] = []
    for line in text.strip().splitlines():
        if line.startswith(" "):
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return out


# The article's pod: MAC 1a:27:f3:87:3a:27, UCMAC 4e:65:75:56:00:b4, vbr prefs 5 and 172.
ARTICLE_PORT = R.Port(vex="vex", vin="vin", vbr="vbr", mac="1a:27:f3:87:3a:27",
                      ucmac="4e:65:75:56:00:b4", vex_pref=5, vin_pref=172)

ARTICLE = tc_commands("""
tc filter add dev vex pref 10001 parent ffff: protocol ip u32 match u8 0 1 at -14 match u16 0x1a27 0xffff at -14
    match u32 0xf3873a27 0xffffffff at -12 action pedit munge offset -14 u16 set 0x4e65 munge offset -12 u32 set
    0x755600b4 pipe action mirred egress mirror dev vbr
tc filter add dev vex pref 10002 parent ffff: protocol all u32 match u8 0 0 action mirred egress mirror dev vin
tc filter add dev vbr pref 5 parent ffff: protocol all u32 match u16 0x4e65 0xffff at -14 match u32 0x755600b4
    0xffffffff at -12 action pedit munge offset -14 u16 set 0x1a27 munge offset -12 u32 set 0xf3873a27 pipe action
    mirred egress mirror dev vin
tc filter add dev vin pref 10002 parent ffff: protocol all u32 match u8 0 0 action mirred egress mirror dev vex
tc filter add dev vin pref 10001 parent ffff: protocol ip u32 match u8 0 1 at -14 match u32 0x1a27f387 0xffffffff
    at -8 match u16 0x3a27 0xffff at -4 action pedit munge offset -8 u32 set 0x4e657556 munge offset -4 u16 set
    0x00b4 pipe action mirred egress mirror dev vbr
tc filter add dev vbr pref 172 parent ffff: protocol all u32 match u32 0x4e657556 0xffffffff at -8 match u16
    0x00b4 0xffff at -4 action pedit munge offset -8 u32 set 0x1a27f387 munge offset -4 u16 set 0x3a27 pipe action
    mirred egress mirror dev vex
""")

# NeuVector's TapPortPair with the same pod (agent/pipe/tc.go), vbr named as ours.
TAP = tc_commands("""
tc filter add dev vex pref 10001 parent ffff: protocol ip u32 match u8 0 1 at -14 match u16 0x1a27 0xffff at -14
    match u32 0xf3873a27 0xffffffff at -12 action mirred egress mirror dev vin action pedit munge offset -14 u16
    set 0x4e65 munge offset -12 u32 set 0x755600b4 pipe action mirred egress mirror dev vbr
tc filter add dev vex pref 10002 parent ffff: protocol all u32 match u8 0 0 action mirred egress mirror dev vin
tc filter add dev vin pref 10001 parent ffff: protocol ip u32 match u8 0 1 at -14 match u32 0x1a27f387 0xffffffff
    at -8 match u16 0x3a27 0xffff at -4 action mirred egress mirror dev vex action pedit munge offset -8 u32 set
    0x4e657556 munge offset -4 u16 set 0x00b4 pipe action mirred egress mirror dev vbr
tc filter add dev vin pref 10002 parent ffff: protocol all u32 match u8 0 0 action mirred egress mirror dev vex
tc filter add dev vbr pref 5 parent ffff: protocol all u32 match u16 0x4e65 0xffff at -14 match u32 0x755600b4
    0xffffffff at -12 action drop
tc filter add dev vbr pref 172 parent ffff: protocol all u32 match u32 0x4e657556 0xffffffff at -8 match u16
    0x00b4 0xffff at -4 action drop
""")


def commands(mode: str, protocols=("ip", "all")) -> list[str]:
    return ["tc " + " ".join(P.filter_argv(r)) for r in R.rules_for(mode, ARTICLE_PORT) if r.protocol in protocols]


def test_inline_commands_are_the_articles():
    assert commands("inline") == ARTICLE


def test_tap_commands_are_neuvectors():
    assert commands("tap") == TAP


def test_every_device_and_pref_appears_once_per_mode():
    for mode in ("inline", "tap"):
        keys = [(r.dev, r.pref) for r in R.rules_for(mode, ARTICLE_PORT)]
        assert sorted(keys) == sorted({("vex", 10001), ("vex", 10002), ("vin", 10001), ("vin", 10002),
                                       ("vbr", 5), ("vbr", 172), ("vex", 9997), ("vex", 9998), ("vex", 9999),
                                       ("vin", 9997), ("vin", 9998), ("vin", 9999)})


def test_inline_rules_send_the_pods_frames_to_vbr_and_the_rest_across():
    by = {(r.dev, r.pref): r for r in R.rules_for("inline", ARTICLE_PORT)}
    assert by["vex", 10001].to == "vbr" and by["vex", 10001].rewrite == ARTICLE_PORT.ucmac
    assert by["vin", 10001].field == "src" and by["vin", 10001].to == "vbr"
    assert by["vbr", 5].to == "vin" and by["vbr", 172].to == "vex"
    assert by["vex", 10002].field is None and by["vex", 10002].to == "vin"
    assert all(r.copy_to is None for r in by.values())


def test_tap_rules_copy_and_drop_what_comes_back():
    by = {(r.dev, r.pref): r for r in R.rules_for("tap", ARTICLE_PORT)}
    assert by["vex", 10001].copy_to == "vin" and by["vin", 10001].copy_to == "vex"
    assert by["vbr", 5].to is None and by["vbr", 172].to is None


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        R.rules_for("off", ARTICLE_PORT)


def test_u32_keys_are_merged_into_words_as_the_kernel_keeps_them():
    by = {(r.dev, r.pref): r for r in R.rules_for("inline", ARTICLE_PORT)}
    # `match u8 0 1 at -14` lies inside `match u16 0x1a27 0xffff at -14`: one key, word -16
    assert P._keys(by["vex", 10001]) == {-16: (0x0000FFFF, 0x00001A27), -12: (0xFFFFFFFF, 0xF3873A27)}
    assert P._keys(by["vin", 10001]) == {-16: (0x00000100, 0), -8: (0xFFFFFFFF, 0x1A27F387),
                                         -4: (0xFFFF0000, 0x3A270000)}
    assert P._keys(by["vex", 10002]) == {0: (0, 0)}


def test_pedit_keys_are_the_articles_munges():
    by = {(r.dev, r.pref): r for r in R.rules_for("inline", ARTICLE_PORT)}
    # (word offset, bits kept, value): `munge offset -14 u16 set 0x4e65 munge offset -12 u32 set 0x755600b4`
    assert P._munges(by["vex", 10001]) == [(-16, 0xFFFF0000, 0x00004E65), (-12, 0, 0x755600B4)]
    # `munge offset -8 u32 set 0x4e657556 munge offset -4 u16 set 0x00b4`
    assert P._munges(by["vin", 10001]) == [(-8, 0, 0x4E657556), (-4, 0x0000FFFF, 0x00B40000)]


IPV6 = tc_commands("""
tc filter add dev vex pref 9997 parent ffff: protocol ipv6 u32 match u8 58 0xff at 6 match u8 132 0xfc at 40
    action mirred egress mirror dev vin
tc filter add dev vex pref 9998 parent ffff: protocol ipv6 u32 match u8 58 0xff at 6 match u8 136 0xfe at 40
    action mirred egress mirror dev vin
tc filter add dev vin pref 9997 parent ffff: protocol ipv6 u32 match u8 58 0xff at 6 match u8 132 0xfc at 40
    action mirred egress mirror dev vex
tc filter add dev vin pref 9998 parent ffff: protocol ipv6 u32 match u8 58 0xff at 6 match u8 136 0xfe at 40
    action mirred egress mirror dev vex
tc filter add dev vex pref 9999 parent ffff: protocol ipv6 u32 match u8 0 1 at -14 match u16 0x1a27 0xffff at -14
    match u32 0xf3873a27 0xffffffff at -12 action pedit munge offset -14 u16 set 0x4e65 munge offset -12 u32 set
    0x755600b4 pipe action mirred egress mirror dev vbr
tc filter add dev vin pref 9999 parent ffff: protocol ipv6 u32 match u8 0 1 at -14 match u32 0x1a27f387 0xffffffff
    at -8 match u16 0x3a27 0xffff at -4 action pedit munge offset -8 u32 set 0x4e657556 munge offset -4 u16 set
    0x00b4 pipe action mirred egress mirror dev vbr
""")


def test_ipv6_is_steered_as_ipv4_and_neighbour_discovery_goes_across():
    assert commands("inline", ("ipv6",)) == IPV6
    tap = commands("tap", ("ipv6",))
    assert tap[:4] == IPV6[:4]                      # ND across in tap too, never copied to vbr
    assert "mirror dev vin action pedit" in tap[4] and "mirror dev vex action pedit" in tap[5]
    prefs = {r.pref for r in R.rules_for("inline", ARTICLE_PORT) if r.dev == "vex"}
    assert prefs == set(R.PORT_PREFS) and max(prefs) == R.REST_PREF    # all in front of the rest


def test_icmp6_keys_are_next_header_and_type_words():
    by = {(r.dev, r.pref): r for r in R.rules_for("inline", ARTICLE_PORT)}
    # next header (byte 6 of the IPv6 header) in word 4; the ICMPv6 type (byte 40) in word 40
    assert P._keys(by["vex", 9997]) == {4: (0x0000FF00, 0x00003A00), 40: (0xFC000000, 0x84000000)}
    assert P._keys(by["vin", 9998]) == {4: (0x0000FF00, 0x00003A00), 40: (0xFE000000, 0x88000000)}
    # 132-135 and 136-137: NS (135) and NA (136) across, echo (128/129) not
    covered = {t for v, m in R.ND_TYPES for t in range(256) if t & m == v}
    assert covered == {132, 133, 134, 135, 136, 137}
