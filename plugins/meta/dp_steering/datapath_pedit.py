"""The tc-pedit datapath: u32 match + pedit MAC rewrite + mirred, as in the article.

`filter_argv(rule)` is the article's `tc filter add ...` command for a rule (without
the leading `tc`); `install` runs them with `tc -batch -` in the enforcer netns;
`differences` reads the filters back over netlink and compares the u32 keys, the
action kinds and the mirred targets with what the rules ask for.
"""
from __future__ import annotations

from plugins.pkg import tc

from .rules import Rule

NAME = "tc-pedit"
# byte offsets from the network header (u32 at ingress sees the MAC header at -14)
_DST, _SRC = -14, -8


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
    try:
        import gzip
        with gzip.open("/proc/config.gz", "rt") as f:
            return any(line.strip() in ("CONFIG_NET_ACT_PEDIT=y", "CONFIG_NET_ACT_PEDIT=m") for line in f)
    except OSError:
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
    if r.field is None:
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


def install(ipr, netns: str, rules: list[Rule], index: dict[str, int]) -> None:
    tc.run_batch([filter_argv(r) for r in rules], netns)


# -- reading back

def _keys(r: Rule) -> dict[int, tuple[int, int]]:
    """The u32 selector the kernel keeps for a rule: {word offset: (mask, value)},
    sub-word matches merged into their 32-bit word as tc does."""
    keys: dict[int, tuple[int, int]] = {}

    def put(off: int, size: int, value: int, mask: int) -> None:
        word = off & ~3
        shift = 8 * (4 - size - (off - word))
        m, v = keys.get(word, (0, 0))
        keys[word] = (m | (mask << shift), v | (value << shift))

    if r.field is None:
        put(0, 1, 0, 0)
    else:
        if r.unicast:
            put(_DST, 1, 0, 1)
        for size, raw, off in _mac_words(r.field, r.mac):
            n = 2 if size == "u16" else 4
            put(off, n, int.from_bytes(raw, "big"), (1 << (8 * n)) - 1)
    return keys


def _actions(r: Rule, index: dict[str, int]) -> list[tuple]:
    acts = []
    if r.copy_to:
        acts.append(("mirred", index.get(r.copy_to)))
    if r.rewrite:
        acts.append(("pedit", None))
    acts.append(("mirred", index.get(r.to)) if r.to else ("gact", None))
    return acts


def differences(found: dict[tuple[str, int], tc.Filter], rules: list[Rule], index: dict[str, int]) -> str | None:
    """The first way the filters on the devices differ from `rules`, or None."""
    for r in rules:
        f = found.get((r.dev, r.pref))
        if f is None or f.kind != "u32" or f.protocol != tc.PROTOCOLS[r.protocol]:
            return f"{r.dev} pref {r.pref}: expected a u32 filter for protocol {r.protocol}"
        sel = f.options.get_attr("TCA_U32_SEL") if f.options else None
        have = {k["key_off"]: (k["key_mask"], k["key_val"]) for k in (sel["keys"] if sel else [])}
        if have != _keys(r):
            return f"{r.dev} pref {r.pref}: u32 keys {have} differ from {_keys(r)}"
        acts = []
        for _, act in (f.options.get_attr("TCA_U32_ACT") or {"attrs": []})["attrs"]:
            kind = act.get_attr("TCA_ACT_KIND")
            target = None
            if kind == "mirred":
                target = act.get_attr("TCA_ACT_OPTIONS").get_attr("TCA_MIRRED_PARMS")["ifindex"]
            acts.append((kind, target))
        if acts != _actions(r, index):
            return f"{r.dev} pref {r.pref}: actions {acts} differ from {_actions(r, index)}"
    return None
