"""TcpConnection pairs wired back to back through a simulated lossy link, driven by a fake clock."""

import dataclasses
import errno
import hashlib
import heapq
import random

import pytest

from sandnet_stackd.header import tcp as header
from sandnet_stackd.tcp import State, TcpConfig, TcpConnection, TcpCounters, reset_for_unexpected

IP_A = bytes([10, 0, 0, 1])
IP_B = bytes([10, 0, 0, 2])
PORT_A = 40000
PORT_B = 80
MSS = 1460
LATENCY = 0.005


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Wire:
    """A link between two connections that delays, drops, reorders and duplicates segments.

    Segments go through the real header build and parse, checksum included.
    ``log`` records every (time, sender name, TcpRepr) sent; a ``filter`` may
    return False to drop a segment.
    """

    def __init__(self, clock: FakeClock, seed: int = 1, loss: float = 0.0, reorder: float = 0.0,
                 duplicate: float = 0.0) -> None:
        self.clock = clock
        self.random = random.Random(seed)
        self.loss = loss
        self.reorder = reorder
        self.duplicate = duplicate
        self.queue: list = []
        self.counter = 0
        self.log: list = []
        self.filter = None
        self.ends: dict = {}

    def output_for(self, name: str):
        def output(seg: header.TcpRepr) -> None:
            self.log.append((self.clock.now, name, seg))
            if self.filter is not None and not self.filter(name, seg):
                return
            if self.random.random() < self.loss:
                return
            src, dst = (IP_A, IP_B) if name == "a" else (IP_B, IP_A)
            raw = header.build(seg, src, dst)
            copies = 2 if self.random.random() < self.duplicate else 1
            for _ in range(copies):
                delay = LATENCY
                if self.random.random() < self.reorder:
                    delay += self.random.random() * 4 * LATENCY
                self.counter += 1
                heapq.heappush(self.queue, (self.clock.now + delay, self.counter, name, raw))
        return output

    def sent_by(self, name: str) -> list:
        return [seg for _, sender, seg in self.log if sender == name]

    def run(self, until=lambda: False, max_time: float = 600.0, app=None) -> None:
        """Deliver segments and fire timers in time order until ``until()`` or ``max_time`` passes."""
        end = self.clock.now + max_time
        for _ in range(2_000_000):
            if until():
                return
            candidates = []
            if self.queue:
                candidates.append(self.queue[0][0])
            for connection in self.ends.values():
                deadline = connection.next_deadline()
                if deadline is not None and not connection.is_finished:
                    candidates.append(deadline)
            if not candidates:
                return
            when = min(candidates)
            if when > end:
                self.clock.now = end
                return
            self.clock.now = max(self.clock.now, when)

            if self.queue and self.queue[0][0] <= self.clock.now:
                _, _, name, raw = heapq.heappop(self.queue)
                receiver_name = "b" if name == "a" else "a"
                src, dst = (IP_A, IP_B) if name == "a" else (IP_B, IP_A)
                receiver = self.ends[receiver_name]
                receiver.on_segment(header.parse(raw, src, dst))
            for connection in self.ends.values():
                deadline = connection.next_deadline()
                if deadline is not None and deadline <= self.clock.now:
                    connection.on_timer()
            if app is not None:
                app()
        raise AssertionError("wire loop did not settle")


def make_connection(wire: Wire, name: str, config: TcpConfig | None = None, iss: int = 1000,
                    counters: TcpCounters | None = None, mss: int = MSS, notify=None) -> TcpConnection:
    local_ip, remote_ip = (IP_A, IP_B) if name == "a" else (IP_B, IP_A)
    local_port, remote_port = (PORT_A, PORT_B) if name == "a" else (PORT_B, PORT_A)
    connection = TcpConnection(local_ip=local_ip, local_port=local_port, remote_ip=remote_ip,
                               remote_port=remote_port, iss=iss, mss=mss, config=config or TcpConfig(),
                               counters=counters or TcpCounters(), clock=wire.clock,
                               output=wire.output_for(name), notify=notify or (lambda: None))
    wire.ends[name] = connection
    return connection


class Pair:
    """Client ``a`` and server ``b``; the server is created from the client's first SYN like a listener."""

    def __init__(self, seed: int = 1, loss: float = 0.0, reorder: float = 0.0, duplicate: float = 0.0,
                 client_config: TcpConfig | None = None, server_config: TcpConfig | None = None,
                 client_iss: int = 1000, server_iss: int = 5000, client_notify=None) -> None:
        self.clock = FakeClock()
        self.wire = Wire(self.clock, seed, loss, reorder, duplicate)
        self.counters = TcpCounters()
        self.server_config = server_config
        self.server_iss = server_iss
        self.a = make_connection(self.wire, "a", client_config, client_iss, self.counters, notify=client_notify)
        self.b: TcpConnection | None = None
        self.wire.ends["b"] = _Listener(self)

    def open(self) -> None:
        self.a.connect()
        self.wire.run(lambda: self.a.state is State.ESTABLISHED and self.b is not None
                      and self.b.state is State.ESTABLISHED, max_time=300)
        assert self.a.state is State.ESTABLISHED
        assert self.b.state is State.ESTABLISHED


class _Listener:
    """Stands in for the stack's listener: turns the first SYN into the server connection."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.is_finished = False

    def next_deadline(self):
        return None

    def on_segment(self, seg: header.TcpRepr) -> None:
        if not seg.has(header.SYN) or seg.has(header.ACK):
            return
        pair = self.pair
        pair.b = make_connection(pair.wire, "b", pair.server_config, pair.server_iss, pair.counters)
        pair.b.accept_syn(seg)


def transfer(pair: Pair, sender: TcpConnection, receiver: TcpConnection, data: bytes,
             max_time: float = 600.0, chunk: int = 65536) -> bytes:
    """Send ``data`` from ``sender`` and collect it at ``receiver``, as socket-layer code would."""
    received = bytearray()
    position = 0

    def app() -> None:
        nonlocal position
        while position < len(data):
            sent = sender.send(memoryview(data)[position:position + chunk])
            if sent == 0:
                break
            position += sent
        while receiver.readable_bytes:
            received.extend(receiver.recv(chunk))

    app()
    pair.wire.run(lambda: len(received) >= len(data), max_time=max_time, app=app)
    return bytes(received)


def payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


# Opening.

def test_handshake_active_and_passive():
    pair = Pair()
    pair.open()
    assert pair.a.established_once
    assert pair.b.established_once
    assert pair.counters.ActiveOpens == 1
    assert pair.counters.PassiveOpens == 1
    assert pair.counters.CurrEstab == 2

    syn = pair.wire.sent_by("a")[0]
    assert syn.flags == header.SYN
    assert syn.mss == MSS
    assert syn.window_scale == 7
    synack = pair.wire.sent_by("b")[0]
    assert synack.flags == header.SYN | header.ACK
    assert synack.ack == (syn.seq + 1) & 0xFFFFFFFF


def test_simultaneous_open():
    clock = FakeClock()
    wire = Wire(clock)
    a = make_connection(wire, "a", iss=111)
    b = make_connection(wire, "b", iss=222)
    a.connect()
    b.connect()
    wire.run(lambda: a.state is State.ESTABLISHED and b.state is State.ESTABLISHED, max_time=30)
    assert a.state is State.ESTABLISHED
    assert b.state is State.ESTABLISHED
    assert a.window_scales == (7, 7)

    a.send(b"ping")
    wire.run(lambda: b.readable_bytes == 4, max_time=5)
    assert b.recv(10) == b"ping"


def test_window_scale_negotiated_only_when_both_offer():
    pair = Pair()
    pair.open()
    assert pair.a.window_scales == (7, 7)
    assert pair.b.window_scales == (7, 7)

    pair = Pair(server_config=TcpConfig(window_scaling=False))
    pair.open()
    assert pair.wire.sent_by("b")[0].window_scale is None
    assert pair.a.window_scales == (0, 0)
    assert pair.b.window_scales == (0, 0)

    pair = Pair(client_config=TcpConfig(window_scaling=False))
    pair.open()
    assert pair.wire.sent_by("a")[0].window_scale is None
    assert pair.wire.sent_by("b")[0].window_scale is None
    assert pair.a.window_scales == (0, 0)
    assert pair.b.window_scales == (0, 0)


def test_mss_is_minimum_of_both_sides():
    clock = FakeClock()
    wire = Wire(clock)
    a = make_connection(wire, "a", mss=1000)
    a.connect()
    syn = wire.sent_by("a")[0]
    b = make_connection(wire, "b", mss=1460)
    b.accept_syn(syn)
    # Both offer timestamps, so each segment gives 12 bytes of the MSS to TSopt, as in Linux.
    assert b.snd_mss == 1000 - 12
    wire.run(lambda: a.state is State.ESTABLISHED, max_time=5)
    assert a.snd_mss == 1000 - 12


def test_mss_without_timestamps():
    clock = FakeClock()
    wire = Wire(clock)
    a = make_connection(wire, "a", config=TcpConfig(timestamps=False), mss=1000)
    a.connect()
    b = make_connection(wire, "b", mss=1460)
    b.accept_syn(wire.sent_by("a")[0])
    assert b.snd_mss == 1000


def test_syn_retries_then_etimedout():
    clock = FakeClock()
    wire = Wire(clock)
    wire.filter = lambda name, seg: False
    counters = TcpCounters()
    a = make_connection(wire, "a", counters=counters)
    start = clock.now
    a.connect()
    wire.run(lambda: a.is_finished, max_time=1000)

    syn_times = [when - start for when, name, seg in wire.log if name == "a"]
    assert syn_times == [0, 1, 3, 7, 15, 31, 63]
    assert clock.now - start == pytest.approx(127)
    assert a.state is State.CLOSED
    assert a.error == errno.ETIMEDOUT
    assert counters.AttemptFails == 1


def test_rst_to_syn_gives_econnrefused():
    clock = FakeClock()
    wire = Wire(clock)
    a = make_connection(wire, "a")
    a.connect()
    syn = wire.sent_by("a")[0]
    reply = reset_for_unexpected(syn)
    assert reply.flags == header.RST | header.ACK
    assert reply.src_port == PORT_B
    assert reply.ack == (syn.seq + 1) & 0xFFFFFFFF

    a.on_segment(reply)
    assert a.state is State.CLOSED
    assert a.error == errno.ECONNREFUSED
    assert a.is_finished


def test_rst_with_wrong_ack_in_syn_sent_ignored():
    clock = FakeClock()
    wire = Wire(clock)
    a = make_connection(wire, "a")
    a.connect()
    syn = wire.sent_by("a")[0]
    a.on_segment(header.TcpRepr(PORT_B, PORT_A, seq=0, ack=(syn.seq + 5) & 0xFFFFFFFF,
                                flags=header.RST | header.ACK, window=0))
    assert a.state is State.SYN_SENT


def test_reset_for_unexpected_segments():
    assert reset_for_unexpected(header.TcpRepr(1, 2, 3, 4, header.RST, 0)) is None
    reply = reset_for_unexpected(header.TcpRepr(1, 2, seq=3, ack=99, flags=header.ACK, window=0))
    assert reply.flags == header.RST
    assert reply.seq == 99
    assert (reply.src_port, reply.dst_port) == (2, 1)
    reply = reset_for_unexpected(header.TcpRepr(1, 2, seq=0xFFFFFFFF, ack=0, flags=header.FIN, window=0,
                                                payload=b"ab"))
    assert reply.ack == 2
    assert reply.seq == 0


# Data transfer.

def test_transfer_both_ways():
    pair = Pair()
    pair.open()
    data = payload(3_000_000)
    assert transfer(pair, pair.a, pair.b, data) == data
    data = payload(3_000_000, seed=8)
    assert transfer(pair, pair.b, pair.a, data) == data
    assert pair.counters.RetransSegs == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_transfer_under_loss_reorder_duplication(seed):
    pair = Pair(seed=seed, loss=0.03, reorder=0.1, duplicate=0.02)
    pair.open()
    data = payload(2_000_000, seed=seed)
    received = transfer(pair, pair.a, pair.b, data, max_time=3000)
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(data).hexdigest()
    data = payload(1_000_000, seed=seed + 10)
    received = transfer(pair, pair.b, pair.a, data, max_time=3000)
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(data).hexdigest()
    assert pair.counters.RetransSegs > 0


def test_sequence_wraparound():
    pair = Pair(client_iss=0xFFFFFFFF - 20_000, server_iss=0xFFFFFFF0, loss=0.02, reorder=0.1, seed=4)
    pair.open()
    data = payload(500_000)
    assert transfer(pair, pair.a, pair.b, data, max_time=3000) == data
    assert transfer(pair, pair.b, pair.a, data, max_time=3000) == data
    seqs = [seg.seq for seg in pair.wire.sent_by("a") if seg.payload]
    assert min(seqs) < 100_000 < 0xFFFF0000 < max(seqs)


def test_fast_retransmit_on_three_duplicate_acks():
    pair = Pair()
    pair.open()
    dropped = []

    def drop_first_data(name, seg):
        if name == "a" and seg.payload and not dropped:
            dropped.append(seg.seq)
            return False
        return True

    pair.wire.filter = drop_first_data
    data = payload(200_000)
    assert transfer(pair, pair.a, pair.b, data) == data
    assert pair.counters.TCPFastRetrans == 1
    assert pair.counters.TCPTimeouts == 0


def test_out_of_order_segments_reassembled():
    pair = Pair()
    pair.open()
    b = pair.b
    start = pair.wire.sent_by("a")[-1].seq
    ack = pair.wire.sent_by("a")[-1].ack
    second = header.TcpRepr(PORT_A, PORT_B, seq=(start + 3) & 0xFFFFFFFF, ack=ack, flags=header.ACK,
                            window=1000, payload=b"def")
    first = header.TcpRepr(PORT_A, PORT_B, seq=start, ack=ack, flags=header.ACK, window=1000, payload=b"abc")
    before = len(pair.wire.sent_by("b"))
    b.on_segment(second)
    assert b.readable_bytes == 0
    duplicate_ack = pair.wire.sent_by("b")[before]
    assert duplicate_ack.ack == start
    b.on_segment(first)
    assert b.recv(10) == b"abcdef"
    assert pair.wire.sent_by("b")[-1].ack == (start + 6) & 0xFFFFFFFF


def test_out_of_window_segment_gets_ack():
    pair = Pair()
    pair.open()
    b = pair.b
    last = pair.wire.sent_by("a")[-1]
    before = len(pair.wire.sent_by("b"))
    far = header.TcpRepr(PORT_A, PORT_B, seq=(last.seq + 10_000_000) & 0xFFFFFFFF, ack=last.ack,
                         flags=header.ACK, window=1000, payload=b"zzz")
    b.on_segment(far)
    old = header.TcpRepr(PORT_A, PORT_B, seq=(last.seq - 100) & 0xFFFFFFFF, ack=last.ack,
                         flags=header.ACK, window=1000, payload=b"old")
    b.on_segment(old)
    replies = pair.wire.sent_by("b")[before:]
    assert len(replies) == 2
    assert all(reply.flags == header.ACK and reply.ack == last.seq for reply in replies)
    assert b.readable_bytes == 0
    assert b.state is State.ESTABLISHED


def test_retransmission_timeout_backoff():
    pair = Pair()
    pair.open()
    pair.wire.filter = lambda name, seg: name != "a"
    start = pair.clock.now
    pair.a.send(b"x" * 100)
    pair.wire.run(lambda: pair.a.is_finished, max_time=3000)

    times = [when - start for when, name, seg in pair.wire.log if name == "a" and seg.payload]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert len(times) == 16
    assert gaps[0] == pytest.approx(pair_rto_after_handshake(), rel=0.01)
    for earlier, later in zip(gaps, gaps[1:]):
        assert later == pytest.approx(min(2 * earlier, 120.0), rel=0.01)
    assert pair.a.error == errno.ETIMEDOUT
    assert pair.counters.TCPAbortOnTimeout == 1


def pair_rto_after_handshake() -> float:
    """RTO after one handshake sample of 2 * LATENCY: srtt + 4 * rttvar clamped to 200 ms."""
    rtt = 2 * LATENCY
    return max(rtt + 4 * rtt / 2, 0.2)


def test_rst_in_established_gives_econnreset():
    pair = Pair()
    pair.open()
    pair.b.abort()
    pair.wire.run(lambda: pair.a.state is State.CLOSED, max_time=5)
    assert pair.a.error == errno.ECONNRESET
    assert pair.b.is_finished
    assert pair.counters.EstabResets == 2
    assert pair.counters.CurrEstab == 0


def test_rst_not_at_rcv_nxt_gets_challenge_ack():
    pair = Pair()
    pair.open()
    last = pair.wire.sent_by("b")[-1]
    before = len(pair.wire.sent_by("a"))
    pair.a.on_segment(header.TcpRepr(PORT_B, PORT_A, seq=(last.seq + 10) & 0xFFFFFFFF, ack=0,
                                     flags=header.RST, window=0))
    assert pair.a.state is State.ESTABLISHED
    assert pair.counters.TCPChallengeACK == 1
    assert pair.wire.sent_by("a")[before].flags == header.ACK


# Closing.

def test_half_close_then_data_the_other_way():
    pair = Pair()
    pair.open()
    pair.a.send(b"request")
    pair.a.shutdown_write()
    assert not pair.a.can_send
    pair.wire.run(lambda: pair.b.fin_received and pair.a.state is State.FIN_WAIT_2, max_time=5)
    assert pair.b.recv(100) == b"request"
    assert pair.b.state is State.CLOSE_WAIT
    assert pair.a.state is State.FIN_WAIT_2

    data = payload(300_000)
    assert transfer(pair, pair.b, pair.a, data) == data
    pair.b.close()
    pair.wire.run(lambda: pair.b.is_finished, max_time=5)
    assert pair.a.state is State.TIME_WAIT
    assert pair.b.state is State.CLOSED


def test_active_close_sequence_and_time_wait_expiry():
    pair = Pair()
    pair.open()
    pair.a.close()
    assert pair.a.state is State.FIN_WAIT_1
    pair.wire.run(lambda: pair.b.state is State.CLOSE_WAIT and pair.a.state is State.FIN_WAIT_2, max_time=5)
    assert pair.a.state is State.FIN_WAIT_2
    pair.b.close()
    assert pair.b.state is State.LAST_ACK
    pair.wire.run(lambda: pair.b.is_finished, max_time=5)
    assert pair.a.state is State.TIME_WAIT
    entered = pair.clock.now

    pair.wire.run(lambda: pair.a.is_finished, max_time=100)
    assert pair.a.state is State.CLOSED
    assert pair.clock.now - entered == pytest.approx(60, abs=0.1)
    assert pair.a.error == 0
    assert pair.b.error == 0


def test_simultaneous_close_through_closing():
    pair = Pair()
    pair.open()
    pair.a.close()
    pair.b.close()
    assert pair.a.state is State.FIN_WAIT_1
    assert pair.b.state is State.FIN_WAIT_1
    pair.wire.run(lambda: pair.a.state is State.CLOSING and pair.b.state is State.CLOSING, max_time=1)
    pair.wire.run(lambda: pair.a.state is State.TIME_WAIT and pair.b.state is State.TIME_WAIT, max_time=5)
    assert pair.a.state is State.TIME_WAIT
    assert pair.b.state is State.TIME_WAIT
    pair.wire.run(lambda: pair.a.is_finished and pair.b.is_finished, max_time=100)


def test_fin_wait_2_timeout_after_close():
    pair = Pair()
    pair.open()
    pair.a.close()
    pair.wire.run(lambda: pair.a.state is State.FIN_WAIT_2, max_time=5)
    entered = pair.clock.now
    pair.wire.run(lambda: pair.a.is_finished, max_time=100)
    assert pair.clock.now - entered == pytest.approx(60, abs=0.1)
    assert pair.b.state is State.CLOSE_WAIT


def test_time_wait_acks_retransmitted_fin():
    pair = Pair()
    pair.open()
    pair.a.close()
    pair.wire.run(lambda: pair.b.state is State.CLOSE_WAIT, max_time=5)
    lost = []

    def drop_first_ack(name, seg):
        if name == "a" and seg.flags == header.ACK and not lost:
            lost.append(seg)
            return False
        return True

    pair.wire.filter = drop_first_ack
    pair.b.close()
    pair.wire.run(lambda: pair.a.state is State.TIME_WAIT, max_time=5)
    pair.wire.run(lambda: pair.b.is_finished, max_time=30)
    assert pair.b.state is State.CLOSED
    fins = [seg for seg in pair.wire.sent_by("b") if seg.flags & header.FIN]
    assert len(fins) == 2


def test_close_with_unread_data_sends_rst():
    pair = Pair()
    pair.open()
    pair.a.send(b"unread")
    pair.wire.run(lambda: pair.b.readable_bytes == 6, max_time=5)
    pair.b.close()
    assert pair.wire.sent_by("b")[-1].flags & header.RST
    assert pair.b.is_finished
    pair.wire.run(lambda: pair.a.state is State.CLOSED, max_time=5)
    assert pair.a.error == errno.ECONNRESET
    assert pair.counters.TCPAbortOnClose == 1


def test_data_after_close_sends_rst():
    pair = Pair()
    pair.open()
    pair.b.close()
    pair.wire.run(lambda: pair.b.state is State.FIN_WAIT_2, max_time=5)
    pair.a.send(b"late")
    pair.wire.run(lambda: pair.b.is_finished and pair.a.state is State.CLOSED, max_time=5)
    assert pair.a.error == errno.EPIPE
    assert pair.counters.TCPAbortOnData == 1


# Flow control.

def test_zero_window_persist_and_reopen():
    config = TcpConfig(rcvbuf=20_000)
    pair = Pair(server_config=config)
    pair.open()
    data = payload(60_000)
    sent = pair.a.send(data)
    pair.wire.run(max_time=1)
    # Rounding to the window scale never shrinks the right edge, so a few bytes past rcvbuf fit.
    assert 20_000 <= pair.b.readable_bytes < 20_000 + 1024
    assert pair.wire.sent_by("b")[-1].window == 0

    start = pair.clock.now
    probes_before = pair.counters.TCPWinProbe
    pair.wire.run(max_time=30)
    probe_times = [when - start for when, name, seg in pair.wire.log
                   if name == "a" and when > start and not seg.payload]
    assert len(probe_times) >= 4
    gaps = [later - earlier for earlier, later in zip(probe_times, probe_times[1:])]
    for earlier, later in zip(gaps, gaps[1:]):
        assert later == pytest.approx(min(2 * earlier, 120), rel=0.05)
    assert pair.counters.TCPWinProbe - probes_before == len(probe_times)
    assert pair.a.state is State.ESTABLISHED

    received = bytearray(pair.b.recv(100_000))
    position = sent

    def app():
        nonlocal position
        position += pair.a.send(memoryview(data)[position:])
        received.extend(pair.b.recv(100_000))

    pair.wire.run(lambda: len(received) == len(data), max_time=300, app=app)
    assert bytes(received) == data


def test_window_limits_data_in_flight():
    pair = Pair(server_config=TcpConfig(rcvbuf=8192, window_scaling=False))
    pair.open()
    pair.a.send(payload(50_000))
    pair.wire.run(max_time=2)
    assert pair.b.readable_bytes <= 8192 + MSS


# Nagle and delayed ACK.

def test_nagle_holds_second_small_segment():
    pair = Pair()
    pair.open()
    before = len(pair.wire.sent_by("a"))
    pair.a.send(b"a")
    pair.a.send(b"b")
    pair.a.send(b"c")
    small = [seg for seg in pair.wire.sent_by("a")[before:] if seg.payload]
    assert [bytes(seg.payload) for seg in small] == [b"a"]
    pair.wire.run(lambda: pair.b.readable_bytes == 3, max_time=5)
    assert pair.b.recv(10) == b"abc"


def test_nodelay_sends_each_small_segment():
    pair = Pair(client_config=TcpConfig(nodelay=True))
    pair.open()
    before = len(pair.wire.sent_by("a"))
    for byte in b"abc":
        pair.a.send(bytes([byte]))
    small = [seg for seg in pair.wire.sent_by("a")[before:] if seg.payload]
    assert [bytes(seg.payload) for seg in small] == [b"a", b"b", b"c"]


def test_set_option_nodelay_flushes_and_rejects_unknown():
    pair = Pair()
    pair.open()
    pair.a.send(b"a")
    pair.a.send(b"b")
    pair.a.set_option("nodelay", True)
    assert bytes(pair.wire.sent_by("a")[-1].payload) == b"b"
    with pytest.raises(ValueError, match="unknown TCP option 'bogus'"):
        pair.a.set_option("bogus", 1)


def test_delayed_ack_after_40_ms():
    pair = Pair()
    pair.open()
    pair.a.send(b"one")
    pair.wire.run(lambda: pair.b.readable_bytes == 3, max_time=1)
    received = pair.clock.now
    before = len(pair.wire.sent_by("b"))
    assert pair.b.next_deadline() == pytest.approx(received + 0.040)
    pair.wire.run(lambda: len(pair.wire.sent_by("b")) > before, max_time=1)
    assert pair.clock.now - received == pytest.approx(0.040)
    assert pair.counters.DelayedACKs == 1


def test_ack_every_second_full_segment():
    pair = Pair()
    pair.open()
    before = len(pair.wire.sent_by("b"))
    pair.a.send(b"x" * (4 * MSS))
    pair.wire.run(lambda: pair.b.readable_bytes == 4 * MSS, max_time=1)
    acks = pair.wire.sent_by("b")[before:]
    assert len(acks) == 2
    assert pair.counters.DelayedACKs == 0


# Keepalive.

def test_keepalive_probes_then_etimedout():
    pair = Pair(client_config=TcpConfig(keepalive=True))
    pair.open()
    established = pair.clock.now
    pair.wire.run(lambda: pair.counters.TCPKeepAlive == 1, max_time=8000)
    assert pair.clock.now - established == pytest.approx(7200, abs=0.1)
    assert pair.a.state is State.ESTABLISHED

    pair.wire.filter = lambda name, seg: name == "a"
    pair.wire.run(lambda: pair.a.is_finished, max_time=8000)
    assert pair.a.error == errno.ETIMEDOUT
    assert pair.clock.now - established == pytest.approx(7200 + 9 * 75, abs=0.1)
    assert pair.counters.TCPKeepAlive == 9


# Counters and state names.

def test_state_ss_names():
    assert State.ESTABLISHED.ss_name == "ESTAB"
    assert State.SYN_RECEIVED.ss_name == "SYN-RECV"
    assert State.CLOSED.ss_name == "CLOSE"
    assert State.TIME_WAIT.ss_name == "TIME-WAIT"
    assert len({state.ss_name for state in State}) == len(State)


# Passive open corner cases.

def test_retransmitted_syn_gets_synack_again():
    pair = Pair()
    pair.wire.filter = lambda name, seg: name == "a"
    pair.a.connect()
    syn = pair.wire.sent_by("a")[0]
    pair.wire.run(lambda: pair.b is not None, max_time=1)
    assert pair.b.state is State.SYN_RECEIVED

    pair.b.on_segment(syn)
    synacks = [seg for seg in pair.wire.sent_by("b") if seg.flags == header.SYN | header.ACK]
    assert len(synacks) == 2
    assert synacks[0].seq == synacks[1].seq
    assert pair.b.state is State.SYN_RECEIVED


def test_synack_retries_then_passive_side_closes():
    pair = Pair()
    pair.wire.filter = lambda name, seg: name == "a" and seg.flags == header.SYN and not pair.wire.sent_by("b")
    pair.a.connect()
    pair.wire.run(lambda: pair.b is not None, max_time=1)
    pair.wire.run(lambda: pair.b.is_finished, max_time=200)
    synacks = [seg for seg in pair.wire.sent_by("b") if seg.flags == header.SYN | header.ACK]
    assert len(synacks) == 6
    assert pair.b.state is State.CLOSED
    assert pair.b.error == 0
    assert not pair.b.established_once


def test_out_of_window_rst_ignored():
    pair = Pair()
    pair.open()
    last = pair.wire.sent_by("b")[-1]
    before = len(pair.wire.sent_by("a"))
    pair.a.on_segment(header.TcpRepr(PORT_B, PORT_A, seq=(last.seq + 50_000_000) & 0xFFFFFFFF, ack=0,
                                     flags=header.RST, window=0))
    assert pair.a.state is State.ESTABLISHED
    assert len(pair.wire.sent_by("a")) == before


def test_recv_peek_keeps_data():
    pair = Pair()
    pair.open()
    pair.a.send(b"hello world")
    pair.wire.run(lambda: pair.b.readable_bytes == 11, max_time=5)
    assert pair.b.recv(5, peek=True) == b"hello"
    assert pair.b.readable_bytes == 11
    assert pair.b.recv(5) == b"hello"
    assert pair.b.recv(100) == b" world"
    assert pair.b.recv(100) == b""


def test_send_refused_after_shutdown_and_buffer_limit():
    pair = Pair(client_config=TcpConfig(sndbuf=10_000, sndbuf_auto=False), server_config=TcpConfig(rcvbuf=4096))
    pair.open()
    assert pair.a.send(b"x" * 50_000) == 10_000
    assert pair.a.send(b"y") == 0
    assert pair.a.send_space == 0
    assert pair.a.send_queue_bytes == 10_000
    pair.a.shutdown_write()
    assert not pair.a.can_send
    assert pair.a.send(b"z") == 0


def test_zero_window_long_stall_survives():
    pair = Pair(client_config=TcpConfig(sndbuf=262144, sndbuf_auto=False), server_config=TcpConfig(rcvbuf=30_000))
    pair.open()
    data = payload(200_000)
    assert pair.a.send(data) == len(data)
    pair.wire.run(max_time=2000)
    assert pair.a.state is State.ESTABLISHED
    assert pair.a.error == 0
    assert pair.counters.TCPAbortOnTimeout == 0

    received = bytearray()

    def app():
        received.extend(pair.b.recv(100_000))

    app()
    pair.wire.run(lambda: len(received) == len(data), max_time=600, app=app)
    assert bytes(received) == data


# Options, loss recovery and socket-level knobs added for full conformance.

@pytest.mark.parametrize("algorithm", ["cubic", "reno"])
@pytest.mark.parametrize("seed", [3, 4])
def test_transfer_under_loss_with_each_congestion_control(algorithm, seed):
    config = TcpConfig(congestion=algorithm)
    pair = Pair(seed=seed, loss=0.05, reorder=0.2, duplicate=0.01, client_config=config, server_config=config)
    pair.open()
    data = payload(300_000, seed)
    assert transfer(pair, pair.a, pair.b, data) == data
    assert pair.a.congestion_control == algorithm


def test_timestamps_and_sack_negotiated():
    pair = Pair()
    pair.open()
    syn, synack = pair.wire.sent_by("a")[0], pair.wire.sent_by("b")[0]
    assert syn.timestamp is not None and syn.sack_permitted
    assert synack.timestamp[1] == syn.timestamp[0]
    assert synack.sack_permitted
    info = pair.a.info()
    assert info["options"] & 0b111 == 0b111


def test_timestamps_off_when_one_side_disables():
    pair = Pair(server_config=TcpConfig(timestamps=False, sack=False))
    pair.open()
    synack = pair.wire.sent_by("b")[0]
    assert synack.timestamp is None
    assert not synack.sack_permitted
    assert pair.a.info()["options"] & 0b11 == 0


def test_sack_blocks_describe_out_of_order_data():
    pair = Pair()
    pair.open()
    b = pair.b
    seq = pair.a._snd_wire(pair.a._snd_nxt)
    ack = b._snd_wire(b._snd_nxt)
    b.on_segment(header.TcpRepr(src_port=PORT_A, dst_port=PORT_B, seq=(seq + 100) & 0xFFFFFFFF, ack=ack,
                                flags=header.ACK, window=1000, payload=b"x" * 50,
                                timestamp=(pair.a._tsval(), 0)))
    reply = pair.wire.sent_by("b")[-1]
    assert reply.sack_blocks == (((seq + 100) & 0xFFFFFFFF, (seq + 150) & 0xFFFFFFFF),)


def test_receive_buffer_grows_for_fast_reader():
    pair = Pair()
    pair.open()
    before = pair.b._config.rcvbuf
    transfer(pair, pair.a, pair.b, payload(2_000_000))
    assert pair.b._config.rcvbuf > before


def test_receive_buffer_fixed_without_autotuning():
    config = TcpConfig(rcvbuf_auto=False)
    pair = Pair(server_config=config)
    pair.open()
    transfer(pair, pair.a, pair.b, payload(500_000))
    assert pair.b._config.rcvbuf == config.rcvbuf


# Send buffer auto-tuning and slow start. Linux 6.18 reports 46080 bytes from
# getsockopt(SO_SNDBUF) right after connect() with CUBIC and an MSS up to 1536.
LINUX_SNDBUF_AFTER_CONNECT = 46080


def test_send_buffer_sized_at_handshake():
    pair = Pair()
    assert pair.a.sndbuf == 16384
    pair.open()
    assert pair.a.sndbuf == LINUX_SNDBUF_AFTER_CONNECT
    assert pair.b.sndbuf == LINUX_SNDBUF_AFTER_CONNECT


def test_send_buffer_grows_with_cwnd_up_to_max():
    config = TcpConfig(sndbuf_max=300_000)
    pair = Pair(client_config=config)
    pair.open()
    sizes = []
    data = payload(3_000_000)
    received = bytearray()
    position = 0

    def app():
        nonlocal position
        position += pair.a.send(memoryview(data)[position:])
        sizes.append(pair.a.sndbuf)
        received.extend(pair.b.recv(1 << 20))

    app()
    pair.wire.run(lambda: len(received) == len(data), max_time=600, app=app)
    assert bytes(received) == data
    assert sizes == sorted(sizes)
    assert max(sizes) == 300_000
    assert pair.a.sndbuf == 300_000


def test_send_buffer_fixed_when_application_sets_it():
    config = TcpConfig(sndbuf=20_000, sndbuf_auto=False)
    pair = Pair(client_config=config)
    pair.open()
    assert pair.a.sndbuf == 20_000
    data = payload(1_000_000)
    assert transfer(pair, pair.a, pair.b, data) == data
    assert pair.a.sndbuf == 20_000


def test_send_buffer_growth_notifies_waiting_writer():
    # (sndbuf, send_space) at each notification of the client's socket.
    seen = []
    pair = Pair(client_notify=lambda: seen.append((pair.a.sndbuf, pair.a.send_space)))
    pair.open()
    data = payload(2_000_000)
    queued = pair.a.send(data)
    assert queued == LINUX_SNDBUF_AFTER_CONNECT
    assert pair.a.send_space == 0

    # No reader on the client side: only the notifications show the writer the new space.
    seen.clear()
    pair.wire.run(lambda: pair.a.sndbuf > LINUX_SNDBUF_AFTER_CONNECT, max_time=30)
    assert pair.a.sndbuf > LINUX_SNDBUF_AFTER_CONNECT
    assert seen[-1] == (pair.a.sndbuf, pair.a.send_space)
    assert seen[-1][1] > 0


def test_send_buffer_quiet_connection_unchanged():
    pair = Pair()
    pair.open()
    # One small request and its reply a minute, for an hour: the writer never waits.
    for _ in range(60):
        assert pair.a.send(b"ping") == 4
        pair.wire.run(lambda: pair.b.readable_bytes == 4, max_time=1)
        assert pair.b.recv(100) == b"ping"
        assert pair.b.send(b"pong") == 4
        pair.wire.run(lambda: pair.a.readable_bytes == 4, max_time=1)
        assert pair.a.recv(100) == b"pong"
        pair.wire.run(max_time=60)
    assert pair.a.sndbuf == LINUX_SNDBUF_AFTER_CONNECT
    assert pair.b.sndbuf == LINUX_SNDBUF_AFTER_CONNECT
    assert pair.a.send_queue_bytes == 0


def test_slow_start_grows_by_whole_gso_ack():
    pair = Pair()
    pair.open()
    pair.a.gso_max_size = 65536
    initial = pair.a.cwnd
    assert initial == 10 * pair.a.snd_mss
    pair.a.send(payload(1_000_000))
    first = pair.wire.sent_by("a")[-1]
    assert len(first.payload) == initial      # one GSO segment carries the initial window

    # The receiver acknowledges those 10 segments with one ACK; cwnd grows by all
    # of them, where RFC 3465 with L=2 would grow it by 2 segments.
    pair.wire.run(lambda: pair.a.cwnd != initial, max_time=1)
    assert pair.a.cwnd == 2 * initial


def test_user_timeout_gives_etimedout():
    pair = Pair(client_config=TcpConfig(user_timeout=2.0))
    pair.open()
    pair.wire.loss = 1.0
    pair.a.send(b"lost forever")
    start = pair.clock.now
    pair.wire.run(lambda: pair.a.state is State.CLOSED, max_time=60)
    assert pair.a.error == errno.ETIMEDOUT
    assert pair.clock.now - start <= 2.5


def test_cork_holds_until_uncorked():
    pair = Pair(client_config=TcpConfig(cork=True))
    pair.open()
    sent_before = len(pair.wire.sent_by("a"))
    pair.a.send(b"small")
    assert len(pair.wire.sent_by("a")) == sent_before
    pair.a.set_option("cork", False)
    assert pair.wire.sent_by("a")[-1].payload == b"small"


def test_paws_drops_old_timestamp():
    pair = Pair()
    pair.open()
    b = pair.b
    seq = pair.a._snd_wire(pair.a._snd_nxt)
    ack = b._snd_wire(b._snd_nxt)
    old = (b._ts_recent - 10) & 0xFFFFFFFF
    b.on_segment(header.TcpRepr(src_port=PORT_A, dst_port=PORT_B, seq=seq, ack=ack, flags=header.ACK,
                                window=1000, payload=b"stale", timestamp=(old, 0)))
    assert b.readable_bytes == 0
    assert pair.counters.PAWSEstab == 1


def _ack_from_b(pair: Pair, ack_offset: int, tsecr: int, sack=()) -> header.TcpRepr:
    """Build an ACK from b to a for a's send offset ``ack_offset``, echoing ``tsecr``."""
    a = pair.a
    b = pair.b
    blocks = tuple((a._snd_wire(left), a._snd_wire(right)) for left, right in sack)
    return header.TcpRepr(src_port=PORT_B, dst_port=PORT_A, seq=b._snd_wire(b._snd_max), ack=a._snd_wire(ack_offset),
                          flags=header.ACK, window=65535 >> b._rcv_wscale, timestamp=(b._tsval(), tsecr),
                          sack_blocks=blocks)


def test_spurious_recovery_undone_by_timestamp():
    """RFC 3522: the ACK of a retransmitted segment echoes the original's TSval, so the segment was
    only reordered: cwnd and ssthresh go back to their values before the recovery."""
    pair = Pair()
    pair.open()
    pair.wire.filter = lambda name, seg: False      # the test delivers every segment itself
    a = pair.a
    a.set_option("nodelay", True)
    a.send(payload(5 * a.snd_mss))
    sent = [seg for seg in pair.wire.sent_by("a") if seg.payload]
    assert len(sent) == 5
    original_tsval = sent[0].timestamp[0]
    cwnd_before = a.cwnd
    una = a._snd_una
    mss = a.snd_mss

    pair.clock.now += 0.05
    for count in range(2, 5):
        a.on_segment(_ack_from_b(pair, una, original_tsval, sack=[(una + mss, una + count * mss)]))
    assert pair.counters.TCPFastRetrans == 1
    assert a.cwnd < cwnd_before

    a.on_segment(_ack_from_b(pair, una + 5 * mss, original_tsval))
    assert pair.counters.TCPFullUndo == 1
    assert a.cwnd >= cwnd_before


def test_spurious_recovery_undone_by_dsack():
    """RFC 3708: once every retransmission of a recovery comes back as a D-SACK, the recovery is undone."""
    pair = Pair(client_config=TcpConfig(timestamps=False))
    pair.open()
    pair.wire.filter = lambda name, seg: False
    a = pair.a
    a.set_option("nodelay", True)
    a.send(payload(5 * a.snd_mss))
    cwnd_before = a.cwnd
    una = a._snd_una
    mss = a.snd_mss

    for count in range(2, 5):
        ack = _ack_from_b(pair, una, 0, sack=[(una + mss, una + count * mss)])
        a.on_segment(dataclasses.replace(ack, timestamp=None))
    retransmitted = pair.counters.RetransSegs
    assert retransmitted >= 1

    ack = _ack_from_b(pair, una + 5 * mss, 0, sack=[(una, una + mss * retransmitted)])
    a.on_segment(dataclasses.replace(ack, timestamp=None))
    assert pair.counters.TCPDSACKUndo == 1
    assert a.cwnd >= cwnd_before


def test_keepalive_fires_at_a_deadline_that_rounds_down():
    """At the deadline last + keepidle, the idle time computed as now - last
    can round below keepidle (1060.015 - 1000.015 = 59.99999999999989); the
    timer must probe then instead of re-arming at the same time."""
    pair = Pair(client_config=TcpConfig(keepalive=True, keepidle=60.0))
    pair.open()
    conn = pair.a
    conn._last_received = 1000.015
    deadline = conn._last_received + 60.0
    conn._on_keepalive_timeout(deadline)
    assert pair.counters.TCPKeepAlive == 1
    assert conn._keepalive_deadline == deadline + conn._config.keepintvl
