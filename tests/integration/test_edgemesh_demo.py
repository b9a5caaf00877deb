"""`python -m plugins.meta.edgemesh.demo` runs, shows what it claims, and cleans up."""
import subprocess

import pytest

from tests.integration.test_edgemesh_kit import PY, ROOT

pytestmark = pytest.mark.root


def test_demo_passes_and_leaves_no_namespace():
    p = subprocess.Popen([PY, "-m", "plugins.meta.edgemesh.demo"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out
    assert "orig=10.96.0.5:80" in out and "real=10.96.0.10:80" in out
    assert "exactly as before" in out and out.rstrip().endswith("demo passed")
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"emdemo{p.pid % 100000}-" not in left
