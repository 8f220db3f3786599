"""Out-of-order segment store of the receive side.

Positions are the connection's unbounded sequence offsets, not raw 32-bit
sequence numbers, so they compare as plain integers.
"""

import bisect


class OutOfOrderQueue:
    """Byte ranges received beyond RCV.NXT, kept sorted and merged.

    Overlapping and adjacent ranges are merged on insert, so the queue contains
    one range per run of bytes between holes. The caller trims segments to the
    receive window first, which bounds the memory used here.
    """

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._chunks: list[bytes | bytearray] = []

    def __len__(self) -> int:
        return len(self._starts)

    @property
    def byte_count(self) -> int:
        """Number of bytes stored."""
        return sum(end - start for start, end in zip(self._starts, self._ends))

    def ranges(self) -> list[tuple[int, int]]:
        """Return the stored ranges as (start, end) pairs, end exclusive, in order."""
        return list(zip(self._starts, self._ends))

    def add(self, start: int, data: bytes | memoryview) -> None:
        """Insert ``data`` received at offset ``start``, merging with stored ranges."""
        end = start + len(data)
        first = bisect.bisect_left(self._starts, start)
        if first > 0 and self._ends[first - 1] >= start:
            first -= 1
        last = first
        while last < len(self._starts) and self._starts[last] <= end:
            last += 1

        if first == last:
            self._starts.insert(first, start)
            self._ends.insert(first, end)
            self._chunks.insert(first, bytes(data))
            return

        merged_start = min(start, self._starts[first])
        merged_end = max(end, self._ends[last - 1])
        merged = bytearray(merged_end - merged_start)
        for index in range(first, last):
            offset = self._starts[index] - merged_start
            merged[offset:offset + len(self._chunks[index])] = self._chunks[index]
        merged[start - merged_start:end - merged_start] = data

        self._starts[first:last] = [merged_start]
        self._ends[first:last] = [merged_end]
        self._chunks[first:last] = [merged]

    def pop_from(self, position: int) -> bytes | bytearray | None:
        """Remove and return the bytes that continue the stream at ``position``.

        Ranges wholly before ``position`` are dropped; None means the next byte
        has not arrived.
        """
        while self._starts and self._starts[0] <= position:
            start = self._starts.pop(0)
            end = self._ends.pop(0)
            chunk = self._chunks.pop(0)
            if end > position:
                return chunk[position - start:]
        return None
