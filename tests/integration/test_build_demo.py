"""`./build.sh demo`, the README's first command, runs every demo and leaves nothing behind:
the foundation (libcni_py driving Go bridge + host-local + pycni-passthrough), vxlan,
dp-steering and edgemesh, then pycni-doctor (a clean report, two breakages found, the printed
fixes applied, clean again), each in namespaces it makes and removes."""
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
                   "plugins.meta.dp_steering.demo", "plugins.meta.edgemesh.demo", "plugins.doctor.demo"):
        assert f"==> demo: .venv/bin/python -m {module}" in out
    assert "==> 5 demo(s) ran" in out
    assert out.index("==> demo: .venv/bin/python -m plugins.doctor.demo") > out.index(
        "==> demo: .venv/bin/python -m plugins.meta.edgemesh.demo")                # the demos end with doctor
    # what each demo shows
    assert "ICMP echo pod -> gateway 10.88.0.1: 3 of 3 answered" in out          # foundation
    assert out.count("3/3 replies") == 2 and "onlink" in out                      # vxlan
    assert "[ok] TCP host -> pod:5201 is blocked by the dp" in out                # dp-steering
    assert "[ok] TCP host -> pod:5201 flows (the dp only watches a copy)" in out
    assert "answer 'orig=10.96.0.5:80'" in out and "answer 'real=10.96.0.10:80'" in out   # edgemesh
    heads = ["a clean report (", "broken on purpose", "the findings", "the fix, the commands", "a clean report again",
             "cleaned up"]                                                         # doctor
    at = [p.stdout.index(f"== doctor: {h}") for h in heads]
    clean, broken, findings, fixed, final = (p.stdout[a:b] for a, b in zip(at, at[1:]))
    assert "no problems found" in clean and "(exit 0)" in clean and "ping 3/3 answered" in clean
    assert "ping 0/3 answered, TCP" in broken and "no answer" in broken
    assert "(nfqueue-no-reader)" in findings and "(policy-route-steals-replies)" in findings
    assert "with no reader bound in this namespace" in findings and "out of eth0" in findings
    assert "problem(s)" in findings and "(exit 1)" in findings
    assert "--queue-bypass" in fixed and "lookup main pref 31999" in fixed and "ping 3/3 answered" in fixed
    assert "no problems found" in final and "(exit 0)" in final and "problem(s)" not in final
    assert "[FAIL]" not in out and "FAILED" not in out
    # what other test sessions on this machine make meanwhile (tests/kit/netns.py's pycnit<pid>-) is not ours
    assert {n for n in netns_names() - before if not n.startswith("pycnit")} == set()


def test_build_sh_demo_without_the_go_plugins_says_what_to_install_in_one_line():
    p = subprocess.run(["./build.sh", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, env={**os.environ, "PYCNI_GO_CNI_DIR": "/nonexistent"})
    assert p.returncode == 1 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "install containernetworking-plugins" in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_build_sh_help_is_its_whole_header():
    """`./build.sh help` prints the comment header, every command of it, whatever its length."""
    with open(os.path.join(ROOT, "build.sh")) as f:
        lines = f.read().splitlines()
    header = []
    for line in lines[1:]:
        if not line.startswith("#"):
            break
        header.append(line[2:] if line.startswith("# ") else line[1:])
    p = subprocess.run(["./build.sh", "help"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == header
    assert any(line.lstrip().startswith("./build.sh bench") for line in header)
    bad = subprocess.run(["./build.sh", "no-such-command"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and bad.stderr.splitlines() == header
