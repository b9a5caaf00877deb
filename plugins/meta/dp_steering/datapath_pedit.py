"""The tc-pedit datapath: u32 match + pedit MAC rewrite + mirred, as NeuVector's enforcer
sets them up (neuvector/neuvector, agent/pipe/tc.go).

`filter_argv(rule)` is the `tc filter add ...` command for a rule (without
the leading `tc`); `filter_msg(rule)` is the netlink request tc makes of it, byte for byte,
and `install` sends those (one round trip, no exec) in the enforcer netns; `differences`
reads the filters back over netlink and compares the u32 keys, the action kinds, the pedit
keys and the mirred targets with what the rules ask for.
"""
from __future__ import annotations

import os
import socket
import struct

from plugins.pkg import rtnl as nl
from plugins.pkg import tc
from plugins.pkg.rtnl import F_CREATE, F_EXCL, nla, nla_parse

from .rules import Rule

NAME = "tc-pedit"
# byte offsets from the network header (u32 at ingress sees the MAC header at -14)
_DST, _SRC = -14, -8
_NEXTHDR, _ICMP6_TYPE, _ICMPV6 = 6, 40, 58      # IPv6 next header; the ICMPv6 type behind a bare header
# netlink attributes read back (linux/pkt_cls.h, tc_act/tc_mirred.h, tc_act/tc_pedit.h)
TCA_U32_SEL, TCA_U32_ACT = 5, 7
TCA_ACT_KIND, TCA_ACT_OPTIONS = 1, 2
TCA_MIRRED_PARMS = 2
TCA_PEDIT_PARMS, TCA_PEDIT_PARMS_EX = 2, 4


def available() -> bool:
    """Whether this kernel has act_pedit: built in, loaded, or a module it can load."""
    import os
    if os.path.isdir("/sys/module/act_pedit"):
        return True
    release = os.uname().release
    for name in ("modules.builtin", "modules.dep"):
        try:
            with open(f"/lib/modules/{release}/{name}") as f:
                if "/act_pedit.ko" in f.read():
                    return True
        except OSError:
            pass
    try:                  # read at once: gzip's small reads of /proc/config.gz took 3-30 ms, this 0.6
        with open("/proc/config.gz", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    return config_has_pedit(raw)


_PEDIT_LINES = (b"CONFIG_NET_ACT_PEDIT=y", b"CONFIG_NET_ACT_PEDIT=m")
_PEDIT_UNSET = b"# CONFIG_NET_ACT_PEDIT is not set"


def config_has_pedit(raw: bytes, chunk: int = 8192) -> bool:
    """Does the gzip'd kernel config `raw` set CONFIG_NET_ACT_PEDIT (y or m)? Inflated a chunk at
    a time up to the symbol's line (Kconfig writes each symbol once: its value, or "is not set"),
    not whole: the symbol sits about half-way into a distribution's 100 KB config (~0.4 ms here
    instead of ~0.9 for all of it). A stream that does not inflate says no."""
    import zlib
    d = zlib.decompressobj(31)                    # 31: the gzip wrapper
    parts: list[bytes] = []
    tail = b""                                    # the last, unfinished line so far
    try:
        for at in range(0, len(raw), chunk):
            part = tail + d.decompress(raw[at:at + chunk])
            cut = part.rfind(b"\n") + 1
            lines, tail = part[:cut], part[cut:]
            parts.append(lines)
            if b"CONFIG_NET_ACT_PEDIT" in lines:  # its line is complete: it decides
                if any(_has_line(lines, want) for want in _PEDIT_LINES):
                    return True
                if _has_line(lines, _PEDIT_UNSET):
                    return False
        text = b"".join(parts) + tail + d.flush()
    except zlib.error:
        return False
    return d.eof and any(_has_line(text, want) for want in _PEDIT_LINES)


def _has_line(text: bytes, want: bytes) -> bool:
    """Is `want`, stripped, a line of `text` (lines end at \n, \r or \r\n, as a text file's)?"""
    at = text.find(want)
    while at >= 0:
        start = max(text.rfind(b"\n", 0, at), text.rfind(b"\r", 0, at)) + 1
        ends = [e for e in (text.find(b"\n", at), text.find(b"\r", at)) if e >= 0]
        if text[start:min(ends) if ends else len(text)].strip() == want:
            return True
        at = text.find(want, at + 1)
    return False


def _hex(raw: bytes) -> str:
    return "0x" + raw.hex()


def _mac_words(field: str, mac: str) -> list[tuple[str, bytes, int]]:
    """(size, bytes, offset) of the two u32-matchable words holding a MAC."""
    b = bytes.fromhex(mac.replace(":", ""))
    if field == "dst":
        return [("u16", b[:2], _DST), ("u32", b[2:], _DST + 2)]
    return [("u32", b[:4], _SRC), ("u16", b[4:], _SRC + 4)]


def filter_argv(r: Rule) -> list[str]:
    a = ["filter", "add", "dev", r.dev, "pref", str(r.pref), "parent", "ffff:", "protocol", r.protocol, "u32"]
    if r.icmp6 is not None:
        for size, value, mask, off in _icmp6_matches(r):
            a += ["match", size, str(value), hex(mask), "at", str(off)]
    elif r.field is None:
        a += ["match", "u8", "0", "0"]
    else:
        if r.unicast:
            a += ["match", "u8", "0", "1", "at", str(_DST)]
        for size, raw, off in _mac_words(r.field, r.mac):
            a += ["match", size, _hex(raw), "0xffff" if size == "u16" else "0xffffffff", "at", str(off)]
    if r.copy_to:
        a += ["action", "mirred", "egress", "mirror", "dev", r.copy_to]
    if r.rewrite:
        a += ["action", "pedit"]
        for size, raw, off in _mac_words(r.field, r.rewrite):
            a += ["munge", "offset", str(off), size, "set", _hex(raw)]
        a += ["pipe"]
    a += ["action", "mirred", "egress", "mirror", "dev", r.to] if r.to else ["action", "drop"]
    return a


def install(rt, netns: str, rules: list[Rule], index: dict[str, int]) -> None:
    """The rules' filters over netlink, in order, in one round trip: the very requests
    `tc filter add` sends for filter_argv(rule) (tc -batch was an exec per ADD), the first
    refusal raised. `netns` is rt's."""
    rules = list(rules)
    for r, err in zip(rules, rt.batch([filter_msg(r, index) for r in rules])):
        if err:
            raise nl.NetlinkError(err, f"{r.dev} pref {r.pref}: tc filter add: {os.strerror(err)}")


# -- the request `tc filter add` (iproute2) makes of filter_argv(rule), byte for byte
TCA_GACT_PARMS = 2
TC_U32_TERMINAL = 1
TC_ACT_SHOT, TC_ACT_PIPE = 2, 3
TCA_EGRESS_MIRROR = 2
_NESTED = 0x8000


def filter_msg(r: Rule, index: dict[str, int]) -> tuple[int, int, bytes]:
    """RTM_NEWTFILTER for rule `r` (devices by `index`); for Rtnl.batch."""
    acts = []
    if r.copy_to:
        acts.append(_mirred(index[r.copy_to]))
    if r.rewrite:
        munges = b"".join(struct.pack("!II", mask, value) + struct.pack("=iIII", off, 0, 0, 0)
                          for off, mask, value in _munges(r))
        parms = _gen(TC_ACT_PIPE) + struct.pack("=BBxx", len(munges) // 24, 0) + munges
        acts.append(_action(b"pedit", nla(TCA_PEDIT_PARMS, parms)))
    acts.append(_mirred(index[r.to]) if r.to else _action(b"gact", nla(TCA_GACT_PARMS, _gen(TC_ACT_SHOT))))
    keys = _keys(r)
    sel = struct.pack("=BBBxHHhhI", TC_U32_TERMINAL, 0, len(keys), 0, 0, 0, 0, 0) + b"".join(
        struct.pack("!II", mask, value) + struct.pack("=ii", off, 0) for off, (mask, value) in keys.items())
    options = nla(TCA_U32_ACT, b"".join(nla(i, a) for i, a in enumerate(acts, 1))) + nla(TCA_U32_SEL, sel)
    body = (struct.pack("=BxxxiIII", 0, index[r.dev], 0, tc.INGRESS,
                        (r.pref & 0xFFFF) << 16 | socket.htons(tc.PROTOCOLS[r.protocol]))
            + nla(tc.TCA_KIND, b"u32\0") + nla(tc.TCA_OPTIONS, options))
    return tc.RTM_NEWTFILTER, F_CREATE | F_EXCL, body


def _gen(action: int) -> bytes:
    """struct tc_gen: index, capab, action, refcnt, bindcnt."""
    return struct.pack("=IIiii", 0, 0, action, 0, 0)


def _action(kind: bytes, options: bytes) -> bytes:
    return nla(TCA_ACT_KIND, kind + b"\0") + nla(TCA_ACT_OPTIONS | _NESTED, options)


def _mirred(ifindex: int) -> bytes:
    """`mirred egress mirror dev X` (its control: pipe): struct tc_mirred, tc_gen + eaction + ifindex."""
    return _action(b"mirred", nla(TCA_MIRRED_PARMS, _gen(TC_ACT_PIPE) + struct.pack("=iI", TCA_EGRESS_MIRROR, ifindex)))


# -- reading back the filters' raw attributes

def _words(pairs) -> dict[int, tuple[int, int]]:
    """{word offset: (mask, value)} for (offset, size, value, mask) byte-range matches,
    merged into aligned 32-bit words as tc's u32 does."""
    keys: dict[int, tuple[int, int]] = {}
    for off, size, value, mask in pairs:
        word = off & ~3
        shift = 8 * (4 - size - (off - word))
        m, v = keys.get(word, (0, 0))
        keys[word] = (m | (mask << shift), v | (value << shift))
    return keys


def _icmp6_matches(r: Rule) -> list[tuple[str, int, int, int]]:
    """(size, value, mask, offset) matching ICMPv6 (next header 58 right after the IPv6 header)
    of the rule's type/mask."""
    value, mask = r.icmp6
    return [("u8", _ICMPV6, 0xFF, _NEXTHDR), ("u8", value, mask, _ICMP6_TYPE)]


def _keys(r: Rule) -> dict[int, tuple[int, int]]:
    """The u32 selector the kernel keeps for a rule."""
    if r.icmp6 is not None:
        return _words([(off, 1, value, mask) for _size, value, mask, off in _icmp6_matches(r)])
    if r.field is None:
        return {0: (0, 0)}
    pairs = [(_DST, 1, 0, 1)] if r.unicast else []
    for _size, raw, off in _mac_words(r.field, r.mac):
        n = len(raw)
        pairs.append((off, n, int.from_bytes(raw, "big"), (1 << (8 * n)) - 1))
    return _words(pairs)


def _munges(r: Rule) -> list[tuple[int, int, int]]:
    """pedit keys (offset, mask kept, value) for the rewrite, one per munge."""
    out = []
    for _size, raw, off in _mac_words(r.field, r.rewrite):
        whole = (1 << (8 * len(raw))) - 1
        (word, (mask, value)), = _words([(off, len(raw), int.from_bytes(raw, "big"), whole)]).items()
        out.append((word, ~mask & 0xFFFFFFFF, value))
    return out


def _sel_keys(raw: bytes) -> dict[int, tuple[int, int]]:
    """struct tc_u32_sel (16 bytes) + tc_u32_key {be32 mask, be32 val, int off, int offmask}[]."""
    keys = {}
    for i in range(raw[2]):
        mask, val = struct.unpack_from("!II", raw, 16 + 16 * i)
        off, = struct.unpack_from("=i", raw, 24 + 16 * i)
        keys[off] = (mask, val)
    return keys


def _pedit_keys(options: dict[int, bytes]) -> list[tuple[int, int, int]]:
    """TCA_PEDIT_PARMS(_EX): tc_gen (20 bytes), nkeys, flags, pad, then
    tc_pedit_key {be32 mask, be32 val, int off, at, offmask, shift}[]."""
    sel = options.get(TCA_PEDIT_PARMS_EX) or options.get(TCA_PEDIT_PARMS) or b""
    if len(sel) < 24:
        return []
    return [(struct.unpack_from("=i", sel, 32 + 24 * i)[0],) + struct.unpack_from("!II", sel, 24 + 24 * i)
            for i in range(sel[20])]


def _actions(r: Rule, index: dict[str, int]) -> list[tuple]:
    acts: list[tuple] = []
    if r.copy_to:
        acts.append(("mirred", index.get(r.copy_to)))
    if r.rewrite:
        acts.append(("pedit", _munges(r)))
    acts.append(("mirred", index.get(r.to)) if r.to else ("gact", None))
    return acts


def _installed_actions(f: tc.Filter) -> list[tuple]:
    """(kind, detail) per action, in order: mirred's target ifindex (struct tc_mirred:
    tc_gen, eaction, ifindex), pedit's keys."""
    acts = []
    for act in nla_parse(f.options.get(TCA_U32_ACT, b"")).values():
        a = nla_parse(act)
        kind, opts = a.get(TCA_ACT_KIND, b"").rstrip(b"\0").decode(), nla_parse(a.get(TCA_ACT_OPTIONS, b""))
        detail = None
        if kind == "mirred" and len(opts.get(TCA_MIRRED_PARMS, b"")) >= 28:
            detail = struct.unpack_from("=I", opts[TCA_MIRRED_PARMS], 24)[0]
        elif kind == "pedit":
            detail = _pedit_keys(opts)
        acts.append((kind, detail))
    return acts


def differences(found: dict[tuple[str, int], list[tc.Filter]], rules: list[Rule],
                index: dict[str, int]) -> str | None:
    """The first way the filters on the devices differ from `rules`, or None."""
    for r in rules:
        nodes = [f for f in found.get((r.dev, r.pref), []) if f.kind == "u32" and TCA_U32_SEL in f.options]
        if len(nodes) != 1 or nodes[0].protocol != tc.PROTOCOLS[r.protocol]:
            return f"{r.dev} pref {r.pref}: expected one u32 filter for protocol {r.protocol}"
        have = _sel_keys(nodes[0].options[TCA_U32_SEL])
        if have != _keys(r):
            return f"{r.dev} pref {r.pref}: u32 keys {have} differ from {_keys(r)}"
        acts, want = _installed_actions(nodes[0]), _actions(r, index)
        if acts != want:
            return f"{r.dev} pref {r.pref}: actions {acts} differ from {want}"
    return None
