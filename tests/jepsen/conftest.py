"""Fixtures of the fault-injection suite: clusters behind per-link proxies."""
from __future__ import annotations

import pytest

from .harness import FaultCluster


@pytest.fixture
def fault_cluster(tmp_path):
    """Factory: fault_cluster(n=3, planted=None, proxy=True, seed=0) starts a FaultCluster;
    every one is stopped (and its proxy closed) at teardown."""
    made: list[FaultCluster] = []

    def make(n: int = 3, start: bool = True, **kwargs) -> FaultCluster:
        cluster = FaultCluster(tmp_path / f"cluster{len(made)}", n=n, **kwargs)
        made.append(cluster)
        if start:
            cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.stop_all()
