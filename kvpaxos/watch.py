"""Watching keys: the latest changes a node applied, and long polls on them.

Every change the state machine makes (a put, or a delete of a key that existed)
takes the next revision (kvpaxos/core/kvstate.py): revisions run 1, 2, 3, ...
with no gaps, and every node gives the same change the same revision, because
the log decides them. A put's revision is the key's new version.

A node keeps the changes it applied last in a History, in memory, bounded by a
number of changes and of characters (keys and values); older ones are dropped
first. GET /v1/watch asks for the changes to one key, or to the keys under a
prefix, from a revision on, and waits (a long poll) until there is one, or
streams them as server-sent events (kvpaxos/http.py). The
answer names the revision to ask from next, so a watcher that follows it sees
every change exactly once and in order, whichever node it asks, as long as that
node still holds the revision: one that does not answers `compacted` with the
oldest revision it holds, and the watcher must read the keys again (a list)
and watch from the revision after that read.

A History starts at the revision the node's state began from (a snapshot
loaded at start, or one installed from a peer to catch up, which starts it
again there): a node does not know the changes inside a snapshot.

Waking: each applied slot wakes the waiting polls that one of its changes
matches (exact keys through a dict; for prefixes, each watched prefix is looked
up among the slot's changed keys, sorted), on the event loop.
"""
from __future__ import annotations

import asyncio
import bisect
import itertools
from collections import deque
from dataclasses import dataclass

from kvpaxos.errors import KvError

HISTORY_CHANGES = 100_000
HISTORY_BYTES = 64 * 1024 * 1024
CHANGE_OVERHEAD = 48  # characters counted per change besides its key and value
SCAN_MAX = 10_000  # changes one page looks at, at most (about a millisecond of the event loop)


class Compacted(KvError):
    """The revision asked for is older than the oldest change this node holds."""

    status, code = 410, "compacted"
    shown = ("oldest", "revision")


@dataclass(slots=True)
class Change:
    revision: int
    op: str           # "put" or "delete"
    key: str
    value: str | None  # None for a delete

    def to_wire(self) -> dict:
        out: dict = {"revision": self.revision, "type": self.op, "key": self.key}
        if self.value is not None:
            out["value"] = self.value
        return out


@dataclass(slots=True)
class Page:
    changes: list[Change]
    next: int  # the revision to ask from next


class _Waiter:
    __slots__ = ("key", "prefix", "future")

    def __init__(self, key: str | None, prefix: str | None, future: asyncio.Future) -> None:
        self.key, self.prefix, self.future = key, prefix, future


class History:
    def __init__(self, revision: int, max_changes: int = HISTORY_CHANGES,
                 max_chars: int = HISTORY_BYTES) -> None:
        if max_changes < 1 or max_chars < 1:
            raise ValueError("a watch history holds at least one change")
        self.max_changes, self.max_chars = max_changes, max_chars
        # (revision, op, key, value) tuples: plain tuples of strings and numbers drop out of
        # the garbage collector's walks, where 100,000 objects would be walked again and again.
        self._changes: deque[tuple[int, str, str, str | None]] = deque()
        self._chars = 0
        self.revision = revision  # the last change recorded (the state's revision)
        self.first = revision + 1  # the oldest revision this history can answer from
        self._woken_through = revision
        # Waiting polls by the key, or by the prefix, they watch.
        self._by_key: dict[str, list[_Waiter]] = {}
        self._by_prefix: dict[str, list[_Waiter]] = {}
        self.closed = False
        self._interrupts = 0

    # -- fed by the node, on the event loop ------------------------------------

    def record_applied(self, applied: list) -> None:
        """Record the changes among a slot's applied (Command, Result) pairs and wake the
        polls they match. A change carries the next revision; a repeat answered from the
        exactly-once record, a refused write and a membership command carry none past it."""
        for cmd, result in applied:
            if result.version > self.revision:
                self.record(result.version, cmd.op, cmd.key, cmd.value)
        self.wake()

    def record(self, revision: int, op: str, key: str, value: str | None) -> None:
        """The change the state machine just made (revision: the state's new revision)."""
        assert revision == self.revision + 1, f"change {revision} recorded after {self.revision}"
        self.revision = revision
        self._changes.append((revision, op, key, value))
        self._chars += _size(key, value)
        changes = self._changes
        while len(changes) > self.max_changes or (self._chars > self.max_chars and len(changes) > 1):
            old = changes.popleft()
            self._chars -= _size(old[2], old[3])
            self.first = changes[0][0]

    def restart(self, revision: int) -> None:
        """The node's state was replaced by a snapshot at `revision`: nothing before it
        and after the last change recorded is known. Polls from before it answer compacted."""
        self._changes.clear()
        self._chars = 0
        self.revision = self._woken_through = revision
        self.first = revision + 1
        self._wake_all()

    def wake(self) -> None:
        """Wake the polls that a change recorded since the last call matches."""
        if self._woken_through == self.revision:
            return
        start = self._woken_through + 1
        self._woken_through = self.revision
        if not self._by_key and not self._by_prefix:
            return
        if start < self.first:  # some of the new changes are dropped already: let every poll look
            self._wake_all()
            return
        keys = {change[2] for change in self._since(start)}
        for key in keys & self._by_key.keys():
            _set_all(self._by_key.pop(key))
        if self._by_prefix:
            # The keys with a given prefix are one run of the sorted keys, beginning at the
            # first key not below the prefix: a slot of K changes and P watched prefixes
            # cost O((K + P) log K), not K x P prefix tests.
            ordered = sorted(keys)
            for prefix in list(self._by_prefix):
                i = bisect.bisect_left(ordered, prefix)
                if i < len(ordered) and ordered[i].startswith(prefix):
                    _set_all(self._by_prefix.pop(prefix))

    def close(self) -> None:
        """The node stops: every poll answers what it has now."""
        self.closed = True
        self._wake_all()

    def interrupt(self) -> None:
        """Every poll waiting now answers what it has (the node lost its leader: changes
        may stop reaching it, and its watchers should ask another node)."""
        self._interrupts += 1
        self._wake_all()

    # -- read --------------------------------------------------------------------

    def page(self, start: int, key: str | None, prefix: str | None, limit: int,
             max_chars: int | None = None, max_scan: int = SCAN_MAX) -> Page:
        """The changes from revision `start` on that match (key exactly, or keys that
        start with prefix): at most `limit`, and with max_chars, ending before the
        change that would take their keys and values past that (one at the least).
        It looks at max_scan changes at most (the event loop's time is bounded): a page
        may then hold fewer, even none, and `next` says how far it looked.
        Raises Compacted when `start` is older than the oldest change held."""
        self.check(start)
        found: list[Change] = []
        chars = 0
        scanned = 0
        for change in self._since(start, max_scan):
            scanned += 1
            if key is not None and change[2] != key:
                continue
            if prefix is not None and not change[2].startswith(prefix):
                continue
            chars += _size(change[2], change[3])
            if len(found) == limit or (max_chars is not None and chars > max_chars and found):
                return Page(found, found[-1].revision + 1)
            found.append(Change(*change))
        if scanned == max_scan and start + scanned <= self.revision:
            return Page(found, start + scanned)  # more to look at: the caller asks again at once
        return Page(found, max(start, self.revision + 1))

    def check(self, start: int) -> None:
        """Compacted if `start` is older than the oldest change held."""
        if start < self.first:
            raise Compacted(f"revision {start} is no longer held here: the oldest is {self.first}; "
                            "read the keys again and watch from after that read",
                            oldest=self.first, revision=self.revision)

    async def poll(self, start: int, key: str | None, prefix: str | None, limit: int,
                   timeout_s: float, max_chars: int | None = None, max_scan: int = SCAN_MAX) -> Page:
        """page(), but when it is empty, having looked at every change held, wait up to
        timeout_s for a matching change, or until interrupt() or close()."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        interrupts = self._interrupts
        while True:
            found = self.page(start, key, prefix, limit, max_chars, max_scan)
            left = deadline - loop.time()
            if (found.changes or found.next <= self.revision or left <= 0 or self.closed
                    or self._interrupts != interrupts):
                return found
            start = found.next  # what was looked at need not be looked at again
            waiter = _Waiter(key, prefix, loop.create_future())
            self._add(waiter)
            timer = loop.call_later(left, _set, waiter.future)
            try:
                await waiter.future
            finally:
                timer.cancel()
                self._remove(waiter)

    @property
    def waiting(self) -> int:
        return sum(len(ws) for by in (self._by_key, self._by_prefix) for ws in by.values())

    def describe(self) -> dict:
        return {"first": self.first, "revision": self.revision, "changes": len(self._changes),
                "chars": self._chars, "waiting": self.waiting}

    # -- internals -----------------------------------------------------------------

    def _since(self, start: int, count: int | None = None):  # noqa: ANN202 - an iterator of tuples
        """The changes held from revision `start` on (at most `count` of them)."""
        changes = self._changes
        if not changes or start > self.revision:
            return iter(())
        offset = max(0, start - changes[0][0])  # revisions have no gaps
        end = len(changes) if count is None else min(len(changes), offset + count)
        if offset > len(changes) // 2:  # a deque walks from its nearer end: come from the right
            tail = list(itertools.islice(reversed(changes), len(changes) - offset))
            tail.reverse()
            return iter(tail[:end - offset])
        return itertools.islice(changes, offset, end)

    def _add(self, w: _Waiter) -> None:
        by, name = (self._by_key, w.key) if w.key is not None else (self._by_prefix, w.prefix)
        by.setdefault(name, []).append(w)  # type: ignore[arg-type]

    def _remove(self, w: _Waiter) -> None:
        by, name = (self._by_key, w.key) if w.key is not None else (self._by_prefix, w.prefix)
        waiters = by.get(name)  # type: ignore[arg-type]
        if waiters is not None and w in waiters:
            waiters.remove(w)
            if not waiters:
                del by[name]  # type: ignore[arg-type]

    def _wake_all(self) -> None:
        for by in (self._by_key, self._by_prefix):
            for waiters in by.values():
                _set_all(waiters)
        self._by_key, self._by_prefix = {}, {}


def _size(key: str, value: str | None) -> int:
    return len(key) + (len(value) if value is not None else 0) + CHANGE_OVERHEAD


def _set(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _set_all(waiters: list[_Waiter]) -> None:
    for w in waiters:
        _set(w.future)
