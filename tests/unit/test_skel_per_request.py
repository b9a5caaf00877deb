"""What skel.run and the schema check leave to each request in pycni-node's worker (a process forked
from the daemon's main, every plugin module and schema loaded there): nothing is compiled or built
per request that the main could have done once. Each test runs in a fresh interpreter, the way the
daemon's main prepares its workers (plugins.node.daemon.preload_schemas), then
forks and counts, in the child, what one request does."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MAIN = r"""
import io, json, os, re, sys
from plugins.node import daemon
daemon.preload_schemas()
import importlib
plugin = importlib.import_module(daemon.PLUGIN_MODULES[sys.argv[1]]).PLUGIN
conf = json.loads(sys.argv[2])
for name in [m for m in sys.modules if m == "logging" or m.startswith("logging.")]:
    del sys.modules[name]                 # as the worker's _fresh_logging
r, w = os.pipe()
if os.fork() == 0:
    compiled = []
    real = re._compile
    def counting(pattern, flags):
        if (type(pattern), pattern, flags) not in re._cache:
            compiled.append(str(pattern))
        return real(pattern, flags)
    re._compile = counting
    real_compile = re.compile
    re.compile = lambda p, flags=0: (compiled.append(str(p)), real_compile(p, flags))[1]
    try:
        plugin.validate(dict(conf), sys.argv[3])
        err = ""
    except Exception as e:
        err = f"{type(e).__name__}: {e}"
    os.write(w, json.dumps({"compiled": compiled, "err": err}).encode())
    os._exit(0)
os.close(w)
data = b""
while chunk := os.read(r, 65536):
    data += chunk
os.wait()
print(data.decode())
"""

VXLAN = {"cniVersion": "1.0.0", "name": "net1", "type": "vxlan", "network": "10.244.0.0/16",
         "registry": {"type": "file", "path": "/var/lib/cni/pycni/vxlan/registry.json"},
         "logFile": "/tmp/x.log", "logLevel": "info"}
EDGEMESH = {"cniVersion": "1.0.0", "name": "net1", "type": "edgemesh", "serviceCIDR": "10.96.0.0/12",
            "listenAddress": "169.254.96.16", "listenPort": 40001, "protocols": ["tcp"], "backend": "iptables"}


def in_worker(plugin: str, conf: dict, verb: str) -> dict:
    p = subprocess.run([sys.executable, "-c", MAIN, plugin, json.dumps(conf), verb], cwd=ROOT,
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


@pytest.mark.parametrize("plugin,conf", [("vxlan", VXLAN), ("edgemesh", EDGEMESH)])
@pytest.mark.parametrize("verb", ["ADD", "DEL"])
def test_a_worker_compiles_no_schema_pattern(plugin, conf, verb):
    got = in_worker(plugin, conf, verb)
    assert got["err"] == ""
    assert got["compiled"] == []


def test_the_check_still_refuses_what_a_pattern_refuses():
    got = in_worker("vxlan", {**VXLAN, "logFile": "relative.log"}, "ADD")
    assert "logFile" in got["err"] and "CNIError" in got["err"]


def test_an_exec_compiles_only_the_patterns_its_config_meets():
    """Without the daemon, load() compiles nothing ahead: an exec pays for the patterns it uses."""
    code = ("import re, sys; from plugins.pkg import schema; before = len(re._cache); schema.load('vxlan');"
            "print(len(re._cache) - before, 'plugins.node.daemon' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60, text=True)
    assert p.stdout.split() == ["0", "False"], p.stderr

