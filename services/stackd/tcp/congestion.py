"""Congestion control: NewReno (RFC 5681 with RFC 6582 fast recovery) and CUBIC (RFC 9438).

Both share the loss recovery mechanics; CUBIC changes only how much the
window shrinks on a congestion event and how it grows in congestion
avoidance. ``make_congestion`` builds one by its Linux name.
"""

from collections.abc import Callable

# RFC 6928 initial window of 10 segments, as Linux uses.
INITIAL_WINDOW_SEGMENTS = 10

# Linux's tcp_sndbuf_expand counts one MSS-sized segment as the payload plus
# the TCP headroom and skb_shared_info, rounded up to a power of two, plus the
# sk_buff itself. These sizes reproduce what getsockopt(SO_SNDBUF) returned on
# Linux 6.18 x86-64 right after connect() with CUBIC: 46080 bytes for every
# MSS from 536 to 1536 and 87040 from 1537.
_SEGMENT_HEADROOM = 512
_SEGMENT_METADATA = 256

# The names TCP_CONGESTION accepts, as Linux spells them.
ALGORITHMS = ("cubic", "reno")
DEFAULT_ALGORITHM = "cubic"


class NewReno:
    """Congestion window and slow start threshold of one connection, in bytes.

    Sequence numbers passed in are the connection's unbounded offsets, so they
    compare as plain integers. The connection calls ``on_ack`` for every ACK
    that advances SND.UNA, ``on_duplicate_ack`` for each duplicate ACK and
    ``on_timeout`` on a retransmission timeout. ``on_duplicate_ack`` and
    ``on_ack`` return whether the first unacknowledged segment must be
    retransmitted now.

    With ``sack`` set the connection counts the data in flight itself (the
    pipe of RFC 6675), so recovery neither inflates nor deflates the window:
    it stays at ssthresh until recovery ends.
    """

    name = "reno"

    def __init__(self, mss: int, sack: bool = False) -> None:
        self.mss = mss
        self.sack = sack
        self.dupthresh = 3              # duplicate ACKs that start recovery (RFC 5681 section 3.2)
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
            if not self.sack:
                self.cwnd = max(self.cwnd - acked, 0)
                if acked >= self.mss:
                    self.cwnd += self.mss
            self._partial_acks += 1
            return True

        if self.cwnd < self.ssthresh:
            acked = self._slow_start(acked)
            if not acked:
                return False
        self._grow_in_avoidance(acked)
        return False

    def _slow_start(self, acked: int) -> int:
        """Grow cwnd by the bytes acknowledged, up to ssthresh, and return the bytes left for avoidance.

        This is Linux's tcp_slow_start (net/ipv4/tcp_cong.c), which CUBIC and
        Reno both call, rather than RFC 5681 section 3.1 with RFC 3465's limit
        of 2 segments per ACK. With GSO and GRO one ACK from a Linux peer can
        cover 44 segments, so that limit would grow the window by 2 segments
        per 44 acknowledged. Linux counts whole segments. Counting bytes gives
        the same growth for full segments and less for small ones.
        """
        # NOTE: unlike Linux's tcp_is_cwnd_limited check, the window also grows
        # while the application, not cwnd, limits the data in flight.
        grown = min(self.cwnd + acked, self.ssthresh) - self.cwnd
        self.cwnd += grown
        return acked - grown

    def send_buffer_size(self) -> int:
        """Return the send buffer, in bytes, that Linux's tcp_sndbuf_expand sets for this window.

        That is twice the largest of cwnd, the initial window and the
        reordering allowance (dupthresh + 1), in segments, each counted at
        Linux's memory estimate for one MSS-sized segment. Linux's comment
        gives the reason for twice: CUBIC's fast recovery needs 1.7 windows,
        and the rest covers an application slow to refill the buffer.
        """
        per_segment = (1 << (self.mss + _SEGMENT_HEADROOM - 1).bit_length()) + _SEGMENT_METADATA
        segments = max(self.cwnd // self.mss, INITIAL_WINDOW_SEGMENTS, self.dupthresh + 1)
        return 2 * segments * per_segment

    def _grow_in_avoidance(self, acked: int) -> None:
        """Congestion avoidance (RFC 5681 section 3.1): one segment per window of acknowledged bytes."""
        self._avoidance_bytes += acked
        if self._avoidance_bytes >= self.cwnd:
            self._avoidance_bytes -= self.cwnd
            self.cwnd += self.mss

    def _reduced_ssthresh(self, flight: int) -> int:
        """Return ssthresh after a congestion event: half the flight size (RFC 5681 equation 4)."""
        return max(flight // 2, 2 * self.mss)

    def on_duplicate_ack(self, snd_una: int, snd_max: int, flight: int) -> bool:
        """Count a duplicate ACK; on the third, enter fast recovery (RFC 6582 section 3.2 step 2)."""
        if self.in_recovery:
            # Each further duplicate ACK means a segment has left the network.
            if not self.sack:
                self.cwnd += self.mss
            return False

        self.duplicate_acks += 1
        if self.duplicate_acks < self.dupthresh:
            return False
        return self.enter_recovery(snd_una, snd_max, flight)

    def enter_recovery(self, snd_una: int, snd_max: int, flight: int) -> bool:
        """Start fast recovery unless this loss belongs to the last one; return whether it started."""
        if self.in_recovery or snd_una <= self.recover:
            return False
        self.ssthresh = self._reduced_ssthresh(flight)
        self.cwnd = self.ssthresh if self.sack else self.ssthresh + 3 * self.mss
        self.recover = snd_max
        self.in_recovery = True
        self._partial_acks = 0
        return True

    def on_timeout(self, snd_max: int, flight: int) -> None:
        """Collapse to one segment after a retransmission timeout (RFC 5681 section 3.1)."""
        self.ssthresh = self._reduced_ssthresh(flight)
        self.cwnd = self.mss
        self.recover = snd_max
        self.in_recovery = False
        self.duplicate_acks = 0
        self._avoidance_bytes = 0


# RFC 9438 section 4.1 constants.
_CUBIC_C = 0.4
_CUBIC_BETA = 0.7
_RENO_ALPHA = 3 * (1 - _CUBIC_BETA) / (1 + _CUBIC_BETA)   # RFC 9438 section 4.3


class Cubic(NewReno):
    """CUBIC (RFC 9438): the window follows a cubic function of the time since the last reduction.

    ``clock`` returns monotonic seconds and ``srtt`` the smoothed RTT in
    seconds (None before the first sample). Window arithmetic is in
    segments, as in the RFC, and converted to bytes through ``mss``.
    """

    name = "cubic"

    def __init__(self, mss: int, clock: Callable[[], float], srtt: Callable[[], float | None],
                 sack: bool = False) -> None:
        super().__init__(mss, sack)
        self._clock = clock
        self._srtt = srtt
        self.w_max = 0.0                # segments, before the last reduction
        self._w_last_max = 0.0
        self._k = 0.0                   # seconds until the window is back at w_max
        self._epoch_start: float | None = None
        self._w_est = 0.0               # Reno-friendly window estimate, segments
        self._credit = 0.0              # bytes of growth not yet added to cwnd

    def _reduced_ssthresh(self, flight: int) -> int:
        """Reduce by beta_cubic with fast convergence (RFC 9438 sections 4.6 and 4.7)."""
        segments = self.cwnd / self.mss
        if segments < self._w_last_max:
            self.w_max = segments * (1 + _CUBIC_BETA) / 2
        else:
            self.w_max = segments
        self._w_last_max = segments
        self._epoch_start = None
        return max(int(self.cwnd * _CUBIC_BETA), 2 * self.mss)

    def _grow_in_avoidance(self, acked: int) -> None:
        """Grow towards W_cubic(t + RTT), never slower than Reno would (RFC 9438 sections 4.2 to 4.4)."""
        now = self._clock()
        cwnd = self.cwnd / self.mss
        if self._epoch_start is None:
            self._epoch_start = now
            if cwnd < self.w_max:
                self._k = ((self.w_max - cwnd) / _CUBIC_C) ** (1 / 3)
            else:
                self._k = 0.0
                self.w_max = cwnd
            self._w_est = cwnd

        rtt = self._srtt() or 0.1
        t = now - self._epoch_start
        target = _CUBIC_C * (t + rtt - self._k) ** 3 + self.w_max
        target = min(max(target, cwnd), 1.5 * cwnd)

        segments_acked = acked / self.mss
        self._w_est += _RENO_ALPHA * segments_acked / cwnd
        if self._w_est > target:
            target = self._w_est        # Reno-friendly region
        # Fractions of a byte add up over ACKs, so slow growth is not rounded away.
        self._credit += (target - cwnd) / cwnd * segments_acked * self.mss
        if self._credit >= 1:
            whole = int(self._credit)
            self.cwnd += whole
            self._credit -= whole

    def on_timeout(self, snd_max: int, flight: int) -> None:
        super().on_timeout(snd_max, flight)
        self._epoch_start = None


def make_congestion(name: str, mss: int, clock: Callable[[], float], srtt: Callable[[], float | None],
                    sack: bool = False) -> NewReno:
    """Build the algorithm TCP_CONGESTION names ("cubic" or "reno").

    Raises ValueError for any other name.
    """
    if name == "cubic":
        return Cubic(mss, clock, srtt, sack)
    if name == "reno":
        return NewReno(mss, sack)
    raise ValueError(f"unknown congestion control {name!r}; expected one of {', '.join(ALGORITHMS)}")
