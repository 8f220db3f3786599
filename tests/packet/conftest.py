"""Fixtures of the packet bench: every scenario runs once against each device under test."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as bench_module  # noqa: E402


@pytest.fixture(scope="session", params=[pytest.param("linux", marks=pytest.mark.netns), "sandnet"])
def bench(request):
    """A Bench on the Linux kernel (needs root) or on sandnet's stackd, shared by the session."""
    with bench_module.make_bench(request.param) as made:
        yield made
