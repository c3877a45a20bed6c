"""The keys of the key-value map in order, so that a prefix scan (GET /v1/kv?prefix=)
costs O(log n + what it returns) instead of a pass over every key.

Sorted chunks of at most 2 * CHUNK keys and the first key of each: a new key is
placed by two binary searches and moved into its chunk with one memmove of at
most a chunk's references; a chunk that grows past 2 * CHUNK splits in two, an
empty one goes. A scan finds its first chunk by binary search and walks on from
there. Only adding and removing keys touch it: rewriting a key's value does not.

freeze() hands out the chunks as they are, for a snapshot's writer to walk on
another thread while the map moves on: until thaw(), a frozen chunk that would
change is copied first, so what the writer walks never changes.

Without it, a scan sorted the keys it had filtered from the whole map on the
event loop, 60-110 ms a request at a million keys, and a few at once held a
leader's loop for longer than the election timeout.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from typing import Iterable, Iterator

CHUNK = 512


class SortedKeys:
    def __init__(self, keys: Iterable[str] = (), chunk: int = CHUNK) -> None:
        ordered = sorted(keys)  # linear for keys that come in order (a snapshot's)
        self._chunk = chunk
        self._chunks: list[list[str]] = [ordered[i:i + chunk] for i in range(0, len(ordered), chunk)]
        self._firsts: list[str] = [c[0] for c in self._chunks]
        self._len = len(ordered)
        self._frozen: set[int] | None = None  # ids of the chunks handed out by freeze()

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        for chunk in self._chunks:
            yield from chunk

    def freeze(self) -> list[list[str]]:
        """The chunks as they are now; they stay as they are until thaw()."""
        assert self._frozen is None, "frozen twice"
        self._frozen = {id(c) for c in self._chunks}
        return list(self._chunks)

    def thaw(self) -> None:
        """The frozen chunks are no longer read (callable from any thread)."""
        self._frozen = None

    @property
    def frozen(self) -> bool:
        return self._frozen is not None

    def _writable(self, i: int) -> list[str]:
        chunk = self._chunks[i]
        frozen = self._frozen
        if frozen is not None and id(chunk) in frozen:
            chunk = self._chunks[i] = chunk[:]  # a new list: its id is no frozen chunk's
        return chunk

    def _find(self, key: str) -> int:
        """Index of the chunk where key is or would go (0 for a key before every chunk)."""
        return max(0, bisect_right(self._firsts, key) - 1)

    def add(self, key: str) -> None:
        """Add a key that is not there yet."""
        if not self._chunks:
            self._chunks.append([key])
            self._firsts.append(key)
            self._len = 1
            return
        i = self._find(key)
        chunk = self._writable(i)
        insort(chunk, key)
        self._firsts[i] = chunk[0]
        self._len += 1
        if len(chunk) > 2 * self._chunk:
            half = len(chunk) // 2
            self._chunks[i:i + 1] = [chunk[:half], chunk[half:]]
            self._firsts[i:i + 1] = [chunk[0], chunk[half]]

    def discard(self, key: str) -> None:
        """Remove a key if it is there."""
        if not self._chunks:
            return
        i = self._find(key)
        chunk = self._chunks[i]
        j = bisect_left(chunk, key)
        if j == len(chunk) or chunk[j] != key:
            return
        chunk = self._writable(i)
        del chunk[j]
        self._len -= 1
        if chunk:
            self._firsts[i] = chunk[0]
        else:
            del self._chunks[i]
            del self._firsts[i]

    def _before(self, key: str) -> int:
        """How many keys sort before key."""
        if not self._chunks:
            return 0
        i = self._find(key)
        return sum(map(len, self._chunks[:i])) + bisect_left(self._chunks[i], key)

    def count_prefix(self, prefix: str) -> int:
        """How many keys start with prefix: O(log n + n / CHUNK), whatever their number."""
        if not prefix:
            return self._len
        end = _past_prefix(prefix)
        return (self._len if end is None else self._before(end)) - self._before(prefix)

    def with_prefix(self, prefix: str, after: str | None = None) -> Iterator[str]:
        """The keys that start with prefix, in order; with `after`, only those after it.
        The index must not change while the iterator is in use (a scan runs between two
        applied slots)."""
        if not self._chunks:
            return
        if after is not None and after >= prefix:
            i = self._find(after)
            j = bisect_right(self._chunks[i], after)
        else:
            i = self._find(prefix)
            j = bisect_left(self._chunks[i], prefix)
        chunks = self._chunks
        while i < len(chunks):
            chunk = chunks[i]
            while j < len(chunk):
                key = chunk[j]
                if not key.startswith(prefix):
                    return
                yield key
                j += 1
            i, j = i + 1, 0


def _past_prefix(prefix: str) -> str | None:
    """The least string after every string that starts with prefix (None: there is none,
    the prefix being all the last code point)."""
    stem = prefix.rstrip("\U0010ffff")
    return stem[:-1] + chr(ord(stem[-1]) + 1) if stem else None
