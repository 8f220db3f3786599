"""TCP through real faults: sandnet and a Linux peer joined by the impairment relay.

Every transfer crosses a wire that loses 5% of the frames, reorders 25%,
duplicates 1% and flips a bit in 0.1%, in both directions, and must arrive
complete with a matching sha256. Each transfer is 50 MB (about 70 s for the
slowest case here); set SANDNET_FAULT_BYTES for a shorter run while
developing. tools/impair/benchmark.py runs the same transfers through the
Linux kernel too and compares the goodput, and docs/tcp.md lists the figures.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import impair  # noqa: E402

pytestmark = pytest.mark.netns

SIZE = int(os.environ.get("SANDNET_FAULT_BYTES", 50_000_000))
IMPAIRMENT = impair.Impairment(loss=0.05, reorder=0.25, duplicate=0.01, corrupt=0.001, seed=11)


@pytest.fixture(scope="module")
def impaired():
    with impair.impaired_path(IMPAIRMENT) as path:
        with impair.sandnet_on(path) as client:
            yield path, client


@pytest.mark.timeout(900)
@pytest.mark.parametrize("algorithm", ["cubic", "reno"])
@pytest.mark.parametrize("direction", ["download", "upload"])
def test_transfer_survives_impairment(impaired, algorithm, direction):
    path, client = impaired
    port = 5300 + 2 * (algorithm == "reno") + (direction == "upload")
    result = impair.sandnet_transfer(path, client, direction, SIZE, algorithm, seed=port, port=port)
    assert result.sent_bytes == SIZE
    assert result.received_bytes == SIZE
    assert result.received_sha256 == result.sent_sha256


def test_relay_applied_faults(impaired):
    """The relay's counters show that the faults happened; this stops the relay, so it runs last."""
    path, client = impaired
    impair.sandnet_transfer(path, client, "download", 500_000, "cubic", seed=1, port=5310)
    counters = path.stop_relay()
    assert counters["frames"] > 300
    assert counters["lost"] > 0
    assert counters["reordered"] > 0
    assert counters["duplicated"] > 0
