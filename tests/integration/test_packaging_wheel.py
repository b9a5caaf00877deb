"""A wheel of pycni, installed (not editable) into a fresh venv, runs every plugin.

The wheel is built with `pip wheel --no-deps` from a copy of the working tree (pyproject.toml,
libcni_py/, plugins/) in tmp, so a stale build/ or egg-info in the checkout can neither leak
into it nor be written there. Without build isolation when the project venv can build wheels
itself (setuptools >= 70.1, or the `wheel` package), so no network is needed; otherwise pip
builds it in isolation as `pip install .` would, fetching setuptools per [build-system].

The venv: `python -m venv --without-pip` (no system site-packages), the wheel installed into
it by the project venv's pip (`pip --python VENV/bin/python install --no-deps --no-index`). Its
dependencies are not downloaded: a `.pth` adds a tmp dir holding symlinks to exactly the
distributions that the wheel's own Requires-Dist needs, resolved transitively in the project
venv (the pinned pyroute2, jsonschema and what they require; the versions are checked against
the requirements). So the test is offline and fast (a few seconds), and a plugin that imports
anything the wheel does not declare fails here: pytest, PyInstaller, setuptools and the
checkout are not on that venv's path (checked).

Every plugin then runs ADD/CHECK/DEL through the venv's own `pycnitool` (tests/kit/bundle.py
CASES, the same worlds the frozen bundle runs without Python), and every console script the
project declares answers.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from tests.kit.bundle import CASES, HOST_PATH, ROOT, Tool

pytestmark = [pytest.mark.root, pytest.mark.slow]

with open(os.path.join(ROOT, "pyproject.toml"), "rb") as _f:
    SCRIPTS = tomllib.load(_f)["project"]["scripts"]
SCHEMAS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "plugins", "schema", "*.json")))


def run(argv, timeout=300, **kw):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw)


def _venv_builds_wheels() -> bool:
    from importlib import metadata
    from importlib.util import find_spec
    from packaging.version import Version
    return find_spec("wheel") is not None or Version(metadata.version("setuptools")) >= Version("70.1")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    top = tmp_path_factory.mktemp("wheel")
    src, out = top / "src", top / "out"
    src.mkdir()
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), src)
    for pkg in ("libcni_py", "plugins"):
        shutil.copytree(os.path.join(ROOT, pkg), src / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    offline = ["--no-build-isolation"] if _venv_builds_wheels() else []
    argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
            *offline, "-w", out, src]
    p = run(argv, cwd=top)
    assert p.returncode == 0, p.stdout + p.stderr
    wheels = glob.glob(str(out / "pycni-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _dependency_entries(requirements: list[str]) -> list[str]:
    """Paths (in the project venv) of the top-level modules and dist-info dirs of every
    distribution `requirements` need, transitively; versions checked."""
    from importlib import metadata
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    todo, seen, entries = list(requirements), set(), set()
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = canonicalize_name(req.name)
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(req.name)
        assert req.specifier.contains(dist.version, prereleases=True), (str(req), dist.version)
        for f in dist.files or []:
            top = f.parts[0]
            if top not in ("..", "__pycache__") and not top.endswith(".pth"):
                entries.add(str(dist.locate_file(top)))
        todo += dist.requires or []
    return sorted(entries)


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A fresh venv with the wheel installed; returns its bin dir."""
    top = tmp_path_factory.mktemp("wheelvenv")
    venv_dir, deps = top / "venv", top / "deps"
    p = run([sys._base_executable, "-m", "venv", "--without-pip", venv_dir])
    assert p.returncode == 0, p.stderr
    py = venv_dir / "bin" / "python"
    p = run([sys.executable, "-m", "pip", "--python", py, "install", "--quiet", "--no-deps", "--no-index",
             "--disable-pip-version-check", wheel])
    assert p.returncode == 0, p.stdout + p.stderr
    site = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert requires, meta
    deps.mkdir()
    for entry in _dependency_entries(requires):
        os.symlink(entry, deps / os.path.basename(entry))
    with open(os.path.join(site, "pycni-test-deps.pth"), "w") as f:
        f.write(f"{deps}\n")
    return venv_dir / "bin"


def test_wheel_carries_every_module_and_schema(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {f"plugins/schema/{s}" for s in SCHEMAS} <= names, sorted(n for n in names if "schema" in n)
    assert len(SCHEMAS) >= 4, SCHEMAS
    modules = {os.path.relpath(p, ROOT) for pkg in ("libcni_py", "plugins")
               for p in glob.glob(os.path.join(ROOT, pkg, "**", "*.py"), recursive=True)}
    assert modules - names == set()
    assert not [n for n in names if n.startswith(("tests/", "conf/", "bench/"))]


def test_installed_code_runs_from_the_venv_not_the_checkout(venv):
    prog = ("import json, sys, plugins, libcni_py, jsonschema, pyroute2; "
            "from plugins.pkg.schema import schema_dir, load; load('vxlan'); "
            "print(json.dumps({'plugins': plugins.__file__, 'libcni_py': libcni_py.__file__, "
            "'schema_dir': schema_dir(), 'path': sys.path}))")
    p = run([venv / "python", "-c", prog], cwd="/", env={"PATH": HOST_PATH})
    assert p.returncode == 0, p.stderr
    where = json.loads(p.stdout)
    prefix = str(venv.parent) + "/"
    assert where["plugins"].startswith(prefix) and where["libcni_py"].startswith(prefix), where
    assert where["schema_dir"].startswith(prefix) and sorted(
        f for f in os.listdir(where["schema_dir"]) if f.endswith(".json")) == SCHEMAS
    assert not [d for d in where["path"] if d.startswith(ROOT)], where["path"]
    brought = {n.split("-")[0].lower() for n in os.listdir(venv.parent.parent / "deps")}
    for absent in ("pytest", "PyInstaller", "setuptools"):
        if absent.lower() in brought:      # required by a dependency (setuptools: pbr, of etcd3gw)
            continue
        p = run([venv / "python", "-c", f"import {absent}"], cwd="/", env={"PATH": HOST_PATH})
        assert p.returncode != 0, f"{absent} is importable in the wheel's venv"


TOOLS = {   # console scripts that are not CNI plugins: argv, and the exit status it gives
    "pycnitool": ([], 1),              # usage on stderr
    "vxlan-agent": (["--help"], 0),
    "pycni-dp": (["--help"], 0),
    "pycni-doctor": (["--help"], 0),
    "pycni-node": (["--help"], 0),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_console_script_answers(venv, name):
    """CNI plugins answer VERSION; the other scripts print their usage."""
    env = {"PATH": HOST_PATH}
    if name in TOOLS:
        args, status = TOOLS[name]
        p = run([venv / name, *args], cwd="/", env=env)
        assert p.returncode == status and "Traceback" not in p.stderr, p.stdout + p.stderr
        assert "usage" in (p.stdout + p.stderr).lower() or name in p.stdout + p.stderr
        return
    p = run([venv / name], cwd="/", env=dict(env, CNI_COMMAND="VERSION"), input='{"cniVersion": "1.0.0"}')
    assert p.returncode == 0, p.stdout + p.stderr
    answer = json.loads(p.stdout)
    assert answer["cniVersion"] == "1.0.0" and "1.1.0" in answer["supportedVersions"], answer


def test_every_plugin_script_is_a_case():
    assert set(CASES) == set(SCRIPTS) - set(TOOLS)


def test_bad_config_is_a_schema_error_not_a_crash(venv, netns):
    """The schema is found and read: an unknown field is code 7 naming it (999 when the
    schema files were outside the package)."""
    ns = netns("pkwbad")
    conf = {"cniVersion": "1.0.0", "name": "badnet", "type": "pycni-passthrough", "notAField": 1}
    env = {"PATH": HOST_PATH, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": ns.path,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
    p = run([venv / "pycni-passthrough"], cwd="/", env=env, input=json.dumps(conf))
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stdout + p.stderr
    err = json.loads(p.stdout)
    assert err["code"] == 7 and "notAField" in err["msg"] + err.get("details", ""), err


@pytest.mark.parametrize("plugin", sorted(CASES))
def test_plugin_add_check_del_from_the_wheel(venv, netns, tmp_path, plugin):
    CASES[plugin](Tool(venv, tmp_path), netns, str(tmp_path))
