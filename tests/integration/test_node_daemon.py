"""pycni-node and the thin client: the plugins answer byte for byte the same with and without the
daemon; the daemon acts in the client's network namespace (never its own); a request it accepted
and did not answer is code 11 and the retry works; no daemon, another version, a socket that is
not root's, a refusal: in-process; non-root peers are refused; requests run in parallel.

Every daemon here runs in a test netns of its own (`Node`), so a worker that failed to enter the
client's namespace would act there, where the tests look, and never in the machine's."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from plugins.node import protocol as P
from plugins.pkg import ns as nsmod

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
CNI_PATH = f"{VENV_BIN}:/usr/lib/cni"
root = pytest.mark.root
pytest_plugins = ["tests.kit.bundle"]        # the PyInstaller bundle's daemon and plugins


class Node:
    """A pycni-node process in netns `ns` (its own process group), socket under `sockdir`."""

    def __init__(self, ns, sockdir: str, *args: str, exe: str = os.path.join(VENV_BIN, "pycni-node")):
        self.ns, self.dir, self.exe = ns, sockdir, exe
        self.path = os.path.join(sockdir, "node.sock")
        self.log_path = os.path.join(sockdir, "node.log")
        self.args = args
        self.start()

    def start(self) -> None:
        with open(self.log_path, "ab") as log, nsmod.enter(self.ns.path):
            self.proc = subprocess.Popen([self.exe, "--socket", self.path,
                                          "--log-level", "debug", *self.args],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60
        while not os.path.exists(self.path):
            assert self.proc.poll() is None, f"pycni-node exited {self.proc.returncode}: {self.log()}"
            assert time.monotonic() < deadline, f"no socket after 60 s: {self.log()}"
            time.sleep(0.05)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def served(self) -> int:
        return len(re.findall(r"^pycni-node: served ", self.log(), re.M))

    def kill(self) -> None:
        """kill -9 of the daemon and its workers (its process group)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)        # workers or services left behind
        except ProcessLookupError:
            pass
        return self.proc.returncode


@pytest.fixture
def node(netns, tmp_path):
    nodes: list[Node] = []

    def start(*args: str, sockdir: str | None = None) -> Node:
        d = sockdir or str(tmp_path / f"node{len(nodes)}")
        os.makedirs(d, mode=0o700, exist_ok=True)
        n = Node(netns("nd"), d, *args)
        nodes.append(n)
        return n
    yield start
    for n in nodes:
        n.stop()


def execp(plugin: str, command: str, conf: dict | bytes, *, sock: str, inside: str | None = None,
          cid: str = "c1", netns: str = "", ifname: str = "eth0", args: str = "", env: dict | None = None,
          user: int | None = None, bindir: str = VENV_BIN):
    """Exec one plugin as a runtime does, from netns `inside` (a path): (rc, stdout bytes, stderr)."""
    e = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_PATH": CNI_PATH,
         "CNI_COMMAND": command, P.SOCKET_ENV: sock, **(env or {})}
    for key, val in (("CNI_CONTAINERID", cid), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname), ("CNI_ARGS", args)):
        if val:
            e[key] = val
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    argv = [os.path.join(bindir, plugin)]

    def run():
        return subprocess.run(argv, input=stdin, env=e, capture_output=True, timeout=120, user=user)
    if inside is None:
        p = run()
    else:
        with nsmod.enter(inside):
            p = run()
    return p.returncode, p.stdout, p.stderr.decode(errors="replace")


OFF = os.path.join(tempfile.gettempdir(), "pycni-no-such-dir", "node.sock")    # no daemon there


# ---- the client's start-up diet (no root) ---------------------------------------------------
def test_client_path_imports_next_to_nothing():
    """What an exec imports before it knows whether a daemon answers: the entry point, the client,
    the protocol and _socket (not socket.py: its enum/selectors cost ~5-10 ms)."""
    code = ("import sys\nbefore = set(sys.modules)\nimport plugins.entrypoints, plugins.node.client\n"
            "print(sorted(set(sys.modules) - before))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert set(eval(p.stdout)) <= {"plugins", "plugins.entrypoints", "plugins.node", "plugins.node.client",
                                   "plugins.node.protocol", "_socket"}, p.stdout


def test_protocol_version_is_the_package_version():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1) == P.VERSION


def test_request_round_trip():
    env = {b"CNI_COMMAND": b"ADD", b"X": b"a=b", b"E": b""}
    packed = P.pack_request([b"/x/vxlan", b"\xff"], env, 0o027, [b"utf-8", b"strict", b"utf-8", b"backslashreplace"])
    assert P.unpack_request(packed) == ([b"/x/vxlan", b"\xff"], env, 0o027,
                                        ["utf-8", "strict", "utf-8", "backslashreplace"])
    with pytest.raises(P.ProtocolError):
        P.unpack_request(packed[:-3])


# ---- byte for byte, both modes ------------------------------------------------------------
def both(node_, run_steps) -> tuple[list, list]:
    """run_steps(sock) -> [(rc, stdout, ...)]: once in-process, once through the daemon."""
    inproc = run_steps(OFF)
    before = node_.served()
    daemon = run_steps(node_.path)
    assert node_.served() - before == len(daemon), node_.log()      # each exec really went to the daemon
    # the daemon preloaded what every verb imports: a worker imports nothing (a logFile's logging aside)
    assert not re.findall(r"^pycni-node: served .*; imported [1-9].*$", node_.log(), re.M), node_.log()
    return inproc, daemon


@root
def test_passthrough_byte_for_byte(node, netns):
    n, host = node(), netns("pth")
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/x"}],
            "ips": [{"address": "10.22.0.5/24", "interface": 0}], "dns": {}}
    conf = {"cniVersion": "1.0.0", "name": "pt", "type": "pycni-passthrough", "prevResult": prev}

    def steps(sock):
        out = []
        for command, c in (("ADD", conf), ("CHECK", conf), ("DEL", conf), ("VERSION", conf),
                           ("ADD", {**conf, "cniVersion": "9.9.9"}), ("ADD", b"{not json"),
                           ("ADD", {**conf, "name": "bad name"})):
            out.append(execp("pycni-passthrough", command, c, sock=sock, inside=host.path, netns=host.path))
        out.append(execp("pycni-passthrough", "ADD", conf, sock=sock, inside=host.path, netns=host.path,
                         cid="bad/id"))
        return out
    inproc, daemon = both(n, steps)
    assert [r[0] for r in inproc] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [(rc, out) for rc, out, _ in daemon] == [(rc, out) for rc, out, _ in inproc]
    # failures print the same line on stderr too (logging stays unimported, as in an exec)
    assert [err for *_, err in daemon[4:]] == [err for *_, err in inproc[4:]]


def _edgemesh_conf(tmp, pod_ns: str, ip="10.22.0.5") -> dict:
    from tests.integration.test_edgemesh_kit import prev_result
    return {"cniVersion": "1.0.0", "name": "emnet", "type": "edgemesh", "serviceCIDR": "10.96.0.0/12",
            "ensureListenDevice": True, "stateDir": f"{tmp}/emstate", "prevResult": prev_result(ip, pod_ns),
            "checkProxy": False}        # the daemon's transport and the rules, no proxy


def _nat(ns) -> str:
    return "".join(line + "\n" for line in ns.run("iptables-save", "-t", "nat").stdout.splitlines()
                   if not line.startswith("#"))


@root
def test_edgemesh_byte_for_byte_and_in_the_callers_netns(node, netns, tmp_path):
    """The daemon runs in its own netns; the rules and edgemesh0 appear in the caller's (host), the
    daemon's netns stays bare; results and rules are the same in both modes."""
    n, host, pod = node(), netns("emh"), netns("emp")
    conf = _edgemesh_conf(tmp_path, pod.path)
    daemon_ns_nat = _nat(n.ns)
    snaps = []

    def steps(sock):
        out = [execp("edgemesh", "ADD", conf, sock=sock, inside=host.path, netns=pod.path,
                     args="K8S_POD_NAMESPACE=default")]
        addrs = host.run("ip", "-o", "-4", "addr", "show", "dev", "edgemesh0", check=False).stdout
        snaps.append((_nat(host), re.sub(r"^\d+: ", "", addrs, flags=re.M)))      # (the ifindex grows)
        out.append(execp("edgemesh", "CHECK", conf, sock=sock, inside=host.path, netns=pod.path,
                         args="K8S_POD_NAMESPACE=default"))
        out.append(execp("edgemesh", "DEL", conf, sock=sock, inside=host.path, netns=pod.path))
        out.append(execp("edgemesh", "DEL", conf, sock=sock, inside=host.path, netns=pod.path))   # idempotent
        snaps.append((_nat(host), host.run("ip", "link", "show", "edgemesh0", check=False).returncode))
        return out
    inproc, daemon = both(n, steps)
    assert [r[0] for r in inproc] == [0, 0, 0, 0], inproc
    assert [(rc, out) for rc, out, _ in daemon] == [(rc, out) for rc, out, _ in inproc]
    assert snaps[2] == snaps[0] and "EDGE-MESH" in snaps[0][0] and "edgemesh0" in snaps[0][1], snaps
    assert snaps[3] == snaps[1] and snaps[1][1] != 0
    assert _nat(n.ns) == daemon_ns_nat and "EDGE-MESH" not in daemon_ns_nat
    assert n.ns.run("ip", "link", "show", "edgemesh0", check=False).returncode != 0


@root
def test_dp_steering_byte_for_byte(node, netns, tmp_path):
    from tests.kit.dp_steering import World
    n = node()
    w = World(netns, tmp_path, mode="tap")
    pod = w.add("c1", steer=False)                       # the Go bridge's result: dp-steering's prevResult
    prev = json.loads(json.dumps(pod.added.encode("1.0.0")))
    conf = {"cniVersion": "1.0.0", "name": "dpnet", **w.steer, "prevResult": prev}
    links = []

    def steps(sock):
        out = [execp("dp-steering", "ADD", conf, sock=sock, inside=w.host.path, netns=pod.ns.path)]
        links.append((sorted(w.enforcer_links()), w.state_files()))
        for command in ("CHECK", "DEL", "DEL"):
            out.append(execp("dp-steering", command, conf, sock=sock, inside=w.host.path, netns=pod.ns.path))
        links.append((sorted(w.enforcer_links()), w.state_files()))
        return out
    inproc, daemon = both(n, steps)
    assert [r[0] for r in inproc] == [0, 0, 0, 0], inproc
    assert [(rc, out) for rc, out, _ in daemon] == [(rc, out) for rc, out, _ in inproc]
    assert links[2] == links[0] and links[3] == links[1] and links[0] != links[1], links
    w.delete(pod)


@root
def test_vxlan_byte_for_byte(node, netns, tmp_path):
    """A pod's ADD/CHECK/DEL on a vxlan host. The host veth's MAC is random in every ADD
    (pod.attach: link.random_mac), the one value masked; host-local's next-address cursor is reset
    between the modes so that both get the same address."""
    from tests.kit.vxlan_hosts import Cluster
    n = node()
    cluster = Cluster(netns, tmp_path, segments=[0])
    host = cluster.hosts[0]
    pod = netns("vxp")
    conf = dict(host.conf)
    args = "IgnoreUnknown=1;MAC=02:00:00:aa:bb:01;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p1"

    def steps(sock):
        rc, add, err = execp("vxlan", "ADD", conf, sock=sock, inside=host.path, netns=pod.path, args=args)
        assert rc == 0, add + err.encode()
        result = json.loads(add)
        veth_mac = result["interfaces"][1]["mac"]
        masked = add.replace(veth_mac.encode(), b"<host veth mac>")
        out = [(rc, masked)]
        for command in ("CHECK", "DEL", "DEL"):
            rc, o, err = execp("vxlan", command, {**conf, "prevResult": result}, sock=sock, inside=host.path,
                               netns=pod.path, args=args)
            out.append((rc, o))
        for top, _, files in os.walk(os.path.join(host.conf["stateDir"], "ipam")):
            for f in files:
                if f.startswith("last_reserved_ip"):
                    os.unlink(os.path.join(top, f))
        return out
    inproc, daemon = both(n, steps)
    assert [r[0] for r in inproc] == [0, 0, 0, 0], inproc
    assert daemon == inproc
    assert b"<host veth mac>" in inproc[0][1] and b"02:00:00:aa:bb:01" in inproc[0][1]


# ---- failure modes ------------------------------------------------------------------------
@root
def test_daemon_killed_mid_request_is_code_11_and_the_retry_works(node, netns, tmp_path):
    """edgemesh's ADD waits on its stateDir lock (held here); kill -9 of the daemon and its worker
    then: the client answers 11 (in the config's cniVersion), nothing was applied, and the
    retried DEL and ADD work, through a new daemon and without one."""
    from plugins.meta.edgemesh import config as emconfig
    n, host, pod = node(), netns("emh"), netns("emp")
    conf = {**_edgemesh_conf(tmp_path, pod.path), "cniVersion": "0.4.0"}
    conf["prevResult"]["cniVersion"] = "0.4.0"
    conf["prevResult"]["ips"][0]["version"] = "4"
    lock_path = emconfig.load(conf, "ADD").lock_path
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        done = {}
        t = threading.Thread(target=lambda: done.update(r=execp("edgemesh", "ADD", conf, sock=n.path,
                                                                 inside=host.path, netns=pod.path)))
        t.start()
        _wait_lock_waiter(lock_path)
        n.kill()
        t.join(60)
    finally:
        os.close(fd)
    rc, out, err = done["r"]
    assert rc == 1, (out, err)
    assert json.loads(out)["code"] == 11 and json.loads(out)["cniVersion"] == "0.4.0", out
    assert "EDGE-MESH" not in _nat(host)
    n.start()                                                     # a new daemon, the same socket path
    assert execp("edgemesh", "DEL", conf, sock=n.path, inside=host.path, netns=pod.path)[0] == 0
    assert execp("edgemesh", "ADD", conf, sock=n.path, inside=host.path, netns=pod.path)[0] == 0
    assert "EDGE-MESH" in _nat(host)
    n.kill()                                                      # no daemon: the stale socket refuses
    assert execp("edgemesh", "DEL", conf, sock=n.path, inside=host.path, netns=pod.path)[0] == 0
    assert "EDGE-MESH" not in _nat(host)


def _wait_lock_waiter(path: str, timeout: float = 60) -> None:
    """Until some process waits for the flock on `path` (a "->" line for its inode in /proc/locks)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/locks") as f:
            if any("->" in line and dev in line for line in f):
                return
        time.sleep(0.02)
    raise AssertionError(f"nobody waited for {path}")


class FakeServer(threading.Thread):
    """A unix socket server that answers every hello with `answer` and records what it got."""

    def __init__(self, path: str, answer: bytes | None, owner: int = 0):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chown(path, owner, owner)
        self.sock.listen(8)
        self.answer, self.hellos, self.requests = answer, [], 0

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.hellos.append(P.recv_frame(conn))
                    if self.answer is not None:
                        conn.sendall(P.frame(self.answer))
                    if conn.recv(1):
                        self.requests += 1
                except (OSError, P.ProtocolError):
                    pass

    def close(self) -> None:
        self.sock.close()


@root
@pytest.mark.parametrize("case", ["no-socket", "refused", "other-version", "not-root-owned", "no-answer"])
def test_fallback_in_process(netns, tmp_path, case):
    host = netns("fb")
    path = str(tmp_path / "node.sock")
    server = None
    if case == "refused":                 # a socket file nobody listens on (a dead daemon's)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.close()
    elif case == "other-version":
        server = FakeServer(path, b"NO\0version '0/0.0.0' is not this daemon's")
    elif case == "not-root-owned":
        server = FakeServer(path, b"OK", owner=65534)
    elif case == "no-answer":             # the request is sent only after OK: a silent daemon is skipped
        server = FakeServer(path, None)
    if server is not None:
        server.start()
    conf = {"cniVersion": "1.0.0", "name": "pt", "type": "pycni-passthrough"}
    try:
        t0 = time.monotonic()
        rc, out, err = execp("pycni-passthrough", "ADD", conf, sock=path, inside=host.path, netns=host.path)
        assert rc == 0 and json.loads(out) == {"cniVersion": "1.0.0", "dns": {}}, (out, err)
        if case == "no-answer":
            assert time.monotonic() - t0 >= P.HELLO_TIMEOUT - 0.5
    finally:
        if server is not None:
            server.close()
    if case in ("other-version", "no-answer"):
        assert len(server.hellos) == 1 and server.hellos[0].startswith(P.MAGIC + P.identity().encode())
        assert server.requests == 0
    if case == "not-root-owned":
        assert server.hellos == []        # not even a hello to a socket root does not own


def _raw_hello(path: str, ident: bytes, name: bytes = b"pycni-passthrough") -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    fds = [os.open("/proc/self/ns/net", os.O_RDONLY), os.open("/proc/self/ns/mnt", os.O_RDONLY),
           os.open(".", os.O_RDONLY), 2]
    try:
        s.sendmsg([P.frame(P.MAGIC + ident + b"\0" + name)], P.pack_fds(fds))
        return P.recv_frame(s)
    finally:
        for fd in fds[:3]:
            os.close(fd)
        s.close()


@root
def test_daemon_refuses_another_version_and_unknown_plugins(node):
    n = node()
    assert _raw_hello(n.path, b"0/0.0.0").startswith(b"NO\0version '0/0.0.0'")
    assert _raw_hello(n.path, P.identity().encode(), b"vxlan-agent").startswith(b"NO\0plugin 'vxlan-agent'")
    assert _raw_hello(n.path, P.identity().encode()) == b"OK"


@root
def test_socket_mode_and_non_root_peer_refused(node):
    """The socket is 0600 in a 0700 dir (nobody cannot connect); loosened by hand, a non-root peer
    still gets NO (SO_PEERCRED)."""
    d = tempfile.mkdtemp(prefix="pycni-node-test-")
    try:
        n = node(sockdir=d)
        assert os.stat(n.path).st_mode & 0o777 == 0o600 and os.stat(d).st_mode & 0o777 == 0o700
        def as_nobody() -> str:
            """Connect and say hello from a forked child that is uid/gid 65534."""
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                out = b"?"
                try:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.settimeout(10)
                    try:
                        s.connect(n.path)
                    except PermissionError:
                        out = b"EACCES"
                    else:
                        try:           # the daemon may have refused (and closed) before the hello is sent
                            s.sendmsg([P.frame(P.MAGIC + P.identity().encode() + b"\0pycni-passthrough")],
                                      P.pack_fds([0, 1, 2, 2]))
                        except OSError:
                            pass
                        out = P.recv_frame(s)
                finally:
                    os.write(w, out)
                    os._exit(0)
            os.close(w)
            with os.fdopen(r, "rb") as f:
                got = f.read()
            os.waitpid(pid, 0)
            return got.decode()
        assert as_nobody() == "EACCES"
        os.chmod(d, 0o755)
        os.chmod(n.path, 0o666)
        got = as_nobody()
        assert got == "NO\0peer uid 65534 is not root", (got, n.log())
    finally:
        shutil.rmtree(d, ignore_errors=True)


@root
def test_parallel_requests(node, netns, tmp_path):
    """A worker blocked on edgemesh's lock does not hold up others; 8 pods' ADDs at once all work."""
    from plugins.meta.edgemesh import config as emconfig
    n, host = node(), netns("emh")
    pods = [netns("emp") for _ in range(8)]
    confs = [_edgemesh_conf(tmp_path, p.path, ip=f"10.22.0.{10 + i}") for i, p in enumerate(pods)]
    lock_path = emconfig.load(confs[0], "ADD").lock_path
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    results: dict[int, tuple] = {}
    threads = [threading.Thread(target=lambda i=i: results.update({i: execp(
        "edgemesh", "ADD", confs[i], sock=n.path, inside=host.path, netns=pods[i].path, cid=f"c{i}")}))
        for i in range(8)]
    try:
        for t in threads:
            t.start()
        _wait_lock_waiter(lock_path)
        pt = {"cniVersion": "1.0.0", "name": "pt", "type": "pycni-passthrough"}
        assert execp("pycni-passthrough", "ADD", pt, sock=n.path, inside=host.path, netns=host.path)[0] == 0
        assert not results                  # all 8 still wait on the lock
    finally:
        os.close(fd)
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(8)) and all(r[0] == 0 for r in results.values()), results
    nat = _nat(host)
    assert all(f"10.22.0.{10 + i}" in nat for i in range(8))
    for i in range(8):
        assert execp("edgemesh", "DEL", confs[i], sock=n.path, inside=host.path, netns=pods[i].path,
                     cid=f"c{i}")[0] == 0
    assert "EDGE-MESH" not in _nat(host)
    assert n.served() == 17


@root
def test_sigterm_removes_the_socket_and_plugins_run_in_process(node, netns):
    n, host = node(), netns("fb")
    spares = _wait_children(n.proc.pid)
    assert n.stop() == 0
    assert not os.path.exists(n.path)
    assert "still running after 30 s" not in n.log(), n.log()      # the spares left on their own
    assert not [p for p in spares if _alive(p)]
    conf = {"cniVersion": "1.0.0", "name": "pt", "type": "pycni-passthrough"}
    assert execp("pycni-passthrough", "ADD", conf, sock=n.path, inside=host.path, netns=host.path)[0] == 0


@root
def test_start_refusals(node, tmp_path):
    """A second daemon on a live socket and a socket dir others can write are start failures."""
    n = node()
    p = subprocess.run([os.path.join(VENV_BIN, "pycni-node"), "--socket", n.path], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1 and "another pycni-node is listening" in p.stderr
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    p = subprocess.run([os.path.join(VENV_BIN, "pycni-node"), "--socket", str(d / "node.sock")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "writable by no one else" in p.stderr
    bad = tmp_path / "bad.conflist"
    bad.write_text("{nope")
    p = subprocess.run([os.path.join(VENV_BIN, "pycni-node"), "--socket", str(tmp_path / "x.sock"),
                        "--conf", str(bad)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "--conf" in p.stderr


@root
def test_vxlan_agent_runs_in_the_daemon(node, netns, tmp_path):
    """--conf with a vxlan plugin: the daemon's child runs the agent (agent.json appears, the
    node's device exists); killed, it is started again; the daemon killed, it stops too."""
    from tests.kit.vxlan_hosts import Cluster
    cluster = Cluster(netns, tmp_path, segments=[0])
    host = cluster.hosts[0]
    conf_path = tmp_path / "vx.conflist"
    plugin = {k: v for k, v in host.conf.items() if k not in ("name", "cniVersion")}
    conf_path.write_text(json.dumps({"cniVersion": "1.0.0", "name": host.conf["name"], "plugins": [plugin]}))
    sockdir = str(tmp_path / "nodevx")
    os.makedirs(sockdir, mode=0o700)
    n = Node(host.ns, sockdir, "--conf", str(conf_path))
    try:
        agent_json = os.path.join(host.conf["stateDir"], "agent.json")
        first = _wait_pid(agent_json, 0)
        assert host.run("ip", "link", "show", "vxlan.1", check=False).returncode == 0
        os.kill(first, signal.SIGKILL)
        second = _wait_pid(agent_json, first)
        n.proc.kill()                                  # kill -9 of the daemon alone: its agent follows
        n.proc.wait(30)
        deadline = time.monotonic() + 30
        while _alive(second) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(second), "the agent outlived its daemon"
    finally:
        n.stop()


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                if d.isdigit() and int(f.read().rpartition(")")[2].split()[1]) == pid:
                    out.append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    return out


def _wait_children(pid: int, n: int = 2, timeout: float = 30) -> list[int]:
    """The daemon's spare workers (its children, when it runs no service), once `n` are there."""
    deadline = time.monotonic() + timeout
    while len(_children(pid)) < n:
        assert time.monotonic() < deadline, f"pycni-node {pid} has children {_children(pid)}"
        time.sleep(0.05)
    return _children(pid)


@root
def test_spares_leave_with_a_daemon_killed_9_and_execs_run_in_process(node, netns):
    """Spare workers wait in accept() on the daemon's socket: with the main process killed -9 alone
    they leave too (none may take a request for a dead daemon), so the stale socket refuses and
    the next exec runs in-process."""
    n, host = node(), netns("fb")
    spares = _wait_children(n.proc.pid)
    conf = {"cniVersion": "1.0.0", "name": "pt", "type": "pycni-passthrough"}
    assert execp("pycni-passthrough", "ADD", conf, sock=n.path, inside=host.path, netns=host.path)[0] == 0
    assert n.served() == 1
    os.kill(n.proc.pid, signal.SIGKILL)
    n.proc.wait(30)
    deadline = time.monotonic() + 30
    while [p for p in spares if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in spares if _alive(p)], spares
    assert os.path.exists(n.path)                     # stale: nobody listens
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(ConnectionRefusedError):
        probe.connect(n.path)
    probe.close()
    rc, out, err = execp("pycni-passthrough", "ADD", conf, sock=n.path, inside=host.path, netns=host.path)
    assert rc == 0 and json.loads(out) == {"cniVersion": "1.0.0", "dns": {}} and n.served() == 1, (out, err)


@root
def test_spares_copy_the_pages_requests_write_before_their_accept(node, netns):
    """The first workers learn which of the daemon's pages requests write; the spares forked
    after them copy those before their accept, so their requests take far fewer copy-on-write
    faults (the debug line: faults before the accept + on the path + in the run; pretouched)."""
    if tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2]) < (5, 14):
        pytest.skip("MADV_POPULATE_WRITE needs Linux 5.14")
    n, host = node(), netns("pt")
    conf = {"cniVersion": "1.0.0", "name": "pt", "type": "pycni-passthrough"}
    for _ in range(6):
        assert execp("pycni-passthrough", "ADD", conf, sock=n.path, inside=host.path, netns=host.path)[0] == 0
    lines = re.findall(r"^pycni-node: served .*faults \d+ \+ (\d+) \+ (\d+);.*; pretouched (\d+)$", n.log(), re.M)
    assert len(lines) == 6, n.log()
    cold = [int(path) + int(run) for path, run, touched in lines if touched == "0"]
    warm = [int(path) + int(run) for path, run, touched in lines if touched != "0"]
    assert cold and warm, n.log()                      # the first spares had nothing to copy yet
    assert max(warm) < min(cold) / 2, n.log()


@root
def test_a_client_in_another_mount_namespace(node, netns, tmp_path):
    """An exec in a mount namespace of its own (a tmpfs only it sees): the worker enters it, so
    the plugin's logFile lands on that tmpfs, as in-process; the daemon's namespace sees none."""
    n, host = node(), netns("mnt")
    d = tmp_path / "private"
    d.mkdir()
    code = ("import json, os, subprocess, sys\n"
            "d, plugin, sock = sys.argv[1:4]\n"
            "subprocess.run(['mount', '--make-rprivate', '/'], check=True)\n"
            "subprocess.run(['mount', '-t', 'tmpfs', 'pycni-test', d], check=True)\n"
            "conf = {'cniVersion': '1.0.0', 'name': 'pt', 'type': 'pycni-passthrough', 'logLevel': 'debug',\n"
            "        'logFile': d + '/plugin.log'}\n"
            "env = dict(os.environ, CNI_COMMAND='ADD', CNI_CONTAINERID='c1', CNI_NETNS=sys.argv[4],\n"
            "           CNI_IFNAME='eth0', CNI_PATH='/usr/lib/cni', PYCNI_NODE_SOCKET=sock)\n"
            "p = subprocess.run([plugin], input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60)\n"
            "with open(d + '/plugin.log') as f:\n"
            "    print(json.dumps([p.returncode, p.stdout.decode(), 'ADD' in f.read()]))\n")

    def run(sock: str) -> list:
        with nsmod.enter(host.path):
            p = subprocess.run(["unshare", "-m", sys.executable, "-c", code, str(d),
                                os.path.join(VENV_BIN, "pycni-passthrough"), sock, host.path],
                               capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)
    inproc = run(OFF)
    daemon = run(n.path)
    assert daemon == inproc and inproc[0] == 0 and inproc[2], (daemon, inproc)
    assert n.served() == 1 and "mntns entered" in n.log(), n.log()
    assert os.listdir(d) == []                        # the tmpfs was the client's only


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for whoever inherited it is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _wait_pid(path: str, other: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                pid = json.load(f)["pid"]
            if pid != other:
                return pid
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"no agent (other than {other}) wrote {path}")


@root
@pytest.mark.slow
def test_the_bundle_serves_its_own_plugins_and_not_the_venvs(bundle, netns, tmp_path):
    """The PyInstaller bundle's pycni-node serves the bundle's plugins (byte for byte as their
    in-process run); the venv's plugins are another version to it (the bundle's identity names its
    executable file) and run in-process."""
    sockdir = str(tmp_path / "bnode")
    os.makedirs(sockdir, mode=0o700)
    n = Node(netns("nd"), sockdir, exe=str(bundle / "bin" / "pycni-node"))
    host, pod = netns("bh"), netns("bp")
    conf = _edgemesh_conf(tmp_path, pod.path)
    try:
        bindir = str(bundle / "bin")
        inproc = [execp("edgemesh", verb, conf, sock=OFF, inside=host.path, netns=pod.path, bindir=bindir)
                  for verb in ("ADD", "CHECK", "DEL")]
        daemon = [execp("edgemesh", verb, conf, sock=n.path, inside=host.path, netns=pod.path, bindir=bindir)
                  for verb in ("ADD", "CHECK", "DEL")]
        assert n.served() == 3, n.log()
        assert [r[:2] for r in daemon] == [r[:2] for r in inproc] and [r[0] for r in inproc] == [0, 0, 0], inproc
        rc, out, err = execp("pycni-passthrough", "ADD", {"cniVersion": "1.0.0", "name": "pt",
                                                          "type": "pycni-passthrough"}, sock=n.path, inside=host.path,
                             netns=host.path)
        assert rc == 0 and n.served() == 3 and "is not this daemon's" in n.log(), (out, err, n.log())
    finally:
        n.stop()


@root
def test_a_full_daemon_sends_the_exec_in_process(node, netns, tmp_path):
    """--max-workers 1 with its one worker waiting on edgemesh's lock: the next exec is closed
    before its hello is answered and runs in-process."""
    from plugins.meta.edgemesh import config as emconfig
    n, host, pod = node("--max-workers", "1"), netns("emh"), netns("emp")
    conf = _edgemesh_conf(tmp_path, pod.path)
    lock_path = emconfig.load(conf, "ADD").lock_path
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done: dict = {}
    t = threading.Thread(target=lambda: done.update(r=execp("edgemesh", "ADD", conf, sock=n.path,
                                                             inside=host.path, netns=pod.path)))
    try:
        t.start()
        _wait_lock_waiter(lock_path)
        pt = {"cniVersion": "1.0.0", "name": "pt", "type": "pycni-passthrough"}
        rc, out, err = execp("pycni-passthrough", "ADD", pt, sock=n.path, inside=host.path, netns=host.path)
        assert rc == 0 and json.loads(out) == {"cniVersion": "1.0.0", "dns": {}}, (out, err)
        assert n.served() == 0                      # the edgemesh ADD is still waiting
        assert "refused a request: 1 requests in flight (--max-workers)" in n.log()
    finally:
        os.close(fd)
    t.join(60)
    assert done["r"][0] == 0 and n.served() == 1, (done, n.log())
    assert execp("edgemesh", "DEL", conf, sock=n.path, inside=host.path, netns=pod.path)[0] == 0


@root
def test_dp_steering_conf_starts_the_failopen_watcher(node, netns, tmp_path):
    """--conf with dp-steering: the fail-open watcher runs as the daemon's child over its stateDir
    (what it does is tests/integration/test_dp_steering_failopen_runtime.py's)."""
    conf_path = tmp_path / "dp.conflist"
    conf_path.write_text(json.dumps({"cniVersion": "1.0.0", "name": "dpnet", "plugins": [
        {"type": "bridge", "bridge": "cni-dp0"},
        {"type": "dp-steering", "enforcerNetns": "/run/netns/none", "stateDir": str(tmp_path / "dpstate")}]}))
    n = node("--conf", str(conf_path))
    deadline = time.monotonic() + 30
    while "service dp-failopen started" not in n.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    pid = int(re.search(r"service dp-failopen started \(pid (\d+)\)", n.log()).group(1))
    time.sleep(1.0)
    assert _alive(pid), n.log()                     # running, not exiting and restarted
    assert "exited" not in n.log(), n.log()
