"""Leases kept alive while a block runs: `Client.lease` and `AsyncClient.lease`.

    with kv.lease(10) as lease:
        kv.put("services/web/1", address, lease=lease.id)
        serve_while(lambda: lease.alive)

Entering grants a lease of the ttl (with the id asked for, if one was). A thread
(a task, on the AsyncClient) then sends a keepalive a third of a ttl after the
last good one was sent, so that a keepalive or two may fail before the lease can
run out. Leaving stops the keepalives and revokes the lease, which deletes its
keys at once. A lease nobody revokes (its process died) runs out a ttl after its
last keepalive, by the cluster's clock, and its keys go then.

`alive` is True only while the lease is certainly there: until a ttl after the
last grant or keepalive that succeeded was *sent* (the cluster starts the ttl
again when it applies the keepalive, which is after it was sent), and until a
keepalive finds the lease gone (revoked elsewhere, or run out). Once False it
stays False and the keepalives stop: the lease and its keys may be gone, and
whoever relies on them should start again with a new lease.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any

from kvpaxos.client import KvError, NotFound
from kvpaxos.client_support import keeper_pause

if TYPE_CHECKING:
    from kvpaxos.aioclient import AsyncClient
    from kvpaxos.client import Client

# Keepalives go every ttl/3 and each try must come back well within that.
TTL_MIN_S = 0.3


class _Kept:
    """What Lease and AsyncLease share: the id, the ttl, alive, and when to keep it alive next."""

    def __init__(self, client: Any, ttl_s: float | None, lease_id: int | None) -> None:
        if ttl_s is None and lease_id is None:
            raise ValueError("a lease to keep alive needs a ttl (to grant it) or the id of one granted")
        if ttl_s is not None and (isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float))
                                  or not ttl_s >= TTL_MIN_S):
            raise ValueError(f"a lease kept alive needs a ttl of at least {TTL_MIN_S:g} s, not {ttl_s!r}")
        self.client = client
        self.ttl_s = None if ttl_s is None else float(ttl_s)
        self.id = lease_id
        self._wanted = lease_id  # the id a grant asks for (None: the cluster picks one)
        self._alive = False
        self._gone = False  # a keepalive found it ended: nothing to revoke
        self._sure_until = 0.0  # monotonic: a ttl after the last grant or keepalive that succeeded was sent

    @property
    def alive(self) -> bool:
        return self._alive and time.monotonic() < self._sure_until

    def _kept(self, sent: float, ttl_s: float) -> None:
        """A grant or keepalive sent at `sent` (monotonic) succeeded: the lease lives a ttl from then at least."""
        self.ttl_s = ttl_s
        self._sure_until = max(self._sure_until, sent + ttl_s)
        self._alive = True

    def _keep_in(self) -> float:
        """Seconds until the next keepalive is due: a third of a ttl after the last good one was sent."""
        assert self.ttl_s is not None
        return max(0.0, self._sure_until - self.ttl_s * 2 / 3 - time.monotonic())

    def _budget(self) -> float:
        """How long one keepalive may take: no longer than a third of a ttl, so that one
        stuck on a cluster out of reach does not run past the moment the lease may end."""
        assert self.ttl_s is not None
        return max(0.2, min(self.client.timeout_s, self.ttl_s / 3))

    def _failed(self, exc: BaseException) -> bool:
        """After a keepalive that failed with exc: whether the lease is lost (then alive is
        False for good). It is when the lease is gone, or when no keepalive has succeeded
        for a whole ttl (it may have run out meanwhile)."""
        if isinstance(exc, NotFound):
            self._gone, self._alive = True, False
        elif time.monotonic() >= self._sure_until:
            self._alive = False
        return not self._alive

    def _retry_in(self, sent: float) -> float:
        """After a keepalive sent at `sent` that failed but left the lease alive: how long
        to pause first (client_support.keeper_pause)."""
        assert self.ttl_s is not None
        return keeper_pause(self.ttl_s, sent, self._sure_until)

    def _begin(self, need_ttl: bool) -> None:
        if self._alive:
            raise RuntimeError(f"lease {self.id} is kept alive already")
        if need_ttl and self.ttl_s is None:
            raise ValueError("granting a lease needs a ttl")
        if not need_ttl and self.id is None:
            raise ValueError("keeping a lease alive needs its id")


class Lease(_Kept):
    """A lease through `client` (see the module's docstring): grant() or `with` grants it,
    keep() keeps one granted before alive instead; keepalives go from a thread with a
    Client of its own."""

    def __init__(self, client: Client, ttl_s: float | None = None, lease_id: int | None = None) -> None:
        super().__init__(client, ttl_s, lease_id)
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def grant(self) -> int:
        """Grant the lease (with the id given, if one was) and start its keepalives; its id.
        Errors of the client come through (Conflict lease_exists for an id taken)."""
        self._begin(need_ttl=True)
        assert self.ttl_s is not None
        self.stop()  # a keeper that ended with the lease lost
        sent = time.monotonic()
        self.id = self.client.grant(self.ttl_s, self._wanted)
        self._start(sent, self.ttl_s)
        return self.id

    def keep(self) -> float:
        """Keep the lease `id`, granted before, alive: a keepalive now (NotFound if it has
        ended), then from the thread; its ttl."""
        self._begin(need_ttl=False)
        assert self.id is not None
        self.stop()
        sent = time.monotonic()
        ttl_s = self.client.keepalive(self.id)
        self._start(sent, ttl_s)
        return ttl_s

    def _start(self, sent: float, ttl_s: float) -> None:
        self._gone, self._sure_until = False, 0.0
        self._kept(sent, ttl_s)
        self._stop.clear()
        self._keeper = threading.Thread(target=self._keep, name=f"kvpaxos-lease-{self.id}", daemon=True)
        self._keeper.start()

    def _keep(self) -> None:
        kv = self.client
        with type(kv)(kv.endpoints, self._budget(), token=kv.token, ca_file=kv.ca_file) as keeper:
            while not self._stop.wait(self._keep_in()):
                sent = time.monotonic()
                try:
                    self._kept(sent, keeper.keepalive(self.id))
                except KvError as exc:
                    if self._failed(exc):
                        return
                    self._stop.wait(self._retry_in(sent))

    def stop(self) -> None:
        """Stop the keepalives: the lease then runs out a ttl after the last one (unless
        kept alive elsewhere), and alive turns False then."""
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join()
            self._keeper = None

    def close(self) -> int:
        """Stop the keepalives and revoke the lease, deleting its keys; how many (0 if it
        had ended already). Other errors of the client come through: the lease then runs
        out on its own a ttl after its last keepalive."""
        self.stop()
        self._alive = False
        if self.id is None or self._gone:
            return 0
        self._gone = True
        try:
            return self.client.revoke(self.id)
        except NotFound:
            return 0

    def __enter__(self) -> Lease:
        self.grant()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncLease(_Kept):
    """Lease's asyncio twin: `async with kv.lease(ttl) as lease:`; it keeps the lease alive
    from a task on the same AsyncClient."""

    def __init__(self, client: AsyncClient, ttl_s: float | None = None, lease_id: int | None = None) -> None:
        super().__init__(client, ttl_s, lease_id)
        self._keeper: asyncio.Task[Any] | None = None

    async def grant(self) -> int:
        self._begin(need_ttl=True)
        assert self.ttl_s is not None
        await self.stop()  # a keeper that ended with the lease lost
        sent = time.monotonic()
        self.id = await self.client.grant(self.ttl_s, self._wanted)
        self._start(sent, self.ttl_s)
        return self.id

    async def keep(self) -> float:
        self._begin(need_ttl=False)
        assert self.id is not None
        await self.stop()
        sent = time.monotonic()
        ttl_s = await self.client.keepalive(self.id)
        self._start(sent, ttl_s)
        return ttl_s

    def _start(self, sent: float, ttl_s: float) -> None:
        self._gone, self._sure_until = False, 0.0
        self._kept(sent, ttl_s)
        self._keeper = asyncio.create_task(self._keep())

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._keep_in())
            sent = time.monotonic()
            try:
                self._kept(sent, await self.client.keepalive(self.id, self._budget()))
            except KvError as exc:
                if self._failed(exc):
                    return
                await asyncio.sleep(self._retry_in(sent))

    async def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            try:
                await self._keeper
            except asyncio.CancelledError:
                pass
            self._keeper = None

    async def close(self) -> int:
        await self.stop()
        self._alive = False
        if self.id is None or self._gone:
            return 0
        self._gone = True
        try:
            return await self.client.revoke(self.id)
        except NotFound:
            return 0

    async def __aenter__(self) -> AsyncLease:
        await self.grant()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
