"""One TCP connection: the RFC 9293 state machine with its timers.

The connection does no I/O and reads no wall clock. The stack passes received
segments to ``on_segment``, calls ``on_timer`` at ``next_deadline()``, and
receives every segment to send through the ``output`` callback.

Internally every sequence number is an unbounded offset: the send side counts
from ISS (the SYN is offset 0) and the receive side from IRS. Offsets compare
as plain integers. Only ``_snd_offset``, ``_rcv_offset`` and the ``_wire``
helpers convert to and from 32-bit sequence numbers, so the modulo 2**32
arithmetic lives there.
"""

import dataclasses
import errno
from collections.abc import Callable

from ..header.tcp import ACK, FIN, PSH, RST, SYN, TcpRepr
from .buffers import OutOfOrderQueue
from .config import TcpConfig
from .congestion import make_congestion
from .counters import TcpCounters
from .rack import Rack
from .rtt import MAX_RTO, RttEstimator
from .sack import ReceivedBlocks, Scoreboard
from .state import State

_MASK = 0xFFFFFFFF
_MAX_WINDOW_FIELD = 0xFFFF
_MAX_WINDOW_SCALE = 14          # RFC 7323 section 2.3
# The window scale is sized for this receive buffer even when the configured
# one is smaller, so that a buffer raised after the handshake still fits. A
# shift of 7 matches what Linux offers with its default tcp_rmem.
_WINDOW_SCALE_BUFFER = 1 << 22
_DEFAULT_MSS_IPV4 = 536         # RFC 9293 section 3.7.1
_DEFAULT_MSS_IPV6 = 1220        # RFC 8200 minimum MTU 1280 minus 60
_MIN_SEND_MSS = 48              # Linux tcp_min_snd_mss
_TIMESTAMP_OPTION_LEN = 12      # NOP, NOP, kind 8 of length 10: taken from each segment's payload
_PAWS_IDLE_LIMIT = 24 * 24 * 3600.0     # RFC 7323 section 5.5: TS.Recent is invalid after 24 days idle
_CHALLENGE_ACK_INTERVAL = 0.5   # seconds; Linux's tcp_invalid_ratelimit default
_PAWS_WINDOW = 1                # TSval ticks older than TS.Recent that PAWS still accepts, as Linux's TCP_PAWS_WINDOW
_MAX_DUPTHRESH = 30             # bound of the duplicate ACK threshold raised by reordering
_MAX_REORDER_WINDOW_FACTOR = 16     # RFC 8985 section 7.2 bound of RACK.reo_wnd_mult
_WORST_CASE_DELAYED_ACK = 0.2   # seconds, RFC 8985 WCDelAckT
_MIN_PROBE_TIMEOUT = 0.01       # seconds, the lower bound Linux puts on the probe timeout

# States in which queued data or a FIN may be (re)transmitted.
_SENDING_STATES = frozenset({State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1,
                             State.CLOSING, State.LAST_ACK})
# States in which the peer may still send data.
_RECEIVING_STATES = frozenset({State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2})
_KEEPALIVE_STATES = frozenset({State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_2})


def _seq_diff(a: int, b: int) -> int:
    """Return a - b for 32-bit sequence numbers, as a signed value in [-2**31, 2**31)."""
    return ((a - b + 0x80000000) & _MASK) - 0x80000000


def reset_for_unexpected(seg: TcpRepr) -> TcpRepr | None:
    """Build the RST sent in reply to a segment for which no connection exists.

    RFC 9293 section 3.10.7.1: no reply is sent to an RST, so this returns None
    for one. Without ACK the reset is <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>;
    with ACK it is <SEQ=SEG.ACK><CTL=RST>. Ports are swapped.
    """
    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        return TcpRepr(src_port=seg.dst_port, dst_port=seg.src_port, seq=seg.ack, ack=0,
                       flags=RST, window=0)
    return TcpRepr(src_port=seg.dst_port, dst_port=seg.src_port, seq=0,
                   ack=(seg.seq + seg.seg_len) & _MASK, flags=RST | ACK, window=0)


class TcpConnection:
    """A TCP connection between one local and one remote endpoint.

    ``mss`` is the largest payload this side can receive (route MTU minus 40)
    and also caps the segments it sends. ``output`` is called synchronously
    for every segment to transmit, never after the connection is CLOSED.
    ``notify`` is called after any change a socket waiter may care about and
    must not call back into the connection. ``clock`` returns monotonic
    seconds. ``config`` is copied, so later changes go through ``set_option``.
    """

    def __init__(self, *, local_ip: bytes, local_port: int, remote_ip: bytes, remote_port: int,
                 iss: int, mss: int, config: TcpConfig, counters: TcpCounters,
                 clock: Callable[[], float], output: Callable[[TcpRepr], None],
                 notify: Callable[[], None]) -> None:
        self.local_ip = local_ip
        self.local_port = local_port
        self.remote_ip = remote_ip
        self.remote_port = remote_port
        self._iss = iss & _MASK
        self._mss = mss
        self._config = dataclasses.replace(config)
        self._counters = counters
        self._clock = clock
        self._output = output
        self._notify = notify

        self.state = State.CLOSED
        self.error = 0
        self.fin_received = False
        self.established_once = False
        self._finished = False
        self._passive = False
        self._app_closed = False

        # Send side, offsets from ISS.
        self._snd_una = 0
        self._snd_nxt = 0
        self._snd_max = 0
        self._snd_wnd = 0
        self._max_snd_wnd = 0
        self._snd_wl1 = 0
        self._snd_wl2 = 0
        self._snd_wscale = 0
        self._snd_sml = 0               # end of the last sub-MSS segment sent (Minshall's Nagle)
        self._snd_buf = bytearray()     # unacknowledged and unsent data
        self._snd_buf_start = 1         # offset of _snd_buf[0]; the SYN is offset 0
        self._fin_queued = False
        self._writer_waiting = False    # send() found the buffer full, as Linux's SOCK_NOSPACE
        self._snd_mss = max(min(self._default_peer_mss(), mss), _MIN_SEND_MSS)
        self._window_scale_offer: int | None = None

        # Receive side, offsets from IRS.
        self._irs = 0
        self._rcv_nxt = 0
        self._rcv_adv = 0               # right edge of the window last advertised
        self._rcv_wscale = 0
        self._rcv_buf = bytearray()
        self._rcv_mss = min(mss, _DEFAULT_MSS_IPV4)
        self._out_of_order = OutOfOrderQueue()
        self._out_of_order_fin: int | None = None
        self._unacked_bytes = 0         # in-order bytes received since our last ACK

        # Timers: absolute clock() deadlines, None when stopped.
        self._rto_deadline: float | None = None
        self._persist_deadline: float | None = None
        self._delack_deadline: float | None = None
        self._keepalive_deadline: float | None = None
        self._close_deadline: float | None = None    # TIME_WAIT or FIN_WAIT_2 timeout
        self._retries = 0
        self._persist_probes = 0        # unanswered window probes
        self._persist_backoff = 0       # doublings of the probe interval while the window stays zero
        self._keepalive_probes = 0
        self._last_received = clock()

        # RFC 7323 timestamps. TSval counts milliseconds from an offset taken
        # from the ISS, so it reveals no host uptime (Linux uses a random tsoffset).
        self._ts_offered = False
        self._ts_enabled = False
        self._ts_offset = (self._iss * 0x9E3779B1) & _MASK
        self._ts_recent = 0
        self._ts_recent_time = 0.0
        self._last_ack_sent = 0         # RCV.NXT in the last ACK sent (Last.ACK.sent)

        # RFC 2018 SACK and the RFC 6675 recovery state.
        self._sack_offered = False
        self._sack_enabled = False
        self._scoreboard = Scoreboard()
        self._received_blocks = ReceivedBlocks()
        self._high_rxt = 0              # holes below this offset were retransmitted in this recovery
        # (cwnd, ssthresh, TSval of the first retransmission) saved at the start of a
        # recovery, until it is known whether the recovery was needed.
        self._undo: tuple[int, int, int] | None = None
        self._undo_bytes = 0            # bytes retransmitted in this recovery and not D-SACKed
        self._undo_timestamp_checked = False

        # RFC 8985 RACK-TLP.
        self._rack = Rack()
        self._rack_deadline: float | None = None     # reordering timer: check for losses again
        self._probe_deadline: float | None = None    # tail loss probe timer
        self._probe_pending = False                  # a probe was sent and SND.UNA has not moved since
        self._reorder_window_factor = 1              # RFC 8985 section 6.2: grows with spurious recoveries

        self._unacked_since: float | None = None    # when the data at SND.UNA went out, for TCP_USER_TIMEOUT
        self._total_retrans = 0
        self._last_challenge_ack = -_CHALLENGE_ACK_INTERVAL
        self._rcv_space_copied = 0      # bytes read since _rcv_space_start, for auto-tuning
        self._rcv_space_start = clock()

        self._rtt = RttEstimator()
        self._rtt_seq: int | None = None    # offset whose ACK ends the RTT measurement
        self._rtt_start = 0.0
        self._congestion = self._new_congestion()
        # Largest payload of one segment handed to ``output`` when the device
        # cuts segments (GSO); 0 keeps every segment at one MSS.
        self.gso_max_size = 0

    # Status read by the socket layer.

    @property
    def readable_bytes(self) -> int:
        """In-order bytes ready for ``recv``."""
        return len(self._rcv_buf)

    @property
    def send_space(self) -> int:
        """Free bytes in the send buffer."""
        return max(self._config.sndbuf - len(self._snd_buf), 0)

    @property
    def sndbuf(self) -> int:
        """Current send buffer size in bytes, as getsockopt(SO_SNDBUF) returns it."""
        return self._config.sndbuf

    @property
    def send_queue_bytes(self) -> int:
        """Unacknowledged plus unsent bytes, as ss(8) shows in Send-Q."""
        return len(self._snd_buf)

    @property
    def can_send(self) -> bool:
        """Whether the state allows ``send``: ESTABLISHED or CLOSE_WAIT and not shut down."""
        return self.state in (State.ESTABLISHED, State.CLOSE_WAIT) and not self._fin_queued

    @property
    def is_finished(self) -> bool:
        """Whether the connection is CLOSED with nothing left to do, so the stack may drop it."""
        return self._finished

    @property
    def snd_mss(self) -> int:
        """Largest payload sent per segment: min(peer MSS, local MSS)."""
        return self._snd_mss

    @property
    def mss(self) -> int:
        """Current send MSS, the value Linux reports for getsockopt(TCP_MAXSEG)."""
        return self._snd_mss

    @property
    def window_scales(self) -> tuple[int, int]:
        """Negotiated (send, receive) window shift counts; (0, 0) without RFC 7323 scaling."""
        return self._snd_wscale, self._rcv_wscale

    @property
    def rto(self) -> float:
        """Current retransmission timeout in seconds, backoff included."""
        return self._rtt.rto

    @property
    def cwnd(self) -> int:
        """Congestion window in bytes."""
        return self._congestion.cwnd

    @property
    def congestion_control(self) -> str:
        """Name of the congestion control algorithm, as TCP_CONGESTION reports it."""
        return self._congestion.name

    def info(self) -> dict:
        """Return the fields of Linux's struct tcp_info that this connection tracks.

        Times are in microseconds and windows in segments, as Linux reports them.
        """
        mss = max(self._snd_mss, 1)
        outstanding = self._snd_max - self._snd_una
        srtt = self._rtt.srtt or 0.0
        options = 0
        if self._ts_enabled:
            options |= 1            # TCPI_OPT_TIMESTAMPS
        if self._sack_enabled:
            options |= 2            # TCPI_OPT_SACK
        if self._rcv_wscale or self._snd_wscale:
            options |= 4            # TCPI_OPT_WSCALE
        return {
            "state": self.state,
            "ca_state": 3 if self._congestion.in_recovery else 0,     # TCP_CA_Recovery or TCP_CA_Open
            "retransmits": self._retries,
            "probes": max(self._persist_probes, self._keepalive_probes),
            "backoff": self._rtt.backoffs,
            "options": options,
            "snd_wscale": self._snd_wscale,
            "rcv_wscale": self._rcv_wscale,
            "rto": int(self._rtt.rto * 1e6),
            "ato": int(self._config.delayed_ack * 1e6),
            "snd_mss": self._snd_mss,
            "rcv_mss": self._rcv_mss,
            "unacked": -(-outstanding // mss),
            "sacked": -(-self._scoreboard.sacked_bytes() // mss),
            "retrans": 0,
            "pmtu": self._mss + (60 if len(self.remote_ip) == 16 else 40),
            "rcv_ssthresh": self._config.rcvbuf,
            "rtt": int(srtt * 1e6),
            "rttvar": int(self._rtt.rttvar * 1e6),
            "snd_ssthresh": min(self._congestion.ssthresh // mss, 0x7FFFFFFF),
            "snd_cwnd": self._congestion.cwnd // mss,
            "advmss": self._mss,
            "reordering": 3,
            "rcv_space": self._config.rcvbuf,
            "total_retrans": self._total_retrans,
        }

    def accepts_new_syn(self, syn: TcpRepr) -> bool:
        """Whether a SYN may replace this connection in TIME-WAIT with a new one.

        As Linux's tcp_timewait_state_process: the SYN must start above RCV.NXT,
        or, with timestamps, carry a TSval newer than TS.Recent (RFC 6191).
        """
        if self.state is not State.TIME_WAIT or not syn.flags & SYN or syn.flags & (ACK | RST | FIN):
            return False
        if self._ts_enabled and syn.timestamp is not None:
            return _seq_diff(syn.timestamp[0], self._ts_recent) > 0
        return _seq_diff(syn.seq, self._rcv_wire(self._rcv_nxt)) > 0

    def accept_cookie(self, ack: TcpRepr, mss: int) -> None:
        """Open a passive connection in ESTABLISHED from the ACK that returned a valid SYN cookie.

        The listener kept no state for the SYN, so IRS is SEG.SEQ - 1 and ISS
        was the cookie, SEG.ACK - 1, which must equal this connection's ``iss``.
        The only option known is the ``mss`` that the cookie encoded. Window
        scaling, timestamps and SACK stay off, as in Linux without TSopt.
        """
        self._require_fresh("accept_cookie")
        self._passive = True
        self._irs = (ack.seq - 1) & _MASK
        self._rcv_nxt = 1
        self._rcv_adv = 1 + min(self._config.rcvbuf, _MAX_WINDOW_FIELD)
        self._last_ack_sent = 1
        self._snd_mss = max(min(mss, self._mss), _MIN_SEND_MSS)
        self._congestion = self._new_congestion()
        self._snd_una = self._snd_nxt = self._snd_max = 1
        self._snd_wnd = self._max_snd_wnd = ack.window
        self._snd_wl1 = 0
        self._snd_wl2 = 1
        self._counters.PassiveOpens += 1
        self._enter_established()
        self.on_segment(ack)

    # Opening.

    def connect(self) -> None:
        """Start an active open: CLOSED -> SYN_SENT, sending a SYN with MSS and window scale."""
        self._require_fresh("connect")
        if self._config.window_scaling:
            self._window_scale_offer = self._choose_window_scale()
        self._ts_offered = self._config.timestamps
        self._sack_offered = self._config.sack
        self._set_state(State.SYN_SENT)
        self._counters.ActiveOpens += 1
        self._send_syn()
        self._snd_nxt = self._snd_max = 1
        self._start_rtt(1)
        self._arm_rto()

    def accept_syn(self, syn: TcpRepr) -> None:
        """Start a passive open from a listener's SYN: CLOSED -> SYN_RECEIVED, sending a SYN-ACK."""
        self._require_fresh("accept_syn")
        self._counters.InSegs += 1
        self._passive = True
        if self._config.window_scaling and syn.window_scale is not None:
            self._window_scale_offer = self._choose_window_scale()
        self._ts_offered = self._config.timestamps and syn.timestamp is not None
        self._sack_offered = self._config.sack and syn.sack_permitted
        self._receive_syn(syn)
        self._snd_wnd = syn.window
        self._max_snd_wnd = syn.window
        self._set_state(State.SYN_RECEIVED)
        self._send_syn()
        self._snd_nxt = self._snd_max = 1
        self._start_rtt(1)
        self._arm_rto()

    def _require_fresh(self, operation: str) -> None:
        if self.state is not State.CLOSED or self._finished:
            raise RuntimeError(f"TCP {operation} on a connection in state {self.state.name}; "
                               "create a new TcpConnection")

    def _new_congestion(self):
        return make_congestion(self._config.congestion, self._snd_mss, self._clock, lambda: self._rtt.srtt,
                               sack=self._sack_enabled)

    def _choose_window_scale(self) -> int:
        needed = max(self._config.rcvbuf, _WINDOW_SCALE_BUFFER)
        shift = 0
        while shift < _MAX_WINDOW_SCALE and _MAX_WINDOW_FIELD << shift < needed:
            shift += 1
        return shift

    def _default_peer_mss(self) -> int:
        return _DEFAULT_MSS_IPV6 if len(self.remote_ip) == 16 else _DEFAULT_MSS_IPV4

    def _receive_syn(self, syn: TcpRepr) -> None:
        """Record IRS and negotiate MSS and window scale from the peer's SYN."""
        self._irs = syn.seq
        self._rcv_nxt = 1
        self._rcv_adv = 1 + min(self._config.rcvbuf, _MAX_WINDOW_FIELD)

        peer_mss = syn.mss if syn.mss else self._default_peer_mss()
        self._snd_mss = max(min(peer_mss, self._mss), _MIN_SEND_MSS)

        # RFC 7323 section 3.2 and RFC 2018 section 2: each is used only when both SYNs carry it.
        self._ts_enabled = self._ts_offered and syn.timestamp is not None
        if self._ts_enabled:
            self._ts_recent = syn.timestamp[0]
            self._ts_recent_time = self._clock()
            # Like Linux's mss_cache, the send MSS leaves room for the option.
            self._snd_mss = max(self._snd_mss - _TIMESTAMP_OPTION_LEN, _MIN_SEND_MSS)
        self._sack_enabled = self._sack_offered and syn.sack_permitted
        self._congestion = self._new_congestion()

        # RFC 7323 section 2.2: scaling applies only when both SYNs carry the option.
        if self._window_scale_offer is not None and syn.window_scale is not None:
            self._snd_wscale = min(syn.window_scale, _MAX_WINDOW_SCALE)
            self._rcv_wscale = self._window_scale_offer
        else:
            self._snd_wscale = 0
            self._rcv_wscale = 0

    # Receiving segments.

    def on_segment(self, seg: TcpRepr) -> None:
        """Process a segment received for this connection (RFC 9293 section 3.10.7)."""
        if self.state in (State.CLOSED, State.LISTEN):
            return
        self._counters.InSegs += 1
        self._last_received = self._clock()
        self._keepalive_probes = 0
        self._persist_probes = 0

        if self.state is State.SYN_SENT:
            self._on_segment_syn_sent(seg)
        else:
            self._on_segment_synchronized(seg)
        self._check_send_space()
        self._notify()

    def _on_segment_syn_sent(self, seg: TcpRepr) -> None:
        """Process a segment in SYN_SENT (RFC 9293 section 3.10.7.3)."""
        ack = None
        if seg.flags & ACK:
            ack = self._snd_offset(seg.ack)
            if ack <= 0 or ack > self._snd_max:
                if not seg.flags & RST:
                    self._emit_reset(seq_wire=seg.ack, ack=False)
                return

        if seg.flags & RST:
            if ack is not None:
                self._reset_by_peer()
            return
        if not seg.flags & SYN:
            return

        self._receive_syn(seg)
        self._snd_wnd = seg.window          # RFC 7323: the window of a SYN is never scaled
        self._max_snd_wnd = seg.window
        self._snd_wl1 = 0
        if ack is None:
            # Simultaneous open (RFC 9293 figure 7): reply with SYN-ACK on the same ISS.
            self._set_state(State.SYN_RECEIVED)
            self._send_syn()
            return

        self._snd_wl2 = ack
        self._acknowledge(ack)
        self._enter_established()
        self._push()
        self._send_ack()

    def _on_segment_synchronized(self, seg: TcpRepr) -> None:
        """Process a segment in any state after SYN_SENT (RFC 9293 section 3.10.7.4)."""
        flags = seg.flags
        seq = self._rcv_offset(seg.seq)

        if self.state is State.SYN_RECEIVED and flags & SYN and not flags & ACK and seq == 0:
            # The peer did not get our SYN-ACK and retransmitted its SYN.
            self._send_syn()
            return
        if (self.state is State.SYN_RECEIVED and not self._passive and flags & SYN and flags & ACK
                and seq == 0 and self._snd_offset(seg.ack) == self._snd_max):
            # Simultaneous open: the peer's SYN-ACK acknowledges our SYN. Linux's
            # tcp_validate_incoming lets exactly this SYN through.
            if self._process_ack(seg, seq) and self.state is not State.CLOSED:
                self._push()
            return

        # RFC 7323 section 5.3: PAWS drops a segment whose TSval is older than TS.Recent.
        if (self._ts_enabled and seg.timestamp is not None and not flags & RST
                and _seq_diff(seg.timestamp[0], self._ts_recent) < -_PAWS_WINDOW
                and self._clock() - self._ts_recent_time <= _PAWS_IDLE_LIMIT
                and not self._is_disordered_ack(seg, seq)):
            self._counters.PAWSEstab += 1
            self._send_ack()
            return

        # First: the sequence number must fall in the receive window.
        if not self._is_acceptable(seq, seg):
            if not flags & RST:
                if self.state is State.TIME_WAIT and flags & FIN:
                    self._close_deadline = self._clock() + self._config.time_wait
                self._send_ack()
            return

        # RFC 7323 section 4.3: remember the TSval to echo when the segment
        # covers the left edge of the window.
        if (self._ts_enabled and seg.timestamp is not None and seq <= self._last_ack_sent
                and _seq_diff(seg.timestamp[0], self._ts_recent) >= 0):
            self._ts_recent = seg.timestamp[0]
            self._ts_recent_time = self._clock()

        # Second: RST, accepted only at exactly RCV.NXT (RFC 5961 section 3.2).
        if flags & RST:
            if seq == self._rcv_nxt:
                self._reset_by_peer()
            else:
                self._send_challenge_ack()
            return

        # Fourth: a SYN in a synchronized state gets a challenge ACK (RFC 5961 section 4).
        # This includes TIME_WAIT: a SYN that may reuse the 4-tuple never gets here,
        # because the stack checks ``accepts_new_syn`` first.
        if flags & SYN:
            self._send_challenge_ack()
            return

        # Fifth: the ACK field.
        if not flags & ACK:
            return
        if not self._process_ack(seg, seq):
            return
        if self.state is State.CLOSED:
            return

        # Sixth, URG, is skipped: urgent data is delivered inline like other bytes.
        # Seventh and eighth: segment text and FIN.
        if seg.payload or flags & FIN:
            self._process_data(seg, seq)
            if self.state is State.CLOSED:
                return

        self._push()
        if self._unacked_bytes >= 2 * self._rcv_mss:
            self._send_ack()
        elif self._unacked_bytes and self._delack_deadline is None:
            self._delack_deadline = self._clock() + self._config.delayed_ack

    def _is_disordered_ack(self, seg: TcpRepr, seq: int) -> bool:
        """Whether ``seg`` is a reordered duplicate ACK that PAWS lets through, as Linux's tcp_disordered_ack.

        A pure ACK at RCV.NXT for SND.UNA that does not change the window
        carries nothing a replay could harm, if its TSval is within one RTO of TS.Recent.
        """
        if seg.payload or seg.flags & (SYN | FIN) or not seg.flags & ACK or seq != self._rcv_nxt:
            return False
        if self._snd_offset(seg.ack) != self._snd_una or seg.window << self._snd_wscale != self._snd_wnd:
            return False
        return _seq_diff(self._ts_recent, seg.timestamp[0]) <= self._rtt.rto * 1000

    def _is_acceptable(self, seq: int, seg: TcpRepr) -> bool:
        """Apply the segment acceptability test of RFC 9293 section 3.10.7.4."""
        window = max(self._rcv_adv - self._rcv_nxt, 0)
        length = len(seg.payload)
        if length == 0:
            # A bare FIN at RCV.NXT is taken even with a zero window, as Linux does.
            return self._rcv_nxt <= seq <= self._rcv_nxt + window
        if window == 0:
            return False
        right = self._rcv_nxt + window
        return self._rcv_nxt <= seq < right or self._rcv_nxt <= seq + length - 1 < right

    def _process_ack(self, seg: TcpRepr, seq: int) -> bool:
        """Apply the ACK field; return False when the segment must be dropped."""
        ack = self._snd_offset(seg.ack)

        if self.state is State.SYN_RECEIVED:
            if not self._snd_una < ack <= self._snd_max:
                self._emit_reset(seq_wire=seg.ack, ack=False)
                return False
            self._snd_wnd = seg.window << self._snd_wscale
            self._snd_wl1 = seq
            self._snd_wl2 = ack
            self._acknowledge(ack)
            if self._passive:
                self._counters.PassiveOpens += 1
            self._enter_established()
            return True

        if ack > self._snd_max:
            # RFC 9293: an ACK for data not yet sent gets an ACK in reply and is dropped.
            self._send_ack()
            return False
        if ack < self._snd_una - max(self._max_snd_wnd, 1):
            # RFC 5961 section 5.2: too old to be from this connection's window.
            self._send_challenge_ack()
            return False

        window = seg.window << self._snd_wscale
        new_sack = self._sack_enabled and self._record_sack_blocks(seg.sack_blocks, ack)
        if ack > self._snd_una:
            self._check_spurious_recovery(seg, ack)
            self._probe_pending = False
            self._acknowledge(ack)
        elif (ack == self._snd_una and not seg.payload and not seg.flags & FIN
              and (window == self._snd_wnd or new_sack) and self._snd_max > self._snd_una):
            # RFC 5681 section 2 duplicate ACK; with SACK, any ACK bringing new SACK information.
            congestion = self._congestion
            flight = self._snd_max - self._snd_una
            prior = (congestion.cwnd, congestion.ssthresh)
            if congestion.on_duplicate_ack(self._snd_una, self._snd_max, flight):
                self._start_loss_recovery(prior)
            elif congestion.in_recovery and self._scoreboard:
                self._retransmit_holes()
            elif self._scoreboard.sacked_bytes() > (congestion.dupthresh - 1) * self._snd_mss:
                # RFC 6675 section 5 IsLost(SND.UNA): more than DupThresh - 1 segments SACKed above it.
                if congestion.enter_recovery(self._snd_una, self._snd_max, flight):
                    self._start_loss_recovery(prior)

        if self._snd_wl1 < seq or (self._snd_wl1 == seq and self._snd_wl2 <= ack):
            self._snd_wnd = window
            self._max_snd_wnd = max(self._max_snd_wnd, window)
            self._snd_wl1 = seq
            self._snd_wl2 = ack
            if window:
                self._persist_deadline = None
                self._persist_backoff = 0
        self._run_rack(update=True)
        self._arm_probe()
        return True

    def _record_sack_blocks(self, blocks, ack: int) -> bool:
        """Add the SACK blocks above ``ack`` to the scoreboard; return whether any was new (RFC 2018).

        Blocks at or below the cumulative ACK (D-SACK, RFC 2883) or beyond
        SND.MAX are ignored.
        """
        new = False
        for index, (left_wire, right_wire) in enumerate(blocks):
            left = self._snd_offset(left_wire)
            right = self._snd_offset(right_wire)
            if ack <= left < right <= self._snd_max:
                new |= self._scoreboard.add(left, right)
            elif index == 0 and left < right <= ack and self._undo is not None:
                self._on_duplicate_sack(right - left)
        return new

    def _on_duplicate_sack(self, size: int) -> None:
        """Count a D-SACK (RFC 2883): once every retransmission of this recovery arrived twice,
        none was needed and the window reduction is undone (RFC 3708)."""
        self._undo_bytes -= size
        if self._undo_bytes <= 0:
            self._counters.TCPDSACKUndo += 1
            self._undo_recovery()

    def _check_spurious_recovery(self, seg: TcpRepr, ack: int) -> None:
        """Undo the window reduction when the first ACK of the retransmitted data echoes a TSval
        older than the retransmission: the original arrived, so the loss was reordering (RFC 3522)."""
        if self._undo is None or self._undo_timestamp_checked or not self._ts_enabled or seg.timestamp is None:
            return
        self._undo_timestamp_checked = True
        if _seq_diff(seg.timestamp[1], self._undo[2]) < 0:
            self._counters.TCPFullUndo += 1
            self._undo_recovery()

    def _undo_recovery(self) -> None:
        """Restore cwnd and ssthresh from before a spurious recovery and tolerate more reordering."""
        cwnd, ssthresh, _ = self._undo
        self._undo = None
        self._reorder_window_factor = min(self._reorder_window_factor + 1, _MAX_REORDER_WINDOW_FACTOR)
        congestion = self._congestion
        congestion.cwnd = max(congestion.cwnd, cwnd)
        congestion.ssthresh = max(congestion.ssthresh, ssthresh)
        congestion.in_recovery = False
        congestion.duplicate_acks = 0
        congestion.recover = self._snd_una - 1
        # Like Linux's tp->reordering: wait for more duplicate ACKs before the next recovery.
        congestion.dupthresh = min(congestion.dupthresh + 2, _MAX_DUPTHRESH)

    def _note_recovery(self, prior: tuple[int, int]) -> None:
        """Count a new recovery and save what undoing it needs."""
        self._counters.TCPFastRetrans += 1
        self._high_rxt = self._snd_una
        self._undo = (*prior, self._tsval())
        self._undo_bytes = 0
        self._undo_timestamp_checked = False

    def _run_rack(self, update: bool) -> None:
        """Retransmit the segments RACK finds lost (RFC 8985 section 6.2), entering recovery once.

        ``update`` feeds the latest ACK and SACK state to RACK first; the
        reordering timer only checks again.
        """
        if not (self._config.rack and self._sack_enabled) or self.state not in _SENDING_STATES:
            return
        now = self._clock()
        if update:
            self._rack.on_ack(self._snd_una, self._scoreboard.sacked_end, self._scoreboard.highest, now)
        min_rtt = self._rack.min_rtt
        reorder_window = min(min_rtt / 4 * self._reorder_window_factor, self._rtt.srtt or min_rtt) if min_rtt else 0.0
        lost, self._rack_deadline = self._rack.detect_losses(now, reorder_window)
        if not lost:
            return

        congestion = self._congestion
        prior = (congestion.cwnd, congestion.ssthresh)
        if congestion.enter_recovery(self._snd_una, self._snd_max, self._snd_max - self._snd_una):
            self._note_recovery(prior)
        data_end = self._snd_buf_start + len(self._snd_buf)
        for start, end in lost:
            if start < self._snd_una:
                continue
            size = max(min(end, data_end) - start, 0)
            fin = self._fin_queued and end > data_end
            if size or fin:
                self._send_data(start, size, fin)
                self._high_rxt = max(self._high_rxt, start + size)
        self._arm_rto()

    def _arm_probe(self) -> None:
        """Arm the tail loss probe timer while data is in flight (RFC 8985 section 7.2).

        Like Linux, RACK-TLP runs only on connections that negotiated SACK.
        """
        self._probe_deadline = None
        if (not (self._config.rack and self._sack_enabled) or self._probe_pending or self._congestion.in_recovery
                or self._snd_max <= self._snd_una or self.state not in _SENDING_STATES or self._rto_deadline is None):
            return
        srtt = self._rtt.srtt
        timeout = 2 * srtt if srtt is not None else 1.0
        if self._snd_max - self._snd_una <= self._snd_mss:
            timeout += _WORST_CASE_DELAYED_ACK     # the peer may delay the ACK of a lone segment
        deadline = self._clock() + max(timeout, _MIN_PROBE_TIMEOUT)
        if deadline < self._rto_deadline:
            self._probe_deadline = deadline

    def _on_probe_timeout(self) -> None:
        """Send a tail loss probe: new data if the windows allow, else the last segment again."""
        self._probe_deadline = None
        if self.state not in _SENDING_STATES or self._snd_max <= self._snd_una:
            return
        self._probe_pending = True
        self._counters.TCPLossProbes += 1
        sent_before = self._snd_max
        self._push(force=True)
        if self._snd_max == sent_before:
            last = self._rack.last_outstanding(self._snd_una)
            if last is not None:
                start, end = last
                start = max(start, end - self._snd_mss)
                data_end = self._snd_buf_start + len(self._snd_buf)
                size = max(min(end, data_end) - start, 0)
                fin = self._fin_queued and end > data_end
                if size or fin:
                    self._send_data(start, size, fin)
        self._arm_rto(restart=True)

    def _start_loss_recovery(self, prior: tuple[int, int]) -> None:
        """Retransmit on entering fast recovery: the holes with SACK (RFC 6675), else the first segment.

        ``prior`` is (cwnd, ssthresh) before the reduction, kept so that a
        recovery found spurious can be undone.
        """
        self._note_recovery(prior)
        if self._scoreboard:
            self._counters.TCPSackRecovery += 1
            self._retransmit_holes(first=True)
        else:
            self._counters.TCPRenoRecovery += 1
            self._retransmit_head()

    def _retransmit_holes(self, first: bool = False) -> None:
        """Retransmit unSACKed data below the highest SACKed byte while the pipe is under cwnd.

        RFC 6675 section 5: pipe counts the bytes in flight that are neither
        SACKed nor presumed lost. A hole is presumed lost once more than
        DupThresh - 1 segments above it are SACKed (IsLost, counted in bytes).
        ``first`` sends one segment whatever the pipe.
        """
        mss = self._snd_mss
        data_end = self._snd_buf_start + len(self._snd_buf)
        self._high_rxt = max(self._high_rxt, self._snd_una)
        holes = [(start, min(end, data_end)) for start, end in self._scoreboard.holes(self._snd_una)
                 if self._scoreboard.sacked_above(start) > (self._congestion.dupthresh - 1) * mss]
        not_resent = sum(max(end - max(start, self._high_rxt), 0) for start, end in holes)
        pipe = self._snd_max - self._snd_una - self._scoreboard.sacked_bytes() - not_resent
        sent = False
        for start, end in holes:
            start = max(start, self._high_rxt)
            while start < end and (pipe + mss <= self._congestion.cwnd or (first and not sent)):
                size = min(mss, end - start)
                self._send_data(start, size, fin=False)
                start += size
                self._high_rxt = start
                pipe += size
                sent = True
        if first and not sent:
            # RFC 6675 section 5 step 4.3: the first unacknowledged segment goes out at once.
            self._retransmit_head()
            return
        if sent:
            self._arm_rto()

    def _acknowledge(self, ack: int) -> None:
        """Advance SND.UNA to ``ack``: free acknowledged data, time, grow the window, follow a FIN."""
        now = self._clock()
        data_end = self._snd_buf_start + len(self._snd_buf)
        data_acked = min(ack, data_end) - self._snd_buf_start
        if data_acked > 0:
            del self._snd_buf[:data_acked]
            self._snd_buf_start += data_acked
        acked_bytes = max(data_acked, 0)
        self._snd_una = ack
        self._snd_nxt = max(self._snd_nxt, ack)
        self._retries = 0
        self._scoreboard.forget_below(ack)
        self._unacked_since = now if ack < self._snd_max else None

        if self._rtt_seq is not None and ack >= self._rtt_seq:
            self._rtt.sample(now - self._rtt_start)
            self._rtt_seq = None

        if self._snd_una >= self._snd_max:
            self._rto_deadline = None
        else:
            self._arm_rto(restart=True)

        if acked_bytes and self.state is not State.SYN_SENT:
            flight = self._snd_max - self._snd_una
            if self._congestion.on_ack(acked_bytes, self._snd_una, flight):
                if self._scoreboard:
                    self._retransmit_holes(first=True)
                else:
                    self._retransmit_head()

        if self._fin_queued and ack > data_end:
            self._on_fin_acknowledged()

    def _on_fin_acknowledged(self) -> None:
        if self.state is State.FIN_WAIT_1:
            self._set_state(State.FIN_WAIT_2)
            if self._app_closed:
                self._close_deadline = self._clock() + self._config.fin_timeout
        elif self.state is State.CLOSING:
            self._enter_time_wait()
        elif self.state is State.LAST_ACK:
            self._enter_closed()

    def _process_data(self, seg: TcpRepr, seq: int) -> None:
        """Queue in-window payload and handle the FIN (RFC 9293 section 3.10.7.4, steps 7 and 8)."""
        if self.state not in _RECEIVING_STATES:
            return

        data = seg.payload
        fin = bool(seg.flags & FIN)
        start = seq
        if start < self._rcv_nxt:
            data = data[self._rcv_nxt - start:]
            start = self._rcv_nxt
        right = self._rcv_adv if self._rcv_adv > self._rcv_nxt else self._rcv_nxt
        if start + len(data) > right:
            data = data[:max(right - start, 0)]
            fin = False

        if data and self._app_closed:
            # Linux resets a connection whose application closed it but still gets data.
            self._counters.TCPAbortOnData += 1
            self._emit_reset(seq_wire=self._snd_wire(self._snd_max), ack=True)
            self._enter_closed()
            return

        ack_now = False
        if data:
            self._rcv_mss = max(self._rcv_mss, min(len(data), self._mss))
            if start == self._rcv_nxt:
                self._rcv_buf += data
                self._rcv_nxt += len(data)
                self._unacked_bytes += len(data)
                if len(self._out_of_order):
                    ack_now = True
                    self._drain_out_of_order()
            else:
                self._counters.TCPOFOQueue += 1
                self._out_of_order.add(start, data)
                self._received_blocks.note(start)
                ack_now = True

        if fin:
            fin_at = start + len(data)
            if fin_at == self._rcv_nxt:
                self._receive_fin()
            elif fin_at > self._rcv_nxt:
                self._out_of_order_fin = fin_at
            ack_now = True
        elif self._out_of_order_fin == self._rcv_nxt:
            self._receive_fin()
            ack_now = True

        if ack_now:
            self._push()
            self._send_ack()

    def _drain_out_of_order(self) -> None:
        while True:
            chunk = self._out_of_order.pop_from(self._rcv_nxt)
            if chunk is None:
                return
            self._rcv_buf += chunk
            self._rcv_nxt += len(chunk)

    def _receive_fin(self) -> None:
        self._rcv_nxt += 1
        self._out_of_order_fin = None
        self.fin_received = True
        if self.state is State.ESTABLISHED:
            self._set_state(State.CLOSE_WAIT)
        elif self.state is State.FIN_WAIT_1:
            self._set_state(State.CLOSING)
        elif self.state is State.FIN_WAIT_2:
            self._enter_time_wait()

    def _reset_by_peer(self) -> None:
        """Close on an accepted RST with the errno that Linux's tcp_reset (net/ipv4/tcp_input.c) sets.

        A passive SYN_RECEIVED connection has no socket yet and TIME_WAIT has
        no reader, so neither gets an error.
        """
        if self.state is State.SYN_SENT:
            self.error = errno.ECONNREFUSED
        elif self.state is State.CLOSE_WAIT:
            self.error = errno.EPIPE
        elif not (self.state is State.TIME_WAIT or (self.state is State.SYN_RECEIVED and self._passive)):
            self.error = errno.ECONNRESET
        self._enter_closed()

    # Sending.

    def send(self, data: bytes | memoryview) -> int:
        """Queue as much of ``data`` as fits in the send buffer and transmit what the windows allow.

        Returns the number of bytes queued: 0 when the buffer is full or the
        state does not allow sending (check ``can_send`` first).
        """
        if not self.can_send:
            return 0
        count = min(len(data), self.send_space)
        if count < len(data):
            self._writer_waiting = True
        if count <= 0:
            return 0
        self._snd_buf += memoryview(data)[:count]
        self._push()
        return count

    def _push(self, force: bool = False) -> None:
        """Transmit queued data and a queued FIN as far as the windows, Nagle and SWS avoidance allow.

        ``force`` sends one segment past Nagle and sender SWS avoidance, for
        the persist timer (RFC 9293 section 3.8.6.2.1 override timeout).
        """
        if self.state not in _SENDING_STATES:
            return
        mss = self._snd_mss
        sent = False
        while True:
            data_end = self._snd_buf_start + len(self._snd_buf)
            unsent = data_end - self._snd_nxt
            fin_pending = self._fin_queued and self._snd_nxt <= data_end
            if unsent <= 0 and not fin_pending:
                break
            sacked_end = self._scoreboard.sacked_end(self._snd_nxt) if self._scoreboard else None
            if sacked_end is not None and self._snd_nxt < self._snd_max:
                # RFC 6675 section 5.1: data the peer SACKed is not sent again.
                self._snd_nxt = min(sacked_end, self._snd_max)
                continue

            if unsent > 0:
                flight = self._snd_nxt - self._snd_una
                usable = min(self._congestion.cwnd, self._snd_wnd) - flight
                size = min(self._burst_size(mss), unsent, usable)
                if mss < size < unsent:
                    size -= size % mss      # Only the last segment of the queue may end short.
                if size <= 0:
                    break
                retransmitting = self._snd_nxt < self._snd_max
                if retransmitting and self._scoreboard:
                    next_sacked = self._scoreboard.next_sacked_start(self._snd_nxt)
                    if next_sacked is not None:
                        size = min(size, next_sacked - self._snd_nxt)
                if size < mss and not retransmitting and not force:
                    if self._config.cork and size == unsent and not self._fin_queued:
                        break       # TCP_CORK: hold a partial segment until uncorked.
                    if size < unsent and size < self._max_snd_wnd // 2:
                        break       # Sender SWS avoidance: wait for the window to open.
                    if (size == unsent and not self._fin_queued and not self._config.nodelay
                            and self._snd_una < self._snd_sml <= self._snd_max):
                        break       # Nagle (Minshall's variant, as Linux): one small segment in flight.
                fin = self._fin_queued and size == unsent
            else:
                size = 0
                fin = True

            self._send_data(self._snd_nxt, size, fin)
            if 0 < size < mss:
                self._snd_sml = self._snd_nxt + size
            self._snd_nxt += size + fin
            sent = True
            if force:
                break

        if sent:
            self._persist_deadline = None
            self._arm_rto()
            self._arm_probe()
        elif (self._snd_max == self._snd_una and self._snd_buf_start + len(self._snd_buf) > self._snd_nxt
              and self._persist_deadline is None):
            self._arm_persist()

    def _check_send_space(self) -> None:
        """Grow the send buffer for a waiting writer, as Linux's tcp_check_space and tcp_new_space.

        Linux's tcp_should_expand_sndbuf grows the buffer only while cwnd has
        room for another segment after sending, because then the buffer, not
        cwnd, limits the sender. The socket is notified after every segment,
        which wakes the writer to use the new space.
        """
        if not self._writer_waiting:
            return
        flight = self._snd_max - self._snd_una
        if (self._config.sndbuf_auto and self.state in _SENDING_STATES
                and self._congestion.cwnd - flight >= self._snd_mss):
            self._expand_send_buffer()
        # As Linux's sk_stream_write_space: writable again once the free space is half the queue.
        if self.send_space >= len(self._snd_buf) // 2:
            self._writer_waiting = False

    def _expand_send_buffer(self) -> None:
        """Raise sndbuf to the congestion control's send_buffer_size, up to sndbuf_max. It never shrinks."""
        size = min(self._congestion.send_buffer_size(), self._config.sndbuf_max)
        if size > self._config.sndbuf:
            self._config.sndbuf = size

    def _burst_size(self, mss: int) -> int:
        """Return the payload bytes one segment may carry: a multiple of MSS up to gso_max_size under GSO."""
        if self.gso_max_size <= mss:
            return mss
        return self.gso_max_size - self.gso_max_size % mss

    def _send_data(self, start: int, size: int, fin: bool) -> None:
        """Send ``size`` buffered bytes from offset ``start``, with FIN if ``fin``."""
        index = start - self._snd_buf_start
        payload = bytes(memoryview(self._snd_buf)[index:index + size]) if size else b""
        flags = ACK
        if size and index + size == len(self._snd_buf):
            flags |= PSH
        if fin:
            flags |= FIN

        end = start + size + fin
        if self._config.rack and end > start:
            self._rack.on_transmit(start, end, self._clock(), retransmit=start < self._snd_max)
        if self._unacked_since is None:
            self._unacked_since = self._clock()
        if start < self._snd_max:
            self._counters.RetransSegs += 1
            self._total_retrans += 1
            self._undo_bytes += size
            self._rtt_seq = None        # Karn's rule: no RTT sample across a retransmission.
        elif self._rtt_seq is None:
            self._start_rtt(end)
        self._snd_max = max(self._snd_max, end)
        self._emit(self._snd_wire(start), flags, payload)

    def _retransmit_head(self) -> None:
        """Retransmit the first unacknowledged segment, whatever the windows."""
        data_end = self._snd_buf_start + len(self._snd_buf)
        size = max(min(self._snd_mss, data_end - self._snd_una), 0)
        fin = self._fin_queued and self._snd_una + size == data_end
        if size == 0 and not fin:
            return
        self._send_data(self._snd_una, size, fin)
        self._snd_nxt = max(self._snd_nxt, self._snd_una + size + fin)

    def _send_syn(self) -> None:
        """Send our SYN, or SYN-ACK once the peer's SYN is known."""
        synchronized = self.state is State.SYN_RECEIVED
        self._emit(self._snd_wire(0), SYN | ACK if synchronized else SYN, b"",
                   window=min(self._config.rcvbuf, _MAX_WINDOW_FIELD), mss=self._mss,
                   window_scale=self._window_scale_offer, sack_permitted=self._sack_offered)

    def _send_ack(self) -> None:
        """Send a bare ACK with sequence number SND.MAX, so that the peer does not drop it as old.

        After a retransmission timeout SND.NXT moves back, and Linux drops a
        bare ACK whose sequence number is below its RCV.NXT.
        """
        self._emit(self._snd_wire(self._snd_max), ACK, b"")

    def _send_challenge_ack(self) -> None:
        """Send a challenge ACK, at most one per CHALLENGE_ACK_INTERVAL (RFC 5961 section 7).

        Linux limits them per socket the same way (tcp_invalid_ratelimit, 500 ms).
        """
        now = self._clock()
        if now - self._last_challenge_ack < _CHALLENGE_ACK_INTERVAL:
            self._counters.TCPACKSkippedChallenge += 1
            return
        self._last_challenge_ack = now
        self._counters.TCPChallengeACK += 1
        self._send_ack()

    def _emit(self, seq_wire: int, flags: int, payload: bytes, *, window: int | None = None,
              mss: int | None = None, window_scale: int | None = None, sack_permitted: bool = False) -> None:
        """Hand one segment to ``output``; every segment but the first SYN carries ACK.

        Adds TSopt once negotiated (and on our SYN when offered) and SACK
        blocks while out-of-order data is queued.
        """
        if self.state is State.CLOSED:
            return
        if window is None:
            window = self._window_field()
        ack_wire = self._rcv_wire(self._rcv_nxt) if flags & ACK else 0
        timestamp = None
        if self._ts_enabled or (flags & SYN and self._ts_offered):
            timestamp = (self._tsval(), self._ts_recent if flags & ACK else 0)
        sack_blocks = ()
        if self._sack_enabled and flags & ACK and not flags & SYN and len(self._out_of_order):
            # RFC 2018 section 3: at most 3 blocks next to TSopt in 40 bytes, 4 without.
            limit = 3 if timestamp else 4
            blocks = self._received_blocks.blocks(self._out_of_order.ranges(), self._rcv_nxt, limit)
            sack_blocks = tuple((self._rcv_wire(start), self._rcv_wire(end)) for start, end in blocks)
        if flags & ACK:
            self._last_ack_sent = self._rcv_nxt
        self._unacked_bytes = 0
        self._delack_deadline = None
        self._counters.OutSegs += 1
        self._output(TcpRepr(src_port=self.local_port, dst_port=self.remote_port, seq=seq_wire,
                             ack=ack_wire, flags=flags, window=window, mss=mss,
                             window_scale=window_scale, sack_permitted=sack_permitted,
                             timestamp=timestamp, sack_blocks=sack_blocks, payload=payload))

    def _tsval(self) -> int:
        """Return this side's TSval: a millisecond clock (RFC 7323 section 5.4 allows 1 ms to 1 s per tick)."""
        return (int(self._clock() * 1000) + self._ts_offset) & _MASK

    def _emit_reset(self, seq_wire: int, ack: bool) -> None:
        self._counters.OutRsts += 1
        self._counters.OutSegs += 1
        self._output(TcpRepr(src_port=self.local_port, dst_port=self.remote_port, seq=seq_wire & _MASK,
                             ack=self._rcv_wire(self._rcv_nxt) if ack else 0,
                             flags=RST | ACK if ack else RST, window=0))

    def _window_field(self) -> int:
        """Return the scaled window to advertise, never shrinking the right edge.

        The window opens only by at least min(rcvbuf / 2, MSS) at a time
        (receiver SWS avoidance, RFC 9293 section 3.8.6.2.2).
        """
        shift = self._rcv_wscale
        free = max(self._config.rcvbuf - len(self._rcv_buf), 0)
        promised = max(self._rcv_adv - self._rcv_nxt, 0)
        # Rounded up so the right edge never moves left. NOTE: like Linux, this
        # can let the peer fill up to 2**shift - 1 bytes past rcvbuf per ACK sent
        # while the window closes.
        promised_field = -(-promised >> shift)
        threshold = min(self._config.rcvbuf // 2, self._mss)
        field = promised_field
        if free >= promised + threshold:
            field = max(free >> shift, promised_field)
        field = min(field, _MAX_WINDOW_FIELD)
        self._rcv_adv = max(self._rcv_adv, self._rcv_nxt + (field << shift))
        return field

    # Application calls.

    def recv(self, max_bytes: int, peek: bool = False) -> bytes:
        """Return up to ``max_bytes`` in-order bytes, removing them unless ``peek``.

        Sends a window update when reading doubles the window and opens it by at
        least min(rcvbuf / 2, MSS).
        """
        count = min(max_bytes, len(self._rcv_buf))
        if count <= 0:
            return b""
        data = bytes(memoryview(self._rcv_buf)[:count])
        if not peek:
            del self._rcv_buf[:count]
            if self._config.rcvbuf_auto:
                self._tune_receive_buffer(count)
            self._maybe_send_window_update()
        return data

    def _tune_receive_buffer(self, copied: int) -> None:
        """Grow the receive buffer to four times what the application reads per RTT.

        A simplified Linux tcp_rcv_space_adjust (dynamic right-sizing): the
        window then stays ahead of a reader that keeps up, up to rcvbuf_max.
        It never shrinks the buffer.
        """
        self._rcv_space_copied += copied
        now = self._clock()
        rtt = self._rtt.srtt
        if rtt is None or now - self._rcv_space_start < max(rtt, 0.001):
            return
        wanted = min(4 * self._rcv_space_copied, self._config.rcvbuf_max)
        if wanted > self._config.rcvbuf:
            self._config.rcvbuf = wanted
        self._rcv_space_copied = 0
        self._rcv_space_start = now

    def _maybe_send_window_update(self) -> None:
        if self.state not in _RECEIVING_STATES:
            return
        free = max(self._config.rcvbuf - len(self._rcv_buf), 0)
        promised = max(self._rcv_adv - self._rcv_nxt, 0)
        if free - promised >= min(self._config.rcvbuf // 2, self._mss) and free >= 2 * promised:
            self._send_ack()

    def shutdown_write(self) -> None:
        """Queue a FIN after the pending data (half-close); later sends are refused."""
        if self._fin_queued:
            return
        if self.state is State.SYN_SENT:
            # Linux closes a connecting socket on shutdown(SHUT_WR) without sending anything.
            self._enter_closed()
            self._notify()
            return
        if self.state not in (State.SYN_RECEIVED, State.ESTABLISHED, State.CLOSE_WAIT):
            return
        self._fin_queued = True
        if self.state is State.ESTABLISHED:
            self._set_state(State.FIN_WAIT_1)
        elif self.state is State.CLOSE_WAIT:
            self._set_state(State.LAST_ACK)
        self._push()
        self._notify()

    def close(self) -> None:
        """Close for the application: FIN after pending data, or RST if unread data remains (as Linux)."""
        self._app_closed = True
        if self.state in (State.CLOSED, State.LISTEN, State.SYN_SENT):
            self._enter_closed()
            self._notify()
            return
        if self._rcv_buf and self.state.is_synchronized:
            self._counters.TCPAbortOnClose += 1
            self._emit_reset(seq_wire=self._snd_wire(self._snd_max), ack=True)
            self._enter_closed()
            self._notify()
            return
        if self.state is State.FIN_WAIT_2 and self._close_deadline is None:
            self._close_deadline = self._clock() + self._config.fin_timeout
        self.shutdown_write()
        self._notify()

    def set_path_mtu(self, mtu: int) -> None:
        """Lower the send MSS to fit a path MTU learned from ICMP (RFC 1191, RFC 8201).

        Segments in flight were dropped by the router that sent the ICMP, so
        they go out again at the new size at once, without a congestion
        response, as Linux's tcp_simple_retransmit does.
        """
        header = 60 if len(self.remote_ip) == 16 else 40
        if self._ts_enabled:
            header += _TIMESTAMP_OPTION_LEN
        mss = max(mtu - header, _MIN_SEND_MSS)
        if mss >= self._snd_mss:
            return
        self._snd_mss = mss
        self._congestion.mss = mss
        if self.state in _SENDING_STATES and self._snd_nxt > self._snd_una:
            self._snd_nxt = self._snd_una
            self._rtt_seq = None
            self._push()

    def abort(self) -> None:
        """Send RST when synchronized and go CLOSED at once."""
        if self.state.is_synchronized and self.state not in (State.CLOSED, State.TIME_WAIT):
            self._emit_reset(seq_wire=self._snd_wire(self._snd_max), ack=True)
        self._enter_closed()
        self._notify()

    def set_option(self, name: str, value) -> None:
        """Set one TcpConfig field by name, for example "nodelay", "keepalive", "rcvbuf" or "sndbuf".

        Raises ValueError for a name that is not a TcpConfig field.
        """
        names = {field.name for field in dataclasses.fields(TcpConfig)}
        if name not in names:
            raise ValueError(f"unknown TCP option {name!r}; expected one of {', '.join(sorted(names))}")
        setattr(self._config, name, value)

        if (name == "nodelay" and value) or (name == "cork" and not value):
            self._push()
        elif name == "congestion":
            previous = self._congestion
            self._congestion = self._new_congestion()
            self._congestion.cwnd = previous.cwnd
            self._congestion.ssthresh = previous.ssthresh
        elif name in ("keepalive", "keepidle"):
            self._keepalive_deadline = None
            self._arm_keepalive()
        elif name == "rcvbuf":
            self._maybe_send_window_update()
        self._notify()

    # Timers.

    def next_deadline(self) -> float | None:
        """Return the earliest pending timer deadline in clock() seconds, or None."""
        deadlines = [deadline for deadline in (self._rto_deadline, self._persist_deadline,
                                               self._delack_deadline, self._keepalive_deadline,
                                               self._close_deadline, self._rack_deadline,
                                               self._probe_deadline) if deadline is not None]
        return min(deadlines) if deadlines else None

    def on_timer(self) -> None:
        """Run every timer that has expired at clock()."""
        if self.state is State.CLOSED:
            return
        now = self._clock()
        if self._close_deadline is not None and now >= self._close_deadline:
            self._enter_closed()
            self._notify()
            return
        if self._rto_deadline is not None and now >= self._rto_deadline:
            self._on_retransmission_timeout(now)
        if self._rack_deadline is not None and now >= self._rack_deadline:
            self._rack_deadline = None
            self._run_rack(update=False)
        if self._probe_deadline is not None and now >= self._probe_deadline:
            self._on_probe_timeout()
        if self._persist_deadline is not None and now >= self._persist_deadline:
            self._on_persist_timeout()
        if self._delack_deadline is not None and now >= self._delack_deadline:
            self._counters.DelayedACKs += 1
            self._send_ack()
        if self._keepalive_deadline is not None and now >= self._keepalive_deadline:
            self._on_keepalive_timeout(now)
        self._notify()

    def _on_retransmission_timeout(self, now: float) -> None:
        """Retransmit after the timer expired (RFC 6298 sections 5.4 to 5.6), within Linux's retry limits."""
        self._rto_deadline = None
        self._rack_deadline = None
        self._probe_deadline = None
        self._probe_pending = False
        self._counters.TCPTimeouts += 1
        if self._user_timeout_expired(now):
            self._give_up()
            return
        zero_window = self._snd_wnd == 0 and self.state.is_synchronized and self.state is not State.SYN_RECEIVED
        if zero_window:
            # The peer closed its window under data in flight. Retransmissions act
            # as window probes and, as in Linux, do not count towards retries2
            # while the peer has sent something within MAX_RTO.
            if now - self._last_received > MAX_RTO:
                self._give_up()
                return
        else:
            limit = {State.SYN_SENT: self._config.syn_retries,
                     State.SYN_RECEIVED: self._config.synack_retries}.get(self.state, self._config.retries2)
            if self._retries >= limit:
                self._give_up()
                return
            self._retries += 1

        self._rtt.backoff()
        self._rtt_seq = None
        if self.state in (State.SYN_SENT, State.SYN_RECEIVED):
            self._counters.TCPSynRetrans += 1
            self._counters.RetransSegs += 1
            self._send_syn()
        else:
            self._undo = None
            self._congestion.on_timeout(self._snd_max, self._snd_max - self._snd_una)
            self._snd_nxt = self._snd_una
            self._retransmit_head()
        self._arm_rto()

    def _give_up(self) -> None:
        if self.state in (State.SYN_SENT, State.SYN_RECEIVED):
            if not self._passive:
                self.error = errno.ETIMEDOUT
        else:
            self._counters.TCPAbortOnTimeout += 1
            self.error = errno.ETIMEDOUT
        self._enter_closed()

    def _on_persist_timeout(self) -> None:
        """Send a window probe, or force one segment into a small window (RFC 9293 section 3.8.6.1)."""
        self._persist_deadline = None
        if self.state not in _SENDING_STATES:
            return
        if self._snd_wnd > 0:
            self._push(force=True)
            return

        if self._persist_probes >= self._config.retries2:
            self._give_up()
            return
        # Like Linux's tcp_xmit_probe_skb, probe with an empty segment at
        # SND.UNA - 1. The peer finds it old and replies with an ACK that
        # carries its current window.
        self._counters.TCPWinProbe += 1
        self._persist_probes += 1
        self._persist_backoff += 1
        self._emit(self._snd_wire(self._snd_una - 1), ACK, b"")
        self._arm_persist()

    def _on_keepalive_timeout(self, now: float) -> None:
        """Probe an idle connection (Linux tcp_keepalive_timer)."""
        self._keepalive_deadline = None
        config = self._config
        if not config.keepalive or self.state not in _KEEPALIVE_STATES:
            return
        if self._snd_max > self._snd_una or self._snd_buf_start + len(self._snd_buf) > self._snd_nxt:
            # Data in flight has its own timers.
            self._keepalive_deadline = now + config.keepidle
            return

        # Compared with the same sum the deadline was set from: ``now - last <
        # keepidle`` can hold at that deadline by rounding, and re-arming at the
        # same time would loop.
        idle_deadline = self._last_received + config.keepidle
        if now < idle_deadline and self._keepalive_probes == 0:
            self._keepalive_deadline = idle_deadline
            return
        if self._keepalive_probes >= config.keepcnt:
            # Linux's tcp_keepalive_timer resets the connection it gives up on.
            self._emit_reset(seq_wire=self._snd_wire(self._snd_max), ack=True)
            self._give_up()
            return
        self._counters.TCPKeepAlive += 1
        self._keepalive_probes += 1
        self._emit(self._snd_wire(self._snd_una - 1), ACK, b"")
        self._keepalive_deadline = now + config.keepintvl

    def _arm_rto(self, restart: bool = False) -> None:
        if self._rto_deadline is None or restart:
            self._rto_deadline = self._clock() + self._rtt.rto
            if self._config.user_timeout and self._unacked_since is not None:
                # As Linux's tcp_clamp_rto_to_user_timeout: wake up when the user timeout ends.
                limit = self._unacked_since + self._config.user_timeout
                self._rto_deadline = max(min(self._rto_deadline, limit), self._clock())

    def _user_timeout_expired(self, now: float) -> bool:
        """Whether data has gone unacknowledged for TCP_USER_TIMEOUT (RFC 5482)."""
        return (bool(self._config.user_timeout) and self._unacked_since is not None
                and self.state.is_synchronized and now - self._unacked_since >= self._config.user_timeout)

    def _arm_persist(self) -> None:
        interval = min(self._rtt.rto * (2 ** min(self._persist_backoff, 16)), MAX_RTO)
        self._persist_deadline = self._clock() + interval

    def _arm_keepalive(self) -> None:
        if self._config.keepalive and self.state in _KEEPALIVE_STATES and self._keepalive_deadline is None:
            self._keepalive_deadline = self._last_received + self._config.keepidle

    def _start_rtt(self, end: int) -> None:
        self._rtt_seq = end
        self._rtt_start = self._clock()

    # State changes.

    def _set_state(self, new: State) -> None:
        """Change state, keeping CurrEstab, EstabResets and AttemptFails as Linux's tcp_set_state does."""
        old = self.state
        counted = (State.ESTABLISHED, State.CLOSE_WAIT)
        if old in counted and new not in counted:
            self._counters.CurrEstab -= 1
        if new in counted and old not in counted:
            self._counters.CurrEstab += 1
        if new is State.CLOSED:
            if old in counted:
                self._counters.EstabResets += 1
            elif old in (State.SYN_SENT, State.SYN_RECEIVED):
                self._counters.AttemptFails += 1
        self.state = new

    def _enter_established(self) -> None:
        self.established_once = True
        self._set_state(State.ESTABLISHED)
        self._arm_keepalive()
        if self._config.sndbuf_auto:
            # As Linux's tcp_init_buffer_space: size the buffer for the initial window.
            self._expand_send_buffer()
        if self._fin_queued:
            self._set_state(State.FIN_WAIT_1)

    def _enter_time_wait(self) -> None:
        self._set_state(State.TIME_WAIT)
        self._rto_deadline = None
        self._rack_deadline = None
        self._probe_deadline = None
        self._persist_deadline = None
        self._keepalive_deadline = None
        self._close_deadline = self._clock() + self._config.time_wait

    def _enter_closed(self) -> None:
        self._set_state(State.CLOSED)
        self._finished = True
        self._rto_deadline = None
        self._rack_deadline = None
        self._probe_deadline = None
        self._persist_deadline = None
        self._delack_deadline = None
        self._keepalive_deadline = None
        self._close_deadline = None

    # Sequence number conversion.

    def _snd_wire(self, offset: int) -> int:
        return (self._iss + offset) & _MASK

    def _rcv_wire(self, offset: int) -> int:
        return (self._irs + offset) & _MASK

    def _snd_offset(self, seq: int) -> int:
        return self._snd_una + _seq_diff(seq, self._snd_wire(self._snd_una))

    def _rcv_offset(self, seq: int) -> int:
        return self._rcv_nxt + _seq_diff(seq, self._rcv_wire(self._rcv_nxt))
