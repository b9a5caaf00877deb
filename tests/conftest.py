import os
import shutil
import subprocess
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


# ---- the machine stays as it was -------------------------------------------------------
# Tests change only namespaces they make and directories under tmp. At the end of the session
# the root netns (links, addresses, routes, rules, iptables, nftables) and the default state
# and cache places of CNI and pycni must be exactly as at the start; otherwise the run fails.
HOST_PLACES = ("/var/lib/cni", "/run/cni", "/run/pycni", "/etc/cni", "/opt/cni")


def _root_netns_state() -> dict:
    def out(*argv):
        p = subprocess.run(argv, capture_output=True, text=True)
        return p.stdout if p.returncode == 0 else f"<{argv[0]} failed>"
    iptables = "".join(line + "\n" for line in out("iptables-save").splitlines() if not line.startswith("#"))
    files = sorted([place for place in HOST_PLACES if os.path.lexists(place)]
                   + [os.path.join(d, f) for place in HOST_PLACES if os.path.isdir(place)
                      for d, dirs, names in os.walk(place) for f in [*dirs, *names]])
    import glob
    cgroups = "\n".join(sorted(glob.glob("/sys/fs/cgroup/pycnit*") + glob.glob("/sys/fs/cgroup/*/pycnit*")))
    return {"cgroups": cgroups, "links": out("ip", "-o", "link", "show"), "addresses": out("ip", "-o", "addr", "show"),
            "routes": out("ip", "route", "show", "table", "all"), "rules": out("ip", "rule", "show"),
            "iptables": iptables, "nftables": out("nft", "list", "ruleset"), "files": "\n".join(files)}


def pytest_sessionstart(session):
    if os.geteuid() == 0:
        session.config._pycni_host_before = _root_netns_state()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_pycni_host_before", None)
    if before is None:
        return
    after = _root_netns_state()
    changed = [k for k in before if before[k] != after[k]]
    if changed:
        import difflib
        rep = session.config.pluginmanager.get_plugin("terminalreporter")
        for k in changed:
            diff = "\n".join(difflib.unified_diff(before[k].splitlines(), after[k].splitlines(), lineterm="", n=0))
            if rep:
                rep.write_line(f"the machine's {k} changed during the tests:\n{diff}", red=True)
        session.exitstatus = 1


# ---- PYCNI_TEST_DAEMON=1: the plugin tests in daemon mode ---------------------------------
# One pycni-node for the session (socket in a temp dir); PYCNI_NODE_SOCKET in this process's
# environment reaches every plugin exec that inherits it (libcni_py's CNIConfig, the kits that
# copy os.environ, tests/kit/plugin_env.py's plugin_env for the environments kits build), so those
# go through the daemon. tests/integration/test_node_daemon.py runs both modes itself. The end of
# the session prints how many requests the daemon served, per plugin (its debug log).
_NODE_LOG: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if _NODE_LOG:
        from tests.kit.plugin_env import served_in
        counts = served_in(_NODE_LOG[0])
        refused = {k: v for k, v in counts.items() if k.startswith("refused: ")}
        served = {k: v for k, v in counts.items() if k not in refused}
        terminalreporter.write_line(
            "PYCNI_TEST_DAEMON=1: pycni-node served " + str(sum(served.values())) + " requests ("
            + (", ".join(f"{k} {v}" for k, v in sorted(served.items())) or "none") + f"); log {_NODE_LOG[0]}")
        for why, n in sorted(refused.items()):       # those execs ran in-process
            terminalreporter.write_line(f"PYCNI_TEST_DAEMON=1: {n} x {why}", yellow=True)


@pytest.fixture(scope="session", autouse=True)
def _node_daemon_mode(tmp_path_factory):
    if os.environ.get("PYCNI_TEST_DAEMON") != "1" or os.geteuid() != 0:
        yield None
        return
    import signal
    import time
    d = tmp_path_factory.mktemp("pycni-node")
    os.chmod(d, 0o700)
    sock, log = str(d / "node.sock"), open(d / "node.log", "ab")
    proc = subprocess.Popen([os.path.join(VENV_BIN, "pycni-node"), "--socket", sock, "--log-level", "debug"],
                            stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.exit(f"PYCNI_TEST_DAEMON=1: pycni-node did not start (see {d / 'node.log'})", returncode=1)
        time.sleep(0.05)
    os.environ["PYCNI_NODE_SOCKET"] = sock
    os.environ["PYCNI_TEST_DAEMON_LOG"] = str(d / "node.log")
    _NODE_LOG[:] = [str(d / "node.log")]
    yield sock
    del os.environ["PYCNI_NODE_SOCKET"]
    del os.environ["PYCNI_TEST_DAEMON_LOG"]
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    log.close()
