"""Building blocks of the TCP connection: sequence arithmetic, reassembly, RTO, NewReno, ISNs."""

import pytest

from sandnet_stackd.tcp import IsnGenerator
from sandnet_stackd.tcp.buffers import OutOfOrderQueue
from sandnet_stackd.tcp.congestion import NewReno
from sandnet_stackd.tcp.connection import _seq_diff
from sandnet_stackd.tcp.rtt import INITIAL_RTO, MAX_RTO, MIN_RTO, RttEstimator


def test_seq_diff_wraps_modulo_2_32():
    assert _seq_diff(5, 0xFFFFFFFB) == 10
    assert _seq_diff(0xFFFFFFFB, 5) == -10
    assert _seq_diff(0x7FFFFFFF, 0) == 0x7FFFFFFF
    assert _seq_diff(0x80000000, 0) == -0x80000000
    assert _seq_diff(123, 123) == 0


def test_out_of_order_merges_overlaps():
    queue = OutOfOrderQueue()
    queue.add(10, b"klm")
    queue.add(20, b"uv")
    queue.add(12, b"mnop")
    assert queue.ranges() == [(10, 16), (20, 22)]
    queue.add(16, b"qrst")
    assert queue.ranges() == [(10, 22)]
    assert queue.byte_count == 12
    assert queue.pop_from(5) is None
    assert bytes(queue.pop_from(10)) == b"klmnopqrstuv"
    assert len(queue) == 0


def test_out_of_order_pop_trims_and_drops_stale():
    queue = OutOfOrderQueue()
    queue.add(0, b"old")
    queue.add(10, b"abcdef")
    assert bytes(queue.pop_from(13)) == b"def"
    assert queue.ranges() == []


def test_out_of_order_duplicate_is_idempotent():
    queue = OutOfOrderQueue()
    queue.add(100, b"hello")
    queue.add(100, b"hello")
    queue.add(101, b"ell")
    assert queue.ranges() == [(100, 105)]
    assert bytes(queue.pop_from(100)) == b"hello"


def test_rtt_first_sample_and_min_rto():
    estimator = RttEstimator()
    assert estimator.rto == INITIAL_RTO
    estimator.sample(0.010)
    assert estimator.srtt == pytest.approx(0.010)
    assert estimator.rttvar == pytest.approx(0.005)
    assert estimator.rto == MIN_RTO


def test_rtt_smoothing_follows_rfc_6298():
    estimator = RttEstimator()
    estimator.sample(1.0)
    estimator.sample(2.0)
    assert estimator.rttvar == pytest.approx(0.75 * 0.5 + 0.25 * 1.0)
    assert estimator.srtt == pytest.approx(0.875 * 1.0 + 0.125 * 2.0)
    assert estimator.rto == pytest.approx(estimator.srtt + 4 * estimator.rttvar)


def test_rtt_backoff_doubles_up_to_max_and_sample_resets():
    estimator = RttEstimator()
    seen = []
    for _ in range(10):
        estimator.backoff()
        seen.append(estimator.rto)
    assert seen[:6] == [2, 4, 8, 16, 32, 64]
    assert seen[7:] == [MAX_RTO] * 3
    estimator.sample(0.5)
    assert estimator.backoffs == 0


def test_newreno_slow_start_then_avoidance():
    control = NewReno(mss=1000)
    assert control.cwnd == 10_000
    control.on_ack(1000, snd_una=1001, flight=9000)
    assert control.cwnd == 11_000
    control.ssthresh = 11_000
    for _ in range(10):
        control.on_ack(1000, snd_una=2001, flight=9000)
    assert control.cwnd == 11_000
    control.on_ack(1000, snd_una=3001, flight=9000)
    assert control.cwnd == 12_000


def test_reno_slow_start_stretch_ack():
    control = NewReno(mss=1000)
    control.on_ack(44_000, snd_una=44_001, flight=0)
    assert control.cwnd == 54_000          # RFC 3465 with L=2 would give 12_000
    control.on_ack(1500, snd_una=45_501, flight=0)
    assert control.cwnd == 55_500          # a partial segment counts by its bytes


def test_slow_start_carries_rest_past_ssthresh():
    control = NewReno(mss=1000)
    control.ssthresh = 15_000
    control.on_ack(20_000, snd_una=20_001, flight=0)
    # 5_000 bytes reach ssthresh; the other 15_000 are one window of avoidance.
    assert control.cwnd == 16_000
    control.on_ack(1000, snd_una=21_001, flight=0)
    assert control.cwnd == 16_000


def test_cubic_slow_start_stretch_ack():
    from sandnet_stackd.tcp.congestion import Cubic

    cubic = Cubic(1448, clock=lambda: 0.0, srtt=lambda: 0.01)
    cubic.on_ack(44 * 1448, snd_una=44 * 1448 + 1, flight=0)
    assert cubic.cwnd == 54 * 1448


def test_send_buffer_size_as_linux():
    control = NewReno(mss=1448)
    # 2 x 10 segments x (2048 + 256): what Linux 6.18 reports after connect().
    assert control.send_buffer_size() == 46080
    control.cwnd = 100 * 1448
    assert control.send_buffer_size() == 2 * 100 * 2304
    assert NewReno(mss=1537).send_buffer_size() == 87040
    assert NewReno(mss=8000).send_buffer_size() == 332800
    reordering = NewReno(mss=1448)
    reordering.dupthresh = 30
    assert reordering.send_buffer_size() == 2 * 31 * 2304


def test_newreno_fast_recovery_partial_and_full_ack():
    control = NewReno(mss=1000)
    assert not control.on_duplicate_ack(snd_una=1, snd_max=10_001, flight=10_000)
    assert not control.on_duplicate_ack(snd_una=1, snd_max=10_001, flight=10_000)
    assert control.on_duplicate_ack(snd_una=1, snd_max=10_001, flight=10_000)
    assert control.in_recovery
    assert control.ssthresh == 5000
    assert control.cwnd == 8000

    control.on_duplicate_ack(snd_una=1, snd_max=10_001, flight=10_000)
    assert control.cwnd == 9000
    assert control.on_ack(3000, snd_una=3001, flight=7000)
    assert control.in_recovery
    assert control.cwnd == 7000

    assert not control.on_ack(7000, snd_una=10_001, flight=0)
    assert not control.in_recovery
    assert control.cwnd == 1000


def test_newreno_timeout_collapses_window_and_blocks_fast_retransmit():
    control = NewReno(mss=1000)
    control.on_timeout(snd_max=20_001, flight=20_000)
    assert control.cwnd == 1000
    assert control.ssthresh == 10_000
    for _ in range(3):
        assert not control.on_duplicate_ack(snd_una=5001, snd_max=20_001, flight=15_000)


def test_isn_depends_on_tuple_and_clock():
    now = [100.0]
    generator = IsnGenerator(b"k" * 32, lambda: now[0])
    first = generator.next(b"\x0a\x00\x00\x01", 1000, b"\x0a\x00\x00\x02", 80)
    other_port = generator.next(b"\x0a\x00\x00\x01", 1001, b"\x0a\x00\x00\x02", 80)
    assert first != other_port
    assert 0 <= first <= 0xFFFFFFFF

    now[0] += 1.0
    later = generator.next(b"\x0a\x00\x00\x01", 1000, b"\x0a\x00\x00\x02", 80)
    assert (later - first) & 0xFFFFFFFF == 250_000

    other_secret = IsnGenerator(b"j" * 32, lambda: now[0])
    assert other_secret.next(b"\x0a\x00\x00\x01", 1000, b"\x0a\x00\x00\x02", 80) != later


def test_isn_rejects_empty_secret():
    with pytest.raises(ValueError, match="secret is empty"):
        IsnGenerator(b"", lambda: 0.0)


# CUBIC, the SACK scoreboard, SYN cookies and struct tcp_info.

def test_cubic_beta_reduction_and_regrowth():
    from sandnet_stackd.tcp.congestion import Cubic

    now = [0.0]
    cubic = Cubic(1000, clock=lambda: now[0], srtt=lambda: 0.05)
    cubic.cwnd = 100_000
    cubic.ssthresh = 50_000
    assert cubic.enter_recovery(snd_una=1, snd_max=100_001, flight=100_000)
    assert cubic.ssthresh == 70_000             # beta_cubic = 0.7
    cubic.on_ack(100_000, snd_una=100_001, flight=0)
    assert not cubic.in_recovery
    start = cubic.cwnd
    for _ in range(200):
        now[0] += 0.05
        cubic.on_ack(cubic.cwnd // 2, snd_una=0, flight=0)
    assert cubic.cwnd > start
    assert cubic.cwnd > 100_000                 # past W_max after K seconds, probing upwards


def test_make_congestion_rejects_unknown_name():
    from sandnet_stackd.tcp.congestion import make_congestion

    with pytest.raises(ValueError, match="cubic, reno"):
        make_congestion("vegas", 1000, lambda: 0.0, lambda: None)


def test_scoreboard_merges_and_finds_holes():
    from sandnet_stackd.tcp.sack import Scoreboard

    board = Scoreboard()
    assert board.add(20, 30)
    assert board.add(40, 50)
    assert not board.add(22, 28)
    assert board.add(30, 35)
    assert board.ranges() == [(20, 35), (40, 50)]
    assert board.holes(10) == [(10, 20), (35, 40)]
    assert board.sacked_end(25) == 35
    assert board.sacked_end(36) is None
    assert board.next_sacked_start(36) == 40
    board.forget_below(42)
    assert board.ranges() == [(42, 50)]
    assert board.sacked_bytes() == 8


def test_received_blocks_most_recent_first():
    from sandnet_stackd.tcp.sack import ReceivedBlocks

    blocks = ReceivedBlocks()
    blocks.note(100)
    blocks.note(300)
    assert blocks.blocks([(100, 200), (300, 400)], rcv_nxt=0, limit=4) == [(300, 400), (100, 200)]
    assert blocks.blocks([(100, 200), (300, 400)], rcv_nxt=0, limit=1) == [(300, 400)]


def test_syn_cookie_round_trip_and_forgery():
    from sandnet_stackd.tcp.syncookies import SynCookies

    now = [1000.0]
    cookies = SynCookies(b"secret" * 4, lambda: now[0])
    four_tuple = bytes([10, 0, 0, 2]) + b"\x00\x50" + bytes([10, 0, 0, 1]) + b"\x9c\x40"
    cookie, mss = cookies.make(four_tuple, 12345, 1460)
    assert mss == 1460
    assert cookies.check(four_tuple, 12345, cookie) == 1460
    assert cookies.check(four_tuple, 12346, cookie) is None
    assert cookies.check(four_tuple, 12345, cookie ^ 1) is None
    now[0] += 64 * 4
    assert cookies.check(four_tuple, 12345, cookie) is None


def test_pack_tcp_info_layout():
    import struct

    from sandnet_stackd.tcp import State, pack_tcp_info

    info = {"state": State.ESTABLISHED, "ca_state": 0, "retransmits": 2, "probes": 0, "backoff": 1,
            "options": 7, "snd_wscale": 7, "rcv_wscale": 9, "rto": 204000, "ato": 40000, "snd_mss": 1448,
            "rcv_mss": 1448, "unacked": 3, "sacked": 1, "retrans": 0, "pmtu": 1500, "rcv_ssthresh": 65535,
            "rtt": 1500, "rttvar": 700, "snd_ssthresh": 20, "snd_cwnd": 10, "advmss": 1460, "reordering": 3,
            "rcv_space": 131072, "total_retrans": 4}
    raw = pack_tcp_info(info)
    assert len(raw) == 104
    assert raw[0] == 1
    assert raw[6] == 7 | 9 << 4
    assert struct.unpack_from("4I", raw, 8) == (204000, 40000, 1448, 1448)
    assert struct.unpack_from("4I", raw, 68) == (1500, 700, 20, 10)
    assert struct.unpack_from("I", raw, 100) == (4,)
    assert pack_tcp_info(None, listening=True)[0] == 10


def test_rack_marks_earlier_segment_lost_after_rtt():
    from sandnet_stackd.tcp.rack import Rack
    from sandnet_stackd.tcp.sack import Scoreboard

    rack = Rack()
    rack.on_transmit(0, 1000, now=0.0, retransmit=False)
    rack.on_transmit(1000, 2000, now=0.001, retransmit=False)
    rack.on_transmit(2000, 3000, now=0.002, retransmit=False)
    board = Scoreboard()
    board.add(2000, 3000)
    rack.on_ack(0, board.sacked_end, board.highest, now=0.012)
    assert rack.rtt == pytest.approx(0.010)
    lost, next_check = rack.detect_losses(now=0.0105, reorder_window=0.002)
    assert lost == []
    assert next_check == pytest.approx(0.012)
    lost, next_check = rack.detect_losses(now=0.0125, reorder_window=0.002)
    assert lost == [(0, 1000)]
    assert next_check == pytest.approx(0.013)
    lost, _ = rack.detect_losses(now=0.0135, reorder_window=0.002)
    assert lost == [(1000, 2000)]
    lost, _ = rack.detect_losses(now=0.02, reorder_window=0.002)
    assert lost == []                   # already reported until retransmitted
    assert rack.last_outstanding(0) == (1000, 2000)


def test_rack_ignores_ack_of_original_after_retransmission():
    """RFC 8985 section 6.2: an ACK sooner than min_rtt after a retransmission is for the original."""
    from sandnet_stackd.tcp.rack import Rack

    rack = Rack()
    rack.on_transmit(0, 1000, now=0.0, retransmit=False)
    rack.on_ack(1000, lambda offset: None, 0, now=0.01)
    assert rack.min_rtt == pytest.approx(0.01)
    rack.on_transmit(1000, 2000, now=1.0, retransmit=False)
    rack.on_transmit(1000, 2000, now=1.3, retransmit=True)
    rack.on_ack(2000, lambda offset: None, 0, now=1.301)
    assert rack.xmit_time == 0.0
