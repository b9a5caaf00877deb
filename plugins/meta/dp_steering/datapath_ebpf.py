"""The eBPF datapath: one cls_bpf direct-action classifier per rule, same device and
priority as the tc-pedit filter it stands for, and the same bytes on the wire.

Each program (an `icmp6` rule first checks next header 58 and the ICMPv6 type under its mask
at fixed offsets behind a bare IPv6 header): no match -> TC_ACT_UNSPEC (the next filter runs, as a u32 miss); match ->
optional bpf_clone_redirect of the untouched frame (tap), bpf_skb_store_bytes of the
new MAC, bpf_redirect to the target's egress (or TC_ACT_SHOT). Protocol selection is
the filter's, as for u32. Programs are assembled here and loaded with bpf(2); the
filter's name carries a hash of the program, so CHECK can tell it is the one we made.
"""
from __future__ import annotations

import os
import sys

from plugins.pkg import tc
from plugins.pkg.names import sha256

from . import bpfasm as B
from .rules import Rule

NAME = "ebpf"
_OFF = {"dst": 0, "src": 6}
_NEXTHDR, _ICMP6_TYPE, _ICMPV6 = 14 + 6, 14 + 40, 58     # frame offsets: IPv6 next header, ICMPv6 type


def available() -> bool:
    """Whether this kernel loads a SCHED_CLS program (bpf(2) and cls_bpf)."""
    a = B.Asm().mov_imm(B.R0, B.TC_ACT_UNSPEC).exit()
    try:
        os.close(B.load_sched_cls(a.assemble(), "pycni_probe"))
    except OSError:
        return False
    return True


def _mac_u64(mac: str) -> int:
    """A MAC as the u64 an 8-byte stack load of it (two zero bytes after) yields."""
    return int.from_bytes(bytes.fromhex(mac.replace(":", "")) + b"\0\0", sys.byteorder)


def program(r: Rule, index: dict[str, int]) -> bytes:
    a = B.Asm()
    a.mov(B.R6, B.R1)
    if r.icmp6 is not None:                          # ICMPv6 of a type: next header, then type
        value, mask = r.icmp6
        for offset, want, bits in ((_NEXTHDR, _ICMPV6, 0xFF), (_ICMP6_TYPE, value, mask)):
            a.st_imm(8, B.R10, -32, 0)
            _load(a, offset, -32, 1)
            a.ldx(1, B.R1, B.R10, -32).and_imm(B.R1, bits).jne_imm(B.R1, want, "miss")
    elif r.field is not None:
        a.st_imm(8, B.R10, -8, 0)
        _load_mac(a, 0, -8)                          # destination MAC at fp-8
        if r.unicast:
            a.ldx(1, B.R1, B.R10, -8).jset_imm(B.R1, 1, "miss")
        if r.field == "src":
            a.st_imm(8, B.R10, -16, 0)
            _load_mac(a, 6, -16)                     # source MAC at fp-16
        a.ldx(8, B.R1, B.R10, -8 if r.field == "dst" else -16)
        a.ld_imm64(B.R2, _mac_u64(r.mac)).jne(B.R1, B.R2, "miss")
    if r.copy_to:
        a.mov(B.R1, B.R6).mov_imm(B.R2, index[r.copy_to]).mov_imm(B.R3, 0).call(B.CLONE_REDIRECT)
    if r.rewrite:
        a.ld_imm64(B.R1, _mac_u64(r.rewrite)).stx(8, B.R10, -24, B.R1)
        a.mov(B.R1, B.R6).mov_imm(B.R2, _OFF[r.field]).mov(B.R3, B.R10).add_imm(B.R3, -24)
        a.mov_imm(B.R4, 6).mov_imm(B.R5, 0).call(B.SKB_STORE_BYTES)
        a.jne_imm(B.R0, 0, "drop")
    if r.to:
        a.mov_imm(B.R1, index[r.to]).mov_imm(B.R2, 0).call(B.REDIRECT).exit()
    if r.rewrite or not r.to:
        a.label("drop").mov_imm(B.R0, B.TC_ACT_SHOT).exit()
    if r.field is not None or r.icmp6 is not None:
        a.label("miss").mov_imm(B.R0, B.TC_ACT_UNSPEC).exit()
    return a.assemble()


def _load_mac(a: B.Asm, offset: int, to: int) -> None:
    _load(a, offset, to, 6)


def _load(a: B.Asm, offset: int, to: int, length: int) -> None:
    """`length` bytes of the frame at `offset` to the stack at fp`to` (a short frame: miss)."""
    a.mov(B.R1, B.R6).mov_imm(B.R2, offset).mov(B.R3, B.R10).add_imm(B.R3, to).mov_imm(B.R4, length)
    a.call(B.SKB_LOAD_BYTES).jne_imm(B.R0, 0, "miss")


def filter_name(r: Rule, code: bytes) -> str:
    return f"pycni-dp {r.dev} {r.pref} {sha256(code).hexdigest()[:16]}"


def install(rt, netns: str, rules: list[Rule], index: dict[str, int]) -> None:
    """Load every distinct program once, then attach them all, in order, in one netlink round
    trip. Rules whose programs are the same bytes share one loaded program (a pod's IPv6 rule
    and its IPv4 one differ only in the filter's protocol: 12 rules, 10 programs): each filter
    holds its own reference to it, and names it as before (filter_name: device, priority, hash)."""
    fds: dict[bytes, int] = {}
    try:
        attach = []
        for r in rules:
            code = program(r, index)
            if code not in fds:
                fds[code] = B.load_sched_cls(code, f"dpst_{r.pref}")
            attach.append((index[r.dev], r.pref, tc.PROTOCOLS[r.protocol], fds[code], filter_name(r, code)))
        tc.add_bpf_filters(rt, attach)
    finally:
        for fd in fds.values():
            os.close(fd)


def differences(found: dict[tuple[str, int], list[tc.Filter]], rules: list[Rule],
                index: dict[str, int]) -> str | None:
    """The first way the filters on the devices differ from `rules`, or None."""
    for r in rules:
        have = found.get((r.dev, r.pref), [])
        f = have[0] if len(have) == 1 else None
        if f is None or f.kind != "bpf" or f.protocol != tc.PROTOCOLS[r.protocol]:
            return f"{r.dev} pref {r.pref}: expected one bpf filter for protocol {r.protocol}"
        want = filter_name(r, program(r, index))
        have = f.options.get(tc.TCA_BPF_NAME, b"").rstrip(b"\0").decode(errors="replace")
        if have != want:
            return f"{r.dev} pref {r.pref}: program {have!r} is not {want!r}"
    return None
