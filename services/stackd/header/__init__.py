"""Wire formats: parse and build protocol headers, free of protocol logic.

Each module views a buffer and returns a parsed representation, checking
every length before it reads; malformed input raises MalformedError with a
named reason so that callers can count and drop it.
"""
