"""TCP header parse and build, cross-checked against dpkt."""

import struct

import dpkt
import hypothesis
import pytest

from sandnet_stackd.header import tcp
from sandnet_stackd.header.checksum import transport_checksum
from sandnet_stackd.header.errors import MalformedError, Reason

SRC4 = bytes([10, 0, 0, 1])
DST4 = bytes([10, 0, 0, 2])
SRC6 = bytes.fromhex("fd000000000000000000000000000001")
DST6 = bytes.fromhex("fd000000000000000000000000000002")


def dpkt_segment(segment: dpkt.tcp.TCP, src: bytes, dst: bytes) -> bytes:
    """Return the TCP bytes of ``segment`` with the checksum dpkt computes inside an IP packet."""
    if len(src) == 4:
        packet = dpkt.ip.IP(src=src, dst=dst, p=dpkt.ip.IP_PROTO_TCP, data=segment)
        return bytes(packet)[20:]
    packet = dpkt.ip6.IP6(src=src, dst=dst, nxt=dpkt.ip.IP_PROTO_TCP, hlim=64, data=segment)
    packet.plen = len(bytes(segment))
    return bytes(packet)[40:]


def with_checksum(raw: bytes, src: bytes = SRC4, dst: bytes = DST4) -> bytes:
    """Fill the checksum of a hand-made segment whose checksum field is zero."""
    buffer = bytearray(raw)
    struct.pack_into("!H", buffer, 16, transport_checksum(src, dst, tcp.PROTOCOL, buffer))
    return bytes(buffer)


@pytest.mark.parametrize("src, dst", [(SRC4, DST4), (SRC6, DST6)], ids=["ipv4", "ipv6"])
def test_build_parsed_by_dpkt(src, dst):
    repr_ = tcp.TcpRepr(src_port=40000, dst_port=80, seq=0xFFFFFFF0, ack=12345, flags=tcp.SYN | tcp.ACK,
                        window=65535, mss=1460, window_scale=7, sack_permitted=True,
                        timestamp=(1, 2), payload=b"hello")
    raw = tcp.build(repr_, src, dst)

    parsed = dpkt.tcp.TCP(raw)
    assert parsed.sport == 40000
    assert parsed.dport == 80
    assert parsed.seq == 0xFFFFFFF0
    assert parsed.ack == 12345
    assert parsed.flags == tcp.SYN | tcp.ACK
    assert parsed.win == 65535
    assert parsed.data == b"hello"
    options = dict(dpkt.tcp.parse_opts(parsed.opts))
    assert options[dpkt.tcp.TCP_OPT_MSS] == struct.pack("!H", 1460)
    assert options[dpkt.tcp.TCP_OPT_WSCALE] == b"\x07"
    assert dpkt.tcp.TCP_OPT_SACKOK in options
    assert options[dpkt.tcp.TCP_OPT_TIMESTAMP] == struct.pack("!II", 1, 2)
    assert len(parsed.opts) % 4 == 0

    reference = dpkt_segment(dpkt.tcp.TCP(raw), src, dst)
    assert reference == raw


@pytest.mark.parametrize("src, dst", [(SRC4, DST4), (SRC6, DST6)], ids=["ipv4", "ipv6"])
def test_parse_dpkt_built(src, dst):
    opts = (struct.pack("!BBH", 2, 4, 1400) + b"\x01" + struct.pack("!BBB", 3, 3, 14)
            + b"\x01\x01" + struct.pack("!BBII", 5, 10, 100, 200) + b"\x00" * 4)
    segment = dpkt.tcp.TCP(sport=1234, dport=5678, seq=1, ack=2, flags=tcp.ACK | tcp.PSH, win=512,
                           opts=opts, data=b"x" * 33)
    segment.off = (tcp.HEADER_LEN + len(opts)) // 4
    raw = dpkt_segment(segment, src, dst)

    parsed = tcp.parse(raw, src, dst)
    assert parsed.src_port == 1234
    assert parsed.dst_port == 5678
    assert parsed.seq == 1
    assert parsed.ack == 2
    assert parsed.has(tcp.ACK | tcp.PSH)
    assert not parsed.has(tcp.SYN)
    assert parsed.window == 512
    assert parsed.mss == 1400
    assert parsed.window_scale == 14
    assert parsed.sack_blocks == ((100, 200),)
    assert bytes(parsed.payload) == b"x" * 33
    assert parsed.seg_len == 33


def test_round_trip_without_options():
    repr_ = tcp.TcpRepr(src_port=1, dst_port=2, seq=3, ack=4, flags=tcp.FIN | tcp.ACK, window=5)
    raw = tcp.build(repr_, SRC4, DST4)
    assert len(raw) == tcp.HEADER_LEN
    parsed = tcp.parse(raw, SRC4, DST4)
    assert parsed == repr_
    assert parsed.seg_len == 1


def test_round_trip_sack_blocks():
    repr_ = tcp.TcpRepr(src_port=1, dst_port=2, seq=3, ack=4, flags=tcp.ACK, window=5,
                        sack_blocks=((10, 20), (30, 40), (50, 60)))
    parsed = tcp.parse(tcp.build(repr_, SRC6, DST6), SRC6, DST6)
    assert parsed.sack_blocks == ((10, 20), (30, 40), (50, 60))


def test_build_rejects_too_many_options():
    repr_ = tcp.TcpRepr(src_port=1, dst_port=2, seq=3, ack=4, flags=tcp.ACK, window=5,
                        timestamp=(1, 1), sack_blocks=((1, 2),) * 4)
    with pytest.raises(ValueError, match="maximum 40"):
        tcp.build(repr_, SRC4, DST4)


def test_parse_skips_unknown_option():
    options = struct.pack("!BBH", 30, 4, 0) + struct.pack("!BBH", 2, 4, 999)
    raw = with_checksum(struct.pack("!HHIIBBHHH", 1, 2, 3, 4, 7 << 4, tcp.ACK, 5, 0, 0) + options)
    assert tcp.parse(raw, SRC4, DST4).mss == 999


def header(data_offset_words: int, options: bytes = b"", payload: bytes = b"") -> bytes:
    return with_checksum(struct.pack("!HHIIBBHHH", 1, 2, 3, 4, data_offset_words << 4, tcp.ACK, 5, 0, 0)
                         + options + payload)


@pytest.mark.parametrize("raw, reason", [
    (b"\x00" * 19, Reason.TRUNCATED),
    (header(4), Reason.BAD_HEADER_LENGTH),
    (header(6), Reason.BAD_HEADER_LENGTH),
])
def test_parse_rejects_malformed(raw, reason):
    with pytest.raises(MalformedError) as caught:
        tcp.parse(raw, SRC4, DST4)
    assert caught.value.reason is reason


@pytest.mark.parametrize("options", [
    struct.pack("!BBH", 30, 1, 0),                  # length below 2 ends parsing
    struct.pack("!BBH", 30, 8, 0),                  # length past the header ends parsing
    struct.pack("!BBBB", 2, 3, 0, 0),               # MSS of length 3 is skipped
    struct.pack("!BBBB", 3, 4, 7, 0),               # window scale of length 4 is skipped
    struct.pack("!BBBB", 1, 1, 1, 5),               # kind 5 without a length byte ends parsing
    struct.pack("!BB", 5, 6) + b"\x00" * 10,         # SACK of length 6 is skipped
])
def test_parse_keeps_segment_with_bad_option(options):
    """Like Linux's tcp_parse_options: bad options are skipped or end parsing, the segment is kept."""
    parsed = tcp.parse(header(5 + len(options) // 4, options, b"data"), SRC4, DST4)
    assert bytes(parsed.payload) == b"data"
    assert parsed.mss is None
    assert parsed.window_scale is None
    assert parsed.sack_blocks == ()


def test_parse_options_after_bad_length_are_ignored():
    options = struct.pack("!BBH", 30, 1, 0) + struct.pack("!BBH", 2, 4, 999)
    assert tcp.parse(header(7, options), SRC4, DST4).mss is None


def test_parse_rejects_bad_checksum():
    raw = bytearray(tcp.build(tcp.TcpRepr(1, 2, 3, 4, tcp.ACK, 5, payload=b"data"), SRC4, DST4))
    raw[-1] ^= 0xFF
    with pytest.raises(MalformedError) as caught:
        tcp.parse(bytes(raw), SRC4, DST4)
    assert caught.value.reason is Reason.BAD_CHECKSUM
    assert bytes(tcp.parse(bytes(raw), SRC4, DST4, verify_checksum=False).payload) == b"dat" + bytes([ord("a") ^ 0xFF])


def test_parse_checksum_depends_on_addresses():
    raw = tcp.build(tcp.TcpRepr(1, 2, 3, 4, tcp.ACK, 5, payload=b"odd"), SRC4, DST4)
    with pytest.raises(MalformedError):
        tcp.parse(raw, SRC4, bytes([10, 0, 0, 3]))


@hypothesis.settings(max_examples=500, deadline=None)
@hypothesis.given(raw=hypothesis.strategies.binary(max_size=80))
def test_parse_random_bytes_raise_only_malformed(raw):
    try:
        parsed = tcp.parse(raw, SRC4, DST4, verify_checksum=False)
    except MalformedError:
        return
    assert len(parsed.payload) <= len(raw) - tcp.HEADER_LEN


def test_build_header_matches_built_segment_without_checksum():
    seg = tcp.TcpRepr(src_port=80, dst_port=40000, seq=7, ack=9, flags=tcp.ACK | tcp.PSH, window=512,
                      timestamp=(1, 2), sack_blocks=((10, 20),), payload=b"data")
    built = tcp.build(seg, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    header = tcp.build_header(seg)
    assert len(header) == len(built) - len(seg.payload)
    assert header[:16] == built[:16]
    assert header[16:18] == b"\0\0"
    assert header[18:] == built[18:len(header)]
