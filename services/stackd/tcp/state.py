"""TCP connection states (RFC 9293 section 3.3.2)."""

import enum


class State(enum.Enum):
    """A TCP connection state; ``ss_name`` gives the name that ss(8) prints."""

    CLOSED = "CLOSE"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECV"
    ESTABLISHED = "ESTAB"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"

    @property
    def ss_name(self) -> str:
        """State name as ss(8) from iproute2 prints it."""
        return self.value

    @property
    def is_synchronized(self) -> bool:
        """Whether both sides' sequence numbers are known (RFC 9293 section 3.5.2)."""
        return self not in (State.CLOSED, State.LISTEN, State.SYN_SENT)
