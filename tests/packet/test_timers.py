"""Packet scenarios: keepalive, TCP_USER_TIMEOUT, SO_LINGER, TCP_CORK, TCP_INFO and TCP_CONGESTION."""

import errno
import struct

import pytest

from bench import ACK, FIN, RST, option_mss, option_wscale

SOL_SOCKET = 1
SO_KEEPALIVE = 9
SO_LINGER = 13
IPPROTO_TCP = 6
TCP_NODELAY = 1
TCP_CORK = 3
TCP_KEEPIDLE = 4
TCP_KEEPINTVL = 5
TCP_KEEPCNT = 6
TCP_INFO = 11
TCP_CONGESTION = 13
TCP_USER_TIMEOUT = 18

KEEPALIVE_OPTIONS = [(SOL_SOCKET, SO_KEEPALIVE, 1), (IPPROTO_TCP, TCP_KEEPIDLE, 1),
                     (IPPROTO_TCP, TCP_KEEPINTVL, 1), (IPPROTO_TCP, TCP_KEEPCNT, 2)]


def test_keepalive_probe_after_idle(bench):
    """RFC 1122 section 4.2.3.6: after TCP_KEEPIDLE seconds idle, a probe with SEG.SEQ = SND.NXT - 1
    and no data is sent; an answered probe keeps the connection."""
    peer, conn = bench.established(socket_options=KEEPALIVE_OPTIONS)
    probe = peer.expect(lambda s: s.has(ACK), timeout=3, description="keepalive probe")
    assert probe.seq == (peer.rcv_nxt - 1) & 0xFFFFFFFF
    assert len(probe.payload) <= 1
    peer.send(ACK)
    peer.send_data(b"alive")
    assert conn.recv(100) == b"alive"


def test_keepalive_gives_up_after_keepcnt(bench):
    """RFC 1122 section 4.2.3.6 with Linux's knobs: TCP_KEEPCNT unanswered probes TCP_KEEPINTVL apart
    end the connection with ETIMEDOUT and a RST."""
    peer, conn = bench.established(socket_options=KEEPALIVE_OPTIONS)
    probes = [peer.expect(lambda s: not s.has(RST), timeout=3, description="keepalive probe") for _ in range(2)]
    assert probes[1].time - probes[0].time >= 0.8
    peer.expect_flags(RST, timeout=3)
    with pytest.raises(OSError) as caught:
        conn.recv(100)
    assert caught.value.errno == errno.ETIMEDOUT


def test_user_timeout_aborts_unacknowledged_data(bench):
    """RFC 5482 and RFC 9293 section 3.8.3: with TCP_USER_TIMEOUT set, data unacknowledged for that
    long ends the connection with ETIMEDOUT."""
    peer, conn = bench.established(socket_options=[(IPPROTO_TCP, TCP_USER_TIMEOUT, 1500)])
    assert conn.getsockopt(IPPROTO_TCP, TCP_USER_TIMEOUT) == 1500
    conn.send(b"never acknowledged")
    first = peer.expect(lambda s: s.payload, description="data segment")
    with pytest.raises(OSError) as caught:
        conn.recv(100, timeout=10)
    assert caught.value.errno == errno.ETIMEDOUT
    assert peer.drain()[-1].time - first.time < 5


def test_linger_zero_close_sends_rst(bench):
    """SO_LINGER with l_onoff 1 and l_linger 0 aborts on close(): RST instead of FIN (RFC 9293
    section 3.10.5 ABORT)."""
    peer, conn = bench.established()
    conn.setsockopt(SOL_SOCKET, SO_LINGER, struct.pack("ii", 1, 0))
    assert struct.unpack("ii", conn.getsockopt(SOL_SOCKET, SO_LINGER, 8)) == (1, 0)
    conn.close()
    rst = peer.expect(lambda s: s.has(RST) or s.has(FIN), description="RST")
    assert rst.has(RST)
    assert rst.seq == peer.rcv_nxt


def test_cork_holds_partial_segment(bench):
    """TCP_CORK (Linux): small writes are held until a full MSS accumulates or the cork is removed."""
    peer, conn = bench.established(options=option_mss(1000) + option_wscale(7))
    conn.setsockopt(IPPROTO_TCP, TCP_CORK, 1)
    conn.send(b"a" * 300)
    conn.send(b"b" * 300)
    peer.expect_none(0.1, predicate=lambda s: s.payload)
    conn.setsockopt(IPPROTO_TCP, TCP_CORK, 0)
    data = peer.expect(lambda s: s.payload, description="data after uncorking")
    assert data.payload == b"a" * 300 + b"b" * 300


def test_tcp_info_reports_state_and_rtt(bench):
    """TCP_INFO (Linux struct tcp_info): state 1 (ESTABLISHED), rto in microseconds, snd_mss and
    snd_cwnd in segments."""
    peer, conn = bench.established(options=option_mss(1000) + option_wscale(7))
    raw = conn.getsockopt(IPPROTO_TCP, TCP_INFO, 104)
    state, ca_state, retransmits, probes, backoff, options, wscales, flags = struct.unpack_from("8B", raw)
    rto, ato, snd_mss, rcv_mss = struct.unpack_from("4I", raw, 8)
    rtt, rttvar, snd_ssthresh, snd_cwnd = struct.unpack_from("4I", raw, 68)
    assert state == 1
    assert retransmits == 0
    assert snd_mss == 1000
    assert 200_000 <= rto <= 3_000_000
    assert snd_cwnd == 10


def test_congestion_control_selectable(bench):
    """TCP_CONGESTION (Linux): a new socket gets the default (CUBIC in sandnet and in Linux unless
    the host's sysctl changed it), "cubic" and "reno" can be chosen, an unknown name is ENOENT."""
    sock = bench.dut.socket()
    default = bench.dut.default_congestion_control().encode()
    assert sock.getsockopt(IPPROTO_TCP, TCP_CONGESTION, 16).rstrip(b"\0") == default
    sock.setsockopt(IPPROTO_TCP, TCP_CONGESTION, b"cubic")
    assert sock.getsockopt(IPPROTO_TCP, TCP_CONGESTION, 16).rstrip(b"\0") == b"cubic"
    sock.setsockopt(IPPROTO_TCP, TCP_CONGESTION, b"reno")
    assert sock.getsockopt(IPPROTO_TCP, TCP_CONGESTION, 16).rstrip(b"\0") == b"reno"
    with pytest.raises(OSError) as caught:
        sock.setsockopt(IPPROTO_TCP, TCP_CONGESTION, b"no-such-algorithm")
    assert caught.value.errno == errno.ENOENT
    sock.close()


def test_nagle_holds_second_small_segment(bench):
    """RFC 896 and RFC 9293 section 3.7.4: with Nagle on, a second small write waits while a small
    segment is unacknowledged; TCP_NODELAY sends it at once."""
    peer, conn = bench.established(options=option_mss(1000) + option_wscale(7))
    conn.send(b"one")
    first = peer.expect(lambda s: s.payload, description="first segment")
    conn.send(b"two")
    peer.expect_none(0.1, predicate=lambda s: s.payload and s.seq != first.seq)
    peer.send(ACK, ack=first.seq + 3)
    second = peer.expect(lambda s: s.payload and s.seq != first.seq, description="second segment")
    assert second.payload == b"two"
    conn.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
    conn.send(b"three")
    conn.send(b"four")
    third = peer.expect(lambda s: s.payload == b"three", description="third segment")
    peer.expect(lambda s: s.payload == b"four" and s.seq == third.seq + 5, timeout=0.5, description="fourth segment")
