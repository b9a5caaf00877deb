"""A stand-in for the mesh proxy (tests and demo): answer every hijacked flow with its
original destination. Also a plain server and a one-shot client, so a test needs nothing else.

  python -m plugins.meta.edgemesh.origdst serve --listen 169.254.96.16:40001 [--udp]
      (--listen again for more, [fd00:a9fe:6010::1]:40001 for IPv6)
      replies "orig=<service ip>:<port>"   (what the pod asked for before the DNAT)
  python -m plugins.meta.edgemesh.origdst serve --real --listen 10.96.0.20:80 [--udp]
      replies "real=<ip>:<port>"           (a server reached without the proxy)
  python -m plugins.meta.edgemesh.origdst ask tcp|udp IP PORT
      prints the answer (exit 1 on timeout or refusal)

TCP: getsockopt(SOL_IP, SO_ORIGINAL_DST) on the accepted socket - the call that hangs on
4.15 kernels; IPv6: getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST), the same number 80, which
gives a sockaddr_in6. UDP has no such option, and IP_RECVORIGDSTADDR reports the address after
the DNAT (169.254.96.16), so the UDP side asks conntrack for the entry whose reply tuple
is (listen address -> client) and reads its original destination.
"""
from __future__ import annotations

import argparse
import selectors
import socket
import struct
import sys

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80       # linux/netfilter_ipv6/ip6_tables.h, at SOL_IPV6 (= IPPROTO_IPV6, 41)


def original_dst_tcp(conn: socket.socket) -> tuple[str, int]:
    if conn.family == socket.AF_INET6:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)     # sockaddr_in6
        port, = struct.unpack("!H", raw[2:4])
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, = struct.unpack("!H", raw[2:4])
    return socket.inet_ntoa(raw[4:8]), port


def original_dst_udp(local: tuple, peer: tuple) -> tuple[str, int]:
    from pyroute2.conntrack import Conntrack, NFCTAttrTuple
    v6 = ":" in local[0]
    reply = NFCTAttrTuple(family=socket.AF_INET6 if v6 else socket.AF_INET, saddr=local[0], daddr=peer[0],
                          proto=socket.IPPROTO_UDP, sport=local[1], dport=peer[1])
    with Conntrack(nfgen_family=reply.family) as ct:
        entry = ct.entry("get", tuple_reply=reply)
    orig = entry.get_attr("CTA_TUPLE_ORIG")
    return (orig.get_attr("CTA_TUPLE_IP").get_attr("CTA_IP_V6_DST" if v6 else "CTA_IP_V4_DST"),
            orig.get_attr("CTA_TUPLE_PROTO").get_attr("CTA_PROTO_DST_PORT"))


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def serve(listen: list[tuple[str, int]], udp: bool, real: bool) -> None:
    sel = selectors.DefaultSelector()
    for addr in listen:
        t = socket.socket(_family(addr[0]), socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind(addr)
        t.listen(64)
        sel.register(t, selectors.EVENT_READ, "tcp")
        if udp:
            u = socket.socket(_family(addr[0]), socket.SOCK_DGRAM)
            u.bind(addr)
            sel.register(u, selectors.EVENT_READ, "udp")
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data == "tcp":
                conn, _peer = sock.accept()
                with conn:
                    ip, port = conn.getsockname()[:2] if real else original_dst_tcp(conn)
                    conn.sendall(f"{'real' if real else 'orig'}={ip}:{port}\n".encode())
            else:
                _data, peer = sock.recvfrom(2048)
                ip, port = sock.getsockname()[:2] if real else original_dst_udp(sock.getsockname(), peer)
                sock.sendto(f"{'real' if real else 'orig'}={ip}:{port}\n".encode(), peer)


def ask(proto: str, ip: str, port: int, timeout: float = 3.0) -> str:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(_family(ip), kind) as s:
        s.settimeout(timeout)
        if proto == "tcp":
            s.connect((ip, port))
            return s.makefile().readline().strip()
        s.sendto(b"?", (ip, port))
        return s.recv(2048).decode().strip()


def _hostport(text: str) -> tuple[str, int]:
    """"1.2.3.4:80" or "[fd00::1]:80"."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="origdst")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--listen", action="append", type=_hostport, required=True)
    s.add_argument("--udp", action="store_true")
    s.add_argument("--real", action="store_true")
    a = sub.add_parser("ask")
    a.add_argument("proto", choices=("tcp", "udp"))
    a.add_argument("ip")
    a.add_argument("port", type=int)
    opts = ap.parse_args(argv)
    if opts.cmd == "serve":
        serve(opts.listen, opts.udp, opts.real)
        return 0
    try:
        print(ask(opts.proto, opts.ip, opts.port))
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
