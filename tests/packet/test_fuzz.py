"""Property-based test: random and mutated segments thrown at a live connection.

Whatever arrives, the stack must go on serving: stackd's process stays
alive, and afterwards a new connection opens and moves data both ways. The
fuzzed connection itself may legitimately end, because random segments can
carry an acceptable RST or FIN, so its state is not checked.
"""

import hypothesis
import hypothesis.strategies as st

from bench import ACK, PSH, RST, ipv4_frame, tcp_segment

FLAGS = st.integers(min_value=0, max_value=0xFF)
OPTIONS = st.one_of(
    st.binary(max_size=40),
    st.lists(st.sampled_from([
        bytes([2, 4, 0, 0]), bytes([2, 4, 0xFF, 0xFF]), bytes([3, 3, 15]), bytes([3, 3, 0xFF]), bytes([4, 2]),
        bytes([8, 10]) + bytes(8), bytes([5, 10]) + bytes(8), bytes([5, 2]), bytes([1]), bytes([0]),
        bytes([8, 0]), bytes([30, 1]), bytes([254, 40]),
    ]), max_size=8).map(lambda parts: b"".join(parts)[:40]),
)


@st.composite
def segments(draw):
    """A segment description relative to the connection's current numbers, or fully random."""
    seq_offset = draw(st.one_of(st.sampled_from([0, 1, -1, 65535, -65535, 1 << 31, (1 << 31) - 1]),
                                st.integers(min_value=-(1 << 32), max_value=1 << 32)))
    ack_offset = draw(st.one_of(st.sampled_from([0, 1, -1, 1 << 31]),
                                st.integers(min_value=-(1 << 32), max_value=1 << 32)))
    flags = draw(FLAGS) & ~RST if draw(st.booleans()) else draw(FLAGS)
    return {
        "seq_offset": seq_offset,
        "ack_offset": ack_offset,
        "flags": flags,
        "window": draw(st.integers(min_value=0, max_value=0xFFFF)),
        "options": draw(OPTIONS),
        "payload": draw(st.binary(max_size=64)),
        "data_offset": draw(st.one_of(st.none(), st.integers(min_value=0, max_value=15))),
        "bad_checksum": draw(st.booleans()) and draw(st.booleans()),
    }


def test_stack_survives_random_segments(bench):
    peer, conn = bench.established()

    @hypothesis.settings(max_examples=300, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(st.lists(segments(), min_size=1, max_size=5))
    def throw(batch):
        for fields in batch:
            options = fields["options"]
            options = options + b"\0" * (-len(options) % 4)
            segment = tcp_segment(peer.port, peer.dut_port, peer.snd_nxt + fields["seq_offset"],
                                  peer.rcv_nxt + fields["ack_offset"], fields["flags"], fields["window"],
                                  options, fields["payload"], data_offset=fields["data_offset"],
                                  bad_checksum=fields["bad_checksum"])
            bench.dut.send_frame(ipv4_frame(segment))

    throw()
    peer.drain()
    assert bench.dut.alive

    # The stack still opens connections and moves data both ways.
    fresh, fresh_conn = bench.established()
    fresh.send_data(b"after the storm")
    assert fresh_conn.recv(100) == b"after the storm"
    fresh_conn.send(b"reply")
    reply = fresh.expect(lambda s: s.payload, description="data segment")
    assert reply.payload == b"reply"


def test_mutated_valid_segments_keep_connection(bench):
    """Mutants must not add bytes to the stream, and the connection keeps delivering it.

    Each mutant is a data segment made invalid by one field (sequence number outside
    the window, acknowledgment of unsent data, data offset or checksum), or a pure
    ACK with random option bytes.
    """
    peer, conn = bench.established()

    @hypothesis.settings(max_examples=200, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(field=st.sampled_from(["seq", "ack", "offset", "checksum", "options"]),
                      value=st.integers(min_value=0, max_value=(1 << 32) - 1))
    def mutate(field, value):
        seq, ack = peer.snd_nxt, peer.rcv_nxt
        data_offset, bad_checksum, options, payload = None, False, b"", b"JUNK"
        if field == "seq":
            # Outside the receive window (at least 1 GiB away), so no byte can be accepted.
            seq = (peer.snd_nxt + (1 << 30) + value % (1 << 31)) & 0xFFFFFFFF
        elif field == "ack":
            # Acknowledges data never sent, or far too old: RFC 5961 drops the segment.
            ack = (peer.rcv_nxt + 1 + value % ((1 << 31) - 1)) & 0xFFFFFFFF
        elif field == "offset":
            data_offset = value % 5
        elif field == "checksum":
            bad_checksum = True
        else:
            # Random option bytes on a pure ACK: whatever they parse to, no data arrives.
            options = value.to_bytes(4, "big") * 2
            payload = b""
        segment = tcp_segment(peer.port, peer.dut_port, seq, ack, ACK | PSH, 1024, options, payload,
                              data_offset=data_offset, bad_checksum=bad_checksum)
        bench.dut.send_frame(ipv4_frame(segment))

    mutate()
    peer.drain()
    assert bench.dut.alive
    peer.send_data(b"the real stream")
    received = b""
    while len(received) < len(b"the real stream"):
        received += conn.recv(100)
    assert received == b"the real stream"
