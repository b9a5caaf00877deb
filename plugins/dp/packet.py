"""AF_PACKET port and a minimal Ethernet/IPv4/IPv6/TCP/UDP/ICMP parser.

The socket carries a virtio-net header (PACKET_VNET_HDR) in front of every frame, so
GSO super-frames and frames whose checksum the sender left to offload (veth peers do)
can be sent back exactly as they came; without it a reflected TCP segment would be too
big for the MTU or carry a bad checksum. PACKET_IGNORE_OUTGOING keeps our own
transmissions out of the receive queue.
"""
from __future__ import annotations

import socket
import struct

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
VNET_HDR_LEN = 10
RECV_BUF = 1 << 17           # > 64 KiB GSO frames plus the vnet header
SOCK_BUF = 8 << 20

ETH_IPV4, ETH_IPV6, ETH_VLAN, ETH_QINQ = 0x0800, 0x86DD, 0x8100, 0x88A8
IPV6_EXT = frozenset((0, 43, 60))        # hop-by-hop, routing, destination options
IPV6_FRAG = 44
PORT_PROTOS = frozenset((6, 17, 132))

_U16 = struct.Struct("!H")
_IPV4 = struct.Struct("!B5xHxB2xII")     # ver/ihl, flags+frag, proto, src, dst
_IPV6 = struct.Struct("!6xB1x16s16s")    # next header, src, dst
_PORTS = struct.Struct("!HH")

NO_L3 = (0, -1, 0, 0, -1, -1)


class Port:
    """A raw socket on one interface of the current netns, receiving every frame."""

    def __init__(self, iface: str, tap: bool = False, jumboframe: bool = False):
        self.iface = iface
        self.tap = tap
        self.jumboframe = jumboframe
        self.ifindex = socket.if_nametoindex(iface)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, SOCK_BUF)   # *BUFFORCE, root
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
            sock.bind((iface, ETH_P_ALL))
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def info(self) -> dict:
        return {"iface": self.iface, "ifindex": self.ifindex, "tap": self.tap,
                "jumboframe": self.jumboframe}


def parse(buf, off: int, end: int) -> tuple:
    """(family, proto, src, dst, sport, dport) of the frame in buf[off:end].

    family is 4, 6 or 0 (not IP or too short); proto -1 when unknown; ports -1 when the
    protocol has none or this is a non-first fragment. Addresses are ints.
    """
    if end - off < 14:
        return NO_L3
    ethertype = _U16.unpack_from(buf, off + 12)[0]
    l3 = off + 14
    while ethertype in (ETH_VLAN, ETH_QINQ) and end - l3 >= 4:
        ethertype = _U16.unpack_from(buf, l3 + 2)[0]
        l3 += 4
    if ethertype == ETH_IPV4:
        if end - l3 < 20:
            return NO_L3
        verihl, frag, proto, src, dst = _IPV4.unpack_from(buf, l3)
        l4 = l3 + (verihl & 0x0F) * 4
        first = frag & 0x1FFF == 0
        family = 4
    elif ethertype == ETH_IPV6:
        if end - l3 < 40:
            return NO_L3
        proto, s, d = _IPV6.unpack_from(buf, l3)
        src, dst = int.from_bytes(s, "big"), int.from_bytes(d, "big")
        l4, first, family = l3 + 40, True, 6
        while proto in IPV6_EXT or proto == IPV6_FRAG:
            if end - l4 < 8:
                return (6, -1, src, dst, -1, -1)
            nxt = buf[l4]
            if proto == IPV6_FRAG:
                first = _U16.unpack_from(buf, l4 + 2)[0] & 0xFFF8 == 0
                l4 += 8
            else:
                l4 += (buf[l4 + 1] + 1) * 8
            proto = nxt
    else:
        return NO_L3
    if first and proto in PORT_PROTOS and end - l4 >= 4:
        sport, dport = _PORTS.unpack_from(buf, l4)
        return (family, proto, src, dst, sport, dport)
    return (family, proto, src, dst, -1, -1)
