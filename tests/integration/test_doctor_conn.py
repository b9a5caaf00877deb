"""pycni-doctor --conn ADDR:PORT against the real kernel: an idle listener in a test namespace is named
(pid, comm, executable); a connection that lives 50 ms, made while `--watch` runs, is caught with the
processes at both ends; arguments it refuses."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.test_doctor import DOCTOR, doctor

pytestmark = pytest.mark.root

LISTENER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 9090))
s.listen(8)
print("listening", flush=True)
while True:
    c = s.accept()[0]
    c.recv(10)
    c.close()
"""
# connect, hold it 50 ms, close, exit
CLIENT = """
import socket, time
c = socket.create_connection(("127.0.0.1", 9090), timeout=2)
time.sleep(0.05)
c.close()
"""


@pytest.fixture
def server(netns):
    ns = netns("docconn")
    ns.run("ip", "link", "set", "lo", "up")
    p = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", LISTENER],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening"
    yield ns, p
    p.kill()
    p.wait()


def test_an_idle_listener_is_named(server):
    ns, p = server
    rc, out = doctor("--conn", "127.0.0.1:9090", "--netns", ns.path)
    assert rc == 0 and out["errors"] == [], out
    [c] = out["connections"]
    assert (c["where"], c["proto"], c["state"], c["local"]) == (f"netns {ns.name}", "tcp", "LISTEN", "127.0.0.1:9090")
    [proc] = c["processes"]
    assert proc["pid"] == p.pid and proc["exe"] == os.path.realpath(sys.executable)
    assert proc["comm"].startswith("python") and "socket" in proc["cmdline"]
    # the table names it too; another port has nothing (exit 1)
    t = subprocess.run([DOCTOR, "--conn", "127.0.0.1:9090", "--netns", ns.path], capture_output=True, text=True,
                       timeout=60)
    assert t.returncode == 0 and f"tcp 127.0.0.1:9090 -> 0.0.0.0:0 LISTEN: pid {p.pid} " in t.stdout, t.stdout
    rc, out = doctor("--conn", "127.0.0.1:9091", "--netns", ns.path)
    assert (rc, out["connections"]) == (1, [])


def test_a_connection_of_50_ms_is_caught_while_watching(server):
    ns, p = server
    for _ in range(5):                                   # bounded: the kernel's timing, not luck, decides
        d = subprocess.Popen([DOCTOR, "--json", "--conn", "127.0.0.1:9090", "--netns", ns.path, "--watch", "1.5"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert d.stderr is not None and d.stderr.readline().startswith("pycni-doctor: watching 127.0.0.1:9090")
        client = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", CLIENT])
        assert client.wait(timeout=30) == 0
        stdout, _ = d.communicate(timeout=60)
        assert d.returncode == 0, stdout
        conns = json.loads(stdout)["connections"]
        est = [c for c in conns if c["state"] == "ESTABLISHED" and c["processes"]]
        pids = {proc["pid"] for c in est for proc in c["processes"]}
        if client.pid in pids:
            break
    else:
        pytest.fail(f"the 50 ms connection was never caught: {conns}")
    mine = [c for c in est if c["processes"][0]["pid"] == client.pid]
    assert mine[0]["remote"] == "127.0.0.1:9090" and mine[0]["proto"] == "tcp"
    assert p.pid in pids                                   # the server's accepted end, owned by the listener


def test_conn_arguments():
    for args in (["--conn", "nonsense"], ["--conn", "10.0.0.1:0"], ["--check", "conn-owner"],
                 ["--conn", "10.0.0.1:80", "--watch", "-1"]):
        rc, out = doctor(*args)
        assert rc == 2 and out["code"] == 161, (args, out)
    rc, out = doctor("--conn", "10.0.0.1:80", "--netns", "/nonexistent")
    assert rc == 2 and out["code"] == 163


SERVE_HOLD = """
import socket, time
s = socket.socket()
s.bind(("10.6.0.2", 9191))
s.listen(8)
print("listening", flush=True)
c = s.accept()[0]
time.sleep(60)
"""
CONNECT_HOLD = """
import socket, time
c = socket.create_connection(("10.6.0.2", 9191), timeout=2)
print("connected", flush=True)
time.sleep(60)
"""


def test_both_ends_in_their_own_namespaces_in_a_whole_node_scan(netns):
    """No --netns: every namespace is asked; the client's end is found in the client's namespace,
    the listener and the accepted end in the server's, each with its process."""
    cli, srv = netns("docccli"), netns("doccsrv")
    cli.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", srv.name)
    cli.run("ip", "addr", "add", "10.6.0.1/24", "dev", "eth0")
    cli.run("ip", "link", "set", "eth0", "up")
    srv.run("ip", "addr", "add", "10.6.0.2/24", "dev", "eth0")
    srv.run("ip", "link", "set", "eth0", "up")
    procs = []
    try:
        for ns, code, word in ((srv, SERVE_HOLD, "listening"), (cli, CONNECT_HOLD, "connected")):
            p = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", code],
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == word
        rc, out = doctor("--conn", "10.6.0.2:9191")
        assert rc == 0, out
        got = sorted((c["where"], c["state"], c["processes"][0]["pid"]) for c in out["connections"])
        assert got == sorted([(f"netns {srv.name}", "LISTEN", procs[0].pid),
                              (f"netns {srv.name}", "ESTABLISHED", procs[0].pid),
                              (f"netns {cli.name}", "ESTABLISHED", procs[1].pid)]), out["connections"]
    finally:
        for p in procs:
            p.kill()
            p.wait()


HOLD_SVC = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], 80), timeout=5)
print("connected", c.getsockname()[0], flush=True)
time.sleep(60)
"""


def test_conn_mesh_names_the_proxy_and_the_pods_talking_through_it(netns, tmp_path):
    """`--conn mesh`: the listen address comes from edgemesh's own DNAT rules (the real plugin); the
    proxy's listener and its end of a pod's hijacked service connection are named."""
    from tests.integration.test_edgemesh_kit import SVC, Node, conflist, edgemesh_conf
    node, pod = Node(netns("doccmh"), str(tmp_path)), netns("doccmp")
    mesh = conflist(tmp_path, edgemesh=edgemesh_conf(tmp_path))
    node.add(mesh, pod, "c1")
    client = None
    try:
        rc, out = doctor("--conn", "mesh", "--netns", node.ns.path)
        assert (rc, out["targets"], out["connections"]) == (1, ["169.254.96.16:40001"], []), out
        proxy = node.serve("--listen", "169.254.96.16:40001")
        client = subprocess.Popen(["ip", "netns", "exec", pod.name, sys.executable, "-c", HOLD_SVC, SVC],
                                  stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None
        word, pod_ip = client.stdout.readline().split()
        assert word == "connected"
        rc, out = doctor("--conn", "mesh", "--netns", node.ns.path)
        assert rc == 0, out
        [listener] = [c for c in out["connections"] if c["state"] == "LISTEN"]
        assert listener["local"] == "169.254.96.16:40001" and listener["processes"][0]["pid"] == proxy.pid
        # the proxy's end of the pod's connection: still open (the proxy holds it), or already closed by
        # the proxy after answering (inode 0, no process): either way it names the pod
        [end] = [c for c in out["connections"] if c["remote"].split(":")[0] == pod_ip]
        assert end["local"] == "169.254.96.16:40001"
        assert [p["pid"] for p in end["processes"]] == ([proxy.pid] if end["inode"] else []), end
    finally:
        if client is not None:
            client.kill()
            client.wait()
        node.stop()
        node.delete(mesh, pod, "c1")
