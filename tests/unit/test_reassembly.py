"""Fragment reassembly: order, duplicates, overlaps, limits and timeouts."""

import pytest

from sandnet_stackd.reassembly import FRAGMENT_OVERHEAD, Reassembler, Verdict


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def pieces(data: bytes, size: int):
    return [(offset, offset + size < len(data), data[offset:offset + size]) for offset in range(0, len(data), size)]


@pytest.mark.parametrize("order", [lambda p: p, lambda p: p[::-1], lambda p: p[1:] + p[:1]])
def test_any_order_completes(clock, order):
    data = bytes(range(256)) * 10
    reassembler = Reassembler(clock, 30)
    results = [reassembler.add("key", offset, more, chunk, "first" if offset == 0 else None)
               for offset, more, chunk in order(pieces(data, 512))]

    assert [verdict for verdict, _, _ in results[:-1]] == [Verdict.QUEUED] * (len(results) - 1)
    assert results[-1] == (Verdict.COMPLETE, data, "first")
    assert len(reassembler) == 0
    assert reassembler.memory == 0


def test_exact_duplicate_is_ignored(clock):
    reassembler = Reassembler(clock, 30)
    reassembler.add("key", 0, True, bytes(8))

    assert reassembler.add("key", 0, True, bytes(8))[0] == Verdict.DUPLICATE
    assert reassembler.add("key", 8, False, bytes(8))[0] == Verdict.COMPLETE


def test_overlap_discards_the_datagram_and_later_fragments(clock):
    reassembler = Reassembler(clock, 30)
    reassembler.add("key", 0, True, bytes(16))

    assert reassembler.add("key", 8, True, bytes(16))[0] == Verdict.OVERLAP
    assert reassembler.add("key", 16, False, bytes(8))[0] == Verdict.DISCARDED
    assert reassembler.memory == 0


def test_datagram_past_65535_bytes_is_rejected(clock):
    reassembler = Reassembler(clock, 30)
    assert reassembler.add("key", 65528, False, bytes(16))[0] == Verdict.TOO_LONG


def test_second_last_fragment_with_other_end_is_inconsistent(clock):
    reassembler = Reassembler(clock, 30)
    reassembler.add("key", 16, False, bytes(8))

    assert reassembler.add("key", 8, False, bytes(8))[0] == Verdict.INCONSISTENT


def test_fragment_past_known_end_is_inconsistent(clock):
    reassembler = Reassembler(clock, 30)
    reassembler.add("key", 8, False, bytes(8))

    assert reassembler.add("key", 16, True, bytes(8))[0] == Verdict.INCONSISTENT


def test_memory_bound_stops_a_flood(clock):
    reassembler = Reassembler(clock, 30, max_bytes=10 * (8 + FRAGMENT_OVERHEAD))
    verdicts = [reassembler.add(("flood", i), 8, True, bytes(8))[0] for i in range(50)]

    assert verdicts.count(Verdict.QUEUED) == 10
    assert verdicts.count(Verdict.NO_MEMORY) == 40
    assert reassembler.memory <= 10 * (8 + FRAGMENT_OVERHEAD)


def test_timeout_returns_first_fragment_context(clock):
    reassembler = Reassembler(clock, 30)
    reassembler.add("with first", 0, True, bytes(8), "context")
    reassembler.add("without first", 8, True, bytes(8))

    clock.now += 29
    assert reassembler.expire() == []
    clock.now += 2
    assert reassembler.expire() == ["context"]
    assert len(reassembler) == 0
    assert reassembler.memory == 0
