"""The tiny eBPF assembler's encodings and the classifier programs made from rules."""
import struct
import sys

import pytest

from plugins.meta.dp_steering import bpfasm as B
from plugins.meta.dp_steering import datapath_ebpf as E
from plugins.meta.dp_steering import rules as R

PORT = R.Port(vex="vexa", vin="vina", vbr="vbr", mac="1a:27:f3:87:3a:27", ucmac="4e:65:75:56:00:b4",
              vex_pref=5, vin_pref=172)
INDEX = {"vexa": 2, "vina": 3, "vbr": 10000000}


def insns(code: bytes) -> list[tuple]:
    return [struct.unpack("<BBhi", code[i:i + 8]) for i in range(0, len(code), 8)]


def test_encodings():
    a = B.Asm().mov(B.R6, B.R1).mov_imm(B.R0, -1).add_imm(B.R3, -24).stx(8, B.R10, -24, B.R1)
    a.st_imm(8, B.R10, -8, 0).ldx(1, B.R1, B.R10, -8).call(B.REDIRECT).exit()
    assert a.assemble().hex(" ", 8).split() == [
        "bf16000000000000",     # r6 = r1
        "b7000000ffffffff",     # r0 = -1
        "07030000e8ffffff",     # r3 += -24
        "7b1ae8ff00000000",     # *(u64 *)(r10 - 24) = r1
        "7a0af8ff00000000",     # *(u64 *)(r10 - 8) = 0
        "71a1f8ff00000000",     # r1 = *(u8 *)(r10 - 8)
        "8500000017000000",     # call bpf_redirect
        "9500000000000000",     # exit
    ]


def test_ld_imm64_takes_two_slots_low_half_first():
    code = B.Asm().ld_imm64(B.R2, 0x8877665544332211).assemble()
    assert insns(code) == [(0x18, 0x02, 0, 0x44332211), (0, 0, 0, 0x88776655 - (1 << 32))]


def test_labels_resolve_forward_and_refuse_unknown_or_twice():
    a = B.Asm().jne_imm(B.R0, 0, "out").mov_imm(B.R0, 1).label("out").exit()
    assert insns(a.assemble())[0] == (0x55, 0x00, 1, 0)
    with pytest.raises(ValueError):
        B.Asm().jne_imm(B.R0, 0, "nowhere").assemble()
    with pytest.raises(ValueError):
        B.Asm().label("x").label("x")


def test_immediates_must_fit_32_bits():
    with pytest.raises(ValueError):
        B.Asm().mov_imm(B.R0, 1 << 31)


def test_catch_all_program_only_redirects():
    rule = next(r for r in R.rules_for("inline", PORT) if r.dev == "vexa" and r.field is None)
    assert insns(E.program(rule, INDEX)) == [
        (0xBF, 0x16, 0, 0), (0xB7, 0x01, 0, INDEX["vina"]), (0xB7, 0x02, 0, 0), (0x85, 0, 0, B.REDIRECT),
        (0x95, 0, 0, 0)]


def test_matching_program_carries_both_macs_and_the_target():
    rule = next(r for r in R.rules_for("inline", PORT) if r.dev == "vexa" and r.field == "dst")
    code = E.program(rule, INDEX)
    mac = bytes.fromhex("1a27f3873a27") + b"\0\0"
    ucmac = bytes.fromhex("4e65755600b4") + b"\0\0"
    imm64 = {int.from_bytes(struct.pack("<i", lo) + struct.pack("<i", hi), "little")
             for (c, _, _, lo), (_, _, _, hi) in zip(insns(code), insns(code)[1:]) if c == 0x18}
    assert imm64 == {int.from_bytes(mac, sys.byteorder), int.from_bytes(ucmac, sys.byteorder)}
    calls = [imm for c, _, _, imm in insns(code) if c == 0x85]
    assert calls == [B.SKB_LOAD_BYTES, B.SKB_STORE_BYTES, B.REDIRECT]
    assert (0xB7, 0x01, 0, INDEX["vbr"]) in insns(code)
    assert insns(code)[-2:] == [(0xB7, 0x00, 0, B.TC_ACT_UNSPEC), (0x95, 0, 0, 0)]   # a miss runs the next filter


def test_tap_program_clones_before_rewriting_and_vbr_drops():
    by = {(r.dev, r.pref): r for r in R.rules_for("tap", PORT)}
    calls = [imm for c, _, _, imm in insns(E.program(by["vina", 10001], INDEX)) if c == 0x85]
    assert calls == [B.SKB_LOAD_BYTES, B.SKB_LOAD_BYTES, B.CLONE_REDIRECT, B.SKB_STORE_BYTES, B.REDIRECT]
    drop = insns(E.program(by["vbr", 5], INDEX))
    assert (0xB7, 0x00, 0, B.TC_ACT_SHOT) in drop and B.REDIRECT not in [i[3] for i in drop if i[0] == 0x85]


def test_filter_name_pins_the_program():
    rules = R.rules_for("inline", PORT)
    other = R.rules_for("inline", PORT._replace(ucmac="4e:65:75:56:00:b5"))
    names = [E.filter_name(r, E.program(r, INDEX)) for r in rules]
    assert len(set(names)) == len(names)
    assert names[0].startswith("pycni-dp vexa 10001 ")
    assert E.filter_name(other[0], E.program(other[0], INDEX)) != names[0]
