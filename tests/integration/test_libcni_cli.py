"""pycnitool: cnitool's verbs and environment, run inside a host test namespace."""
import hashlib
import json
import os
import subprocess

import pytest

from plugins.pkg import ns
from tests.conftest import GO_CNI_DIR, VENV_BIN

pytestmark = pytest.mark.root

MAC = "0a:58:0a:50:00:99"


@pytest.fixture
def setup(netns, tmp_path):
    host, pod = netns("host"), netns("pod")
    confdir = tmp_path / "net.d"
    confdir.mkdir()
    (confdir / "10-cli.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "pycni-cli", "plugins": [
        {"type": "bridge", "bridge": "cni-cli0", "isGateway": True,
         "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"), "ranges": [[{"subnet": "10.80.0.0/24"}]]}},
        {"type": "tuning", "dataDir": str(tmp_path / "tuning"), "capabilities": {"mac": True}},
    ]}))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NETCONFPATH": str(confdir),
           "CNI_PATH": f"{VENV_BIN}:{GO_CNI_DIR}", "CNI_CACHE_DIR": str(tmp_path / "cache"),
           "CNI_ARGS": "IgnoreUnknown=1", "CAP_ARGS": json.dumps({"mac": MAC})}

    def tool(*argv, **extra):
        with ns.enter(host.path):
            return subprocess.run([f"{VENV_BIN}/pycnitool", *argv], env={**env, **extra},
                                  capture_output=True, text=True, timeout=120)
    return host, pod, tool, tmp_path / "cache" / "results"


def pod_eth0(pod):
    p = pod.run("ip", "-j", "addr", "show", "eth0", check=False)
    return json.loads(p.stdout)[0] if p.returncode == 0 else None


def test_add_check_status_gc_del(setup):
    host, pod, tool, results = setup
    add = tool("add", "pycni-cli", pod.path)
    assert add.returncode == 0, add.stderr
    res = json.loads(add.stdout)
    assert res["cniVersion"] == "1.0.0" and res["ips"][0]["address"] == "10.80.0.2/24"
    eth0 = pod_eth0(pod)
    assert eth0["address"] == MAC                                  # CAP_ARGS reached tuning
    cid = "cnitool-" + hashlib.sha512(pod.path.encode()).hexdigest()[:20]   # cnitool's container ID
    assert os.listdir(results) == [f"pycni-cli-{cid}-eth0"]

    assert tool("check", "pycni-cli", pod.path).returncode == 0
    assert tool("status", "pycni-cli").returncode == 0

    gc = tool("gc", "pycni-cli", CNI_VALID_ATTACHMENTS=json.dumps([{"containerID": cid, "ifname": "eth0"}]))
    assert gc.returncode == 0 and pod_eth0(pod) is not None        # still valid: kept
    gc = tool("gc", "pycni-cli")                                   # no valid attachments: DEL it
    assert gc.returncode == 0 and pod_eth0(pod) is None and os.listdir(results) == []

    assert tool("del", "pycni-cli", pod.path).returncode == 0       # already gone: still fine


def test_errors_and_usage(setup):
    _, pod, tool, _ = setup
    p = tool("add", "no-such-net", pod.path)
    assert p.returncode == 1 and "no-such-net" in p.stderr
    p = tool("add", "pycni-cli", pod.path, CNI_ARGS="novalue")
    assert p.returncode == 1 and "CNI_ARGS" in p.stderr
    p = tool("add", "pycni-cli")
    assert p.returncode == 1 and "pycnitool add|check|del" in p.stderr
    p = tool("frob", "pycni-cli", pod.path)
    assert p.returncode == 1
    assert pod_eth0(pod) is None
