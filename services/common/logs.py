"""Logging setup shared by the services: one named logger each, to stderr."""

import logging
import sys


def setup_logging(service: str, level: str = "INFO") -> logging.Logger:
    """Send log records to stderr with the service name and return its logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return logging.getLogger(f"sandnet.{service}")
