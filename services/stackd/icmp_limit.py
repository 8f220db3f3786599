"""Rate limits for ICMP errors, modelled on Linux's icmp_global_allow() and
the per-destination inet_peer_xrlim_allow() of net/ipv4/icmp.c and net/ipv6/icmp.c."""

from collections.abc import Callable

# net.ipv4.icmp_msgs_per_sec and icmp_msgs_burst: a global budget for every destination.
GLOBAL_PER_SECOND = 1000
GLOBAL_BURST = 50
# net.ipv4.icmp_ratelimit and net.ipv6.icmp.ratelimit (1000 ms), with a burst of
# six messages (XRLIM_BURST_FACTOR in Linux).
PEER_INTERVAL = 1.0
PEER_BURST = 6
# Peers remembered at once; the least recently used is forgotten first.
MAX_PEERS = 4096


class TokenBucket:
    """A token bucket holding at most ``burst`` tokens that refills one token every ``interval`` seconds."""

    def __init__(self, clock: Callable[[], float], interval: float, burst: int):
        self._clock = clock
        self._interval = interval
        self._burst = burst
        self._tokens = float(burst)
        self._last = clock()

    def allow(self) -> bool:
        """Take one token; return False when none is left."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) / self._interval)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class IcmpRateLimiter:
    """The global budget plus one bucket per destination address."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._global = TokenBucket(clock, 1.0 / GLOBAL_PER_SECOND, GLOBAL_BURST)
        self._peers: dict[bytes, TokenBucket] = {}

    def allow(self, destination: bytes) -> bool:
        """Check both budgets for one error message to ``destination``."""
        bucket = self._peers.pop(destination, None)
        if bucket is None:
            if len(self._peers) >= MAX_PEERS:
                del self._peers[next(iter(self._peers))]
            bucket = TokenBucket(self._clock, PEER_INTERVAL, PEER_BURST)
        self._peers[destination] = bucket
        return bucket.allow() and self._global.allow()
