"""Plugin error codes and the one translation of plugins/pkg exceptions into them.

Each plugin has an `errors.py` that builds one `Codes` table for its range (meaning and fix for
every code, the README table is checked against it) and one `translate` for its skel `Plugin`:

    CODES = Codes("vxlan", 100, 119)
    REGISTRY_UNREADABLE = CODES.add(100, "the registry cannot be read or written", "fix registry.path")
    ...
    translate = CODES.translator({KERNEL: DEVICE_FAILED, IPTABLES: MASQ_FAILED, ...})

The skel calls `translate(exc)` for any exception that is not a CNIError; what it maps becomes
that code with the exception's text as details, what it does not map stays a 999 (our bug).
The kinds below are what plugins/pkg raises; they are matched by class, so no import of the
modules that define them is needed here (that would put them all on every exec path).
"""
from __future__ import annotations

from libcni_py.errors import CNIError

# Kinds of failure the shared code raises, by exception class name (module, class).
KERNEL = "kernel"            # plugins.pkg.rtnl.NetlinkError: the kernel refused a netlink request
XTABLES_LOCK = "xtables"     # plugins.pkg.iptables.XtablesLockError: another program holds the lock
IPTABLES = "iptables"        # plugins.pkg.iptables.IptablesError
NFT = "nft"                  # plugins.pkg.nft.NftError
DP = "dp"                    # plugins.meta.dp_steering.dpctl.DpError: the dp refused a message
DP_TIMEOUT = "dp-timeout"    # TimeoutError: no answer (the dp, a lock, a subprocess)
NETNS = "netns"              # plugins.pkg.ns.NetnsError: a namespace could not be entered
TOOL_MISSING = "tool"        # FileNotFoundError from exec'ing a tool (iptables, nft, ip)
IO = "io"                    # any other OSError (disk, permissions)

_KINDS = (("XtablesLockError", XTABLES_LOCK), ("IptablesError", IPTABLES), ("NftError", NFT),
          ("DpError", DP), ("NetnsError", NETNS), ("NetlinkError", KERNEL))


def kind_of(exc: BaseException) -> str | None:
    """The kind of a failure from shared code, most specific class first; None: unknown (a bug)."""
    mro = {cls.__name__ for cls in type(exc).__mro__}
    for name, kind in _KINDS:
        if name in mro:
            return kind
    if isinstance(exc, TimeoutError):
        return DP_TIMEOUT
    if isinstance(exc, FileNotFoundError) and getattr(exc, "filename", None) and "/" not in str(exc.filename):
        return TOOL_MISSING
    if isinstance(exc, OSError):
        return IO
    return None


class Code(int):
    """An error code that knows its meaning and fix (an int everywhere else)."""

    meaning: str
    fix: str

    def __new__(cls, value: int, meaning: str, fix: str) -> Code:
        self = super().__new__(cls, value)
        self.meaning, self.fix = meaning, fix
        return self


class Codes:
    """One plugin's code range: every code once, inside the range, with meaning and fix."""

    def __init__(self, plugin: str, first: int, last: int):
        self.plugin, self.first, self.last = plugin, first, last
        self.table: dict[int, Code] = {}

    def add(self, value: int, meaning: str, fix: str) -> Code:
        if not self.first <= value <= self.last:
            raise ValueError(f"{self.plugin}: code {value} outside {self.first}-{self.last}")
        if value in self.table:
            raise ValueError(f"{self.plugin}: code {value} defined twice")
        code = self.table[value] = Code(value, meaning, fix)
        return code

    def translator(self, mapping: dict[str, int]):
        """skel's `translate` hook: kinds of shared-code failure -> this plugin's codes (or the
        spec's, e.g. IO -> 5). Unmapped kinds and unknown exceptions return None: a 999."""
        def translate(exc: BaseException) -> CNIError | None:
            kind = kind_of(exc)
            code = mapping.get(kind) if kind else None
            if code is None:
                return None
            known = self.table.get(code)
            if known is None:          # a spec code (5, 4 ...): the exception says what happened
                return CNIError(code, f"{kind} failure", _detail(exc))
            return CNIError(code, known.meaning, f"fix: {known.fix}. {_detail(exc)}")
        return translate


def _detail(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + "..."
