"""iptables userspace, driven only through iptables-save / iptables-restore.

Every change is one `iptables-restore --noflush` transaction. Text that goes into
restore input is checked here: a comment that could end a line, open a quote or
smuggle an option is refused, never quoted around (SAFE_TEXT is that alphabet, for
callers checking their other tokens too).
"""
from __future__ import annotations

import os
import re
import subprocess

from libcni_py.errors import CNIError, INVALID_CONFIG

# Letters, digits, space and _.:/,=@+- : nothing that ends a line, opens a quote or escapes.
SAFE_TEXT = re.compile(r"[A-Za-z0-9 _.:/,=@+\-]{1,255}")
TABLES = ("filter", "nat", "mangle", "raw", "security")


WAIT_SECONDS = "10"      # how long restore waits for the xtables lock before XtablesLockError
TIMEOUT = 60             # seconds any iptables command may take before IptablesError (never a hang)


class IptablesError(RuntimeError):
    pass


class XtablesLockError(IptablesError):
    """Another program (kube-proxy, a firewall) held the xtables lock for WAIT_SECONDS."""


def _run(argv: list[str], text_in: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=text_in, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise IptablesError(f"{' '.join(argv)}: no answer in {TIMEOUT} s") from None


def _failed(what: str, stderr: str) -> IptablesError:
    text = stderr.strip()
    if "xtables lock" in text:
        return XtablesLockError(f"{what}: {text}")
    return IptablesError(f"{what}: {text}")


def check_comment(text: str) -> str:
    """Comments carry network names and container IDs; nothing that can break a line."""
    if not isinstance(text, str) or not SAFE_TEXT.fullmatch(text):
        raise CNIError(INVALID_CONFIG, f"text not allowed in an iptables comment: {text!r}",
                       "1-255 chars of letters, digits, space and _.:/,=@+-")
    return text


def comment_arg(text: str) -> str:
    """`-m comment --comment "<text>"` for restore input, after check_comment."""
    return f'-m comment --comment "{check_comment(text)}"'


def save(table: str, binary: str = "iptables") -> str:
    if table not in TABLES:
        raise ValueError(table)
    p = _run([f"{binary}-save", "-t", table])
    if p.returncode != 0:
        raise IptablesError(f"{binary}-save -t {table}: {p.stderr.strip()}")
    return p.stdout


def restore(table: str, lines: list[str], binary: str = "iptables", wait: bool = True) -> None:
    """Apply `lines` (chain declarations and -A/-I/-D rules) to `table` atomically."""
    if table not in TABLES:
        raise ValueError(table)
    for line in lines:
        if "\n" in line or "\r" in line or "\0" in line:
            raise CNIError(INVALID_CONFIG, "refusing iptables-restore input with a line break", repr(line))
    text = f"*{table}\n" + "".join(line + "\n" for line in lines) + "COMMIT\n"
    argv = [f"{binary}-restore", "--noflush"]
    if wait:
        argv.append(f"--wait={WAIT_SECONDS}")
    p = _run(argv, text)
    if p.returncode != 0:
        raise _failed(f"{binary}-restore failed", p.stderr + "\ninput:\n" + text)


# nf_tables over netfilter netlink (linux/netfilter/nfnetlink.h, nf_tables.h)
_NFT_MSG_NEWCHAIN, _NFT_MSG_GETCHAIN = 3, 4      # of NFNL_SUBSYS_NFTABLES (plugins.pkg.rtnl.nft_msg)
_NFTA_CHAIN_TABLE, _NFTA_CHAIN_NAME = 1, 3
_NFPROTO = {"iptables": 2, "ip6tables": 10}                                # NFPROTO_IPV4, NFPROTO_IPV6


def nft_backed(binary: str = "iptables") -> bool:
    """Is `binary`-save iptables-nft (xtables-nft-multi: its tables and chains are nf_tables ones of
    the same names, family ip or ip6)? Read from the path alone, no exec."""
    import shutil                    # here: vxlan's exec imports this module, and only a DEL asks
    path = shutil.which(f"{binary}-save")
    return path is not None and "nft" in os.path.basename(os.path.realpath(path))


def chains(table: str, binary: str = "iptables") -> set[str] | None:
    """The chains of `table` that exist in the kernel, asked in one netfilter netlink dump instead
    of an iptables-save exec: every user chain `binary`-save lists is there (iptables-nft makes a
    built-in chain only when a rule needs it; iptables-save lists the built-ins always); None when
    that answer cannot be had so (iptables-legacy or a wrapper, any netlink refusal): the caller
    reads iptables-save then. A table that does not exist has no chains (an empty set)."""
    if table not in TABLES:
        raise ValueError(table)
    if binary not in _NFPROTO or not nft_backed(binary):
        return None
    from plugins.pkg import rtnl as nl
    want = table.encode() + b"\0"
    body = bytes((_NFPROTO[binary], 0, 0, 0)) + nl.nla(_NFTA_CHAIN_TABLE, want)
    try:
        with nl.Rtnl(nl.NETLINK_NETFILTER) as rt:
            found = rt.dump(nl.nft_msg(_NFT_MSG_GETCHAIN), body)
    except OSError:
        return None
    out = set()
    for kind, payload in found:
        attrs = nl.nla_parse(payload, 4)
        if kind == nl.nft_msg(_NFT_MSG_NEWCHAIN) and attrs.get(_NFTA_CHAIN_TABLE, b"").rstrip(b"\0") == want[:-1]:
            out.add(attrs.get(_NFTA_CHAIN_NAME, b"").rstrip(b"\0").decode(errors="replace"))
    return out


def save_all(binary: str = "iptables") -> str:
    """Every table iptables knows about in this netns, in one iptables-save."""
    p = _run([f"{binary}-save"])
    if p.returncode != 0:
        raise IptablesError(f"{binary}-save: {p.stderr.strip()}")
    return p.stdout
