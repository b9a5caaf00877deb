"""Run the reference dp (pycni-dp) for a test: started in a netns, ready when it answers."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time

from plugins.meta.dp_steering import dpctl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DP_BIN = os.path.join(ROOT, ".venv", "bin", "pycni-dp")


class DP:
    """`with DP(netns_path, tmp_dir, "--iface", "vth") as dp:` ... dp.socket, dp.stats()."""

    def __init__(self, netns_path: str, workdir, *args: str):
        self.socket = os.path.join(str(workdir), "dp.sock")
        self.log = os.path.join(str(workdir), "dp.log")
        self.argv = [DP_BIN, "--netns", netns_path, "--socket", self.socket, "-v", *args]
        self.proc = None

    def start(self, ready_within: float = 15.0) -> DP:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
        deadline = time.monotonic() + ready_within
        while dpctl.ping(self.socket, timeout=0.5) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pycni-dp did not come up:\n{self.output()}")
            time.sleep(0.02)
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self) -> int:
        """The dp process's resident memory (VmRSS), in KiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stats(self) -> dict:
        s = dpctl.stats(self.socket, timeout=5)
        assert s is not None, f"pycni-dp does not answer:\n{self.output()}"
        return s

    def wait(self, predicate, what: str, within: float = 10.0):
        """Poll the dp's stats until predicate(stats) holds (bounded; not a timing check)."""
        deadline = time.monotonic() + within
        while True:
            s = self.stats()
            if predicate(s):
                return s
            if time.monotonic() > deadline:
                raise AssertionError(f"dp never reached: {what}; last stats {s}")
            time.sleep(0.02)

    def __enter__(self):
        return self if self.proc else self.start()

    def __exit__(self, *exc):
        self.stop()


class Client:
    """A long-lived control client, as NeuVector's agent keeps one: a socket bound to
    `path` and connected to the dp. `ask` sends one request and waits for its reply;
    `send` only sends (a client that never reads uses nothing else)."""

    def __init__(self, dp_socket: str, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.connect(dp_socket)

    def send(self, msg) -> None:
        self.sock.send(msg if isinstance(msg, bytes) else json.dumps(msg).encode())

    def ask(self, msg, timeout: float = 5.0) -> dict:
        self.send(msg)
        self.sock.settimeout(timeout)
        return json.loads(self.sock.recv(1 << 20))

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
