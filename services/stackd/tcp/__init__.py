"""TCP for stackd: the connection state machine and what it needs.

Wire formats live in ``sandnet_stackd.header.tcp``; this package contains the
protocol logic and does no I/O.
"""

from .config import TcpConfig
from .connection import TcpConnection, reset_for_unexpected
from .counters import TcpCounters
from .isn import IsnGenerator
from .info import pack_tcp_info
from .state import State
from .syncookies import SynCookies

__all__ = ["IsnGenerator", "State", "SynCookies", "TcpConfig", "TcpConnection", "TcpCounters", "pack_tcp_info",
           "reset_for_unexpected"]
