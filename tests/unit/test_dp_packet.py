"""The dp's minimal frame parser: Ethernet (+VLAN), IPv4, IPv6 (+ext headers), L4 ports."""
import ipaddress
import struct

from plugins.dp.packet import NO_L3, parse

DST, SRC = bytes.fromhex("4e6575560001"), bytes.fromhex("020000000002")
A4, B4 = ipaddress.IPv4Address("10.1.2.3"), ipaddress.IPv4Address("10.9.8.7")
A6, B6 = ipaddress.IPv6Address("fd00::1"), ipaddress.IPv6Address("fd00::2")


def eth(ethertype, payload, vlans=()):
    tags = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in vlans)
    return DST + SRC + tags + struct.pack("!H", ethertype) + payload


def ipv4(proto, l4, frag=0, options=b""):
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(l4), 1, frag,
                      64, proto, 0, A4.packed, B4.packed)
    return hdr + options + l4


def ipv6(nh, l4):
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), nh, 64, A6.packed, B6.packed) + l4


def ports(sport, dport):
    return struct.pack("!HH", sport, dport) + bytes(16)


def p(frame, off=0):
    buf = bytearray(off) + frame
    return parse(buf, off, len(buf))


def test_ipv4_tcp_udp_icmp():
    assert p(eth(0x0800, ipv4(6, ports(40000, 80)))) == (4, 6, int(A4), int(B4), 40000, 80)
    assert p(eth(0x0800, ipv4(17, ports(53, 5353)))) == (4, 17, int(A4), int(B4), 53, 5353)
    assert p(eth(0x0800, ipv4(1, bytes(8)))) == (4, 1, int(A4), int(B4), -1, -1)


def test_offset_into_buffer_like_the_vnet_header():
    assert p(eth(0x0800, ipv4(6, ports(1, 2))), off=10) == (4, 6, int(A4), int(B4), 1, 2)


def test_ipv4_options_and_fragments():
    assert p(eth(0x0800, ipv4(6, ports(7, 8), options=bytes(8))))[4:] == (7, 8)
    assert p(eth(0x0800, ipv4(6, ports(7, 8), frag=0x2000)))[4:] == (7, 8)    # MF, first
    assert p(eth(0x0800, ipv4(6, ports(7, 8), frag=0x0010)))[4:] == (-1, -1)  # later piece


def test_vlan_and_qinq():
    frame = eth(0x0800, ipv4(6, ports(1, 2)), vlans=[(0x8100, 5)])
    assert p(frame) == (4, 6, int(A4), int(B4), 1, 2)
    frame = eth(0x86DD, ipv6(17, ports(3, 4)), vlans=[(0x88A8, 5), (0x8100, 6)])
    assert p(frame) == (6, 17, int(A6), int(B6), 3, 4)


def test_ipv6_with_extension_headers():
    assert p(eth(0x86DD, ipv6(6, ports(1, 443)))) == (6, 6, int(A6), int(B6), 1, 443)
    hop_by_hop = bytes([6, 0]) + bytes(6)                   # next=TCP, 8 bytes long
    assert p(eth(0x86DD, ipv6(0, hop_by_hop + ports(1, 443))))[1:] == (6, int(A6), int(B6), 1, 443)
    first_frag = struct.pack("!BBHI", 17, 0, 0x0001, 7)       # offset 0, M=1
    assert p(eth(0x86DD, ipv6(44, first_frag + ports(5, 6))))[4:] == (5, 6)
    later_frag = struct.pack("!BBHI", 17, 0, 0x0100, 7)
    assert p(eth(0x86DD, ipv6(44, later_frag + ports(5, 6))))[1:] == (17, int(A6), int(B6), -1, -1)
    assert p(eth(0x86DD, ipv6(58, bytes(8))))[1] == 58


def test_not_ip_and_truncated_frames():
    assert p(eth(0x0806, bytes(28))) == NO_L3                  # ARP
    assert p(DST + SRC) == NO_L3
    assert p(eth(0x0800, ipv4(6, b"")[:19])) == NO_L3
    assert p(eth(0x86DD, ipv6(6, b"")[:39])) == NO_L3
    assert p(eth(0x0800, ipv4(6, b"\x00\x01")))[4:] == (-1, -1)     # ports cut off
    assert p(eth(0x86DD, ipv6(0, b"\x06")))[1:] == (-1, int(A6), int(B6), -1, -1)
    # a frame cut short by `end` is not read past it
    frame = bytearray(eth(0x0800, ipv4(6, ports(1, 2))))
    assert parse(frame, 0, 30) == NO_L3
