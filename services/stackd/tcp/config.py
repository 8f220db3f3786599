"""Per-connection TCP settings that the socket layer sets."""

import dataclasses


@dataclasses.dataclass
class TcpConfig:
    """Socket options and Linux sysctl equivalents of one connection.

    Buffer sizes are in bytes and already doubled the way Linux doubles
    SO_RCVBUF and SO_SNDBUF. The receive buffer is the largest window this
    side advertises. The window scale is chosen when the SYN is sent and
    covers at least 8 MiB, so a buffer raised after the handshake up to that
    size still takes effect. The send buffer bounds the bytes queued and not
    yet acknowledged. Times are in seconds.
    """

    rcvbuf: int = 262144
    sndbuf: int = 16384           # tcp_wmem[1], the start value before auto-tuning
    nodelay: bool = False
    keepalive: bool = False
    keepidle: float = 7200.0      # tcp_keepalive_time
    keepintvl: float = 75.0       # tcp_keepalive_intvl
    keepcnt: int = 9              # tcp_keepalive_probes
    syn_retries: int = 6          # tcp_syn_retries
    synack_retries: int = 5       # tcp_synack_retries
    retries2: int = 15            # tcp_retries2
    fin_timeout: float = 60.0     # tcp_fin_timeout
    time_wait: float = 60.0       # 2 * MSL with MSL = 30 s, TCP_TIMEWAIT_LEN in Linux
    delayed_ack: float = 0.040    # TCP_DELACK_MIN in Linux
    window_scaling: bool = True   # tcp_window_scaling
    timestamps: bool = True       # tcp_timestamps: RFC 7323 TSopt and PAWS
    sack: bool = True             # tcp_sack: RFC 2018 SACK
    congestion: str = "cubic"     # TCP_CONGESTION, "cubic" or "reno"
    user_timeout: float = 0.0     # TCP_USER_TIMEOUT in seconds, 0 for the retries2 limit
    cork: bool = False            # TCP_CORK
    rack: bool = True             # RACK-TLP loss detection, as Linux's tcp_recovery
    # Receive buffer auto-tuning (Linux tcp_moderate_rcvbuf) until the
    # application sets SO_RCVBUF; rcvbuf_max is tcp_rmem[2].
    rcvbuf_auto: bool = True
    rcvbuf_max: int = 6291456
    # Send buffer auto-tuning (Linux tcp_sndbuf_expand) until the application
    # sets SO_SNDBUF: the buffer grows with cwnd up to sndbuf_max, tcp_wmem[2].
    sndbuf_auto: bool = True
    sndbuf_max: int = 4194304
