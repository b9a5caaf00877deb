"""iptables userspace, driven only through iptables-save / iptables-restore.

Every change is one `iptables-restore --noflush` transaction. Text that goes into
restore input is checked here: a comment that could end a line, open a quote or
smuggle an option is refused, never quoted around (SAFE_TEXT is that alphabet, for
callers checking their other tokens too).
"""
from __future__ import annotations

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


def save_all(binary: str = "iptables") -> str:
    """Every table iptables knows about in this netns, in one iptables-save."""
    p = _run([f"{binary}-save"])
    if p.returncode != 0:
        raise IptablesError(f"{binary}-save: {p.stderr.strip()}")
    return p.stdout
