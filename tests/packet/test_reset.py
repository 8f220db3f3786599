"""Packet scenarios: RST, SYN and ACK validation in synchronized states (RFC 5961, RFC 9293 section 3.10.7.4)."""

import errno

import pytest

from bench import ACK, FIN, PSH, RST, SYN


def assert_alive(peer, conn, payload: bytes = b"still here") -> None:
    """Check that the connection still delivers data from the peer."""
    peer.send_data(payload)
    assert conn.recv(100) == payload


def test_rst_at_rcv_nxt_resets(bench):
    """RFC 5961 section 3.2: a RST whose sequence number is exactly RCV.NXT resets the connection."""
    peer, conn = bench.established()
    peer.send(RST | ACK)
    with pytest.raises(OSError) as caught:
        conn.recv(100)
    assert caught.value.errno == errno.ECONNRESET


def test_rst_in_window_gets_challenge_ack(bench):
    """RFC 5961 section 3.2: a RST in the window but not at RCV.NXT gets a challenge ACK
    (<SEQ=SND.NXT><ACK=RCV.NXT>) and the connection stays."""
    peer, conn = bench.established()
    peer.send(RST | ACK, seq=peer.snd_nxt + 100)
    challenge = peer.expect_flags(ACK)
    assert challenge.ack == peer.snd_nxt
    assert not challenge.has(RST)
    assert_alive(peer, conn)


def test_rst_outside_window_is_dropped(bench):
    """RFC 5961 section 3.2: a RST outside the receive window is dropped without reply."""
    peer, conn = bench.established()
    peer.send(RST | ACK, seq=peer.snd_nxt + 0x40000000)
    peer.expect_none(0.5)
    assert_alive(peer, conn)


def test_challenge_rst_answered_exactly_resets(bench):
    """RFC 5961 section 3.2: the legitimate peer answers a challenge ACK with a RST at the
    acknowledged number, and that RST resets the connection."""
    peer, conn = bench.established()
    peer.send(RST | ACK, seq=peer.snd_nxt + 10)
    challenge = peer.expect_flags(ACK)
    peer.send(RST, seq=challenge.ack, ack=0)
    with pytest.raises(OSError) as caught:
        conn.recv(100)
    assert caught.value.errno == errno.ECONNRESET


def test_syn_in_established_gets_challenge_ack(bench):
    """RFC 5961 section 4.2: a SYN in a synchronized state, in window or not, gets a challenge
    ACK and is dropped; the connection stays."""
    peer, conn = bench.established()
    peer.send(SYN, seq=peer.snd_nxt + 5, ack=0)
    challenge = peer.expect_flags(ACK)
    assert challenge.ack == peer.snd_nxt
    assert not challenge.has(SYN)
    assert_alive(peer, conn)


def test_syn_out_of_window_gets_ack(bench):
    """RFC 5961 section 4.2: the SYN rule applies whatever its sequence number."""
    peer, conn = bench.established()
    peer.send(SYN, seq=peer.snd_nxt - 0x20000000, ack=0)
    challenge = peer.expect_flags(ACK)
    assert challenge.ack == peer.snd_nxt
    assert_alive(peer, conn)


def test_syn_fin_in_established_gets_challenge_ack(bench):
    """RFC 5961 section 4.2: SYN+FIN counts as a SYN in a synchronized state; no FIN is taken."""
    peer, conn = bench.established()
    peer.send(SYN | FIN | ACK, ack=peer.rcv_nxt)
    challenge = peer.expect_flags(ACK)
    assert challenge.ack == peer.snd_nxt
    assert_alive(peer, conn)


def test_ack_above_snd_nxt_is_dropped(bench):
    """RFC 9293 section 3.10.7.4 (fifth check) and RFC 5961 section 5.2: a segment acknowledging
    data not yet sent is dropped with an ACK in reply, so its data is not delivered."""
    peer, conn = bench.established()
    peer.send(ACK | PSH, ack=peer.rcv_nxt + 50000, payload=b"bogus")
    reply = peer.expect_flags(ACK)
    assert reply.ack == peer.snd_nxt
    assert_alive(peer, conn, b"real data")


def test_ack_too_old_is_dropped(bench):
    """RFC 5961 section 5.2: an ACK below SND.UNA - MAX.SND.WND is dropped with an ACK; its data is
    not delivered."""
    peer, conn = bench.established()
    peer.send(ACK | PSH, ack=peer.rcv_nxt - 0x40000000, payload=b"bogus")
    reply = peer.expect_flags(ACK)
    assert reply.ack == peer.snd_nxt
    assert_alive(peer, conn, b"real data")


def test_segment_without_ack_is_dropped(bench):
    """RFC 9293 section 3.10.7.4: in a synchronized state, a segment without ACK is dropped."""
    peer, conn = bench.established()
    peer.send(PSH, payload=b"no ack flag")
    peer.expect_none(0.5, predicate=lambda s: s.ack != peer.snd_nxt)
    assert_alive(peer, conn, b"with ack")


def test_rst_in_time_wait_closes_it_quietly(bench):
    """RFC 9293 section 3.10.7.4: a RST in TIME-WAIT ends it without a reply (Linux does this
    without RFC 1337 protection by default)."""
    peer, conn = bench.established()
    conn.shutdown(1)
    fin = peer.expect_flags(FIN)
    peer.rcv_nxt = (fin.seq + 1) & 0xFFFFFFFF
    peer.send_data(b"", flags=FIN | ACK)
    peer.expect(lambda s: s.ack == peer.snd_nxt, description="ACK of the FIN")
    peer.send(RST, seq=peer.snd_nxt, ack=0)
    peer.expect_none(0.3)


def test_challenge_acks_are_rate_limited(bench):
    """RFC 5961 section 7: challenge ACKs are rate limited.

    As in Linux (tcp_invalid_ratelimit, 500 ms per socket), a second in-window RST
    right after the first gets no second ACK."""
    peer, conn = bench.established()
    peer.send(RST | ACK, seq=peer.snd_nxt + 100)
    peer.send(RST | ACK, seq=peer.snd_nxt + 200)
    peer.expect_flags(ACK)
    peer.expect_none(0.3)
    assert_alive(peer, conn)
