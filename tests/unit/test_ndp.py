"""The IPv6 neighbor cache and its NUD states (RFC 4861 section 7.3)."""

from sandnet_stackd.counters import Ndp6Counters
from sandnet_stackd.ndp import NeighborCache6, NudState

IP = bytes.fromhex("fd000000000000000000000000000001")
MAC = bytes.fromhex("020000000001")
OTHER_MAC = bytes.fromhex("020000000002")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def make_cache():
    clock, sent, counters = Clock(), [], Ndp6Counters()
    cache = NeighborCache6(clock, lambda ip, mac: sent.append((ip, mac)), counters)
    return cache, clock, sent, counters


def test_resolution_queues_until_advertisement():
    cache, _, sent, _ = make_cache()
    delivered = []

    cache.resolve(IP, delivered.append)
    assert cache.state(IP) is NudState.INCOMPLETE
    assert sent == [(IP, b"")]  # multicast solicitation

    assert cache.on_advertisement(IP, MAC, solicited=True, override=True)
    assert delivered == [MAC]
    assert cache.state(IP) is NudState.REACHABLE


def test_incomplete_entry_fails_after_three_solicitations():
    cache, clock, sent, counters = make_cache()
    cache.resolve(IP, lambda mac: None)
    for _ in range(4):
        clock.now += 1.0
        cache.on_timer()

    assert len(sent) == 3
    assert cache.state(IP) is None
    assert counters.ResolutionFailures == 1
    assert counters.UnresolvedDiscards == 1


def test_reachable_turns_stale_then_delay_then_probe():
    cache, clock, sent, _ = make_cache()
    cache.resolve(IP, lambda mac: None)
    cache.on_advertisement(IP, MAC, solicited=True, override=True)

    clock.now += 31
    cache.on_timer()
    assert cache.state(IP) is NudState.STALE

    delivered = []
    cache.resolve(IP, delivered.append)
    assert delivered == [MAC]
    assert cache.state(IP) is NudState.DELAY

    clock.now += 5
    cache.on_timer()
    assert cache.state(IP) is NudState.PROBE
    assert sent[-1] == (IP, MAC)  # unicast probe

    cache.on_advertisement(IP, MAC, solicited=True, override=False)
    assert cache.state(IP) is NudState.REACHABLE


def test_unanswered_probes_drop_the_entry():
    cache, clock, _, counters = make_cache()
    cache.on_solicitation(IP, MAC)
    cache.resolve(IP, lambda mac: None)
    for _ in range(10):
        clock.now += 5
        cache.on_timer()

    assert cache.state(IP) is None
    assert counters.ResolutionFailures == 1


def test_unsolicited_advertisement_for_unknown_address_is_ignored():
    cache, _, _, counters = make_cache()

    assert not cache.on_advertisement(IP, MAC, solicited=False, override=True)
    assert cache.state(IP) is None
    assert counters.InUnsolicitedIgnored == 1


def test_advertisement_without_override_keeps_known_address():
    cache, _, _, _ = make_cache()
    cache.resolve(IP, lambda mac: None)
    cache.on_advertisement(IP, MAC, solicited=True, override=True)

    cache.on_advertisement(IP, OTHER_MAC, solicited=False, override=False)

    assert cache.lookup(IP) == MAC
    assert cache.state(IP) is NudState.STALE


def test_solicitation_with_new_address_makes_entry_stale():
    cache, _, _, _ = make_cache()
    cache.on_solicitation(IP, MAC)
    assert cache.state(IP) is NudState.STALE

    cache.on_solicitation(IP, OTHER_MAC)
    assert cache.lookup(IP) == OTHER_MAC
