"""Retransmission timeout computation (RFC 6298)."""

# Linux's TCP_RTO_MIN, TCP_TIMEOUT_INIT and TCP_RTO_MAX.
MIN_RTO = 0.2
INITIAL_RTO = 1.0
MAX_RTO = 120.0

# RFC 6298 section 2: alpha = 1/8, beta = 1/4, K = 4.
_ALPHA = 0.125
_BETA = 0.25
_K = 4
_CLOCK_GRANULARITY = 0.001


class RttEstimator:
    """Smoothed round-trip time and the retransmission timeout derived from it.

    Samples must come from segments that were sent once (Karn's rule); the
    caller enforces that. ``backoff`` doubles the timeout after each expiry
    until the next sample.
    """

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar: float = 0.0
        self._base_rto = INITIAL_RTO
        self.backoffs = 0

    @property
    def rto(self) -> float:
        """Current retransmission timeout in seconds, backoff included."""
        return min(self._base_rto * (2 ** self.backoffs), MAX_RTO)

    def sample(self, rtt: float) -> None:
        """Update the estimate with a round-trip time measured in seconds (RFC 6298 section 2)."""
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - rtt)
            self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * rtt
        self._base_rto = min(max(self.srtt + max(_CLOCK_GRANULARITY, _K * self.rttvar), MIN_RTO), MAX_RTO)
        self.backoffs = 0

    def backoff(self) -> None:
        """Double the timeout after an expiry (RFC 6298 section 5.5), up to MAX_RTO."""
        if self._base_rto * (2 ** self.backoffs) < MAX_RTO:
            self.backoffs += 1
