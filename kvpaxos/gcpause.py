"""Shorter garbage-collector pauses for a node's event loop.

CPython's full collection (generation 2) walks every tracked object while the
event loop waits. A node's long-lived objects are its modules and, above all,
its log in memory: every command of every slot not yet compacted (up to
`snapshot_every_slots` + `compact_keep_slots` slots). At 1,000 writes/s a full
collection came every few seconds and took 30-130 ms, growing with the log;
after a few thousand slots of 1,600-command batches, far longer.

The policy here:
- once the node has started, collect and freeze (gc.freeze) what is alive:
  modules, the state just loaded;
- after every full collection, freeze its survivors: a full collection has
  just freed every unreachable cycle, so what is left is alive, and the next
  full collection walks only what was allocated since;
- every MAJOR_INTERVAL_S, unfreeze first, so that one full collection walks
  everything and frees cycles formed since among frozen objects (frozen objects
  without cycles are freed by reference counting as always; freezing only
  keeps them out of the walks).

A frozen object is never moved or changed; it is only left out of the walks.
"""
from __future__ import annotations

import gc
import time
from typing import Callable

MAJOR_INTERVAL_S = 300.0


class PausePolicy:
    def __init__(self, major_interval_s: float = MAJOR_INTERVAL_S,
                 observe: Callable[[float], None] | None = None) -> None:
        self.major_interval_s = major_interval_s
        self.observe = observe  # gets each full collection's duration, in seconds
        self.last_major = time.monotonic()
        self.full = 0   # full collections since install()
        self.majors = 0  # of which walked everything
        self._started = 0.0
        self._installed = False

    def install(self) -> None:
        """Collect and freeze what is alive now; from then on, apply the policy."""
        if not self._installed:
            gc.callbacks.append(self._on_gc)
            self._installed = True
        self.last_major = time.monotonic()
        gc.collect()  # a full collection: its survivors are frozen in _on_gc

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._on_gc)
            self._installed = False
        gc.unfreeze()

    def _on_gc(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            if time.monotonic() - self.last_major >= self.major_interval_s:
                gc.unfreeze()  # this collection walks everything
                self.last_major = time.monotonic()
                self.majors += 1
            self._started = time.perf_counter()
            return
        self.full += 1
        gc.freeze()  # the survivors of a full collection are alive
        if self.observe is not None:
            self.observe(time.perf_counter() - self._started)
