"""Rate-limited logging for errors that repeat once per frame."""

import logging
import time


class RateLimitedLog:
    """Log at most one record per key and interval, and report how many were suppressed.

    A flood of bad frames must not flood the log, so each kind of error is
    keyed (for example "tx-invalid") and logged once per ``interval`` seconds.
    """

    def __init__(self, log: logging.Logger, interval: float = 5.0):
        self._log = log
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return

        suppressed = self._suppressed.pop(key, 0)
        self._last[key] = now
        if suppressed:
            self._log.log(level, message + " (%d similar messages suppressed)", *args, suppressed)
        else:
            self._log.log(level, message, *args)

    def warning(self, key: str, message: str, *args: object) -> None:
        self.log(logging.WARNING, key, message, *args)
