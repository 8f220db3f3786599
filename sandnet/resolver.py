"""Host name resolution for workloads: /etc/hosts, then DNS over sandnet's UDP.

The workload's own resolver (glibc) would send its queries through the
host's network stack, which a sandboxed workload must not reach, so
sandnet.socket.getaddrinfo resolves names here instead. Queries go to the
nameservers from $SANDNET_NAMESERVER (comma-separated addresses) or, when it
is unset, from the "nameserver" lines of /etc/resolv.conf, over a sandnet UDP
socket.

Only what getaddrinfo needs is implemented: one question per query, A and
AAAA records, CNAME chains inside one answer. "search" and "options" lines of
resolv.conf are ignored, and a truncated answer (TC bit) is used as it is,
without a retry over TCP.
"""

import dataclasses
import errno
import os
import secrets
import socket as _socket
import struct

NAMESERVER_ENV = "SANDNET_NAMESERVER"
RESOLV_CONF = "/etc/resolv.conf"
HOSTS_FILE = "/etc/hosts"
DNS_PORT = 53

# Per-query timeout in seconds and tries per nameserver; glibc's defaults
# are 5 s and 2 tries, shortened here because each try is a local round trip.
QUERY_TIMEOUT_SECONDS = 2.0
QUERY_ATTEMPTS = 2

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
CLASS_IN = 1
RCODE_NXDOMAIN = 3
FLAG_QR = 0x8000
FLAG_RD = 0x0100
# RFC 1035 section 4.1.4: a name pointer has its two top bits set.
POINTER_MASK = 0xC0
MAX_POINTERS = 32

_HEADER = struct.Struct("!HHHHHH")
_QUESTION_TAIL = struct.Struct("!HH")
_RECORD_TAIL = struct.Struct("!HHIH")

RECORD_TYPES = {_socket.AF_INET: TYPE_A, _socket.AF_INET6: TYPE_AAAA}


class ResolveError(Exception):
    """Name resolution failed; ``code`` is the getaddrinfo error (socket.EAI_NONAME, EAI_AGAIN, ...)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclasses.dataclass
class Answer:
    """The parsed reply to one query: response code and the addresses found for the question's name."""

    id: int
    rcode: int
    addresses: list[bytes]


def encode_name(name: str) -> bytes:
    """Encode a host name as DNS labels (RFC 1035 section 3.1); raise ValueError for an invalid one."""
    try:
        ascii_name = name.rstrip(".").encode("idna")
    except UnicodeError:
        raise ValueError(f"invalid host name {name!r}") from None
    encoded = bytearray()
    for label in ascii_name.split(b"."):
        if not 0 < len(label) < 64:
            raise ValueError(f"invalid host name {name!r}: each label must have 1 to 63 characters")
        encoded += bytes([len(label)]) + label
    if len(encoded) + 1 > 255:
        raise ValueError(f"invalid host name {name!r}: longer than 255 bytes")
    return bytes(encoded) + b"\0"


def build_query(query_id: int, name: str, record_type: int) -> bytes:
    """Build a recursive query for one (name, type) question in class IN."""
    header = _HEADER.pack(query_id, FLAG_RD, 1, 0, 0, 0)
    return header + encode_name(name) + _QUESTION_TAIL.pack(record_type, CLASS_IN)


def read_name(message: bytes, offset: int) -> tuple[str, int]:
    """Read a possibly compressed name at ``offset``; return it in lower case and the offset after it.

    Raise ValueError for a name that runs past the message or loops.
    """
    labels = []
    end = None
    for _ in range(MAX_POINTERS):
        while True:
            if offset >= len(message):
                raise ValueError("name runs past the end of the message")
            length = message[offset]
            if length & POINTER_MASK == POINTER_MASK:
                if offset + 2 > len(message):
                    raise ValueError("name pointer runs past the end of the message")
                if end is None:
                    end = offset + 2
                offset = struct.unpack_from("!H", message, offset)[0] & 0x3FFF
                break
            if length & POINTER_MASK:
                raise ValueError(f"unsupported label type 0x{length:02x}")
            offset += 1
            if length == 0:
                return ".".join(labels).lower(), end if end is not None else offset
            if offset + length > len(message):
                raise ValueError("label runs past the end of the message")
            labels.append(message[offset:offset + length].decode("ascii", "replace"))
            offset += length
    raise ValueError("too many name pointers")


def parse_answer(message: bytes, name: str, record_type: int) -> Answer:
    """Parse a reply and collect the addresses of ``name``, following CNAME records.

    Raise ValueError for a message that is not a reply to such a query.
    """
    if len(message) < _HEADER.size:
        raise ValueError(f"reply of {len(message)} bytes is shorter than a DNS header")
    query_id, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(message)
    if not flags & FLAG_QR:
        raise ValueError("message is a query, not a reply")

    offset = _HEADER.size
    for _ in range(qdcount):
        _, offset = read_name(message, offset)
        offset += _QUESTION_TAIL.size

    wanted = {name.rstrip(".").lower()}
    addresses = []
    for _ in range(ancount):
        owner, offset = read_name(message, offset)
        if offset + _RECORD_TAIL.size > len(message):
            raise ValueError("resource record runs past the end of the message")
        rtype, rclass, _, rdlength = _RECORD_TAIL.unpack_from(message, offset)
        offset += _RECORD_TAIL.size
        rdata_offset = offset
        offset += rdlength
        if offset > len(message):
            raise ValueError("record data runs past the end of the message")
        if rclass != CLASS_IN or owner not in wanted:
            continue
        if rtype == TYPE_CNAME:
            target, _ = read_name(message, rdata_offset)
            wanted.add(target)
        elif rtype == record_type and rdlength == (4 if record_type == TYPE_A else 16):
            addresses.append(message[rdata_offset:offset])
    return Answer(query_id, flags & 0xF, addresses)


def read_nameservers(path: str = RESOLV_CONF) -> list[str]:
    """Return the addresses of the "nameserver" lines of a resolv.conf file; [] if it is missing."""
    try:
        with open(path) as conf:
            lines = conf.readlines()
    except FileNotFoundError:
        return []
    servers = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            servers.append(fields[1])
    return servers


def configured_nameservers() -> list[str]:
    """Return the nameservers from $SANDNET_NAMESERVER, else from /etc/resolv.conf."""
    configured = os.environ.get(NAMESERVER_ENV, "")
    if configured.strip():
        return [server.strip() for server in configured.split(",") if server.strip()]
    return read_nameservers()


def lookup_hosts_file(name: str, family: int, path: str = HOSTS_FILE) -> list[bytes]:
    """Return the packed addresses that an /etc/hosts style file gives ``name`` in ``family``."""
    try:
        with open(path) as hosts:
            lines = hosts.readlines()
    except FileNotFoundError:
        return []
    wanted = name.rstrip(".").lower()
    found = []
    for line in lines:
        fields = line.partition("#")[0].split()
        if len(fields) < 2 or wanted not in (field.lower() for field in fields[1:]):
            continue
        try:
            found.append(_socket.inet_pton(family, fields[0]))
        except OSError:
            continue
    return found


def reverse_lookup_hosts_file(address: str, path: str = HOSTS_FILE) -> tuple[str, list[str]] | None:
    """Return (name, aliases) of the first /etc/hosts line for ``address``, or None."""
    try:
        with open(path) as hosts:
            lines = hosts.readlines()
    except FileNotFoundError:
        return None
    for line in lines:
        fields = line.partition("#")[0].split()
        if len(fields) >= 2 and fields[0] == address:
            return fields[1], fields[2:]
    return None


class Resolver:
    """Resolves names through DNS servers reached with sandnet UDP sockets.

    ``open_udp(family)`` returns a new datagram socket with the stdlib's
    interface; sandnet.socket passes a factory bound to its Client.
    """

    def __init__(self, open_udp, nameservers: list[str] | None = None,
                 timeout: float = QUERY_TIMEOUT_SECONDS, attempts: int = QUERY_ATTEMPTS):
        self._open_udp = open_udp
        self.nameservers = configured_nameservers() if nameservers is None else nameservers
        self.timeout = timeout
        self.attempts = attempts

    def resolve(self, name: str, family: int) -> list[bytes]:
        """Return the packed addresses of ``name`` in ``family``; raise ResolveError when there are none."""
        found = lookup_hosts_file(name, family)
        if found:
            return found
        if not self.nameservers:
            raise ResolveError(_socket.EAI_AGAIN, f"cannot resolve {name!r}: no nameserver configured; "
                                                  f"set {NAMESERVER_ENV} or add a nameserver line to {RESOLV_CONF}")
        try:
            encode_name(name)
        except ValueError as error:
            raise ResolveError(_socket.EAI_NONAME, str(error)) from None

        failures = []
        for server in self.nameservers:
            for _ in range(self.attempts):
                try:
                    answer = self._query(server, name, RECORD_TYPES[family])
                except TimeoutError:
                    failures.append(f"{server}: timed out after {self.timeout:g} s")
                    continue
                except (OSError, ValueError) as error:
                    failures.append(f"{server}: {error}")
                    break
                if answer.rcode == RCODE_NXDOMAIN or (answer.rcode == 0 and not answer.addresses):
                    raise ResolveError(_socket.EAI_NONAME, f"{name!r}: name or service not known "
                                                           f"(no {'A' if family == _socket.AF_INET else 'AAAA'} "
                                                           f"record at {server})")
                if answer.rcode == 0:
                    return answer.addresses
                failures.append(f"{server}: response code {answer.rcode}")
                break
        raise ResolveError(_socket.EAI_AGAIN, f"cannot resolve {name!r}: {'; '.join(failures)}")

    def _query(self, server: str, name: str, record_type: int) -> Answer:
        """Send one query to ``server`` and return the first reply that matches it."""
        server_family = _socket.AF_INET6 if ":" in server else _socket.AF_INET
        query_id = secrets.randbelow(0x10000)
        query = build_query(query_id, name, record_type)
        with self._open_udp(server_family) as sock:
            sock.settimeout(self.timeout)
            sock.connect((server, DNS_PORT))
            sock.send(query)
            while True:
                try:
                    reply = sock.recv(65535)
                except ConnectionRefusedError:
                    raise OSError(errno.ECONNREFUSED, "no DNS server listens on port 53") from None
                try:
                    answer = parse_answer(reply, name, record_type)
                except ValueError:
                    continue
                if answer.id == query_id:
                    return answer
