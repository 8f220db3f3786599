"""struct tcp_info as Linux's getsockopt(TCP_INFO) returns it (include/uapi/linux/tcp.h)."""

import struct

from .state import State

# Linux's TCP state numbers (include/net/tcp_states.h).
LINUX_STATES = {
    State.ESTABLISHED: 1, State.SYN_SENT: 2, State.SYN_RECEIVED: 3, State.FIN_WAIT_1: 4,
    State.FIN_WAIT_2: 5, State.TIME_WAIT: 6, State.CLOSED: 7, State.CLOSE_WAIT: 8,
    State.LAST_ACK: 9, State.LISTEN: 10, State.CLOSING: 11,
}

# The fields up to tcpi_total_retrans: 8 bytes, then 24 32-bit words.
_LAYOUT = struct.Struct("=8B24I")
SIZE = _LAYOUT.size        # 104


def pack_tcp_info(info: dict | None, listening: bool = False) -> bytes:
    """Pack ``TcpConnection.info()`` (None for a socket without connection) into struct tcp_info.

    Fields sandnet does not track (last_data_sent and the like) are 0.
    """
    if info is None:
        state = LINUX_STATES[State.LISTEN if listening else State.CLOSED]
        return _LAYOUT.pack(state, *([0] * 7), *([0] * 24))
    return _LAYOUT.pack(
        LINUX_STATES[info["state"]], info["ca_state"], min(info["retransmits"], 255), min(info["probes"], 255),
        min(info["backoff"], 255), info["options"], (info["snd_wscale"] & 0xF) | (info["rcv_wscale"] & 0xF) << 4, 0,
        info["rto"], info["ato"], info["snd_mss"], info["rcv_mss"],
        info["unacked"], info["sacked"], 0, info["retrans"], 0,
        0, 0, 0, 0,
        info["pmtu"], info["rcv_ssthresh"], info["rtt"], info["rttvar"], info["snd_ssthresh"], info["snd_cwnd"],
        info["advmss"], info["reordering"],
        0, info["rcv_space"], info["total_retrans"])
