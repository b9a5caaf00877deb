"""Reachability probes run from inside a namespace: ICMP echo and a TCP exchange, over IPv4 or
IPv6 (by the address given: one with a colon is IPv6).

In-process (sockets opened in the target netns stay there), so they need no `ping`
binary on the machine. For tests, demos and diagnoses; needs CAP_NET_RAW for ICMP.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from contextlib import nullcontext

from plugins.pkg import ns


def _in(netns_path: str | None):
    return ns.enter(netns_path) if netns_path else nullcontext()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def ping(netns_path: str | None, dst: str, count: int = 1, timeout: float = 2.0,
         interval: float = 0.2) -> list[int]:
    """Send `count` echo requests to `dst` (IPv4, or IPv6: ICMPv6, whose checksum the kernel
    fills in); return the sequence numbers answered."""
    v6 = _family(dst) == socket.AF_INET6
    with _in(netns_path):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) if v6 else \
            socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = (os.getpid() ^ threading.get_ident()) & 0xFFFF
    answered: set[int] = set()
    request = 128 if v6 else 8
    try:
        for seq in range(count):
            hdr = struct.pack("!BBHHH", request, 0, 0, ident, seq)
            payload = struct.pack("!d", time.time())
            csum = 0 if v6 else _checksum(hdr + payload)
            sock.sendto(struct.pack("!BBHHH", request, 0, csum, ident, seq) + payload, (dst, 0))
            last = seq == count - 1
            _collect(sock, dst, ident, answered, time.monotonic() + (timeout if last else interval),
                     done=(lambda: len(answered) == count) if last else (lambda: False))
    finally:
        sock.close()
    return sorted(answered)


def _collect(sock, dst: str, ident: int, answered: set[int], deadline: float, done) -> None:
    while not done():
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return
        pkt, peer = sock.recvfrom(2048)
        if sock.family == socket.AF_INET6:        # no IP header on an ICMPv6 raw socket
            typ, _, _, rid, rseq = struct.unpack_from("!BBHHH", pkt, 0)
            if typ == 129 and rid == ident and socket.inet_pton(socket.AF_INET6, peer[0]) == \
                    socket.inet_pton(socket.AF_INET6, dst):
                answered.add(rseq)
            continue
        ihl = (pkt[0] & 0x0F) * 4
        typ, _, _, rid, rseq = struct.unpack_from("!BBHHH", pkt, ihl)
        if typ == 0 and rid == ident and peer[0] == dst:
            answered.add(rseq)


class TCPEcho:
    """A TCP server in a namespace that answers each connection with what it read, reversed
    (bound to "::": dual-stack, IPv4 clients as mapped addresses)."""

    def __init__(self, netns_path: str | None, addr: str = "0.0.0.0", port: int = 0):
        with _in(netns_path):
            self.sock = socket.socket(_family(addr), socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if addr == "::":
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.sock.bind((addr, port))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    data = conn.recv(4096)
                    conn.sendall(data[::-1])
                except OSError:
                    pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(timeout=2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def tcp_exchange(netns_path: str | None, dst: str, port: int, payload: bytes = b"hello",
                 timeout: float = 5.0) -> bytes:
    """Connect from the namespace, send `payload`, return the answer."""
    with _in(netns_path):
        sock = socket.socket(_family(dst), socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        sock.connect((dst, port))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        while True:
            data = sock.recv(4096)
            if not data:
                return b"".join(chunks)
            chunks.append(data)
