"""Initial sequence numbers (RFC 6528)."""

import hashlib
from collections.abc import Callable

# RFC 6528 section 3: ISN = M + F(4-tuple, secret), where M is a timer that
# ticks every 4 microseconds.
_TICKS_PER_SECOND = 250_000


class IsnGenerator:
    """Generator of initial sequence numbers from a keyed hash of the 4-tuple.

    ``secret`` should be random and at least 16 bytes; ``clock`` returns
    monotonic seconds.
    """

    def __init__(self, secret: bytes, clock: Callable[[], float]):
        if not secret:
            raise ValueError("ISN secret is empty; pass random bytes, for example os.urandom(32)")
        # BLAKE2b accepts keys of up to 64 bytes, so a longer secret is hashed first.
        self._key = secret if len(secret) <= 64 else hashlib.blake2b(secret).digest()
        self._clock = clock

    def next(self, local_ip: bytes, local_port: int, remote_ip: bytes, remote_port: int) -> int:
        """Return the initial sequence number for a connection on this 4-tuple."""
        digest = hashlib.blake2b(
            local_ip + local_port.to_bytes(2, "big") + remote_ip + remote_port.to_bytes(2, "big"),
            key=self._key, digest_size=4).digest()
        ticks = int(self._clock() * _TICKS_PER_SECOND)
        return (ticks + int.from_bytes(digest, "big")) & 0xFFFFFFFF
