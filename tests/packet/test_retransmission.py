"""Packet scenarios: retransmission, backoff, fast retransmit, zero-window probing."""

from bench import ACK, option_mss, option_sack, option_sack_permitted, option_wscale


def data_segments(peer, count: int, timeout: float = 5.0) -> list:
    return [peer.expect(lambda s: s.payload, timeout=timeout, description="data segment") for _ in range(count)]


def test_data_retransmitted_after_rto(bench):
    """RFC 6298 section 5.4: unacknowledged data is retransmitted when the RTO expires, with the
    same sequence number and payload."""
    peer, conn = bench.established()
    conn.send(b"retransmit me")
    first = peer.expect(lambda s: s.payload, description="data segment")
    again = peer.expect(lambda s: s.payload, timeout=3, description="retransmission")
    assert again.seq == first.seq
    assert again.payload == b"retransmit me"
    assert again.time - first.time >= 0.15


def test_rto_backs_off(bench):
    """RFC 6298 section 5.5: each expiry doubles the RTO, so the gaps between retransmissions grow."""
    peer, conn = bench.established()
    conn.send(b"backoff")
    times = [segment.time for segment in data_segments(peer, 4, timeout=6)]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert gaps[1] > gaps[0] * 1.5
    assert gaps[2] > gaps[1] * 1.5


def test_retransmission_stops_when_acked(bench):
    """RFC 6298 section 5.2: once all data is acknowledged the timer stops; nothing is resent."""
    peer, conn = bench.established()
    conn.send(b"ack me")
    segment = peer.expect(lambda s: s.payload, description="data segment")
    peer.send(ACK, ack=segment.seq + len(segment.payload))
    peer.expect_none(1.5, predicate=lambda s: s.payload)


def test_fast_retransmit_after_three_duplicate_acks(bench):
    """RFC 5681 section 3.2: the third duplicate ACK triggers a retransmission of the first
    unacknowledged segment before the RTO expires."""
    peer, conn = bench.established(options=option_mss(1000) + option_wscale(7))
    conn.sendall(b"d" * 5000)
    segments = data_segments(peer, 5)
    first = segments[0]
    for _ in range(3):
        peer.send(ACK, ack=first.seq)
    again = peer.expect(lambda s: s.payload and s.seq == first.seq, timeout=0.9, description="fast retransmission")
    assert again.time - segments[-1].time < 0.9


def test_sack_recovery_resends_only_the_holes(bench):
    """RFC 6675 section 5 and RFC 2018: with SACK, the sender retransmits each hole below the
    highest SACKed byte, including a second hole before any partial ACK arrives, and never
    the SACKed segments."""
    peer, conn = bench.established(options=option_mss(1000) + option_wscale(7) + option_sack_permitted())
    conn.sendall(b"s" * 8000)
    segments = data_segments(peer, 8)
    end = [s.seq + len(s.payload) for s in segments]
    una = segments[1].seq                   # segment 0 arrived; 1 and 4 are lost
    peer.send(ACK, ack=una, options=option_sack([(segments[2].seq, end[2])]))
    peer.send(ACK, ack=una, options=option_sack([(segments[2].seq, end[3])]))
    peer.send(ACK, ack=una, options=option_sack([(segments[5].seq, end[5]), (segments[2].seq, end[3])]))
    peer.send(ACK, ack=una, options=option_sack([(segments[5].seq, end[6]), (segments[2].seq, end[3])]))
    peer.send(ACK, ack=una, options=option_sack([(segments[5].seq, end[7]), (segments[2].seq, end[3])]))
    holes = {segments[1].seq, segments[4].seq}
    # The last segment is left out: a tail loss probe (RFC 8985) may resend it before the SACKs arrive.
    sacked = {segments[i].seq for i in (2, 3, 5, 6)}
    seen = set()
    while seen != holes:
        again = peer.expect(lambda s: s.payload, timeout=3, description="retransmission of a hole")
        assert again.seq not in sacked
        seen.add(again.seq)


def test_zero_window_probes(bench):
    """RFC 9293 section 3.8.6.1: with a zero send window the sender keeps probing with growing
    intervals, and sends data once a window update opens the window."""
    peer, conn = bench.established(options=option_mss(1000) + option_wscale(0), window=0)
    conn.send(b"waiting for a window")
    probes = [peer.expect(lambda s: s.has(ACK), timeout=3, description="window probe") for _ in range(3)]
    gaps = [later.time - earlier.time for earlier, later in zip(probes, probes[1:])]
    assert gaps[1] > gaps[0] * 1.4
    peer.send(ACK, window=8192)
    data = peer.expect(lambda s: s.payload, timeout=5, description="data after the window opened")
    assert data.payload.endswith(b"window")


def test_tail_loss_probe_resends_last_segment(bench):
    """RFC 8985 section 7: when the ACKs stop with several segments in flight and nothing new to
    send, the first retransmission is a probe of the last segment, not the RTO's first segment."""
    peer, conn = bench.established(options=option_mss(1000) + option_wscale(7) + option_sack_permitted())
    conn.sendall(b"t" * 3000)
    segments = data_segments(peer, 3)
    probe = peer.expect(lambda s: s.payload, timeout=3, description="tail loss probe")
    assert probe.seq == segments[-1].seq


def test_no_tail_loss_probe_without_sack(bench):
    """RFC 8985 section 1 and Linux's tcp_schedule_loss_probe: without SACK there is no probe, so
    the first retransmission is the RTO's, of the first unacknowledged segment."""
    peer, conn = bench.established(options=option_mss(1000) + option_wscale(7))
    conn.sendall(b"n" * 3000)
    segments = data_segments(peer, 3)
    again = peer.expect(lambda s: s.payload, timeout=3, description="retransmission")
    assert again.seq == segments[0].seq
