"""Packet scenarios: the listen backlog, the accept queue and SYN cookies."""

from bench import ACK, PSH, SYN, option_mss


def test_accept_queue_full_drops_syn(bench):
    """Linux (inet_csk_reqsk_queue / sk_acceptq_is_full): with listen(1) and no accept() call,
    backlog + 1 connections complete; a further SYN is dropped, so the peer retries later."""
    listener, port = bench.listener(backlog=1)
    for _ in range(2):
        peer = bench.peer()
        peer.connect_to(port)
    late = bench.peer(dut_port=port)
    late.send(SYN, seq=late.iss, ack=0, options=option_mss(1460))
    late.expect_none(0.5, predicate=lambda s: s.has(SYN | ACK))
    conn, _ = listener.accept()
    conn.close()


def test_accept_returns_connections_in_order(bench):
    """RFC 9293 section 3.10.1: completed connections wait in the accept queue in arrival order."""
    listener, port = bench.listener(backlog=4)
    peers = [bench.peer() for _ in range(3)]
    for peer in peers:
        peer.connect_to(port)
    accepted = [listener.accept()[1][1] for _ in peers]
    assert accepted == [peer.port for peer in peers]


def test_syn_cookies_when_syn_queue_full(bench):
    """RFC 4987 section 3.6: when the SYN queue is full, the listener still answers SYNs with a SYN
    cookie, and a valid final ACK creates the connection, so a SYN flood does not block new clients."""
    backlog = 4
    listener, port = bench.listener(backlog=backlog)
    for _ in range(backlog + 2):
        flood = bench.peer(dut_port=port)
        flood.syn()
    client = bench.peer()
    synack = client.connect_to(port)
    assert synack.ack == (client.iss + 1) & 0xFFFFFFFF
    client.send_data(b"through the flood")
    conn, address = listener.accept(timeout=5)
    assert address[1] == client.port
    assert conn.recv(100) == b"through the flood"


def test_forged_cookie_ack_gets_rst(bench):
    """RFC 4987 section 3.6: an ACK whose acknowledgment number is not a valid cookie opens nothing
    and is answered with a RST as any stray ACK to a listener."""
    listener, port = bench.listener(backlog=2)
    for _ in range(4):
        bench.peer(dut_port=port).syn()
    forger = bench.peer(dut_port=port)
    forger.send(ACK | PSH, seq=forger.iss + 1, ack=0x01020304, payload=b"forged")
    forger.expect_flags(0x04)
