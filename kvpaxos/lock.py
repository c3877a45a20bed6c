"""Locks held through a key with a time to live: `Client.lock` and `AsyncClient.lock`.

    with kv.lock("locks/report", ttl=10) as lock:
        do_the_work(fencing_token=lock.token)

Acquiring puts the key, with this holder's own name as its value, only if it
does not exist (`if_version` 0) and with the ttl; while someone else holds it,
the acquirer waits on a watch of the key for its delete (a release or an
expiry), then tries again. Holding refreshes the key every ttl/3 only if its
value is still this holder's name (a refresh keeps the version). Releasing
deletes it only at the version it was acquired at. A holder that stops
refreshing (its process died, paused, or lost the cluster for a ttl) loses the
lock when the key expires, and the next acquirer gets it.

`token` is the key's version when the lock was acquired: versions are the
store's revisions, so every new holder's token is larger than every earlier
one's. Pass it to what the lock protects, which can then refuse a holder whose
token is older than one it has seen (a fencing token): a paused holder may not
know yet that it lost the lock.

`held` is True only while the lock is certainly this holder's: until a ttl after
the last put or refresh that succeeded was *sent* (the key's deadline is the
clock reading of its slot plus the ttl, and the leader reads its clock after the
request left), and until a refresh finds the key gone or someone else's. A
refresh goes a third of a ttl after the last good one was sent, and acquire()
refreshes at once when its put came back later than that (a slow cluster, an
election), so the lock it returns is held with two thirds of a ttl to spare. A cluster
whose answers keep coming later than that cannot give a lock of this ttl: after
LATE_ANSWERS_MAX late answers in a row acquire() deletes the key and raises
LockTooSlow (ask again with a longer ttl) rather than keeping it alive for ever.
"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from kvpaxos.client import Compacted, KvError, NotFound, OutcomeUnknown, PreconditionFailed
from kvpaxos.client_support import keeper_pause

if TYPE_CHECKING:
    from kvpaxos.aioclient import AsyncClient
    from kvpaxos.client import Client

TTL_S = 10.0
LATE_ANSWERS_MAX = 3  # an acquire's put and refreshes answered later than ttl/3, in a row


class LockTimeout(KvError):
    """The lock was not acquired within the timeout given."""

    def __init__(self, key: str, timeout_s: float) -> None:
        super().__init__("lock_timeout", f"lock {key!r} not acquired within {timeout_s:g} s")


class LockTooSlow(KvError):
    """The cluster answered the acquirer later than a third of the ttl, time after time:
    it cannot hold a lock with this ttl for sure. The key was given back."""

    def __init__(self, key: str, ttl_s: float) -> None:
        super().__init__("lock_too_slow", f"lock {key!r}: the cluster answered later than a third of its "
                                          f"{ttl_s:g} s ttl {LATE_ANSWERS_MAX} times in a row; use a longer ttl")


def _check(key: str, ttl_s: float) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError("a lock needs a key")
    if not 0.3 <= ttl_s <= 3600:
        raise ValueError("a lock's ttl must be from 0.3 to 3600 seconds")


class _Held:
    """What Lock and AsyncLock share: the key, the holder's name, the token, held."""

    def __init__(self, client: Any, key: str, ttl_s: float, timeout_s: float | None, owner: str | None) -> None:
        _check(key, ttl_s)
        self.client, self.key, self.ttl_s, self.timeout_s = client, key, float(ttl_s), timeout_s
        self.owner = owner or f"{client.client_id}/{uuid.uuid4().hex[:12]}"
        self.token: int | None = None
        self._held = False
        self._sure_until = 0.0  # monotonic: a ttl after the last put or refresh that succeeded was sent

    @property
    def held(self) -> bool:
        return self._held and time.monotonic() < self._sure_until

    def _granted(self, sent: float) -> None:
        """A put or refresh sent at `sent` (monotonic) succeeded: the key lives a ttl from then at least."""
        self._sure_until = max(self._sure_until, sent + self.ttl_s)
        self._held = True

    def _late(self, sent: float) -> bool:
        """Whether the answer to a put or refresh sent at `sent` came back too late to
        leave two thirds of a ttl of certainty: refresh again at once."""
        return time.monotonic() - sent >= self.ttl_s / 3

    @staticmethod
    def _past(deadline: float | None) -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def _give_up(self, late: int, timeout_s: float | None, deadline: float | None) -> KvError | None:
        """After `late` late answers in a row: the error acquire() gives up with (once it
        has given the key back), or None to refresh again."""
        if self._past(deadline):
            return LockTimeout(self.key, timeout_s or 0.0)
        return LockTooSlow(self.key, self.ttl_s) if late >= LATE_ANSWERS_MAX else None

    def _refresh_in(self) -> float:
        """Seconds until the next refresh is due: a third of a ttl after the last good one was sent."""
        return max(0.0, self._sure_until - self.ttl_s * 2 / 3 - time.monotonic())

    def _begin(self, timeout_s: float | None) -> tuple[float | None, float | None]:
        """For acquire(): refuses a lock held already; the timeout to keep (the lock's
        own by default) and its deadline on the monotonic clock (None: for ever)."""
        if self._held:
            raise RuntimeError(f"lock {self.key!r} is held already")
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        return timeout_s, None if timeout_s is None else time.monotonic() + timeout_s

    def _wait(self, timeout_s: float | None, deadline: float | None) -> float:
        """How long to watch the holder's key for its delete before trying again (at most
        a ttl and a second); LockTimeout once the deadline has passed."""
        wait = self.ttl_s + 1 if deadline is None else min(self.ttl_s + 1, deadline - time.monotonic())
        if wait <= 0:
            raise LockTimeout(self.key, timeout_s or 0.0)
        return wait

    def _refresh_failed(self, exc: BaseException) -> bool:
        """After a refresh that failed with exc: whether the lock is lost (then held is
        False for good). It is when the key is gone or someone else's, or when no refresh
        has succeeded for a whole ttl (it may have expired meanwhile)."""
        if isinstance(exc, (NotFound, PreconditionFailed)) or time.monotonic() >= self._sure_until:
            self._held = False
        return not self._held


class Lock(_Held):
    """A lock through `client` (see the module's docstring). Not acquired until
    acquire() or `with`; it refreshes its key from a thread with a Client of its own."""

    def __init__(self, client: Client, key: str, ttl_s: float = TTL_S, timeout_s: float | None = None,
                 owner: str | None = None) -> None:
        super().__init__(client, key, ttl_s, timeout_s, owner)
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def acquire(self, timeout_s: float | None = None) -> int:
        """Wait until the lock is ours, for ever or up to timeout_s (default: the one
        given to the lock), then LockTimeout; its token. Errors of the client (no node
        answers, say) come through."""
        timeout_s, deadline = self._begin(timeout_s)
        sent, late = self._take(timeout_s, deadline), 0
        while self._late(sent):  # the key may be near its end already: refresh it now
            late += 1
            error = self._give_up(late, timeout_s, deadline)
            if error is not None:
                self._give_back()
                raise error
            sent = time.monotonic()
            try:
                self.client.refresh(self.key, self.ttl_s, if_value=self.owner)
            except (NotFound, PreconditionFailed):
                sent = self._take(timeout_s, deadline)  # it expired meanwhile: take it again
        self._granted(sent)
        self._stop.clear()
        self._keeper = threading.Thread(target=self._keep, name=f"kvpaxos-lock-{self.key}", daemon=True)
        self._keeper.start()
        return self.token

    def _take(self, timeout_s: float | None, deadline: float | None) -> float:
        """Put the key once it is free; when the put that made it was sent (monotonic)."""
        kv, key = self.client, self.key
        unknown: float | None = None  # when the first put whose outcome is unknown was sent
        while True:
            sent = time.monotonic()
            try:
                self.token = kv.put(key, self.owner, if_version=0, ttl=self.ttl_s)
                return sent
            except PreconditionFailed:
                pass  # someone holds it: look
            except OutcomeUnknown:
                unknown = sent if unknown is None else unknown  # it may have made it: look
            try:
                entry = kv.get(key)
            except NotFound:
                continue  # released meanwhile: try again
            if entry.value == self.owner:
                self.token = entry.version  # a put of ours went through after all
                return sent if unknown is None else unknown
            wait = self._wait(timeout_s, deadline)
            try:
                kv.watch_page(key=key, from_revision=entry.version + 1, timeout_s=wait)  # its delete, or the wait
            except Compacted:
                pass  # the nodes' history moved on: look again

    def _give_back(self) -> None:
        """Acquiring gave up with the key taken: delete it if it is still ours (best effort:
        it expires anyway), so that the next acquirer need not wait for its ttl."""
        try:
            self.client.delete(self.key, if_version=self.token)
        except KvError:
            pass

    def _keep(self) -> None:
        kv = self.client
        # Each try bounded by a third of the ttl: a cluster out of reach must not hold a
        # refresh past the moment the lock may have expired.
        budget = max(0.2, min(kv.timeout_s, self.ttl_s / 3))
        with type(kv)(kv.endpoints, budget, token=kv.token, ca_file=kv.ca_file) as keeper:
            while not self._stop.wait(self._refresh_in()):
                sent = time.monotonic()
                try:
                    keeper.refresh(self.key, self.ttl_s, if_value=self.owner)
                    self._granted(sent)
                except KvError as exc:
                    if self._refresh_failed(exc):
                        return
                    self._stop.wait(keeper_pause(self.ttl_s, sent, self._sure_until))

    def release(self) -> None:
        """Stop refreshing and delete the key if it is still ours (nothing if it was lost)."""
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join()
            self._keeper = None
        if self._held:
            self._held = False
            try:
                self.client.delete(self.key, if_version=self.token)
            except (NotFound, PreconditionFailed):
                pass  # lost meanwhile: someone else's now, or no one's

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class AsyncLock(_Held):
    """Lock's asyncio twin: `async with kv.lock(key) as lock:`; it refreshes its key
    from a task on the same AsyncClient."""

    def __init__(self, client: AsyncClient, key: str, ttl_s: float = TTL_S, timeout_s: float | None = None,
                 owner: str | None = None) -> None:
        super().__init__(client, key, ttl_s, timeout_s, owner)
        self._keeper: asyncio.Task[Any] | None = None

    async def acquire(self, timeout_s: float | None = None) -> int:
        timeout_s, deadline = self._begin(timeout_s)
        sent, late = await self._take(timeout_s, deadline), 0
        while self._late(sent):
            late += 1
            error = self._give_up(late, timeout_s, deadline)
            if error is not None:
                await self._give_back()
                raise error
            sent = time.monotonic()
            try:
                await self.client.refresh(self.key, self.ttl_s, if_value=self.owner)
            except (NotFound, PreconditionFailed):
                sent = await self._take(timeout_s, deadline)
        self._granted(sent)
        self._keeper = asyncio.create_task(self._keep())
        return self.token

    async def _take(self, timeout_s: float | None, deadline: float | None) -> float:
        kv, key = self.client, self.key
        unknown: float | None = None
        while True:
            sent = time.monotonic()
            try:
                self.token = await kv.put(key, self.owner, if_version=0, ttl=self.ttl_s)
                return sent
            except PreconditionFailed:
                pass
            except OutcomeUnknown:
                unknown = sent if unknown is None else unknown
            try:
                entry = await kv.get(key)
            except NotFound:
                continue
            if entry.value == self.owner:
                self.token = entry.version
                return sent if unknown is None else unknown
            wait = self._wait(timeout_s, deadline)
            try:
                await kv.watch_page(key=key, from_revision=entry.version + 1, timeout_s=wait)
            except Compacted:
                pass

    async def _give_back(self) -> None:
        try:
            await self.client.delete(self.key, if_version=self.token)
        except KvError:
            pass

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_in())
            sent = time.monotonic()
            try:
                await self.client.refresh(self.key, self.ttl_s, if_value=self.owner,
                                          timeout_s=max(0.2, min(self.client.timeout_s, self.ttl_s / 3)))
                self._granted(sent)
            except KvError as exc:
                if self._refresh_failed(exc):
                    return
                await asyncio.sleep(keeper_pause(self.ttl_s, sent, self._sure_until))

    async def release(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            try:
                await self._keeper
            except asyncio.CancelledError:
                pass
            self._keeper = None
        if self._held:
            self._held = False
            try:
                await self.client.delete(self.key, if_version=self.token)
            except (NotFound, PreconditionFailed):
                pass

    async def __aenter__(self) -> AsyncLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()
