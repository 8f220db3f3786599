"""SACK state of a connection (RFC 2018, RFC 6675).

Positions are the connection's unbounded sequence offsets, so they compare
as plain integers.
"""

import bisect


class Scoreboard:
    """Ranges of sent data that the peer reported in SACK blocks, sorted and merged.

    The sender uses it to retransmit only the holes between them (RFC 6675)
    and to count the data still in the network (the pipe).
    """

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._starts)

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends))

    @property
    def highest(self) -> int:
        """End of the highest SACKed range, or 0 when there is none."""
        return self._ends[-1] if self._ends else 0

    def add(self, start: int, end: int) -> bool:
        """Record the range [start, end); return whether it covered any byte not yet recorded."""
        if end <= start:
            return False
        first = bisect.bisect_left(self._ends, start)
        last = bisect.bisect_right(self._starts, end)
        if first < last and self._starts[first] <= start and end <= self._ends[first]:
            return False
        if first < last:
            start = min(start, self._starts[first])
            end = max(end, self._ends[last - 1])
        self._starts[first:last] = [start]
        self._ends[first:last] = [end]
        return True

    def forget_below(self, offset: int) -> None:
        """Drop what SND.UNA has passed."""
        while self._starts and self._ends[0] <= offset:
            del self._starts[0], self._ends[0]
        if self._starts and self._starts[0] < offset:
            self._starts[0] = offset

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()

    def sacked_bytes(self) -> int:
        return sum(end - start for start, end in zip(self._starts, self._ends))

    def sacked_end(self, offset: int) -> int | None:
        """Return the end of the SACKed range containing ``offset``, or None."""
        index = bisect.bisect_right(self._starts, offset) - 1
        if index >= 0 and offset < self._ends[index]:
            return self._ends[index]
        return None

    def next_sacked_start(self, offset: int) -> int | None:
        """Return the start of the first SACKed range beginning after ``offset``, or None."""
        index = bisect.bisect_right(self._starts, offset)
        return self._starts[index] if index < len(self._starts) else None

    def sacked_above(self, offset: int) -> int:
        """Return how many SACKed bytes lie above ``offset``."""
        index = bisect.bisect_right(self._ends, offset)
        total = sum(end - start for start, end in zip(self._starts[index:], self._ends[index:]))
        if index < len(self._starts) and self._starts[index] < offset:
            total -= offset - self._starts[index]
        return total

    def holes(self, start: int) -> list[tuple[int, int]]:
        """Return the unSACKed ranges from ``start`` up to the highest SACKed byte."""
        holes = []
        position = start
        for range_start, range_end in zip(self._starts, self._ends):
            if range_end <= position:
                continue
            if range_start > position:
                holes.append((position, range_start))
            position = max(position, range_end)
        return holes


class ReceivedBlocks:
    """Out-of-order ranges the receiver reports in SACK blocks, most recent first (RFC 2018 section 4)."""

    def __init__(self) -> None:
        self._recent: list[int] = []    # offsets of recently received out-of-order segments

    def note(self, offset: int) -> None:
        """Record that out-of-order data arrived at ``offset``."""
        if offset in self._recent:
            self._recent.remove(offset)
        self._recent.insert(0, offset)
        del self._recent[8:]

    def blocks(self, ranges: list[tuple[int, int]], rcv_nxt: int, limit: int) -> list[tuple[int, int]]:
        """Return up to ``limit`` of the stored out-of-order ``ranges``, the most recently changed first."""
        chosen: list[tuple[int, int]] = []
        for offset in self._recent:
            for start, end in ranges:
                if start <= offset < end and (start, end) not in chosen and start > rcv_nxt:
                    chosen.append((start, end))
        for start, end in reversed(ranges):
            if (start, end) not in chosen and start > rcv_nxt:
                chosen.append((start, end))
        return chosen[:limit]
