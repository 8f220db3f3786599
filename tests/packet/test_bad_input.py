"""Packet scenarios: malformed segments are dropped (and counted) or answered as Linux does."""

import struct

from bench import ACK, PSH, SYN, ipv4_frame, option_mss, option_wscale


def assert_alive(peer, conn, payload: bytes = b"still serving") -> None:
    peer.send_data(payload)
    assert conn.recv(100) == payload


def test_bad_checksum_is_counted_and_dropped(bench):
    """RFC 9293 section 3.1: a segment with a wrong checksum is discarded and counted in InErrs
    and InCsumErrors; the connection is unaffected."""
    peer, conn = bench.established()
    before = bench.dut.counters()
    peer.send(ACK | PSH, payload=b"corrupt", bad_checksum=True)
    peer.expect_none(0.3)
    after = bench.dut.counters()
    assert after["InErrs"] == before["InErrs"] + 1
    assert after.get("InCsumErrors", 0) == before.get("InCsumErrors", 0) + 1
    assert_alive(peer, conn)


def test_data_offset_past_packet_is_dropped(bench):
    """RFC 9293 section 3.1: a data offset beyond the segment cannot be parsed; the segment is
    dropped without reply."""
    peer, conn = bench.established()
    peer.send(ACK | PSH, payload=b"1234", data_offset=15)
    peer.expect_none(0.3)
    assert_alive(peer, conn)


def test_data_offset_below_five_is_dropped(bench):
    """RFC 9293 section 3.1: a data offset under 5 words is invalid; the segment is dropped and
    counted in InErrs, as Linux's tcp_v4_rcv does."""
    peer, conn = bench.established()
    before = bench.dut.counters()["InErrs"]
    peer.send(ACK | PSH, payload=b"1234", data_offset=3)
    peer.expect_none(0.3)
    assert bench.dut.counters()["InErrs"] == before + 1
    assert_alive(peer, conn)


def test_option_length_past_header_is_ignored(bench):
    """RFC 9293 section 3.2: an option whose length runs past the header ends option parsing, and
    Linux (tcp_parse_options) keeps the segment: the SYN still gets a SYN-ACK, with the default MSS."""
    _, port = bench.listener()
    peer = bench.peer(dut_port=port)
    synack = peer.syn(options=option_mss(1460) + bytes([8, 30, 0, 0]))
    assert synack.has(SYN | ACK)


def test_option_with_wrong_length_is_skipped(bench):
    """RFC 9293 section 3.2: a known option with the wrong length is skipped; Linux ignores an MSS
    option of length 3 and the SYN is answered."""
    _, port = bench.listener()
    peer = bench.peer(dut_port=port)
    synack = peer.syn(options=bytes([2, 3, 5, 1, 1, 1]) + option_wscale(7))
    assert synack.has(SYN | ACK)


def test_option_length_zero_is_ignored(bench):
    """RFC 9293 section 3.2: an option length below 2 cannot be skipped; Linux stops parsing there
    and keeps the segment."""
    peer, conn = bench.established()
    peer.send_data(b"zero length", options=bytes([30, 0, 1, 1]))
    assert conn.recv(100) == b"zero length"


def test_window_scale_above_14_is_clamped(bench):
    """RFC 7323 section 2.3: a shift count above 14 is used as 14; the connection opens and works."""
    listener, port = bench.listener()
    peer = bench.peer()
    peer.connect_to(port, options=option_mss(1460) + option_wscale(15), window=1024)
    conn, _ = listener.accept()
    conn.sendall(b"q" * 2000)
    data = peer.expect(lambda s: s.payload, description="data segment")
    assert len(data.payload) == 1460


def test_unknown_option_is_skipped(bench):
    """RFC 9293 section 3.2: an unknown option with a valid length is skipped."""
    peer, conn = bench.established()
    peer.send_data(b"unknown option", options=bytes([99, 6, 1, 2, 3, 4]))
    assert conn.recv(100) == b"unknown option"


def test_truncated_header_is_dropped(bench):
    """RFC 9293 section 3.1: a segment shorter than 20 bytes is discarded. sandnet also counts it
    in InErrs; Linux's tcp_v4_rcv drops it without a counter (only a drop reason), a deliberate
    difference so that every malformed segment shows up in sandnet's counters."""
    peer, conn = bench.established()
    before = bench.dut.counters()["InErrs"]
    bench.dut.send_frame(ipv4_frame(struct.pack("!HHI", peer.port, peer.dut_port, peer.snd_nxt)))
    peer.expect_none(0.3)
    if bench.name == "sandnet":
        assert bench.dut.counters()["InErrs"] == before + 1
    assert_alive(peer, conn)


def test_urgent_flag_data_is_delivered_inline(bench):
    """RFC 9293 section 3.8.5 and RFC 6093: urgent data is delivered in the stream.

    sandnet always behaves as with SO_OOBINLINE. Linux keeps the last urgent byte
    out of band unless SO_OOBINLINE is set, so this scenario sets it on both."""
    peer, conn = bench.established()
    conn.setsockopt(1, 10, 1)           # SO_OOBINLINE
    peer.send_data(b"urgent!", flags=ACK | PSH | 0x20)
    received = b""
    while len(received) < 7:
        received += conn.recv(100)
    assert received == b"urgent!"
