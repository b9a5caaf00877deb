"""Real etcd members in test network namespaces on the underlay, always stopped.

    with EtcdCluster(tmp_path, members=3) as etcd:       # or the `etcd_cluster` style fixture
        with etcd.inside():                               # this thread in the client netns
            reg = EtcdRegistry(etcd.options("vxnet"), ttl=5)
        etcd.kill(0); etcd.start(0)                       # SIGKILL a member, bring it back
        etcd.pause(); etcd.resume()                       # SIGSTOP/SIGCONT all: a black hole

A switch netns holds bridge `etcd0` with 198.19.250.254/24 (`client_ns`: the test's client
talks from there; forwarding is on, so hosts of tests/kit/vxlan_hosts.py reach the members
through the same switch when it is passed as `switch`). Member i is its own netns with `eth0`
198.19.250.<i+1>/24, etcd listening for clients on that address only (never 127.0.0.1, never
the machine's root netns), a data dir in tmp, fast heartbeats (50 ms, election 500 ms) so a
cluster starts and elects in about a second. `tls=TLS(tmp)` makes a CA, server and client
certificates with openssl and runs the members with client-cert auth.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

from plugins.pkg import ns as nsmod
from tests.kit.netns import NetNS, sh

ETCD = "/usr/bin/etcd"
SUBNET = "198.19.250"


def _openssl(*argv: str, cwd: str) -> None:
    subprocess.run(["openssl", *argv], cwd=cwd, check=True, capture_output=True, timeout=60)


class TLS:
    """A CA, a server certificate for the members' addresses and a client certificate (openssl)."""

    def __init__(self, directory: str, ips: list[str], name: str = "ca"):
        os.makedirs(directory, exist_ok=True)
        self.dir = directory
        self.ca, self.ca_key = os.path.join(directory, f"{name}.pem"), os.path.join(directory, f"{name}.key")
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", self.ca_key, "-out", self.ca, "-days", "2", "-subj", f"/CN=pycni test {name}",
                 cwd=directory)
        san = ",".join(f"IP:{ip}" for ip in ips)
        self.server, self.server_key = self._issue("server", "etcd", f"subjectAltName={san}\n"
                                                   "extendedKeyUsage=serverAuth,clientAuth\n")
        self.client, self.client_key = self._issue("client", "vxlan-agent", "extendedKeyUsage=clientAuth\n")

    def _issue(self, stem: str, cn: str, ext: str) -> tuple[str, str]:
        key, csr, pem = (os.path.join(self.dir, f"{stem}.{x}") for x in ("key", "csr", "pem"))
        extfile = os.path.join(self.dir, f"{stem}.ext")
        with open(extfile, "w") as f:
            f.write(ext)
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
                 "-out", csr, "-subj", f"/CN={cn}", cwd=self.dir)
        _openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key, "-CAcreateserial",
                 "-out", pem, "-days", "2", "-extfile", extfile, cwd=self.dir)
        return pem, key


class Member:
    def __init__(self, cluster: EtcdCluster, index: int):
        self.cluster, self.index = cluster, index
        self.name = f"m{index}"
        self.ip = f"{cluster.subnet}.{index + 1}"
        self.ns = NetNS(f"etcd{index}")
        port = f"e{os.getpid() % 10000}x{index}"[:15]
        cluster.switch.run("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0",
                           "netns", self.ns.name)
        cluster.switch.run("ip", "link", "set", port, "master", cluster.bridge, "up")
        self.ns.run("ip", "addr", "add", f"{self.ip}/24", "dev", "eth0")
        self.ns.run("ip", "link", "set", "eth0", "up")
        self.ns.run("ip", "route", "add", "default", "via", f"{cluster.subnet}.254")
        self.data = os.path.join(cluster.tmp, self.name)
        self.proc: subprocess.Popen | None = None

    @property
    def client_url(self) -> str:
        return f"{self.cluster.scheme}://{self.ip}:2379"

    def start(self) -> None:
        c = self.cluster
        argv = [ETCD, "--name", self.name, "--data-dir", self.data,
                "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", f"http://{self.ip}:2380",
                "--initial-advertise-peer-urls", f"http://{self.ip}:2380",
                "--initial-cluster", c.initial_cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", c.token,
                "--heartbeat-interval", "50", "--election-timeout", "500", "--logger", "zap",
                "--log-level", "warn"]
        if c.tls is not None:
            argv += ["--cert-file", c.tls.server, "--key-file", c.tls.server_key,
                     "--trusted-ca-file", c.tls.ca, "--client-cert-auth"]
        log = open(os.path.join(c.tmp, f"{self.name}.log"), "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns.name, *argv], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.kill()
        self.ns.close()


class EtcdCluster:
    def __init__(self, tmp: str, members: int = 3, tls: bool = False, switch: NetNS | None = None,
                 subnet: str = SUBNET):
        self.tmp = os.path.join(str(tmp), "etcd")
        os.makedirs(self.tmp, exist_ok=True)
        self.subnet = subnet
        self.token = f"pycni-test-{os.getpid()}-{time.monotonic_ns()}"
        self.members: list[Member] = []
        self._own_switch = switch is None
        self.bridge = "etcd0"
        self.tls: TLS | None = None
        try:
            self.switch = switch if switch is not None else NetNS("etcdsw")
            self.switch.run("ip", "link", "add", self.bridge, "type", "bridge")
            self.switch.run("ip", "addr", "add", f"{subnet}.254/24", "dev", self.bridge)
            self.switch.run("ip", "link", "set", self.bridge, "up")
            self.switch.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
            ips = [f"{subnet}.{i + 1}" for i in range(members)]
            self.scheme = "https" if tls else "http"
            if tls:
                self.tls = TLS(os.path.join(self.tmp, "pki"), ips)
            self.members = [Member(self, i) for i in range(members)]
            self.initial_cluster = ",".join(f"{m.name}=http://{m.ip}:2380" for m in self.members)
            for m in self.members:
                m.start()
            self.wait_healthy()
        except BaseException:
            self.close()
            raise

    @property
    def client_ns(self) -> NetNS:
        return self.switch

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def registry_conf(self, **extra) -> dict:
        """A `registry` section for these members (TLS files when the cluster has TLS)."""
        conf: dict = {"type": "etcd", "endpoints": self.endpoints, "dialTimeout": 1}
        if self.tls is not None:
            conf.update(caFile=self.tls.ca, certFile=self.tls.client, keyFile=self.tls.client_key)
        conf.update(extra)
        return conf

    def options(self, network: str, **extra):
        from plugins.main.vxlan.registry.etcd import parse_options
        return parse_options(self.registry_conf(**extra), network)

    @contextlib.contextmanager
    def inside(self):
        """This thread in the client netns (sockets made inside stay there)."""
        with nsmod.enter(self.switch.path):
            yield

    def wait_healthy(self, timeout: float = 20, members: list[Member] | None = None) -> None:
        """Every (given) member answers a linearizable read."""
        from libcni_py.errors import CNIError
        from plugins.main.vxlan.registry.etcd import EtcdRegistry
        deadline = time.monotonic() + timeout
        for m in members or self.members:
            reg = None
            while True:
                try:
                    with self.inside():
                        reg = EtcdRegistry(self.options("health", endpoints=[m.client_url]))
                        reg.snapshot()
                    break
                except CNIError:
                    if time.monotonic() > deadline or not m.alive():
                        raise RuntimeError(f"etcd member {m.name} not healthy: {self.log(m)}") from None
                    time.sleep(0.1)
                finally:
                    if reg is not None:
                        reg.close()

    def log(self, m: Member) -> str:
        try:
            with open(os.path.join(self.tmp, f"{m.name}.log"), "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def kill(self, index: int) -> None:
        self.members[index].kill(signal.SIGKILL)

    def start(self, index: int) -> None:
        """(Re)start a member on its data dir; waits until it answers."""
        m = self.members[index]
        if not m.alive():
            m.start()
        self.wait_healthy(members=[m])

    def pause(self) -> None:
        for m in self.members:
            if m.alive():
                m.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for m in self.members:
            if m.alive():
                m.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        for m in self.members:
            m.close()
        if self._own_switch and getattr(self, "switch", None) is not None:
            self.switch.close()
        elif getattr(self, "switch", None) is not None:
            sh("ip", "link", "del", self.bridge, ns=self.switch.name, check=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
