"""RACK-TLP loss detection (RFC 8985), in a simplified form.

RACK marks a segment lost once a segment sent after it was delivered and
more than one RTT plus a reordering window has passed since it was sent.
TLP sends a probe when the ACKs stop, so that a loss at the tail of a flight
is found by RACK rather than by the retransmission timeout.

Positions are the connection's unbounded sequence offsets.
"""

import bisect
import dataclasses


@dataclasses.dataclass
class Transmission:
    """The latest transmission of one sent segment [start, end)."""

    end: int
    time: float
    retransmitted: bool = False
    delivered: bool = False
    lost: bool = False


class Rack:
    """The transmission log of one connection and the RACK state derived from it."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._segments: dict[int, Transmission] = {}
        self.xmit_time: float | None = None     # RACK.xmit_ts: send time of the latest delivered segment
        self.rtt = 0.0                          # RACK.rtt: RTT measured on that segment
        self.min_rtt: float | None = None

    def on_transmit(self, start: int, end: int, now: float, retransmit: bool) -> None:
        """Record that [start, end) was sent at ``now``."""
        segment = self._segments.get(start)
        if segment is None:
            bisect.insort(self._starts, start)
            self._segments[start] = Transmission(end, now, retransmit)
            return
        segment.end = max(segment.end, end)
        segment.time = now
        segment.retransmitted = segment.retransmitted or retransmit
        segment.delivered = False
        segment.lost = False

    def on_ack(self, snd_una: int, sacked_end, highest_sacked: int, now: float) -> None:
        """Update RACK from an ACK: ``snd_una`` after it, and ``sacked_end(offset)`` and the
        highest SACKed offset from the scoreboard."""
        delivered = []
        while self._starts and self._segments[self._starts[0]].end <= snd_una:
            segment = self._segments.pop(self._starts.pop(0))
            if not segment.delivered:
                delivered.append(segment)
        for start in self._starts:
            if start >= highest_sacked:
                break
            segment = self._segments[start]
            if segment.delivered:
                continue
            end = sacked_end(start)
            if end is not None and end >= segment.end:
                segment.delivered = True
                delivered.append(segment)

        for segment in delivered:
            rtt = now - segment.time
            if segment.retransmitted and self.min_rtt is not None and rtt < self.min_rtt:
                continue        # RFC 8985 section 6.2: likely the ACK of the original transmission
            self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)
            if self.xmit_time is None or segment.time >= self.xmit_time:
                self.xmit_time = segment.time
                self.rtt = rtt

    def detect_losses(self, now: float, reorder_window: float) -> tuple[list[tuple[int, int]], float | None]:
        """Return the segments newly found lost and when to check again (RFC 8985 section 6.2 step 5)."""
        lost: list[tuple[int, int]] = []
        next_check = None
        if self.xmit_time is None:
            return lost, None
        for start in self._starts:
            segment = self._segments[start]
            if segment.time >= self.xmit_time and not segment.retransmitted:
                # Segments sent later follow in sequence order, and a retransmitted one
                # was sent later than its first transmission, so none further can be lost.
                break
            if segment.delivered or segment.lost or segment.time >= self.xmit_time:
                continue
            deadline = segment.time + self.rtt + reorder_window
            if now >= deadline:
                segment.lost = True
                lost.append((start, segment.end))
            elif next_check is None or deadline < next_check:
                next_check = deadline
        return lost, next_check

    def last_outstanding(self, snd_una: int) -> tuple[int, int] | None:
        """Return the highest sent segment not yet delivered, for a loss probe."""
        for start in reversed(self._starts):
            segment = self._segments[start]
            if not segment.delivered and segment.end > snd_una:
                return max(start, snd_una), segment.end
        return None

    def clear(self) -> None:
        self._starts.clear()
        self._segments.clear()
