"""Packet scenarios: sequence number and window validation, reassembly (RFC 9293 section 3.10.7.4)."""

from bench import ACK, PSH, option_mss, option_wscale


def test_old_duplicate_is_acked_not_delivered(bench):
    """RFC 9293 section 3.10.7.4: a segment wholly below RCV.NXT is answered with an ACK for
    RCV.NXT and its data is not delivered again."""
    peer, conn = bench.established()
    peer.send_data(b"first")
    assert conn.recv(100) == b"first"
    peer.send(ACK | PSH, seq=peer.snd_nxt - 5, payload=b"first")
    reply = peer.expect(lambda s: s.ack == peer.snd_nxt, description="duplicate ACK")
    assert not reply.payload
    peer.send_data(b"second")
    assert conn.recv(100) == b"second"


def test_segment_beyond_window_is_acked_and_dropped(bench):
    """RFC 9293 section 3.10.7.4: a segment starting beyond RCV.NXT + RCV.WND gets an ACK and
    is dropped."""
    peer, conn = bench.established()
    peer.send(ACK | PSH, seq=peer.snd_nxt + 0x10000000, payload=b"far away")
    reply = peer.expect_flags(ACK)
    assert reply.ack == peer.snd_nxt
    peer.send_data(b"in order")
    assert conn.recv(100) == b"in order"


def test_overlap_at_left_edge_delivers_new_bytes(bench):
    """RFC 9293 section 3.10.7.4: a segment starting before RCV.NXT but ending inside the window
    is trimmed, and only its new bytes are delivered."""
    peer, conn = bench.established()
    peer.send_data(b"abcdef")
    assert conn.recv(100) == b"abcdef"
    peer.send(ACK | PSH, seq=peer.snd_nxt - 3, payload=b"defghi")
    peer.snd_nxt = (peer.snd_nxt + 3) & 0xFFFFFFFF
    assert conn.recv(100) == b"ghi"
    peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of the new bytes")


def test_out_of_order_data_is_reassembled(bench):
    """RFC 9293 section 3.10.7.4 and RFC 5681 section 4.2: an out-of-order segment gets an
    immediate duplicate ACK for RCV.NXT; filling the hole gets an ACK covering both."""
    peer, conn = bench.established()
    start = peer.snd_nxt
    peer.send(ACK | PSH, seq=start + 4, payload=b"5678")
    dup = peer.expect_flags(ACK)
    assert dup.ack == start
    peer.send(ACK | PSH, seq=start, payload=b"1234")
    peer.snd_nxt = (start + 8) & 0xFFFFFFFF
    peer.expect(lambda s: s.ack == peer.snd_nxt, description="cumulative ACK")
    received = b""
    while len(received) < 8:
        received += conn.recv(100)
    assert received == b"12345678"


def test_many_holes_reassemble(bench):
    """RFC 9293 section 3.10.7.4: data sent in reverse order within the window is all kept and
    delivered in order once the first hole fills."""
    peer, conn = bench.established()
    start = peer.snd_nxt
    chunks = [bytes([65 + index]) * 100 for index in range(20)]
    for index in reversed(range(1, 20)):
        peer.send(ACK | PSH, seq=start + 100 * index, payload=chunks[index])
    peer.send(ACK | PSH, seq=start, payload=chunks[0])
    peer.snd_nxt = (start + 2000) & 0xFFFFFFFF
    peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of all 2000 bytes")
    received = b""
    while len(received) < 2000:
        received += conn.recv(4000)
    assert received == b"".join(chunks)


def test_sequence_numbers_wrap(bench):
    """RFC 9293 section 3.4: sequence arithmetic is modulo 2**32; data crossing 2**32 is delivered."""
    listener, port = bench.listener()
    peer = bench.peer(iss=0xFFFFFFF0)
    peer.connect_to(port)
    conn, _ = listener.accept()
    payload = bytes(range(64))
    peer.send_data(payload)
    assert peer.snd_nxt < 0x100
    received = b""
    while len(received) < len(payload):
        received += conn.recv(100)
    assert received == payload
    peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK across the wrap")


def test_zero_window_advertised_when_buffer_full(bench):
    """RFC 9293 section 3.8.6: a receiver whose buffer is full advertises a zero window, then
    reopens it with a window update once the application reads."""
    peer, conn = bench.established(options=option_mss(1000) + option_wscale(7))
    conn.setsockopt(1, 8, 4096)         # SO_RCVBUF
    window_closed = False
    for _ in range(400):
        peer.send_data(b"z" * 1000)
        acks = peer.drain()
        if any(segment.window == 0 for segment in acks):
            window_closed = True
            break
    if not window_closed:
        peer.expect(lambda s: s.window == 0, description="zero window")
    received = 0
    while received < 4000:
        received += len(conn.recv(65536, timeout=10))
    peer.expect(lambda s: s.window > 0, description="window update")


def test_large_out_of_order_run_does_not_stall(bench):
    """RFC 9293 section 3.10.7.4: out-of-order data up to the window is kept, without a stall.

    40 segments wait behind one hole, well over 25% of the receive buffer. Once the
    hole fills, all are delivered and one cumulative ACK covers them."""
    peer, conn = bench.established(options=option_mss(1000) + option_wscale(7))
    start = peer.snd_nxt
    chunks = [bytes([48 + index % 10]) * 1000 for index in range(41)]
    for index in range(1, 41):
        peer.send(ACK | PSH, seq=start + 1000 * index, payload=chunks[index])
    peer.send(ACK | PSH, seq=start, payload=chunks[0])
    peer.snd_nxt = (start + 41000) & 0xFFFFFFFF
    peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of all 41 segments")
    received = b""
    while len(received) < 41000:
        received += conn.recv(65536)
    assert received == b"".join(chunks)
    peer.send_data(b"and more")
    assert conn.recv(100) == b"and more"

