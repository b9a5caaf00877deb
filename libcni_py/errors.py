"""CNI errors: the spec's well-known codes and the exception plugins raise."""
from __future__ import annotations

# Spec 1.1.0, section "Error" (well-known codes).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
# Like the Go skel: an unexpected failure inside a plugin.
INTERNAL = 999


class CNIError(Exception):
    """A CNI error result. `code` 1-99 are the spec's, 100+ plugin-specific."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str | None = None) -> dict:
        out: dict = {}
        if cni_version:
            out["cniVersion"] = cni_version
        out["code"] = self.code
        out["msg"] = self.msg
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_dict(cls, data: dict) -> CNIError:
        return cls(int(data.get("code", INTERNAL)), str(data.get("msg", "")), str(data.get("details", "")))

    def __str__(self) -> str:
        return f"{self.msg}; {self.details}" if self.details else self.msg

    def __repr__(self) -> str:
        return f"CNIError({self.code}, {self.msg!r}, {self.details!r})"
