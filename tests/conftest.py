import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.kit.netns import NetNS, leftovers, sh  # noqa: E402

GO_CNI_DIR = "/usr/lib/cni"
VENV_BIN = os.path.join(ROOT, ".venv", "bin")


def pytest_collection_modifyitems(config, items):
    skip_root = pytest.mark.skip(reason="needs root and network namespaces")
    if os.geteuid() != 0:
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip_root)


@pytest.fixture
def netns():
    """A factory of test namespaces, all removed at the end of the test."""
    made: list[NetNS] = []

    def make(tag: str = "ns") -> NetNS:
        n = NetNS(tag)
        made.append(n)
        return n
    yield make
    for n in reversed(made):
        n.close()


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_namespaces():
    yield
    for name in leftovers():
        sh("ip", "netns", "del", name, check=False)


@pytest.fixture(scope="session")
def cni_path():
    """CNI_PATH with our console scripts first, then the Go reference plugins."""
    if not os.path.isdir(GO_CNI_DIR):
        pytest.fail("containernetworking-plugins is not installed (./build.sh test installs it)")
    return f"{VENV_BIN}:{GO_CNI_DIR}"


@pytest.fixture
def tmp_state(tmp_path):
    """A state/cache directory tree private to the test."""
    for d in ("cache", "state", "run"):
        (tmp_path / d).mkdir()
    return tmp_path


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
