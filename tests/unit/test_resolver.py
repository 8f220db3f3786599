"""The DNS wire format of sandnet.resolver, checked against messages that dpkt builds."""

import socket
import struct

import dpkt
import pytest

from sandnet import resolver


def reply_for(query: bytes, answers: list[tuple[str, int, bytes | str]], rcode: int = 0) -> bytes:
    """Build the reply to ``query`` with dpkt; each answer is (owner, type, address bytes or CNAME target)."""
    message = dpkt.dns.DNS(query)
    message.op = dpkt.dns.DNS_QR | dpkt.dns.DNS_RA | dpkt.dns.DNS_RD
    message.rcode = rcode
    records = []
    for owner, record_type, value in answers:
        record = dpkt.dns.DNS.RR(name=owner, type=record_type, cls=dpkt.dns.DNS_IN, ttl=60)
        if record_type == dpkt.dns.DNS_CNAME:
            record.cname = value
        elif record_type == dpkt.dns.DNS_A:
            record.ip = value
        else:
            record.ip6 = value
        records.append(record)
    message.an = records
    return bytes(message)


def test_query_parses_as_dns():
    query = resolver.build_query(0x1234, "web.sandnet.test", resolver.TYPE_A)
    parsed = dpkt.dns.DNS(query)
    assert parsed.id == 0x1234
    assert parsed.qr == dpkt.dns.DNS_Q
    assert parsed.rd
    assert [(q.name, q.type, q.cls) for q in parsed.qd] == [("web.sandnet.test", dpkt.dns.DNS_A, dpkt.dns.DNS_IN)]


def test_answer_a_records():
    query = resolver.build_query(7, "web.sandnet.test", resolver.TYPE_A)
    reply = reply_for(query, [("web.sandnet.test", dpkt.dns.DNS_A, socket.inet_aton("10.0.0.1")),
                              ("web.sandnet.test", dpkt.dns.DNS_A, socket.inet_aton("10.0.0.2"))])
    answer = resolver.parse_answer(reply, "web.sandnet.test", resolver.TYPE_A)
    assert answer.id == 7
    assert answer.rcode == 0
    assert answer.addresses == [socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")]


def test_answer_follows_cname():
    query = resolver.build_query(8, "www.sandnet.test", resolver.TYPE_AAAA)
    address = socket.inet_pton(socket.AF_INET6, "fd00::1")
    reply = reply_for(query, [("www.sandnet.test", dpkt.dns.DNS_CNAME, "web.sandnet.test"),
                              ("web.sandnet.test", dpkt.dns.DNS_AAAA, address)])
    answer = resolver.parse_answer(reply, "WWW.sandnet.test.", resolver.TYPE_AAAA)
    assert answer.addresses == [address]


def test_answer_ignores_other_names():
    query = resolver.build_query(9, "web.sandnet.test", resolver.TYPE_A)
    reply = reply_for(query, [("evil.sandnet.test", dpkt.dns.DNS_A, socket.inet_aton("10.6.6.6"))])
    assert resolver.parse_answer(reply, "web.sandnet.test", resolver.TYPE_A).addresses == []


def test_answer_nxdomain_rcode():
    query = resolver.build_query(10, "missing.sandnet.test", resolver.TYPE_A)
    reply = reply_for(query, [], rcode=dpkt.dns.DNS_RCODE_NXDOMAIN)
    assert resolver.parse_answer(reply, "missing.sandnet.test", resolver.TYPE_A).rcode == resolver.RCODE_NXDOMAIN


@pytest.mark.parametrize("message, reason", [
    (b"\x00\x01", "shorter than a DNS header"),
    (struct.pack("!HHHHHH", 1, 0, 0, 0, 0, 0), "is a query"),
    (struct.pack("!HHHHHH", 1, 0x8000, 0, 1, 0, 0) + b"\x03web", "past the end"),
    (struct.pack("!HHHHHH", 1, 0x8000, 0, 1, 0, 0) + b"\xc0\x0c", "too many name pointers"),
    (struct.pack("!HHHHHH", 1, 0x8000, 0, 1, 0, 0) + b"\x00" + struct.pack("!HHIH", 1, 1, 0, 200),
     "record data runs past"),
])
def test_malformed_replies_raise_value_error(message, reason):
    with pytest.raises(ValueError, match=reason):
        resolver.parse_answer(message, "web", resolver.TYPE_A)


@pytest.mark.parametrize("name", ["", "a..b", "x" * 64 + ".test", ".".join(["abcdefghij"] * 26)])
def test_invalid_names_raise(name):
    with pytest.raises(ValueError, match="invalid host name"):
        resolver.encode_name(name)


def test_resolv_conf_and_hosts_file(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch example\nnameserver 10.0.0.53\nnameserver fd00::53\noptions ndots:2\n")
    assert resolver.read_nameservers(str(conf)) == ["10.0.0.53", "fd00::53"]
    assert resolver.read_nameservers(str(tmp_path / "absent")) == []

    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n10.1.2.3 Web.Example web # the peer\nfd00::3 web\n")
    assert resolver.lookup_hosts_file("WEB", socket.AF_INET, str(hosts)) == [socket.inet_aton("10.1.2.3")]
    assert resolver.lookup_hosts_file("web", socket.AF_INET6, str(hosts)) == [
        socket.inet_pton(socket.AF_INET6, "fd00::3")]
    assert resolver.reverse_lookup_hosts_file("10.1.2.3", str(hosts)) == ("Web.Example", ["web"])


def test_nameserver_env_wins(monkeypatch):
    monkeypatch.setenv(resolver.NAMESERVER_ENV, "10.0.0.1, 10.0.0.2")
    assert resolver.configured_nameservers() == ["10.0.0.1", "10.0.0.2"]


def test_no_nameserver_is_eai_again(monkeypatch):
    monkeypatch.setattr(resolver, "lookup_hosts_file", lambda name, family: [])
    with pytest.raises(resolver.ResolveError) as raised:
        resolver.Resolver(open_udp=None, nameservers=[]).resolve("web.sandnet.test", socket.AF_INET)
    assert raised.value.code == socket.EAI_AGAIN
