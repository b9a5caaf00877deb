"""The venv's per-pod plugin launchers (build.sh venv_launchers): .venv/bin/<name> for every name
pycni-node serves is a script on `.venv/bin/python -IS`, not pip's console script, so an exec
imports neither site (the .pth files) nor pip's `re`; with no .pth read it puts the checkout and
site-packages on sys.path itself, and the in-process fallback still finds every module.

The tests, kits and benches reach the plugins through .venv/bin (tests/conftest.py VENV_BIN), so
the whole suite runs them; these tests pin what a launcher is and what its exec costs in imports.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sysconfig
import tempfile

import pytest

from plugins.entrypoints import ENTRYPOINTS
from plugins.node.protocol import SERVED, SOCKET_ENV
from tests.conftest import ROOT, VENV_BIN

VENV_PY = os.path.join(VENV_BIN, "python")
_IMPORT = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$")


def run(argv, env, stdin="", **kw):
    return subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True, timeout=60, cwd="/", **kw)


def imported(flags, argv, env, stdin=""):
    """The modules an exec imports (-X importtime), its exit status and stdout."""
    p = run([VENV_PY, *flags, "-X", "importtime", *argv], env, stdin)
    return [m.group(1) for m in map(_IMPORT.match, p.stderr.splitlines()) if m], p


@pytest.mark.parametrize("name", SERVED)
def test_each_served_name_is_a_launcher(name):
    path = os.path.join(VENV_BIN, name)
    with open(path) as f:
        text = f.read()
    assert text.splitlines()[0] == f"#!{VENV_PY} -IS", text
    site = sysconfig.get_path("purelib")
    assert f"sys.path += [{ROOT!r}, {site!r}]" in text, text
    assert f"delegate({name!r})" in text and f"dispatch({name!r})" in text, text
    assert os.access(path, os.X_OK)


def test_other_executables_stay_pips():
    for name in set(ENTRYPOINTS) - set(SERVED):
        with open(os.path.join(VENV_BIN, name)) as f:
            assert " -IS" not in f.readline(), name


def test_writing_them_again_changes_nothing():
    """`./build.sh launchers` (also run by every ./build.sh venv and ensure_venv) is idempotent."""
    before = {n: open(os.path.join(VENV_BIN, n)).read() for n in SERVED}
    p = subprocess.run([os.path.join(ROOT, "build.sh"), "launchers"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert {n: open(os.path.join(VENV_BIN, n)).read() for n in SERVED} == before


@pytest.mark.parametrize("name", SERVED)
def test_in_process_version_with_nothing_from_the_environment(name):
    """No daemon: the plugin runs in-process from the launcher; PYTHONPATH and friends are ignored
    (-I), and what it needs is found without site."""
    env = {"CNI_COMMAND": "VERSION", SOCKET_ENV: "off", "PYTHONPATH": "/nonexistent", "PYTHONHOME": "/nonexistent"}
    p = run([os.path.join(VENV_BIN, name)], env, '{"cniVersion": "1.0.0"}')
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["cniVersion"] == "1.0.0"


@pytest.mark.parametrize("name", SERVED)
def test_every_served_module_imports_as_the_launcher_runs(name):
    """The plugin's whole module (and the etcd client vxlan imports late) on the launcher's path."""
    with open(os.path.join(VENV_BIN, name)) as f:
        setup = next(line for line in f if line.startswith("sys.path += "))
    extra = "; import etcd3gw" if name == "vxlan" else ""
    prog = f"import sys; {setup.strip()}; import {ENTRYPOINTS[name]}{extra}"
    p = run([VENV_PY, "-I", "-S", "-c", prog], {})
    assert p.returncode == 0, p.stderr


@pytest.mark.root
def test_exec_through_a_daemon_imports_only_the_client():
    """Through a daemon (the bench's stand-in, which answers at once) the launcher imports the
    thin client and nothing of site, re or plugins.entrypoints; pip's script imports all three."""
    from bench.startup_floor import PIP_SCRIPT, StandIn
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o700)
        standin = StandIn(os.path.join(tmp, "node.sock"))
        standin.start()
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "l1", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0",
               "CNI_PATH": "/nonexistent", SOCKET_ENV: os.path.join(tmp, "node.sock")}
        launcher, p = imported(["-I", "-S"], [os.path.join(VENV_BIN, "pycni-passthrough")], env, "{}")
        assert (p.returncode, p.stdout) == (0, "{}\n"), p.stderr
        pip = os.path.join(tmp, "pycni-passthrough")
        with open(pip, "w") as f:
            f.write(PIP_SCRIPT)
        pipped, p = imported([], [pip], env, "{}")
        assert (p.returncode, p.stdout) == (0, "{}\n"), p.stderr
        standin.sock.close()
    assert "plugins.node.client" in launcher and not {"site", "re", "plugins.entrypoints"} & set(launcher), launcher
    assert "plugins.node.client" in pipped and {"site", "re", "plugins.entrypoints"} <= set(pipped), pipped
    assert standin.served == 2
