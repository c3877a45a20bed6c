"""A watcher that follows every change in a cluster under faults, and what it must have seen.

It starts at revision 1 and follows each answer's `next` with the Python client, in a
thread of its own, so it moves between nodes as they die, stall or lose their leader.
A call that runs out of budget (a paused node, no leader) goes on from the revision
after the last one seen. If no node holds that revision any more (every node restarted
from a snapshot past it), it goes on from the oldest one they hold and notes the gap:
the changes inside it cannot be checked.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from kvpaxos.client import Client, Compacted, OutcomeUnknown, Unavailable
from support.linearizability import CAS, DELETE, OK, READ


class Watcher:
    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.events: list = []
        self.retries = 0
        self.gaps: list[tuple[int, int]] = []  # (asked, oldest held): revisions no node held
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        at = 1
        with Client(self.urls, timeout_s=3) as kv:
            while not self.stop.is_set():
                try:
                    for event in kv.watch(prefix="", from_revision=at, timeout_s=1):
                        self.events.append(event)
                        at = event.revision + 1
                        if self.stop.is_set():
                            return
                except (Unavailable, OutcomeUnknown):
                    self.retries += 1
                except Compacted as exc:
                    self.gaps.append((at, exc.oldest))
                    at = exc.oldest

    def wait_for(self, revision: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (not self.events or self.events[-1].revision < revision):
            time.sleep(0.1)
        self.stop.set()
        return bool(self.events) and self.events[-1].revision >= revision

    def report(self) -> dict[str, Any]:
        return {"events": len(self.events), "retries": self.retries, "gaps": self.gaps}

    def anomalies(self, ops: list, content: dict[str, Any] | None, revision: int) -> list[str]:
        """Each revision once, in order, with no gap but the noted ones; every acknowledged
        write at the version its answer gave; up to `revision`; and, replayed over an
        empty map (when there was no gap), exactly `content`, the converged store."""
        out = []
        revisions = [e.revision for e in self.events]
        skipped = set()
        for asked, oldest in self.gaps:
            skipped.update(range(asked, oldest))
        expected = [r for r in range(1, (revisions[-1] if revisions else 0) + 1) if r not in skipped]
        if revisions != expected:
            breaks = [(a, b) for a, b in zip(revisions, revisions[1:]) if b != a + 1 and a + 1 not in skipped][:5]
            out.append(f"the watcher's revisions are not 1, 2, 3, ...: breaks at {breaks}")
        if not revisions or revisions[-1] < revision:
            out.append(f"the watcher saw up to revision {revisions[-1] if revisions else 0}, not {revision}")
        by_revision = {e.revision: e for e in self.events}
        for op in ops:
            version = op.meta.get("version")
            if op.outcome != OK or version is None or op.kind == READ or (op.kind in (CAS, DELETE) and not op.result):
                continue
            if version in skipped:
                continue
            e = by_revision.get(version)
            want = ("delete", op.key, None) if op.kind == DELETE else ("put", op.key, op.value)
            if e is None or (e.type, e.key, e.value) != want:
                out.append(f"acknowledged #{op.id} {op.kind} {op.key!r} at version {version}: the watcher saw {e}")
                break
        if content is not None and not self.gaps:
            replayed: dict[str, Any] = {}
            for e in self.events:
                if e.type == "put":
                    replayed[e.key] = e.value
                else:
                    replayed.pop(e.key, None)
            if replayed != content:
                diff = sorted(k for k in set(replayed) | set(content) if replayed.get(k) != content.get(k))
                out.append(f"the watched changes replayed differ from the converged store at {diff[:5]}")
        return out
