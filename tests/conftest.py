"""Root pytest configuration: skip network namespace tests unless they can run."""

import os
import shutil

import pytest


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``netns`` when not root or without iproute2, with the reason."""
    if os.geteuid() != 0:
        reason = "needs root to create network namespaces"
    elif shutil.which("ip") is None:
        reason = "needs the ip command from iproute2; run make setup"
    else:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)
