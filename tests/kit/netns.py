"""Test hosts as network namespaces: unique names, always removed.

Every namespace a test makes is named PREFIX + a counter, PREFIX holding the pid, so
parallel runs never collide and a crashed run's leftovers are recognisable.
"""
from __future__ import annotations

import itertools
import os
import subprocess

PREFIX = f"pycnit{os.getpid() % 100000}-"
_counter = itertools.count()


def sh(*argv: str, ns: str | None = None, check: bool = True, input: str | None = None,
       timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command (no shell), inside netns `ns` (a name) when given."""
    cmd = list(argv)
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    return subprocess.run(cmd, check=check, capture_output=True, text=True, input=input,
                          timeout=timeout)


class NetNS:
    """A named netns under /run/netns, removed on close()."""

    def __init__(self, tag: str = "ns"):
        self.name = f"{PREFIX}{tag}{next(_counter)}"[:40]
        sh("ip", "netns", "add", self.name)
        self.path = f"/run/netns/{self.name}"
        sh("ip", "link", "set", "lo", "up", ns=self.name)

    def run(self, *argv: str, check: bool = True, input: str | None = None, timeout: float = 60):
        return sh(*argv, ns=self.name, check=check, input=input, timeout=timeout)

    def fixed_mac_bridge(self, name: str, mac: str) -> None:
        """A bridge whose MAC is set, not inherited. A bridge the Go `bridge` plugin creates takes
        the lowest MAC of its ports, so adding a pod can change it after an earlier pod's result
        recorded it, and that pod's CHECK then fails ("Bridge interface ... Mac doesn't match").
        The plugin adopts an existing bridge; one with a set MAC keeps it."""
        self.run("ip", "link", "add", name, "type", "bridge")
        self.run("ip", "link", "set", name, "address", mac, "up")

    def close(self) -> None:
        # Kill anything left running inside, then delete the namespace.
        pids = sh("ip", "netns", "pids", self.name, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "del", self.name, check=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def leftovers() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]
