"""PYCNI_TEST_DAEMON=1 (the second pytest pass of `./build.sh test`): the plugin execs of the suite
reach the session's pycni-node. Every plugin it serves, exec'd with a kit's environment
(tests/kit/plugin_env.py) and with an inherited one, is served by the daemon, and answers byte for
byte as in-process. Without PYCNI_TEST_DAEMON=1 these tests are skipped (the normal pass; the
daemon itself is tested in tests/integration/test_node_daemon.py)."""
from __future__ import annotations

import os
import subprocess

import pytest

from plugins.node import protocol as P
from tests.kit.plugin_env import daemon_mode, node_served, plugin_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _daemon_mode_only():
    if not daemon_mode():      # known only once the session fixture has started the daemon
        pytest.skip("only with PYCNI_TEST_DAEMON=1 (the daemon-mode pass)")


def _exec(plugin: str, env: dict) -> tuple[int, bytes, bytes]:
    p = subprocess.run([os.path.join(VENV_BIN, plugin)], input=b'{"cniVersion": "1.0.0"}', env=env,
                       capture_output=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("plugin", P.SERVED)
def test_every_plugin_goes_through_the_daemon(plugin):
    base = {"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    before = node_served().get(plugin, 0)
    kit = _exec(plugin, plugin_env(base))
    inherited = _exec(plugin, dict(os.environ, **base))
    assert node_served().get(plugin, 0) == before + 2, (node_served(), kit, inherited)
    local = _exec(plugin, plugin_env(base, daemon=False))
    assert node_served().get(plugin, 0) == before + 2, "daemon=False reached the daemon"
    assert kit[:2] == inherited[:2] == local[:2] and kit[0] == 0, (kit, inherited, local)


@pytest.mark.parametrize("plugin", P.SERVED)
def test_an_error_is_byte_identical_in_both_modes(plugin):
    """ADD without CNI_CONTAINERID (refused before the plugin acts): status, stdout and stderr the same."""
    base = {"CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent",
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    before = node_served().get(plugin, 0)
    remote = _exec(plugin, plugin_env(base))
    assert node_served().get(plugin, 0) == before + 1, node_served()
    local = _exec(plugin, plugin_env(base, daemon=False))
    assert remote[0] == 1 and b'"code"' in remote[1], remote
    assert remote == local
