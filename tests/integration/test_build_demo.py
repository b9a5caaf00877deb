"""`./build.sh demo`, the README's first command, runs every demo and leaves nothing behind:
the foundation (libcni_py driving Go bridge + host-local + pycni-passthrough), vxlan,
dp-steering and edgemesh, each in namespaces it makes and removes."""
import os
import subprocess

import pytest

pytestmark = pytest.mark.root
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_build_sh_demo_runs_every_demo_and_cleans_up():
    before = netns_names()
    p = subprocess.run(["./build.sh", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    for module in ("plugins.meta.passthrough.demo", "plugins.main.vxlan.demo",
                   "plugins.meta.dp_steering.demo", "plugins.meta.edgemesh.demo"):
        assert f"==> demo: .venv/bin/python -m {module}" in out
    assert "==> 4 demo(s) ran" in out
    # what each demo shows
    assert "ICMP echo pod -> gateway 10.88.0.1: 3 of 3 answered" in out          # foundation
    assert out.count("3/3 replies") == 2 and "onlink" in out                      # vxlan
    assert "[ok] TCP host -> pod:5201 is blocked by the dp" in out                # dp-steering
    assert "[ok] TCP host -> pod:5201 flows (the dp only watches a copy)" in out
    assert "answer 'orig=10.96.0.5:80'" in out and "answer 'real=10.96.0.10:80'" in out   # edgemesh
    assert "[FAIL]" not in out and "FAILED" not in out
    assert netns_names() - before == set()


def test_build_sh_demo_without_the_go_plugins_says_what_to_install_in_one_line():
    p = subprocess.run(["./build.sh", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, env={**os.environ, "PYCNI_GO_CNI_DIR": "/nonexistent"})
    assert p.returncode == 1 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "install containernetworking-plugins" in lines[0], p.stderr
    assert "Traceback" not in p.stderr
