"""A transparent recorder in front of real CNI plugins, for the libcni interop tests.

`Recorder(tmpdir, {"bridge": "/usr/lib/cni/bridge", ...})` writes one small executable
per plugin name into tmpdir/bin; put that directory first on CNI_PATH. Each one runs
the real plugin with the same environment, stdin and netns, passes its stdout and exit
status through unchanged, and appends what it saw to a JSON-lines log, so a test can
compare what a runtime parsed with exactly what the plugin printed.
"""
from __future__ import annotations

import json
import os
import sys

_TEMPLATE = '''#!{python}
import json, os, subprocess, sys
stdin = sys.stdin.buffer.read()
p = subprocess.run([{real!r}], input=stdin, stdout=subprocess.PIPE)
entry = {{"plugin": {name!r}, "command": os.environ.get("CNI_COMMAND", ""),
         "containerID": os.environ.get("CNI_CONTAINERID", ""), "netns": os.environ.get("CNI_NETNS", ""),
         "ifname": os.environ.get("CNI_IFNAME", ""), "args": os.environ.get("CNI_ARGS", ""),
         "stdin": stdin.decode(), "stdout": p.stdout.decode(), "rc": p.returncode}}
fd = os.open({log!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
os.write(fd, (json.dumps(entry) + "\\n").encode())
os.close(fd)
sys.stdout.buffer.write(p.stdout)
sys.exit(p.returncode)
'''


class Recorder:
    def __init__(self, tmpdir: str, plugins: dict[str, str]):
        self.bin = os.path.join(str(tmpdir), "bin")
        self.log = os.path.join(str(tmpdir), "calls.jsonl")
        os.makedirs(self.bin, exist_ok=True)
        for name, real in plugins.items():
            path = os.path.join(self.bin, name)
            with open(path, "w") as f:
                f.write(_TEMPLATE.format(python=sys.executable, real=real, name=name, log=self.log))
            os.chmod(path, 0o755)

    def calls(self, command: str | None = None, plugin: str | None = None) -> list[dict]:
        """Recorded invocations (VERSION probes left out unless asked for), oldest first."""
        try:
            with open(self.log) as f:
                entries = [json.loads(line) for line in f]
        except FileNotFoundError:
            return []
        return [e for e in entries
                if (command is None and e["command"] != "VERSION" or e["command"] == command)
                and (plugin is None or e["plugin"] == plugin)]

    def clear(self) -> None:
        try:
            os.remove(self.log)
        except FileNotFoundError:
            pass
