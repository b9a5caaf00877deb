"""What a diagnosis reports, and the namespace it looked at."""
from __future__ import annotations

import shlex


class Namespace:
    """A network namespace to check: the path that opens it and how an operator reaches it."""
    __slots__ = ("path", "label", "name", "pid", "own")

    def __init__(self, path: str, name: str | None = None, pid: int | None = None, own: bool = False):
        self.path, self.name, self.pid, self.own = path, name, pid, own
        if name is not None:
            self.label = f"netns {name}"
        elif own:
            self.label = "host" if pid is None else f"host (pid {pid})"
        else:
            self.label = f"pid {pid}" if pid is not None else path

    def prefix(self) -> str:
        """What to put before a command so it runs in this namespace."""
        if self.own:
            return ""
        if self.name is not None:
            return f"ip netns exec {shlex.quote(self.name)} "
        return f"nsenter --net={shlex.quote(self.path)} "


class Fix:
    __slots__ = ("how", "command")

    def __init__(self, how: str, command: str | None = None):
        self.how, self.command = how, command

    def to_dict(self) -> dict:
        return {"how": self.how, "command": self.command}


class Finding:
    __slots__ = ("check", "severity", "where", "netns", "what", "why", "fixes")

    def __init__(self, check: str, severity: str, where: str, netns: str | None, what: str, why: str,
                 fixes: list[Fix]):
        self.check, self.severity, self.where, self.netns = check, severity, where, netns
        self.what, self.why, self.fixes = what, why, fixes

    def to_dict(self) -> dict:
        return {"check": self.check, "severity": self.severity, "where": self.where, "netns": self.netns,
                "what": self.what, "why": self.why, "fixes": [f.to_dict() for f in self.fixes]}


def finding_from_dict(d: dict) -> Finding:
    return Finding(d["check"], d["severity"], d["where"], d["netns"], d["what"], d["why"],
                   [Fix(f["how"], f["command"]) for f in d["fixes"]])
