"""Every core unit test gets a wall-clock bound: a hang fails the test instead of the run."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.timing import time_limit as bounded

TEST_TIME_LIMIT_S = 30.0


@pytest.fixture(autouse=True)
def time_limit() -> Iterator[None]:
    with bounded(TEST_TIME_LIMIT_S):
        yield
