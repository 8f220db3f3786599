"""Packet scenarios: data on a SYN, FIN and bad segments in SYN-RECEIVED, a probe into a zero window."""

import time

import pytest

from bench import ACK, FIN, PSH, RST, SYN, option_mss, option_wscale


def read_exactly(conn, size: int) -> bytes:
    """Read from a DUT socket until ``size`` bytes arrived or the stream ended."""
    received = b""
    while len(received) < size:
        chunk = conn.recv(65536, timeout=10)
        if not chunk:
            break
        received += chunk
    return received


def test_syn_data_delivered_exactly_once(bench):
    """RFC 9293 section 3.10.7.2: data on a SYN to a listener may be queued until the connection
    is established, and only the acknowledged bytes count as received.

    Linux without TCP Fast Open drops SYN data, so its SYN-ACK acknowledges ISS + 1 and the peer
    sends the data again. Either choice is allowed, so the check is that the SYN-ACK's
    acknowledgment number agrees with what the application reads: every byte arrives exactly once."""
    listener, port = bench.listener()
    peer = bench.peer(dut_port=port)
    peer.send(SYN, seq=peer.iss, ack=0, payload=b"early", options=option_mss(1460))
    synack = peer.expect_flags(SYN | ACK)
    without_data = (peer.iss + 1) & 0xFFFFFFFF
    with_data = (peer.iss + 1 + len(b"early")) & 0xFFFFFFFF
    assert synack.ack in (without_data, with_data)

    peer.snd_nxt = synack.ack
    peer.rcv_nxt = (synack.seq + 1) & 0xFFFFFFFF
    peer.send(ACK)
    conn, _ = listener.accept()
    if synack.ack == without_data:
        peer.send_data(b"early")
    peer.send_data(b" later")

    assert read_exactly(conn, len(b"early later")) == b"early later"
    peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of all the data")


def test_fin_on_final_ack_moves_to_close_wait(bench):
    """RFC 9293 section 3.10.7.4: a FIN (with data) on the ACK that completes a passive open is
    processed after that ACK moves SYN-RECEIVED to ESTABLISHED.

    So the FIN is acknowledged, and the application accepts the connection, reads the data, then
    end of stream, and may still send (CLOSE-WAIT)."""
    listener, port = bench.listener()
    peer = bench.peer(dut_port=port)
    peer.syn()
    peer.send_data(b"only message", flags=ACK | PSH | FIN)
    ack = peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of the data and the FIN")
    assert not ack.has(FIN)

    conn, _ = listener.accept()
    assert read_exactly(conn, len(b"only message")) == b"only message"
    assert conn.recv(100) == b""
    conn.send(b"reply in CLOSE-WAIT")
    data = peer.expect(lambda s: s.payload, description="data in CLOSE-WAIT")
    assert data.payload == b"reply in CLOSE-WAIT"


@pytest.mark.parametrize("ack_offset", [1000, -1], ids=["above_snd_nxt", "at_iss"])
def test_bad_ack_in_syn_received_gets_rst(bench, ack_offset):
    """RFC 9293 section 3.10.7.4 (fifth check): in SYN-RECEIVED an ACK outside
    SND.UNA < SEG.ACK =< SND.NXT gets <SEQ=SEG.ACK><CTL=RST>; the half-open connection stays,
    so the correct ACK still completes it."""
    listener, port = bench.listener()
    peer = bench.peer(dut_port=port)
    peer.syn()
    bad_ack = (peer.rcv_nxt + ack_offset) & 0xFFFFFFFF
    peer.send(ACK, ack=bad_ack)
    rst = peer.expect_flags(RST)
    assert rst.seq == bad_ack
    assert not rst.has(ACK)

    peer.send(ACK)
    peer.send_data(b"completed after all")
    conn, _ = listener.accept()
    assert read_exactly(conn, len(b"completed after all")) == b"completed after all"


def test_rst_outside_window_in_syn_received_is_dropped(bench):
    """RFC 9293 section 3.10.7.4 (first check) and RFC 5961 section 3.2: in SYN-RECEIVED a RST whose
    sequence number is outside the receive window is dropped without reply.

    The half-open connection stays, so the final ACK completes it."""
    listener, port = bench.listener()
    peer = bench.peer(dut_port=port)
    peer.syn()
    peer.send(RST, seq=peer.snd_nxt + 0x40000000, ack=0)
    peer.expect_none(0.3, predicate=lambda s: not s.has(SYN))

    peer.send(ACK)
    peer.send_data(b"not reset")
    conn, _ = listener.accept()
    assert read_exactly(conn, len(b"not reset")) == b"not reset"


def test_zero_window_probe_and_pure_ack(bench):
    """RFC 9293 sections 3.8.6.1 and 3.10.7.4: a receiver with a zero window replies to a one-byte
    window probe with an ACK for RCV.NXT and window 0, and does not take the byte. A segment of
    length 0 at RCV.NXT is still acceptable, so a pure ACK of the DUT's own data stops the
    retransmission of that data.

    The probe acknowledges nothing new on purpose, because Linux 6.18 drops a data segment past
    a zero window whole, its ACK field included."""
    peer, conn = bench.established(options=option_mss(1000) + option_wscale(7))
    conn.setsockopt(1, 8, 4096)         # SO_RCVBUF
    start = peer.snd_nxt
    window_closed = False
    for _ in range(400):
        peer.send_data(b"z" * 1000)
        if any(segment.window == 0 for segment in peer.drain()):
            window_closed = True
            break
    if not window_closed:
        peer.expect(lambda s: s.window == 0, description="zero window")

    # The loop may have sent a few segments past the closed window, which the DUT dropped,
    # so resynchronize on the DUT's last acknowledgment number.
    time.sleep(0.5)
    acks = peer.drain()
    if acks:
        peer.snd_nxt = acks[-1].ack
    else:
        peer.send(ACK, seq=peer.snd_nxt - 1, payload=b"z")
        peer.snd_nxt = peer.expect_flags(ACK).ack
    accepted = (peer.snd_nxt - start) & 0xFFFFFFFF

    conn.send(b"reply")
    data = peer.expect(lambda s: s.payload, description="data segment from the DUT")
    peer.rcv_nxt = data.seq
    peer.send(ACK | PSH, payload=b"!")
    reply = peer.expect(lambda s: not s.payload, description="ACK of the window probe")
    assert reply.ack == peer.snd_nxt
    assert reply.window == 0

    peer.rcv_nxt = (data.seq + len(data.payload)) & 0xFFFFFFFF
    peer.send(ACK)
    acked_at = time.monotonic()
    peer.expect_none(1.5, predicate=lambda s: s.payload and s.time > acked_at)

    assert read_exactly(conn, accepted) == b"z" * accepted
    peer.expect(lambda s: s.window > 0, description="window update")
    peer.send_data(b"!")
    assert conn.recv(100) == b"!"
