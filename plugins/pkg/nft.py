"""nftables userspace through the `nft` binary: one `nft -f -` transaction per change.

Scripts are built by the callers from checked values; `run()` refuses any line with a
character outside a small alphabet (brackets for `[addr]:port`; no backslash, no single quote, no `#`, no `$`, no
newline inside a line), so text from a config can never become a command.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import struct
import subprocess

_LINE_RE = re.compile(r'[A-Za-z0-9 _.:/,=@+\-"{};\[\]]*')     # [ ]: an IPv6 address with a port
_HANDLE_RE = re.compile(r"^(.*?)\s+# handle (\d+)$")


TIMEOUT = 30       # seconds an nft command may take before NftError (a hung nft never hangs a plugin)


class NftError(RuntimeError):
    pass


class NftInputRefused(NftError):
    """A line with a character outside the safe alphabet: never handed to nft."""


def _nft(argv: list[str], script: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=script, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise NftError(f"{' '.join(argv)}: no answer in {TIMEOUT} s") from None


def available() -> bool:
    return shutil.which("nft") is not None


def run(lines: list[str]) -> None:
    """Apply `lines` as one atomic transaction."""
    for line in lines:
        if not _LINE_RE.fullmatch(line):
            raise NftInputRefused(f"refusing unsafe nft input line {line!r}")
    script = "".join(line + "\n" for line in lines)
    p = _nft(["nft", "-f", "-"], script)
    if p.returncode != 0:
        raise NftError(f"nft -f failed: {p.stderr.strip()}\ninput:\n{script}")


def list_tables() -> list[tuple[str, str]]:
    """[(family, name)] of every table in the current netns."""
    p = _nft(["nft", "list", "tables"])
    if p.returncode != 0:
        raise NftError(f"nft list tables: {p.stderr.strip()}")
    return [tuple(line.split()[1:3]) for line in p.stdout.splitlines() if line.startswith("table ")]


_NFT_MSG_NEWTABLE, _NFT_MSG_GETTABLE = 0, 1      # of NFNL_SUBSYS_NFTABLES (plugins.pkg.rtnl.nft_msg)
_NFTA_TABLE_NAME = 1
_NFPROTO_NAMES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


def tables() -> list[tuple[str, str]]:
    """list_tables(), asked of the kernel in one netfilter netlink dump (no `nft` exec); the exec
    when the kernel will not answer so."""
    from plugins.pkg import rtnl as nl
    try:
        with nl.Rtnl(nl.NETLINK_NETFILTER) as rt:
            found = rt.dump(nl.nft_msg(_NFT_MSG_GETTABLE), bytes(4))   # nfgenmsg: NFPROTO_UNSPEC, every family
    except OSError:
        return list_tables()
    out = []
    for kind, payload in found:
        family = _NFPROTO_NAMES.get(payload[0])
        name = nl.nla_parse(payload, 4).get(_NFTA_TABLE_NAME, b"").rstrip(b"\0").decode(errors="replace")
        if kind == nl.nft_msg(_NFT_MSG_NEWTABLE) and family is not None and name:
            out.append((family, name))
    return out


def list_table(family: str, name: str) -> dict[str, list[tuple[str, int]]] | None:
    """{chain: [(rule text, handle)]} of one table, in order; None when it does not exist."""
    p = _nft(["nft", "-a", "list", "table", family, name])
    if p.returncode != 0:
        if "No such file or directory" in p.stderr:
            return None
        raise NftError(f"nft list table {family} {name}: {p.stderr.strip()}")
    return parse_table(p.stdout)


def parse_table(text: str) -> dict[str, list[tuple[str, int]]]:
    chains: dict[str, list[tuple[str, int]]] = {}
    chain = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("chain "):
            chain = line.split()[1]
            chains[chain] = []
        elif line == "}":
            chain = None
        elif chain is not None:
            m = _HANDLE_RE.match(line)
            if m:                        # a rule; chain properties (type/policy) carry no handle
                chains[chain].append((m.group(1), int(m.group(2))))
    return chains


# NFT_MSG_GETRULE and the attributes rules() reads (linux/netfilter/nf_tables.h)
_NFT_MSG_NEWRULE, _NFT_MSG_GETRULE = 6, 7
_NFTA_RULE_TABLE, _NFTA_RULE_CHAIN, _NFTA_RULE_HANDLE, _NFTA_RULE_EXPRESSIONS, _NFTA_RULE_USERDATA = 1, 2, 3, 4, 7
_NFTA_EXPR_NAME, _NFTA_EXPR_DATA = 1, 2
_NFTA_MATCH_NAME, _NFTA_MATCH_INFO = 1, 3
_NFTNL_UDATA_RULE_COMMENT = 0
NFPROTO = {name: num for num, name in _NFPROTO_NAMES.items()}


def _attr_list(buf, off: int = 0):
    """(type, payload) of each attribute in buf[off:], in order, repeats kept (a nested list's
    elements all have one type, which rtnl.nla_parse's dict would fold)."""
    while off + 4 <= len(buf):
        n, kind = struct.unpack_from("=HH", buf, off)
        if n < 4:
            break
        yield kind & 0x3FFF, bytes(buf[off + 4:off + n])
        off += (n + 3) & ~3


_NFTA_IMMEDIATE_DATA, _NFTA_DATA_VERDICT, _NFTA_VERDICT_CHAIN = 2, 2, 2


def _rule_jump(attrs: dict[int, bytes]) -> str:
    """The chain a rule's verdict jumps or goes to ("" when it has none): its immediate expression
    that carries a verdict (an immediate loading a value into a register, as `meta mark set 0x1`
    does before a `jump`, carries none and is passed over)."""
    for _kind, elem in _attr_list(attrs.get(_NFTA_RULE_EXPRESSIONS, b"")):
        expr = dict(_attr_list(elem))
        if expr.get(_NFTA_EXPR_NAME, b"").rstrip(b"\0") == b"immediate":
            data = dict(_attr_list(expr.get(_NFTA_EXPR_DATA, b"")))
            value = dict(_attr_list(data.get(_NFTA_IMMEDIATE_DATA, b"")))
            if _NFTA_DATA_VERDICT not in value:
                continue
            verdict = dict(_attr_list(value[_NFTA_DATA_VERDICT]))
            return verdict.get(_NFTA_VERDICT_CHAIN, b"").rstrip(b"\0").decode(errors="replace")
    return ""


def _rule_comment(attrs: dict[int, bytes]) -> str:
    """A rule's comment: nft's (the rule's userdata) or iptables-nft's (an xt `comment` match,
    whose info is the NUL-padded text); "" when it has none."""
    udata = attrs.get(_NFTA_RULE_USERDATA, b"")
    i = 0
    while i + 2 <= len(udata):                                 # nftnl_udata: type, len, value
        kind, n = udata[i], udata[i + 1]
        if kind == _NFTNL_UDATA_RULE_COMMENT:
            return udata[i + 2:i + 2 + n].split(b"\0", 1)[0].decode(errors="replace")
        i += 2 + n
    for _kind, elem in _attr_list(attrs.get(_NFTA_RULE_EXPRESSIONS, b"")):
        expr = dict(_attr_list(elem))
        if expr.get(_NFTA_EXPR_NAME, b"").rstrip(b"\0") != b"match":
            continue
        match = dict(_attr_list(expr.get(_NFTA_EXPR_DATA, b"")))
        if match.get(_NFTA_MATCH_NAME, b"").rstrip(b"\0") == b"comment":
            return match.get(_NFTA_MATCH_INFO, b"").split(b"\0", 1)[0].decode(errors="replace")
    return ""


_NFT_MSG_NEWGEN, _NFT_MSG_GETGEN = 15, 16
_NFTA_GEN_ID = 1


def generation() -> int:
    """The netns' nf_tables generation (NFT_MSG_GETGEN: the kernel's count of committed
    transactions, every table's, iptables-nft's too). Read before a dump, then given to delete()
    (`generation=`): the kernel refuses that transaction (ERESTART) when anything was committed
    since, so nothing added after the dump is removed with what the dump showed. OSError as
    rules()'s."""
    from plugins.pkg import rtnl as nl
    with nl.Rtnl(nl.NETLINK_NETFILTER) as rt:
        payload = rt.get(nl.nft_msg(_NFT_MSG_GETGEN), bytes(4))
    gen = nl.nla_parse(payload, 4).get(_NFTA_GEN_ID)
    if gen is None or len(gen) < 4:
        raise nl.NetlinkError(errno.EPROTO, "nf_tables generation: no NFTA_GEN_ID in the answer")
    return int.from_bytes(gen[:4], "big")


def rules(family: str, table: str, chain: str) -> list[tuple[int, str, str]]:
    """[(handle, comment, the chain its verdict jumps to or "")] of the rules of one chain, in the
    chain's order, asked of the kernel in
    one netfilter netlink dump (no `nft -a list table` exec); iptables-nft's chains are nf_tables
    ones too (family ip/ip6, its table and chain names), their comments an xt match. A table or
    chain that does not exist has no rules (an empty list). OSError (a netlink refusal, an
    interrupted dump) goes to the caller, whose answer then is the exec."""
    from plugins.pkg import rtnl as nl
    want_table, want_chain = table.encode() + b"\0", chain.encode() + b"\0"
    body = (bytes((NFPROTO[family], 0, 0, 0)) + nl.nla(_NFTA_RULE_TABLE, want_table)
            + nl.nla(_NFTA_RULE_CHAIN, want_chain))
    with nl.Rtnl(nl.NETLINK_NETFILTER) as rt:
        found = rt.dump(nl.nft_msg(_NFT_MSG_GETRULE), body)
    out = []
    for kind, payload in found:
        if kind != nl.nft_msg(_NFT_MSG_NEWRULE) or payload[0] != NFPROTO[family]:
            continue
        attrs = nl.nla_parse(payload, 4)
        if attrs.get(_NFTA_RULE_TABLE) != want_table or attrs.get(_NFTA_RULE_CHAIN) != want_chain:
            continue                     # a kernel that ignores the dump's filter: every rule comes
        out.append((int.from_bytes(attrs.get(_NFTA_RULE_HANDLE, bytes(8)), "big"), _rule_comment(attrs),
                    _rule_jump(attrs)))
    return out


# One nf_tables transaction over netlink (linux/netfilter/nfnetlink.h: a batch between
# NFNL_MSG_BATCH_BEGIN and _END, all of it applied or none)
_NFNL_MSG_BATCH_BEGIN, _NFNL_MSG_BATCH_END = 0x10, 0x11
_NFNL_BATCH_GENID = 1
_NFT_MSG_DELTABLE, _NFT_MSG_DELCHAIN, _NFT_MSG_DELRULE = 2, 5, 8
_NFTA_CHAIN_TABLE, _NFTA_CHAIN_NAME = 1, 3
BATCH_TIMEOUT = 10          # seconds to wait for the kernel's answers (it answers at once)


def delete(items: list[tuple], generation: int | None = None) -> None:
    """Delete nf_tables objects in one transaction over netfilter netlink, no `nft` exec: each
    item ("rule", family, table, chain, handle), ("rules", family, table, chain) (every rule of
    the chain), ("chain", family, table, chain) (refused while a rule still jumps to it, and,
    with rules in it, unless they go first) or ("table", family, table). Works on iptables-nft's
    tables and chains too (they are nf_tables ones). OSError with the kernel's errno when it
    refuses any item (a handle gone, a chain still referenced) or the whole batch (EPERM without
    CAP_NET_ADMIN; ERESTART when `generation`, as generation() read it, is no longer the
    kernel's: something was committed since): then nothing was changed."""
    import socket
    from plugins.pkg import rtnl as nl

    def s(text: str) -> bytes:
        return text.encode() + b"\0"
    msgs = []
    for item in items:
        kind, family, table = item[0], NFPROTO[item[1]], s(item[2])
        head = bytes((family, 0, 0, 0))
        if kind == "rule":
            body = (head + nl.nla(_NFTA_RULE_TABLE, table) + nl.nla(_NFTA_RULE_CHAIN, s(item[3]))
                    + nl.nla(_NFTA_RULE_HANDLE, int(item[4]).to_bytes(8, "big")))
            msgs.append((nl.nft_msg(_NFT_MSG_DELRULE), body))
        elif kind == "rules":
            msgs.append((nl.nft_msg(_NFT_MSG_DELRULE), head + nl.nla(_NFTA_RULE_TABLE, table)
                         + nl.nla(_NFTA_RULE_CHAIN, s(item[3]))))
        elif kind == "chain":
            msgs.append((nl.nft_msg(_NFT_MSG_DELCHAIN), head + nl.nla(_NFTA_CHAIN_TABLE, table)
                         + nl.nla(_NFTA_CHAIN_NAME, s(item[3]))))
        elif kind == "table":
            msgs.append((nl.nft_msg(_NFT_MSG_DELTABLE), head + nl.nla(_NFTA_TABLE_NAME, table)))
        else:
            raise ValueError(kind)
    if not msgs:
        return
    batch_head = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(nl.NFNL_SUBSYS_NFTABLES))
    begin_body = batch_head
    if generation is not None:     # NFNL_BATCH_GENID: the kernel checks it before any item
        begin_body += nl.nla(_NFNL_BATCH_GENID, struct.pack(">I", generation & 0xFFFFFFFF))
    with nl.Rtnl(nl.NETLINK_NETFILTER) as rt:
        rt.sock.settimeout(BATCH_TIMEOUT)
        begin_seq, begin = rt._msg(_NFNL_MSG_BATCH_BEGIN, nl.F_REQUEST, begin_body)
        sent = [rt._msg(kind, nl.F_REQUEST | nl.F_ACK, body) for kind, body in msgs]
        end_seq, end = rt._msg(_NFNL_MSG_BATCH_END, nl.F_REQUEST, batch_head)
        rt.sock.sendall(begin + b"".join(m for _, m in sent) + end)
        waiting = {seq for seq, _ in sent}
        whole = {begin_seq, end_seq}       # a refusal of the whole batch comes with the begin's seq
        try:
            while waiting:                 # an ACK (error 0) or an error for each item, in order
                for rkind, _, rseq, payload in rt._recv():
                    if rkind != nl.NLMSG_ERROR or (rseq not in waiting and rseq not in whole):
                        continue
                    err = -struct.unpack_from("=i", payload)[0]
                    if err:
                        what = "the transaction" if rseq in whole else "an item"
                        raise nl.NetlinkError(err, f"nf_tables delete: {what} refused: {os.strerror(err)}")
                    waiting.discard(rseq)
        except TimeoutError:
            raise nl.NetlinkError(errno.ETIMEDOUT, "nf_tables delete: no answer from the kernel") from None
