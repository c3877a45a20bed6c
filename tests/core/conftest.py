"""Every core unit test gets a wall-clock bound: a hang fails the test instead of the run."""
from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

TEST_TIME_LIMIT_S = 30.0


def _timed_out(signum: int, frame: object) -> None:
    raise TimeoutError(f"test ran longer than {TEST_TIME_LIMIT_S:.0f} s")


@pytest.fixture(autouse=True)
def time_limit() -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _timed_out)
    signal.setitimer(signal.ITIMER_REAL, TEST_TIME_LIMIT_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
