"""Packet scenarios: timestamps with PAWS (RFC 7323), SACK blocks (RFC 2018), window scaling."""

from bench import ACK, PSH, option_mss, option_sack_permitted, option_timestamp, option_wscale


def timestamped(bench, tsval: int = 1000):
    options = option_mss(1460) + option_wscale(7) + option_timestamp(tsval, 0)
    peer, conn = bench.established(options=options)
    return peer, conn


def test_timestamps_echoed_on_data(bench):
    """RFC 7323 section 3.2: once negotiated, every segment carries TSopt; the ACK of a segment
    echoes its TSval in TSecr."""
    peer, conn = timestamped(bench)
    options = option_timestamp(2000, 0)
    peer.send_data(b"stamped", options=options)
    ack = peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of the data")
    assert ack.timestamp is not None
    assert ack.timestamp[1] == 2000
    assert conn.recv(100) == b"stamped"


def test_paws_drops_old_timestamp(bench):
    """RFC 7323 section 5.3: a segment whose TSval is older than TS.Recent is dropped with an ACK,
    and its data is not delivered."""
    peer, conn = timestamped(bench)
    peer.send_data(b"new", options=option_timestamp(5000, 0))
    assert conn.recv(100) == b"new"
    peer.drain()
    peer.send(ACK | PSH, payload=b"old", options=option_timestamp(4000, 0))
    reply = peer.expect_flags(ACK)
    assert reply.ack == peer.snd_nxt
    peer.send_data(b"fresh", options=option_timestamp(6000, 0))
    assert conn.recv(100) == b"fresh"


def test_paws_handles_tsval_wrap(bench):
    """RFC 7323 section 5.2: TSval comparison is modulo 2**32, so a TSval that wrapped past zero is newer."""
    peer, conn = timestamped(bench, tsval=0xFFFFFF00)
    peer.send_data(b"before", options=option_timestamp(0xFFFFFFF0, 0))
    assert conn.recv(100) == b"before"
    peer.send_data(b"after", options=option_timestamp(0x10, 0))
    assert conn.recv(100) == b"after"


def test_no_timestamps_unless_negotiated(bench):
    """RFC 7323 section 3.2: without TSopt in the SYN, no segment carries TSopt."""
    peer, conn = bench.established(options=option_mss(1460))
    conn.send(b"plain")
    data = peer.expect(lambda s: s.payload, description="data segment")
    assert data.timestamp is None


def test_sack_blocks_report_out_of_order_data(bench):
    """RFC 2018 section 4: with SACK permitted, the ACK for out-of-order data carries a SACK block
    with exactly the bytes received above RCV.NXT."""
    peer, conn = bench.established(options=option_mss(1460) + option_wscale(7) + option_sack_permitted())
    start = peer.snd_nxt
    peer.send(ACK | PSH, seq=start + 100, payload=b"y" * 100)
    dup = peer.expect_flags(ACK)
    assert dup.ack == start
    assert ((start + 100) & 0xFFFFFFFF, (start + 200) & 0xFFFFFFFF) in dup.sack


def test_sack_first_block_is_most_recent(bench):
    """RFC 2018 section 4: the first SACK block covers the most recently received segment."""
    peer, conn = bench.established(options=option_mss(1460) + option_wscale(7) + option_sack_permitted())
    start = peer.snd_nxt
    peer.send(ACK | PSH, seq=start + 100, payload=b"a" * 100)
    peer.expect_flags(ACK)
    peer.send(ACK | PSH, seq=start + 300, payload=b"b" * 100)
    dup = peer.expect(lambda s: len(s.sack) >= 2, description="ACK with two SACK blocks")
    assert dup.sack[0] == ((start + 300) & 0xFFFFFFFF, (start + 400) & 0xFFFFFFFF)


def test_no_sack_blocks_unless_permitted(bench):
    """RFC 2018 section 2: SACK blocks are only sent when the SYN carried SACK-permitted."""
    peer, conn = bench.established(options=option_mss(1460) + option_wscale(7))
    start = peer.snd_nxt
    peer.send(ACK | PSH, seq=start + 100, payload=b"y" * 100)
    dup = peer.expect_flags(ACK)
    assert dup.sack == ()


def test_window_scale_applies_after_handshake(bench):
    """RFC 7323 section 2.3: the peer's window field is shifted by its scale; a field of 1 with shift
    7 allows 128 bytes."""
    peer, conn = bench.established(options=option_mss(1460) + option_wscale(7), window=1)
    conn.sendall(b"w" * 1000)
    first = peer.expect(lambda s: s.payload, description="data segment")
    assert len(first.payload) <= 128
