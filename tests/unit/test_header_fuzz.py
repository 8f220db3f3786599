"""Every parser rejects arbitrary bytes with MalformedError and nothing else."""

from hypothesis import given, settings
from hypothesis import strategies as st

from sandnet_stackd.header import arp, ethernet, icmp, icmpv6, ipv4, ipv6, udp
from sandnet_stackd.header.errors import MalformedError

ADDRESS4 = bytes([10, 0, 0, 1])
ADDRESS6 = bytes.fromhex("fd000000000000000000000000000001")

# Bounded so the suite stays short on a shared machine; no deadline because
# timing is not what these tests check.
FUZZ = settings(max_examples=300, deadline=None)


def parse_all(data):
    parsers = [
        lambda: ethernet.parse(data),
        lambda: arp.parse(data),
        lambda: ipv4.parse(data),
        lambda: ipv4.parse(data, verify_checksum=False),
        lambda: ipv6.parse(data),
        lambda: icmp.parse(data),
        lambda: icmpv6.parse(data, ADDRESS6, ADDRESS6),
        lambda: udp.parse(data, ADDRESS4, ADDRESS4),
        lambda: udp.parse(data, ADDRESS6, ADDRESS6, verify_checksum=False),
    ]
    for parse in parsers:
        try:
            parse()
        except MalformedError:
            pass


@FUZZ
@given(st.binary(max_size=128))
def test_parsers_on_random_bytes(data):
    parse_all(data)


@FUZZ
@given(st.sampled_from([b"\x45", b"\x4f", b"\x60"]), st.binary(max_size=96))
def test_parsers_on_plausible_ip_headers(first_byte, rest):
    parse_all(first_byte + rest)


@FUZZ
@given(st.binary(max_size=96))
def test_ipv4_parse_bounds_payload(data):
    try:
        repr, payload = ipv4.parse(b"\x45" + data, verify_checksum=False)
    except MalformedError:
        return
    assert repr.header_length + len(payload) == repr.total_length
    assert repr.total_length <= len(data) + 1
