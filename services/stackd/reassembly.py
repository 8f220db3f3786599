"""Reassembly of IPv4 (RFC 791) and IPv6 (RFC 8200 section 4.5) fragments.

The reassembler is free of I/O and reads time from an injected clock. It
follows Linux's rules for both families: an exact duplicate fragment is
ignored, and any other overlap discards the whole datagram, as RFC 5722
requires for IPv6 and Linux also does for IPv4. Memory is bounded: each
fragment is charged its length plus a fixed overhead, and a fragment that
would push the total over the limit is dropped, so a flood of tiny or
never-completed fragments cannot grow the stack without bound.
"""

import dataclasses
from collections.abc import Callable, Hashable

# Linux's net.ipv4.ipfrag_high_thresh and net.ipv6.ip6frag_high_thresh (4 MiB).
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
# Linux's net.ipv4.ipfrag_time (30 s) and net.ipv6.ip6frag_time (60 s).
IPV4_TIMEOUT_SECONDS = 30.0
IPV6_TIMEOUT_SECONDS = 60.0
# Bookkeeping charged per fragment, so that 8-byte fragments still cost memory.
FRAGMENT_OVERHEAD = 256
# A datagram may not exceed this many bytes after reassembly: the IPv4 total
# length or the IPv6 payload length field.
MAX_DATAGRAM = 0xFFFF


class Verdict:
    """The outcome of ``Reassembler.add`` for one fragment, which the caller counts."""

    QUEUED = "queued"
    COMPLETE = "complete"
    DUPLICATE = "duplicate"
    OVERLAP = "overlap"
    TOO_LONG = "too long"
    INCONSISTENT = "inconsistent"
    NO_MEMORY = "no memory"
    DISCARDED = "discarded"


@dataclasses.dataclass(slots=True)
class _Queue:
    created: float
    fragments: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)
    # Total payload length, known once the last fragment (more=False) arrived.
    total: int | None = None
    received: int = 0
    charged: int = 0
    # The first fragment's context (offset 0), quoted in ICMP time exceeded.
    first: object = None
    # Set after an overlap: later fragments of the datagram are dropped too.
    dead: bool = False


class Reassembler:
    """Fragment queues of one address family, keyed by the caller.

    The key is (source, destination, identification, protocol) for IPv4 and
    (source, destination, identification) for IPv6.
    """

    def __init__(self, clock: Callable[[], float], timeout: float, max_bytes: int = DEFAULT_MAX_BYTES):
        self._clock = clock
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._queues: dict[Hashable, _Queue] = {}
        self.memory = 0

    def __len__(self) -> int:
        return len(self._queues)

    def add(self, key: Hashable, offset: int, more: bool, data: bytes, first: object = None
            ) -> tuple[str, bytes | None, object]:
        """Add one fragment; return (verdict, datagram payload or None, first fragment's context).

        ``offset`` is in bytes. ``first`` is stored when ``offset`` is 0 and
        returned with the completed payload, so the caller can rebuild the
        datagram's header from the first fragment.
        """
        end = offset + len(data)
        if end > MAX_DATAGRAM:
            self._discard(key)
            return Verdict.TOO_LONG, None, None

        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(created=self._clock())
        if queue.dead:
            return Verdict.DISCARDED, None, None

        if not more:
            if queue.total is not None and queue.total != end or queue.received and end < self._max_end(queue):
                self._kill(queue)
                return Verdict.INCONSISTENT, None, None
            queue.total = end
        elif queue.total is not None and end > queue.total:
            self._kill(queue)
            return Verdict.INCONSISTENT, None, None

        verdict = self._insert(queue, offset, data)
        if verdict is not Verdict.QUEUED:
            return verdict, None, None
        if offset == 0:
            queue.first = first

        if queue.total is None or queue.received < queue.total:
            return Verdict.QUEUED, None, None
        payload = b"".join(piece for _, piece in queue.fragments)
        first_context = queue.first
        self._discard(key)
        return Verdict.COMPLETE, payload, first_context

    def _insert(self, queue: _Queue, offset: int, data: bytes) -> str:
        end = offset + len(data)
        index = 0
        for index, (other_offset, other) in enumerate(queue.fragments):
            other_end = other_offset + len(other)
            if offset == other_offset and end == other_end:
                return Verdict.DUPLICATE
            if offset < other_end and other_offset < end:
                self._kill(queue)
                return Verdict.OVERLAP
            if end <= other_offset:
                break
        else:
            index = len(queue.fragments)

        charge = len(data) + FRAGMENT_OVERHEAD
        if self.memory + charge > self._max_bytes:
            return Verdict.NO_MEMORY
        queue.fragments.insert(index, (offset, data))
        queue.received += len(data)
        queue.charged += charge
        self.memory += charge
        return Verdict.QUEUED

    @staticmethod
    def _max_end(queue: _Queue) -> int:
        return max((offset + len(data) for offset, data in queue.fragments), default=0)

    def _kill(self, queue: _Queue) -> None:
        """Drop a queue's fragments but keep it until its timeout, so that later fragments are dropped too."""
        queue.dead = True
        queue.first = None
        queue.fragments.clear()
        self.memory -= queue.charged
        queue.charged = 0

    def _discard(self, key: Hashable) -> None:
        queue = self._queues.pop(key, None)
        if queue is not None:
            self.memory -= queue.charged

    def expire(self) -> list[object]:
        """Drop queues older than the timeout; return the first-fragment context of each
        incomplete datagram whose first fragment arrived, for ICMP time exceeded."""
        deadline = self._clock() - self._timeout
        expired = []
        for key, queue in list(self._queues.items()):
            if queue.created > deadline:
                continue
            self._discard(key)
            if not queue.dead and queue.first is not None:
                expired.append(queue.first)
        return expired
