"""What `./build.sh test` installs leaves the machine as the README says: the servers among the
Debian packages (etcd-server, containerd) neither run nor are enabled, and the policy-rc.d it
places during apt-get install is gone. The tests start their own servers in test namespaces."""
import os
import re
import subprocess

import pytest

pytestmark = pytest.mark.root
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def packages_of_the_tests() -> list[str]:
    text = open(os.path.join(ROOT, "build.sh")).read()
    return re.search(r"TEST_DEBS=\(([^)]*)\)", text).group(1).split()


def units_of(pkg: str) -> list[str]:
    p = subprocess.run(["dpkg-query", "-L", pkg], capture_output=True, text=True)
    return [os.path.basename(f) for f in p.stdout.split()
            if re.fullmatch(r"(/usr)?/lib/systemd/system/[^/@]+\.(service|socket|timer)", f)]


def test_no_server_of_the_test_packages_is_enabled():
    servers = {"etcd-server": "etcd.service", "containerd": "containerd.service"}
    for pkg in packages_of_the_tests():
        for unit in units_of(pkg):
            state = subprocess.run(["systemctl", "is-enabled", unit], capture_output=True, text=True).stdout.strip()
            if unit in servers.values():
                assert state != "enabled", f"{unit} of {pkg} is enabled on the machine"


def test_no_server_runs_in_the_machines_namespace():
    root = os.stat("/proc/self/ns/net")      # the tests run in the machine's namespace
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
            ns = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if comm in ("etcd", "containerd") and (ns.st_dev, ns.st_ino) == (root.st_dev, root.st_ino):
            pytest.fail(f"{comm} (pid {pid}) runs in the machine's network namespace")


def test_no_policy_rc_d_of_ours_is_left():
    path = "/usr/sbin/policy-rc.d"
    if os.path.exists(path):
        assert "pycni" not in open(path).read()
