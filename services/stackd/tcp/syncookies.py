"""SYN cookies (RFC 4987 section 3.6): a listener replies to a SYN without keeping state.

The initial sequence number of the SYN-ACK encodes what the listener must
remember, and the ACK that completes the handshake returns it as SEG.ACK - 1.
Layout of the 32-bit cookie:

* bits 31..27: a counter that ticks every 64 seconds, so a cookie expires;
* bits 26..24: the index of the peer's MSS in ``MSS_TABLE``;
* bits 23..0: a keyed hash of the 4-tuple, the peer's ISN, the counter and
  the MSS index, so a cookie cannot be forged without the secret.

Window scale, SACK and timestamps are not encoded, so a connection opened by
a cookie runs without them.
"""

import hashlib
from collections.abc import Callable

# Linux's msstab for IPv4 (net/ipv4/syncookies.c), plus values for larger MTUs.
MSS_TABLE = (536, 1300, 1440, 1460, 4312, 8960, 9000, 65483)
_PERIOD = 64.0          # seconds per counter tick
_MAX_AGE = 2            # ticks a cookie stays valid, so 64 to 192 seconds


class SynCookies:
    """Encoder and checker of SYN cookies with one secret; ``clock`` returns monotonic seconds."""

    def __init__(self, secret: bytes, clock: Callable[[], float]):
        if not secret:
            raise ValueError("SYN cookie secret is empty; pass random bytes, for example os.urandom(32)")
        self._key = hashlib.blake2b(b"syncookie" + secret).digest()
        self._clock = clock

    def _counter(self) -> int:
        return int(self._clock() / _PERIOD)

    def _hash(self, tuple_bytes: bytes, peer_isn: int, counter: int, mss_index: int) -> int:
        message = tuple_bytes + peer_isn.to_bytes(4, "big") + bytes([counter & 0x1F, mss_index])
        return int.from_bytes(hashlib.blake2b(message, key=self._key, digest_size=3).digest(), "big")

    def make(self, tuple_bytes: bytes, peer_isn: int, peer_mss: int) -> tuple[int, int]:
        """Return (cookie, encoded MSS): the ISS for a SYN-ACK and the MSS it stands for.

        ``tuple_bytes`` identifies the connection: local address and port,
        then remote address and port.
        """
        index = max((i for i, mss in enumerate(MSS_TABLE) if mss <= peer_mss), default=0)
        counter = self._counter() & 0x1F
        cookie = counter << 27 | index << 24 | self._hash(tuple_bytes, peer_isn, counter, index)
        return cookie, MSS_TABLE[index]

    def check(self, tuple_bytes: bytes, peer_isn: int, cookie: int) -> int | None:
        """Return the MSS a valid ``cookie`` encodes, or None when it is forged or expired."""
        counter = cookie >> 27 & 0x1F
        index = cookie >> 24 & 0x7
        age = (self._counter() - counter) & 0x1F
        if age > _MAX_AGE:
            return None
        if self._hash(tuple_bytes, peer_isn, counter, index) != cookie & 0xFFFFFF:
            return None
        return MSS_TABLE[index]
