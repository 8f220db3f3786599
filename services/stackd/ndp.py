"""The IPv6 neighbor cache with Neighbor Unreachability Detection (RFC 4861 section 7.3).

The cache is free of I/O like the ARP cache. It calls ``send_solicitation``
to transmit and reads time from an injected clock, and the stack drives
``on_timer``. Entries move through the states of RFC 4861 section 7.3.2:
INCOMPLETE, REACHABLE, STALE, DELAY and PROBE.
"""

import dataclasses
import enum
from collections.abc import Callable

from sandnet_stackd.counters import Ndp6Counters

# RFC 4861 section 10 constants, which are also Linux's defaults.
REACHABLE_SECONDS = 30.0
RETRANSMIT_SECONDS = 1.0
DELAY_FIRST_PROBE_SECONDS = 5.0
MAX_MULTICAST_SOLICIT = 3
MAX_UNICAST_SOLICIT = 3
# Linux's unres_qlen and gc_thresh3 bounds.
MAX_QUEUED_PER_NEIGHBOR = 101
MAX_ENTRIES = 1024


class NudState(enum.Enum):
    INCOMPLETE = "INCOMPLETE"
    REACHABLE = "REACHABLE"
    STALE = "STALE"
    DELAY = "DELAY"
    PROBE = "PROBE"


@dataclasses.dataclass(slots=True)
class _Entry:
    state: NudState
    mac: bytes = b""
    # When the current state ends: REACHABLE turns STALE, DELAY turns PROBE,
    # INCOMPLETE and PROBE send their next solicitation.
    deadline: float = 0.0
    solicitations: int = 0
    queue: list = dataclasses.field(default_factory=list)


class NeighborCache6:
    """IPv6 neighbor resolution for one interface.

    ``send_solicitation(target, mac)`` sends a Neighbor Solicitation for
    ``target``: multicast to its solicited-node group when ``mac`` is empty,
    unicast to ``mac`` otherwise (a NUD probe).
    """

    def __init__(self, clock: Callable[[], float], send_solicitation: Callable[[bytes, bytes], None],
                 counters: Ndp6Counters):
        self._clock = clock
        self._send_solicitation = send_solicitation
        self._counters = counters
        self._entries: dict[bytes, _Entry] = {}

    def state(self, ip: bytes) -> NudState | None:
        """Return the NUD state of ``ip``, or None without an entry."""
        entry = self._entries.get(ip)
        return entry.state if entry else None

    def lookup(self, ip: bytes) -> bytes | None:
        """Return the MAC for ``ip`` if one is known, in any state but INCOMPLETE."""
        entry = self._entries.get(ip)
        return entry.mac if entry is not None and entry.mac else None

    def resolve(self, ip: bytes, send: Callable[[bytes], None],
                on_failure: Callable[[], None] | None = None) -> None:
        """Call ``send(mac)`` now if ``ip`` has a link-layer address, else once it resolves.

        ``on_failure()`` runs instead if the resolution gives up. Using a
        STALE entry starts the DELAY state, after which NUD probes the
        neighbor unless traffic confirms it first (RFC 4861 section 7.3.3).
        """
        now = self._clock()
        entry = self._entries.get(ip)
        if entry is not None and entry.mac:
            if entry.state is NudState.STALE:
                entry.state = NudState.DELAY
                entry.deadline = now + DELAY_FIRST_PROBE_SECONDS
            send(entry.mac)
            return

        if entry is None:
            if len(self._entries) >= MAX_ENTRIES:
                self._evict()
            entry = self._entries[ip] = _Entry(NudState.INCOMPLETE, solicitations=1,
                                               deadline=now + RETRANSMIT_SECONDS)
            self._solicit(ip, b"")
        if len(entry.queue) >= MAX_QUEUED_PER_NEIGHBOR:
            self._counters.UnresolvedDiscards += 1
            return
        entry.queue.append((send, on_failure))

    def on_solicitation(self, ip: bytes, mac: bytes) -> None:
        """Record the source link-layer address of an NS or RA (RFC 4861 section 7.2.3).

        A new entry or a changed address becomes STALE; an unchanged one
        keeps its state.
        """
        entry = self._entries.get(ip)
        if entry is None:
            if len(self._entries) >= MAX_ENTRIES:
                self._evict()
            self._entries[ip] = _Entry(NudState.STALE, mac)
            return
        if entry.mac != mac:
            entry.mac = mac
            entry.state = NudState.STALE
            entry.solicitations = 0
            self._flush(entry)

    def on_advertisement(self, ip: bytes, mac: bytes, solicited: bool, override: bool) -> bool:
        """Apply a Neighbor Advertisement (RFC 4861 section 7.2.5); return False when it was ignored.

        An NA for an address without an entry is ignored, as are NAs without a
        target link-layer address for an INCOMPLETE entry.
        """
        entry = self._entries.get(ip)
        if entry is None:
            self._counters.InUnsolicitedIgnored += 1
            return False
        now = self._clock()

        if entry.state is NudState.INCOMPLETE:
            if not mac:
                self._counters.InUnsolicitedIgnored += 1
                return False
            entry.mac = mac
            self._confirm(entry, solicited, now)
            self._flush(entry)
            return True

        changed = bool(mac) and mac != entry.mac
        if changed and not override:
            # Keep the known address; a REACHABLE entry becomes STALE so NUD rechecks it.
            if entry.state is NudState.REACHABLE:
                entry.state = NudState.STALE
            return True
        if changed:
            entry.mac = mac
        if solicited:
            self._confirm(entry, True, now)
        elif changed:
            entry.state = NudState.STALE
        return True

    def _confirm(self, entry: _Entry, reachable: bool, now: float) -> None:
        entry.state = NudState.REACHABLE if reachable else NudState.STALE
        entry.deadline = now + REACHABLE_SECONDS
        entry.solicitations = 0

    def _flush(self, entry: _Entry) -> None:
        waiting, entry.queue = entry.queue, []
        for send, _ in waiting:
            send(entry.mac)

    def on_timer(self) -> None:
        """Run the NUD timers: age REACHABLE entries, probe, retransmit, and drop failed entries."""
        now = self._clock()
        for ip, entry in list(self._entries.items()):
            if entry.state is NudState.STALE or now < entry.deadline:
                continue
            if entry.state is NudState.REACHABLE:
                entry.state = NudState.STALE
            elif entry.state is NudState.DELAY:
                entry.state = NudState.PROBE
                entry.solicitations = 1
                entry.deadline = now + RETRANSMIT_SECONDS
                self._solicit(ip, entry.mac)
            elif entry.solicitations >= (MAX_MULTICAST_SOLICIT if entry.state is NudState.INCOMPLETE
                                         else MAX_UNICAST_SOLICIT):
                self._counters.ResolutionFailures += 1
                self._counters.UnresolvedDiscards += len(entry.queue)
                del self._entries[ip]
                for _, on_failure in entry.queue:
                    if on_failure is not None:
                        on_failure()
            else:
                entry.solicitations += 1
                entry.deadline = now + RETRANSMIT_SECONDS
                self._solicit(ip, entry.mac if entry.state is NudState.PROBE else b"")

    def entries(self) -> list[tuple[bytes, bytes, NudState]]:
        """Return (ip, mac, state) for every entry with a link-layer address."""
        return [(ip, e.mac, e.state) for ip, e in self._entries.items() if e.mac]

    def _solicit(self, ip: bytes, mac: bytes) -> None:
        self._counters.OutSolicits += 1
        self._send_solicitation(ip, mac)

    def _evict(self) -> None:
        victim = next((ip for ip, e in self._entries.items() if e.state is NudState.STALE), None)
        if victim is None:
            victim = next(iter(self._entries))
        del self._entries[victim]
