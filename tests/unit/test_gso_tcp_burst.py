"""TCP segment sizing under GSO: with ``gso_max_size`` set, a connection hands
``output`` segments of many MSS, and the peer accepts them as single segments."""

import collections
import hashlib
import random

from sandnet_stackd.header import tcp as header
from sandnet_stackd.tcp import TcpConfig, TcpConnection, TcpCounters

IP_A = bytes([10, 0, 0, 1])
IP_B = bytes([10, 0, 0, 2])
MSS = 1460
GSO_MAX_SIZE = 65535 - 60 - 60


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def transfer(data: bytes, gso_max_size: int) -> tuple[bytes, list[int], int]:
    """Send ``data`` from A to B over a lossless in-memory link.

    Return what B read, A's payload sizes, and A's send MSS (the MSS less
    the TCP options each segment carries, such as timestamps).
    """
    clock = Clock()
    queue: collections.deque = collections.deque()
    sizes: list[int] = []

    def output_for(name: str):
        def output(seg: header.TcpRepr) -> None:
            if name == "a" and seg.payload:
                sizes.append(len(seg.payload))
            src, dst = (IP_A, IP_B) if name == "a" else (IP_B, IP_A)
            queue.append((name, header.build(seg, src, dst)))
        return output

    config = TcpConfig(rcvbuf=4 << 20, sndbuf=4 << 20)
    a = TcpConnection(local_ip=IP_A, local_port=40000, remote_ip=IP_B, remote_port=80, iss=1, mss=MSS,
                      config=config, counters=TcpCounters(), clock=clock, output=output_for("a"), notify=lambda: None)
    b = TcpConnection(local_ip=IP_B, local_port=80, remote_ip=IP_A, remote_port=40000, iss=2, mss=MSS,
                      config=config, counters=TcpCounters(), clock=clock, output=output_for("b"), notify=lambda: None)
    a.gso_max_size = gso_max_size

    a.connect()
    _, syn = queue.popleft()
    b.accept_syn(header.parse(syn, IP_A, IP_B))

    received = bytearray()
    offset = 0
    for _ in range(100_000):
        if offset < len(data) and a.send_space:
            offset += a.send(data[offset:offset + (1 << 20)])
        if queue:
            sender, raw = queue.popleft()
            receiver, src, dst = (b, IP_A, IP_B) if sender == "a" else (a, IP_B, IP_A)
            receiver.on_segment(header.parse(raw, src, dst))
        else:
            clock.now += 0.05
            for connection in (a, b):
                deadline = connection.next_deadline()
                if deadline is not None and deadline <= clock.now:
                    connection.on_timer()
        received += b.recv(1 << 20)
        if len(received) == len(data):
            break
    return bytes(received), sizes, a.snd_mss


def test_burst_segments_carry_many_mss():
    data = random.Random(3).randbytes(3_000_000)
    received, sizes, mss = transfer(data, GSO_MAX_SIZE)

    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    assert max(sizes) > mss
    assert max(sizes) <= GSO_MAX_SIZE
    assert len(sizes) < len(data) // mss // 4


def test_burst_segments_are_whole_mss_multiples():
    data = random.Random(4).randbytes(1_000_003)
    _, sizes, mss = transfer(data, GSO_MAX_SIZE)

    # Only a segment that ends the queued data may end short of an MSS multiple.
    middle = [size for size in sizes[:-1] if size > mss]
    assert middle
    assert all(size % mss == 0 for size in middle)


def test_no_gso_keeps_segments_at_mss():
    data = random.Random(5).randbytes(500_000)
    received, sizes, mss = transfer(data, 0)

    assert received == data
    assert max(sizes) == mss
    assert mss <= MSS
