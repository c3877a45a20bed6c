"""Fixtures of the fault-injection suite: clusters behind per-link proxies."""
from __future__ import annotations

import pytest

from support.cluster import cluster_factory

from .harness import FaultCluster


@pytest.fixture
def fault_cluster(tmp_path):
    """Factory: fault_cluster(n=3, planted=None, proxy=True, seed=0) starts a FaultCluster;
    every one is stopped (and its proxy closed) at teardown."""
    yield from cluster_factory(tmp_path, FaultCluster)
