"""Packet scenarios: opening connections (RFC 9293 section 3.5) and segments without a connection."""

import errno

import pytest

from bench import (ACK, FIN, RST, SYN, option_mss, option_sack_permitted,
                   option_timestamp, option_wscale)


def test_passive_open_completes(bench):
    """RFC 9293 section 3.5: SYN, SYN-ACK acknowledging ISS + 1, ACK; accept() returns the connection."""
    listener, port = bench.listener()
    peer = bench.peer()
    synack = peer.connect_to(port)
    assert synack.ack == (peer.iss + 1) & 0xFFFFFFFF
    assert synack.mss == 1460
    conn, address = listener.accept()
    assert address[1] == peer.port
    peer.send_data(b"hello")
    assert conn.recv(100) == b"hello"


def test_synack_offers_window_scale_only_if_syn_did(bench):
    """RFC 7323 section 2.2: a SYN-ACK carries window scale only when the SYN carried it."""
    _, port = bench.listener()
    with_scale = bench.peer().connect_to(port, options=option_mss(1460) + option_wscale(7))
    without = bench.peer().connect_to(port, options=option_mss(1460))
    assert with_scale.wscale is not None
    assert without.wscale is None


def test_synack_without_timestamps_or_sack_when_not_offered(bench):
    """RFC 7323 section 3.2 and RFC 2018 section 2: no TSopt or SACK-permitted unless the SYN had them."""
    _, port = bench.listener()
    synack = bench.peer().connect_to(port, options=option_mss(1460))
    assert synack.timestamp is None
    assert not synack.sack_permitted


def test_synack_echoes_timestamp(bench):
    """RFC 7323 section 3.2: a SYN-ACK answering a SYN with TSopt carries TSopt with TSecr = SYN's TSval."""
    _, port = bench.listener()
    synack = bench.peer().connect_to(port, options=option_mss(1460) + option_timestamp(12345, 0))
    assert synack.timestamp is not None
    assert synack.timestamp[1] == 12345


def test_synack_grants_sack_permitted(bench):
    """RFC 2018 section 2: SACK-permitted in the SYN is answered with SACK-permitted in the SYN-ACK."""
    _, port = bench.listener()
    synack = bench.peer().connect_to(port, options=option_mss(1460) + option_sack_permitted())
    assert synack.sack_permitted


@pytest.mark.parametrize("mss, expected", [(536, 536), (None, 536), (0, 536), (1000, 1000)])
def test_send_segments_fit_peer_mss(bench, mss, expected):
    """RFC 9293 section 3.7.1: segments are at most the peer's MSS; without the option (or with
    the invalid 0, which Linux ignores) the default of 536 applies."""
    options = b"" if mss is None else option_mss(mss)
    peer, conn = bench.established(options=options, window=65535)
    conn.sendall(b"x" * 4000)
    segment = peer.expect(lambda s: s.payload, description="data segment")
    assert len(segment.payload) == expected


def test_active_open_completes(bench):
    """RFC 9293 section 3.5: connect() sends SYN with MSS, the SYN-ACK gets an ACK, connect() returns."""
    peer, sock, call, syn = bench.connecting()
    assert syn.mss == 1460
    assert syn.ack == 0
    peer.accept_from(syn)
    ack = peer.expect_flags(ACK)
    assert ack.ack == (peer.iss + 1) & 0xFFFFFFFF
    assert ack.seq == (syn.seq + 1) & 0xFFFFFFFF
    call.result()
    sock.close()


def test_active_open_refused_by_rst(bench):
    """RFC 9293 section 3.10.7.3: an acceptable RST in SYN-SENT ends the attempt (ECONNREFUSED)."""
    peer, sock, call, syn = bench.connecting()
    peer.dut_port = syn.sport
    peer.send(RST | ACK, seq=0, ack=syn.seq + 1, window=0)
    with pytest.raises(OSError) as caught:
        call.result()
    assert caught.value.errno == errno.ECONNREFUSED


def test_synack_with_bad_ack_gets_rst(bench):
    """RFC 9293 section 3.10.7.3: in SYN-SENT an unacceptable ACK gets <SEQ=SEG.ACK><CTL=RST>,
    and the attempt goes on: a correct SYN-ACK still completes it."""
    peer, sock, call, syn = bench.connecting()
    peer.dut_port = syn.sport
    peer.send(SYN | ACK, seq=peer.iss, ack=syn.seq + 1000, options=option_mss(1460))
    rst = peer.expect_flags(RST)
    assert rst.seq == (syn.seq + 1000) & 0xFFFFFFFF
    peer.accept_from(syn)
    peer.expect_flags(ACK)
    call.result()


def test_rst_without_ack_in_syn_sent_is_ignored(bench):
    """RFC 9293 section 3.10.7.3: in SYN-SENT a RST without ACK is dropped."""
    peer, sock, call, syn = bench.connecting()
    peer.dut_port = syn.sport
    peer.send(RST, seq=peer.iss, ack=0)
    peer.accept_from(syn)
    peer.expect_flags(ACK)
    call.result()


def test_simultaneous_open(bench):
    """RFC 9293 figure 7: a SYN in SYN-SENT moves to SYN-RECEIVED and is answered with a SYN-ACK
    on the same ISS; the peer's SYN-ACK then completes the connection."""
    peer, sock, call, syn = bench.connecting()
    peer.dut_port = syn.sport
    peer.rcv_nxt = (syn.seq + 1) & 0xFFFFFFFF
    peer.send(SYN, seq=peer.iss, ack=0, options=option_mss(1460))
    synack = peer.expect_flags(SYN | ACK)
    assert synack.seq == syn.seq
    assert synack.ack == (peer.iss + 1) & 0xFFFFFFFF
    peer.snd_nxt = (peer.iss + 1) & 0xFFFFFFFF
    peer.send(SYN | ACK, seq=peer.iss, options=option_mss(1460))
    call.result()
    sock.send(b"after simultaneous open")
    data = peer.expect(lambda s: s.payload, description="data segment")
    assert data.payload == b"after simultaneous open"


def test_syn_retransmitted_after_initial_rto(bench):
    """RFC 6298 section 2.1 and RFC 9293 section 3.8.1: an unanswered SYN is sent again with the
    same sequence number once the initial RTO of 1 s expires. Backoff is checked on data instead:
    Linux 6.5 and later keep SYN retransmissions linear (tcp_syn_linear_timeouts)."""
    peer, sock, call, syn = bench.connecting()
    again = peer.expect_flags(SYN, timeout=3)
    assert again.seq == syn.seq
    assert again.time - syn.time >= 0.8
    sock.close()


def test_synack_retransmitted_when_ack_is_lost(bench):
    """RFC 9293 section 3.8.1: a SYN-ACK not acknowledged is retransmitted with the same sequence number."""
    _, port = bench.listener()
    peer = bench.peer()
    peer.dut_port = port
    first = peer.syn()
    again = peer.expect_flags(SYN | ACK, timeout=3)
    assert again.seq == first.seq


def test_retransmitted_syn_in_syn_received_gets_synack(bench):
    """RFC 9293 section 3.10.7.4: a duplicate SYN in SYN-RECEIVED is answered with the SYN-ACK again
    (Linux resends it; RFC 5961 would send a challenge ACK, which would carry the same numbers)."""
    _, port = bench.listener()
    peer = bench.peer()
    peer.dut_port = port
    first = peer.syn()
    peer.send(SYN, seq=peer.iss, ack=0, options=option_mss(1460))
    again = peer.expect(lambda s: s.has(ACK) and s.ack == (peer.iss + 1) & 0xFFFFFFFF, timeout=1.5,
                        description="SYN-ACK or ACK for the duplicate SYN")
    assert again.seq in (first.seq, (first.seq + 1) & 0xFFFFFFFF)


def test_syn_to_closed_port_gets_rst_ack(bench):
    """RFC 9293 section 3.10.7.1: without a connection, a segment without ACK gets
    <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>."""
    peer = bench.peer(dut_port=bench.dut.next_port())
    peer.send(SYN, seq=1000, ack=0)
    rst = peer.expect_flags(RST | ACK)
    assert rst.seq == 0
    assert rst.ack == 1001


def test_data_without_ack_to_closed_port(bench):
    """RFC 9293 section 3.10.7.1: SEG.LEN counts data and FIN in the RST's acknowledgment number."""
    peer = bench.peer(dut_port=bench.dut.next_port())
    peer.send(FIN, seq=5000, ack=0, payload=b"abcd")
    rst = peer.expect_flags(RST | ACK)
    assert rst.ack == 5005


def test_ack_to_closed_port_gets_rst(bench):
    """RFC 9293 section 3.10.7.1: a segment with ACK gets <SEQ=SEG.ACK><CTL=RST>."""
    peer = bench.peer(dut_port=bench.dut.next_port())
    peer.send(ACK, seq=7, ack=0xDEADBEEF)
    rst = peer.expect_flags(RST)
    assert rst.seq == 0xDEADBEEF
    assert not rst.has(ACK)


def test_rst_to_closed_port_gets_nothing(bench):
    """RFC 9293 section 3.10.7.1: an incoming RST is discarded, never answered."""
    peer = bench.peer(dut_port=bench.dut.next_port())
    peer.send(RST | ACK, seq=7, ack=9)
    peer.expect_none(0.5)


def test_ack_to_listener_gets_rst(bench):
    """RFC 9293 section 3.10.7.2: in LISTEN, an ACK gets <SEQ=SEG.ACK><CTL=RST>."""
    _, port = bench.listener()
    peer = bench.peer(dut_port=port)
    peer.send(ACK, seq=100, ack=0x12345678)
    rst = peer.expect_flags(RST)
    assert rst.seq == 0x12345678


def test_rst_in_syn_received_drops_embryo(bench):
    """RFC 9293 section 3.10.7.4: an acceptable RST in passively opened SYN-RECEIVED removes the
    connection and the listener stays: an ACK afterwards gets a RST, a new SYN a SYN-ACK."""
    listener, port = bench.listener()
    peer = bench.peer(dut_port=port)
    peer.syn()
    peer.send(RST, seq=peer.snd_nxt, ack=0)
    peer.expect_none(0.3)
    peer.send(ACK)
    peer.expect_flags(RST)
    bench.peer().connect_to(port)
    conn, _ = listener.accept()
    conn.close()


def test_syn_with_fin_to_listener_is_dropped(bench):
    """SYN+FIN is invalid (RFC 9293 section 3.10.7.2 gives no meaning to it); Linux's tcp_rcv_state_process
    drops it in LISTEN without reply, and so does sandnet."""
    _, port = bench.listener()
    peer = bench.peer(dut_port=port)
    peer.send(SYN | FIN, seq=peer.iss, ack=0, options=option_mss(1460))
    peer.expect_none(0.5)
