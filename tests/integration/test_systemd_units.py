"""conf/systemd/*.service pass `systemd-analyze verify` with no warning (an unknown key is only a
warning there, so any output fails the test). The units name the installed paths (/opt/cni/bin,
./build.sh install); verify wants the executables to exist, so the test checks a copy whose
/opt/cni/bin/ points at the venv's console scripts, in a temp dir (nothing is installed)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from plugins.entrypoints import ENTRYPOINTS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNITS = os.path.join(ROOT, "conf", "systemd")
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
NAMES = ["vxlan-agent.service", "pycni-dp.service", "pycni-node.service"]

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze missing (Debian's systemd package)")


def _copy(tmp_path, name: str, text: str | None = None) -> str:
    with open(os.path.join(UNITS, name)) as f:
        text = f.read() if text is None else text
    path = os.path.join(str(tmp_path), name)
    with open(path, "w") as f:
        f.write(text.replace("/opt/cni/bin/", VENV_BIN + "/"))
    return path


def _verify(*paths: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})


def test_units_verify_clean(tmp_path):
    assert sorted(os.listdir(UNITS)) == sorted(NAMES)
    for name in NAMES:
        with open(os.path.join(UNITS, name)) as f:
            execs = [line.split("=", 1)[1].split()[0] for line in f if line.startswith("ExecStart=")]
        assert len(execs) == 1 and execs[0].startswith("/opt/cni/bin/")
        assert os.path.basename(execs[0]) in ENTRYPOINTS       # a name the bundle carries
    out = _verify(*(_copy(tmp_path, n) for n in NAMES))
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr


def test_verify_would_catch_a_bad_unit(tmp_path):
    """The check is not vacuous: a misspelt key and a missing executable are both reported."""
    with open(os.path.join(UNITS, NAMES[0])) as f:
        text = f.read()
    out = _verify(_copy(tmp_path, NAMES[0], text.replace("\nRestart=", "\nRestrt=")))
    assert "Restrt" in out.stdout + out.stderr
    out = _verify(_copy(tmp_path, NAMES[0], text.replace("vxlan-agent --conf", "vxlan-agnt --conf")))
    assert out.returncode != 0
