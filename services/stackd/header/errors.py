"""Named reasons for which a received header is rejected."""

import enum


class Reason(enum.Enum):
    """Why a header failed to parse; each maps to a counter at the caller."""

    TRUNCATED = "truncated"
    BAD_VERSION = "bad version"
    BAD_HEADER_LENGTH = "bad header length"
    BAD_TOTAL_LENGTH = "bad total length"
    BAD_CHECKSUM = "bad checksum"
    BAD_OPTION = "bad option"
    BAD_ADDRESS = "bad address"
    UNSUPPORTED = "unsupported"


class MalformedError(ValueError):
    """A header that cannot be parsed; ``reason`` names why."""

    def __init__(self, reason: Reason, detail: str = ""):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail
