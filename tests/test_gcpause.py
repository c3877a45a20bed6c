"""kvpaxos.gcpause: full collections walk only what is new, and a periodic major
collection still frees cycles among old objects."""
from __future__ import annotations

import gc
import weakref

import pytest

from kvpaxos.gcpause import PausePolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> tuple[weakref.ref, Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a), a


@pytest.fixture
def policy():
    p = PausePolicy(major_interval_s=3600)
    p.install()
    yield p
    p.uninstall()


def test_survivors_of_a_full_collection_are_frozen(policy):
    frozen_before = gc.get_freeze_count()
    keep = [Node() for _ in range(1000)]
    gc.collect()
    assert policy.full >= 1
    assert gc.get_freeze_count() >= frozen_before + 1000
    assert gc.get_count()[0] < 1000  # the young generation no longer holds them
    del keep


def test_garbage_cycles_are_still_freed_by_a_full_collection(policy):
    ref, a = cycle()
    del a  # garbage before any full collection saw it alive: nothing froze it
    gc.collect()
    assert ref() is None


def test_a_cycle_that_dies_after_freezing_waits_for_the_major_collection(policy):
    ref, a = cycle()
    gc.collect()  # alive: frozen with the survivors
    del a
    gc.collect()
    assert ref() is not None, "a frozen cycle was walked by an ordinary full collection"
    policy.major_interval_s = 0  # the next full collection walks everything
    gc.collect()
    assert policy.majors == 1
    assert ref() is None


def test_uninstall_unfreezes_everything():
    p = PausePolicy()
    p.install()
    assert gc.get_freeze_count() > 0
    p.uninstall()
    assert gc.get_freeze_count() == 0
    assert p._on_gc not in gc.callbacks
