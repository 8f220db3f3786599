"""NewReno congestion control (RFC 5681 with the RFC 6582 fast recovery)."""

# RFC 6928 initial window of 10 segments, as Linux uses.
INITIAL_WINDOW_SEGMENTS = 10


class NewReno:
    """Congestion window and slow start threshold of one connection, in bytes.

    Sequence numbers passed in are the connection's unbounded offsets, so they
    compare as plain integers. The connection calls ``on_ack`` for every ACK
    that advances SND.UNA, ``on_duplicate_ack`` for each duplicate ACK and
    ``on_timeout`` on a retransmission timeout. ``on_duplicate_ack`` and
    ``on_ack`` return whether the first unacknowledged segment must be
    retransmitted now.
    """

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = INITIAL_WINDOW_SEGMENTS * mss
        self.ssthresh = 1 << 30
        self.duplicate_acks = 0
        self.in_recovery = False
        self.recover = 0
        self._avoidance_bytes = 0
        self._partial_acks = 0

    def on_ack(self, acked: int, snd_una: int, flight: int) -> bool:
        """Grow or deflate the window for ``acked`` new bytes; ``snd_una`` is after the ACK."""
        self.duplicate_acks = 0
        if self.in_recovery:
            if snd_una >= self.recover:
                # RFC 6582 section 3.2 step 3, full acknowledgment: deflate the window.
                self.in_recovery = False
                self.cwnd = max(min(self.ssthresh, flight + self.mss), self.mss)
                return False
            # Partial acknowledgment (step 4): retransmit the next hole, deflate by
            # the amount acknowledged and add back one segment.
            self.cwnd = max(self.cwnd - acked, 0)
            if acked >= self.mss:
                self.cwnd += self.mss
            self._partial_acks += 1
            return True

        if self.cwnd < self.ssthresh:
            # RFC 5681 section 3.1 slow start, with RFC 3465 byte counting limited to 2 segments.
            self.cwnd += min(acked, 2 * self.mss)
        else:
            # Congestion avoidance: one segment per window of acknowledged bytes.
            self._avoidance_bytes += acked
            if self._avoidance_bytes >= self.cwnd:
                self._avoidance_bytes -= self.cwnd
                self.cwnd += self.mss
        return False

    def on_duplicate_ack(self, snd_una: int, snd_max: int, flight: int) -> bool:
        """Count a duplicate ACK; on the third, enter fast recovery (RFC 6582 section 3.2 step 2)."""
        if self.in_recovery:
            # Each further duplicate ACK means a segment has left the network.
            self.cwnd += self.mss
            return False

        self.duplicate_acks += 1
        if self.duplicate_acks < 3 or snd_una <= self.recover:
            return False
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.ssthresh + 3 * self.mss
        self.recover = snd_max
        self.in_recovery = True
        self._partial_acks = 0
        return True

    def on_timeout(self, snd_max: int, flight: int) -> None:
        """Collapse to one segment after a retransmission timeout (RFC 5681 section 3.1)."""
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self.recover = snd_max
        self.in_recovery = False
        self.duplicate_acks = 0
        self._avoidance_bytes = 0
