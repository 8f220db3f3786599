"""The ARP neighbor cache (RFC 826, with RFC 1122 section 2.3.2.1 timeouts).

The cache is free of I/O. It calls ``send_request`` to transmit a request,
and the callbacks given to ``resolve`` to send queued packets once their
next hop resolves or to report that it never did. It reads time from an
injected clock, and the stack drives ``on_timer``.
"""

import dataclasses
from collections.abc import Callable

from sandnet_stackd.counters import ArpCounters

# Linux's defaults: base_reachable_time is 30 s, and a stale entry is
# confirmed again when used. mcast_solicit sends 3 requests one retrans_time
# (1 s) apart. unres_qlen bounds the packets that wait for one neighbor.
REACHABLE_SECONDS = 30.0
STALE_SECONDS = 60.0
RETRANSMIT_SECONDS = 1.0
MAX_REQUESTS = 3
MAX_QUEUED_PER_NEIGHBOR = 101
MAX_ENTRIES = 1024


@dataclasses.dataclass(slots=True)
class _Entry:
    mac: bytes = b""
    # Time after which a resolved entry must be confirmed again.
    expires: float = 0.0
    # Resolution in progress: requests sent so far, time of the next retry,
    # packets waiting (each with the callback that sends it once resolved).
    requests: int = 0
    next_retry: float = 0.0
    queue: list = dataclasses.field(default_factory=list)


class NeighborCache:
    """IPv4 neighbor resolution for one interface."""

    def __init__(self, clock: Callable[[], float], send_request: Callable[[bytes], None], counters: ArpCounters):
        self._clock = clock
        self._send_request = send_request
        self._counters = counters
        self._entries: dict[bytes, _Entry] = {}

    def lookup(self, ip: bytes) -> bytes | None:
        """Return the MAC for ``ip`` if it is known and fresh enough to use."""
        entry = self._entries.get(ip)
        if entry is None or not entry.mac:
            return None
        if self._clock() > entry.expires + STALE_SECONDS:
            return None
        return entry.mac

    def resolve(self, ip: bytes, send: Callable[[bytes], None],
                on_failure: Callable[[], None] | None = None) -> None:
        """Call ``send(mac)`` now if ``ip`` is known, else once it resolves.

        ``on_failure()`` runs if the resolution gives up, so that the sender
        can report EHOSTUNREACH as Linux does after its ARP retries.

        A stale entry is still used while a fresh request confirms it, as
        Linux does in its STALE and DELAY states.
        """
        now = self._clock()
        entry = self._entries.get(ip)
        if entry is not None and entry.mac and now <= entry.expires + STALE_SECONDS:
            if now > entry.expires and entry.requests == 0:
                entry.requests = 1
                entry.next_retry = now + RETRANSMIT_SECONDS
                self._request(ip)
            send(entry.mac)
            return

        if entry is None:
            if len(self._entries) >= MAX_ENTRIES:
                self._evict()
            entry = self._entries[ip] = _Entry()
        if len(entry.queue) >= MAX_QUEUED_PER_NEIGHBOR:
            self._counters.UnresolvedDiscards += 1
            return
        entry.queue.append((send, on_failure))
        if entry.requests == 0:
            entry.requests = 1
            entry.next_retry = now + RETRANSMIT_SECONDS
            self._request(ip)

    def update(self, ip: bytes, mac: bytes, create: bool) -> None:
        """Record ``ip`` at ``mac`` and flush packets waiting for it.

        RFC 826: a sender already in the cache is updated. A new entry is
        created only when ``create`` is true, because the packet was addressed to us.
        """
        entry = self._entries.get(ip)
        if entry is None:
            if not create:
                return
            if len(self._entries) >= MAX_ENTRIES:
                self._evict()
            entry = self._entries[ip] = _Entry()
        entry.mac = mac
        entry.expires = self._clock() + REACHABLE_SECONDS
        entry.requests = 0
        waiting, entry.queue = entry.queue, []
        for send, _ in waiting:
            send(mac)

    def on_timer(self) -> None:
        """Retry pending resolutions and drop the ones that ran out of retries."""
        now = self._clock()
        for ip, entry in list(self._entries.items()):
            if entry.requests == 0 or now < entry.next_retry:
                continue
            if entry.requests >= MAX_REQUESTS:
                self._counters.ResolutionFailures += 1
                self._counters.UnresolvedDiscards += len(entry.queue)
                failed, entry.queue = entry.queue, []
                for _, on_failure in failed:
                    if on_failure is not None:
                        on_failure()
                entry.requests = 0
                if not entry.mac:
                    del self._entries[ip]
                continue
            entry.requests += 1
            entry.next_retry = now + RETRANSMIT_SECONDS
            self._request(ip)

    def pending(self) -> bool:
        """Check whether any resolution waits for a retry."""
        return any(entry.requests for entry in self._entries.values())

    def entries(self) -> list[tuple[bytes, bytes, float]]:
        """Return (ip, mac, expires) for every resolved entry."""
        return [(ip, e.mac, e.expires) for ip, e in self._entries.items() if e.mac]

    def _request(self, ip: bytes) -> None:
        self._counters.OutRequests += 1
        self._send_request(ip)

    def _evict(self) -> None:
        oldest = min(self._entries, key=lambda ip: self._entries[ip].expires)
        del self._entries[oldest]
