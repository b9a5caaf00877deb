"""The PyInstaller bundle as a session fixture, built once per test session into a tmp dir
(`./build.sh bin`, about 10-30 s), never into the checkout's dist/.

A test module that needs it says `pytest_plugins = ["tests.kit.bundle"]` and asks for
`bundle`. Registered as a plugin the fixture exists once, so the packaging tests and the
bench smoke test share one build (imported into each module, it would build once per module).
"""
import os
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    """`./build.sh bin` into a tmp dir; returns the dist dir (bin/ and pycni/)."""
    top = tmp_path_factory.mktemp("pycni-build")
    env = dict(os.environ, PYCNI_DIST=str(top / "cni"), PYCNI_WORK=str(top / "work"))
    start = time.monotonic()
    p = subprocess.run([os.path.join(ROOT, "build.sh"), "bin"], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    print(f"\n./build.sh bin took {time.monotonic() - start:.1f} s")
    return top / "cni"
