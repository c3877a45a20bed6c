"""Shared test set-up: makes `support` importable and provides real-process clusters.

tests/ has no __init__.py (pytest's default prepend import mode), so put this
directory on sys.path for `from support.cluster import Cluster`.
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from support.cluster import LIVE, Cluster, cluster_factory  # noqa: E402


@pytest.fixture
def make_cluster(tmp_path):
    """Factory: make_cluster(n=3) starts a cluster; every one is killed at teardown."""
    yield from cluster_factory(tmp_path)


@pytest.fixture
def cluster(make_cluster) -> Cluster:
    """A started 3-node cluster."""
    return make_cluster(3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        for cluster in list(LIVE):
            report.sections.append((f"node logs of {cluster.dir}", cluster.logs()))
