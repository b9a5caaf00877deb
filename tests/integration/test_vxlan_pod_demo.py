"""`python -m plugins.main.vxlan.demo` runs, shows connectivity and entries, leaves nothing."""
import subprocess
import sys

import pytest

from tests.kit.vxlan_pods import ROOT

pytestmark = pytest.mark.root


def test_demo_succeeds_and_cleans_up():
    p = subprocess.run([sys.executable, "-m", "plugins.main.vxlan.demo"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("3/3 replies") == 2 and p.stdout.count("got 'nalxv revo olleh'") == 2
    assert p.stdout.count("self permanent") == 2 and p.stdout.count("onlink") == 2
    assert "pycnidemo" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
