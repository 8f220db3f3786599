"""Packet scenarios: FIN in each state and the closing states (RFC 9293 sections 3.6 and 3.10.7.4)."""

import errno

import pytest

from bench import ACK, FIN, PSH, RST, option_mss, option_wscale


def close_from_dut(peer, conn, how: str = "shutdown"):
    """Make the DUT send its FIN and return that FIN segment."""
    if how == "shutdown":
        conn.shutdown(1)
    else:
        conn.close()
    return peer.expect_flags(FIN)


def test_fin_in_established_moves_to_close_wait(bench):
    """RFC 9293 section 3.10.7.4 (eighth step): a FIN is acknowledged at once and the application
    reads end of stream; it may still send (CLOSE-WAIT)."""
    peer, conn = bench.established()
    peer.send_data(b"last words", flags=ACK | PSH | FIN)
    ack = peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of the FIN")
    assert not ack.has(FIN)
    assert conn.recv(100) == b"last words"
    assert conn.recv(100) == b""
    conn.send(b"reply in CLOSE-WAIT")
    data = peer.expect(lambda s: s.payload, description="data in CLOSE-WAIT")
    assert data.payload == b"reply in CLOSE-WAIT"


def test_last_ack_closes_on_ack(bench):
    """RFC 9293 section 3.6: after CLOSE-WAIT the application's close sends FIN (LAST-ACK); the
    peer's ACK ends the connection, and a later segment gets a RST."""
    peer, conn = bench.established()
    peer.send_data(b"", flags=ACK | FIN)
    peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of the FIN")
    fin = close_from_dut(peer, conn, "close")
    peer.rcv_nxt = (fin.seq + 1) & 0xFFFFFFFF
    peer.send(ACK)
    peer.expect_none(0.3)
    peer.send(ACK | PSH, payload=b"too late")
    peer.expect_flags(RST)


def test_fin_wait_1_to_fin_wait_2_keeps_receiving(bench):
    """RFC 9293 section 3.6: after shutdown(SHUT_WR) the FIN is acknowledged (FIN-WAIT-2) and the
    half-closed connection still delivers the peer's data."""
    peer, conn = bench.established()
    fin = close_from_dut(peer, conn)
    peer.rcv_nxt = (fin.seq + 1) & 0xFFFFFFFF
    peer.send(ACK)
    peer.send_data(b"half closed")
    assert conn.recv(100) == b"half closed"
    peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of the data")


def test_fin_wait_2_fin_gets_ack(bench):
    """RFC 9293 section 3.10.7.4: a FIN in FIN-WAIT-2 is acknowledged and the connection enters TIME-WAIT."""
    peer, conn = bench.established()
    fin = close_from_dut(peer, conn)
    peer.rcv_nxt = (fin.seq + 1) & 0xFFFFFFFF
    peer.send(ACK)
    peer.send_data(b"", flags=ACK | FIN)
    ack = peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of the FIN")
    assert ack.seq == peer.rcv_nxt
    assert conn.recv(100) == b""


def test_simultaneous_close(bench):
    """RFC 9293 figure 13: a FIN that arrives in FIN-WAIT-1 is acknowledged (CLOSING).

    The ACK of our own FIN then leads to TIME-WAIT."""
    peer, conn = bench.established()
    fin = close_from_dut(peer, conn)
    peer.send_data(b"", flags=ACK | FIN)          # acknowledges nothing of the DUT's FIN
    ack = peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of the FIN in FIN-WAIT-1")
    assert ack.seq in (fin.seq, (fin.seq + 1) & 0xFFFFFFFF)
    peer.rcv_nxt = (fin.seq + 1) & 0xFFFFFFFF
    peer.send(ACK)
    peer.send(ACK | FIN, seq=peer.snd_nxt - 1)    # retransmitted FIN reaches TIME-WAIT
    again = peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK in TIME-WAIT")
    assert again.seq == peer.rcv_nxt


def test_time_wait_acks_retransmitted_fin(bench):
    """RFC 9293 section 3.10.7.4: in TIME-WAIT a retransmitted FIN is acknowledged again."""
    peer, conn = bench.established()
    fin = close_from_dut(peer, conn, "close")
    peer.rcv_nxt = (fin.seq + 1) & 0xFFFFFFFF
    peer.send_data(b"", flags=ACK | FIN)
    peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of the FIN")
    peer.send(ACK | FIN, seq=peer.snd_nxt - 1)
    again = peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of the retransmitted FIN")
    assert again.seq == peer.rcv_nxt


def test_fin_out_of_order_waits_for_data(bench):
    """RFC 9293 section 3.10.7.4: a FIN beyond RCV.NXT takes effect only once the data before it arrives."""
    peer, conn = bench.established()
    start = peer.snd_nxt
    peer.send(ACK | FIN, seq=start + 4, payload=b"5678")
    dup = peer.expect_flags(ACK)
    assert dup.ack == start
    peer.send(ACK | PSH, seq=start, payload=b"1234")
    peer.snd_nxt = (start + 9) & 0xFFFFFFFF
    peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of data and FIN")
    received = b""
    while True:
        chunk = conn.recv(100)
        if not chunk:
            break
        received += chunk
    assert received == b"12345678"


def test_fin_retransmitted_until_acked(bench):
    """RFC 9293 section 3.10.4: the FIN occupies sequence space and is retransmitted like data."""
    peer, conn = bench.established()
    fin = close_from_dut(peer, conn)
    again = peer.expect_flags(FIN, timeout=3)
    assert again.seq == fin.seq


def test_data_after_close_gets_rst(bench):
    """RFC 9293 section 3.10.7.4 leaves data after close to the implementation; Linux resets a
    connection whose application closed it when more data arrives (tcp_rcv_state_process)."""
    peer, conn = bench.established()
    fin = close_from_dut(peer, conn, "close")
    peer.rcv_nxt = (fin.seq + 1) & 0xFFFFFFFF
    peer.send_data(b"nobody reads this")
    rst = peer.expect_flags(RST)
    assert rst.seq == peer.rcv_nxt


def test_close_with_unread_data_sends_rst(bench):
    """RFC 2525 section 2.17 and Linux: closing with unread received data sends RST, not FIN."""
    peer, conn = bench.established()
    peer.send_data(b"unread")
    peer.expect(lambda s: s.ack == peer.snd_nxt, timeout=1, description="ACK of the data")
    conn.close()
    rst = peer.expect_flags(RST)
    assert not rst.has(FIN)


def test_rst_after_fin_reports_reset(bench):
    """RFC 9293 section 3.10.7.4: a RST in CLOSE-WAIT ends the connection; a send then fails."""
    peer, conn = bench.established()
    peer.send_data(b"", flags=ACK | FIN)
    peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of the FIN")
    peer.send(RST)
    peer.expect_none(0.2)
    with pytest.raises(OSError) as caught:
        for _ in range(3):
            conn.send(b"x")
    assert caught.value.errno in (errno.EPIPE, errno.ECONNRESET)


def test_time_wait_reused_by_higher_syn(bench):
    """RFC 6191 and Linux's tcp_timewait_state_process: a SYN for a 4-tuple in TIME-WAIT whose
    sequence number is above RCV.NXT opens a new connection instead of a challenge ACK."""
    listener, port = bench.listener()
    peer = bench.peer()
    peer.connect_to(port, options=option_mss(1460))
    conn, _ = listener.accept()
    fin = close_from_dut(peer, conn, "close")
    peer.rcv_nxt = (fin.seq + 1) & 0xFFFFFFFF
    peer.send_data(b"", flags=ACK | FIN)
    peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of the FIN")

    again = bench.peer(port=peer.port, iss=(peer.snd_nxt + 100000) & 0xFFFFFFFF)
    again.dut_port = port
    synack = again.syn(options=option_mss(1460))
    assert synack.ack == (again.iss + 1) & 0xFFFFFFFF
    again.send(ACK)
    second, _ = listener.accept()
    again.send_data(b"second life")
    assert second.recv(100) == b"second life"


def test_fin_wait_2_times_out_with_linger2(bench):
    """TCP_LINGER2 (Linux) bounds FIN-WAIT-2 of a closed socket: after it expires the connection
    is gone, so the peer's FIN then gets a RST instead of an ACK."""
    peer, conn = bench.established()
    conn.setsockopt(6, 8, 1)            # TCP_LINGER2, seconds
    fin = close_from_dut(peer, conn, "close")
    peer.rcv_nxt = (fin.seq + 1) & 0xFFFFFFFF
    peer.send(ACK)
    peer.expect_none(2.0)
    peer.send_data(b"", flags=ACK | FIN)
    peer.expect_flags(RST)


def test_two_full_segments_are_acked(bench):
    """RFC 5681 section 4.2 and RFC 9293 section 3.8.6.3: an ACK is sent for at least every
    second full-sized segment, so two full segments are both acknowledged without waiting
    for more data."""
    peer, conn = bench.established(options=option_mss(1000) + option_wscale(7))
    peer.send_data(b"a" * 1000)
    peer.send_data(b"b" * 1000)
    ack = peer.expect(lambda s: s.ack == peer.snd_nxt, timeout=1, description="ACK of both segments")
    assert not ack.payload
