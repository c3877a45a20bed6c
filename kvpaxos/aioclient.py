"""asyncio client for a kvpaxos cluster, on aiohttp.

Same methods, errors and retry policy as kvpaxos.client.Client, as coroutines.
Unlike the synchronous client it may be shared by many tasks at once: each
concurrent write gets its own (client_id, seq) session (see Sessions).
"""
from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import aiohttp

from kvpaxos.client import (
    CONNECT_TIMEOUT_S, PROBE_TIMEOUT_S, WAIT_POLL_S, WAIT_VOTER_S, Compacted, Conflict, Entry, Event, KvError,
    LeaseInfo, TxnResult, WatchReader, _int_field, after_compacted, after_stream, entry_from, give_up,
    lease_info_from, raise_for_status, txn_result_from, voter_yet, watch_page_from,
)
from kvpaxos.client_support import (
    LEADER_HEADER, RETRY_STATUSES, Attempts, Sessions, decode_body, kv_path, LeaderHint, list_path,
    member_body, member_path, members_path, merge_cluster_status, parse_endpoints, parse_retry_after,
    put_body, refresh_body, retry_reason, txn_body, unprobed_peers, watch_call_timeout, watch_path,
    count_path, delete_prefix_path, STREAM_SILENCE_S, stream_backoff, watch_stream_path,
    grant_body, keepalive_path, lease_path, leases_path,
)

# Raised when the TCP connect itself timed out (aiohttp >= 3.10); the request never left.
_CONNECT_TIMEOUT = getattr(aiohttp, "ConnectionTimeoutError", ())


class AsyncClient:
    """Use as `async with AsyncClient([...]) as kv:`, or call `await close()` when done.

    As with Client, a client_id passed in must not have been used before, and
    `token` / `ca_file` are the bearer token and the CA file for https:// endpoints.
    """

    def __init__(self, endpoints: list[str] | str, timeout_s: float = 5.0,
                 client_id: str | None = None, token: str | None = None,
                 ca_file: str | None = None) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.timeout_s = float(timeout_s)
        self._sessions = Sessions(client_id or uuid.uuid4().hex)
        self._preferred = 0  # calls start at the node that last answered ...
        self._leader = LeaderHint(self.endpoints)  # ... writes at the leader answers name
        self._http: aiohttp.ClientSession | None = None
        self._closes = 0  # close() calls so far: a call or a watch begun before one ends with it
        self._streams: set[aiohttp.ClientResponse] = set()  # watch streams open
        self.token = token
        self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else None

    @property
    def client_id(self) -> str:
        return self._sessions.client_id

    async def __aenter__(self) -> AsyncClient:
        self._session()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the client's connections. Calls and watches in flight in other tasks end
        (a call raises KvError "closed", a watch stops); the client may be used again."""
        self._closes += 1
        for response in list(self._streams):  # ends the watches reading them
            response.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- key-value operations --

    async def get(self, key: str, stale: bool = False) -> Entry:
        path = kv_path(key) + ("?consistency=stale" if stale else "")
        return entry_from(await self._call("GET", path))

    async def put(self, key: str, value: str, if_value: str | None = None,
                  if_version: int | None = None, ttl: float | None = None, lease: int | None = None) -> int:
        doc = await self._write("PUT", kv_path(key), put_body(value, if_value, if_version, ttl, lease))
        return int(doc.get("version", 0))

    async def refresh(self, key: str, ttl: float, if_value: str | None = None,
                      if_version: int | None = None, timeout_s: float | None = None) -> int:
        """Client.refresh's twin; timeout_s bounds this call (default: the client's)."""
        doc = await self._write("PUT", kv_path(key), refresh_body(ttl, if_value, if_version), timeout_s)
        return int(doc.get("version", 0))

    async def delete_prefix(self, prefix: str) -> int:
        """Client.delete_prefix's twin: every key that starts with prefix; how many."""
        return int((await self._call("DELETE", delete_prefix_path(prefix))).get("deleted", 0))

    async def txn(self, compare: Any = (), then: Any = (), otherwise: Any = ()) -> TxnResult:
        """Client.txn's twin: compare keys, then one list of writes or the other, atomically."""
        return txn_result_from(await self._write("POST", "/v1/txn", txn_body(compare, then, otherwise)))

    def lock(self, key: str, ttl_s: float = 10.0, timeout_s: float | None = None,
             owner: str | None = None) -> Any:
        """Client.lock's twin: `async with kv.lock("locks/x") as lock:` (kvpaxos/lock.py)."""
        from kvpaxos.lock import AsyncLock
        return AsyncLock(self, key, ttl_s, timeout_s, owner)

    async def cas(self, key: str, old: str, new: str) -> int:
        return await self.put(key, new, if_value=old)

    async def delete(self, key: str, if_version: int | None = None) -> None:
        body = {} if if_version is None else {"if_version": int(if_version)}
        await self._write("DELETE", kv_path(key), body)

    # -- leases (as in Client) --

    async def grant(self, ttl: float, lease_id: int | None = None) -> int:
        """A new lease of ttl seconds; its id (see Client.grant)."""
        return int((await self._write("POST", "/v1/leases", grant_body(ttl, lease_id)))["id"])

    async def keepalive(self, lease_id: int, timeout_s: float | None = None) -> float:
        """Start the lease's time to live again from now; its ttl (NotFound once it ended).
        timeout_s bounds this call (default: the client's)."""
        return float((await self._write("POST", keepalive_path(lease_id), {}, timeout_s))["ttl"])

    async def revoke(self, lease_id: int) -> int:
        """End the lease now with its keys; how many keys it deleted (NotFound if it had ended)."""
        return int((await self._write("DELETE", lease_path(lease_id), {})).get("deleted", 0))

    async def lease_info(self, lease_id: int, keys: bool = False, stale: bool = False) -> LeaseInfo:
        """The lease's ttl, seconds left and keys (see Client.lease_info)."""
        return lease_info_from(await self._call("GET", lease_path(lease_id, keys, stale)))

    async def leases(self, page: int = 1000, stale: bool = False) -> list[LeaseInfo]:
        """Every lease, in id order, fetched `page` at a time."""
        found: list[LeaseInfo] = []
        while True:
            doc = await self._call("GET", leases_path(page, found[-1].id if found else None, stale))
            found += [lease_info_from(item) for item in doc.get("leases", [])]
            if not doc.get("more") or not doc.get("leases"):
                return found

    def lease(self, ttl: float, lease_id: int | None = None) -> Any:
        """Client.lease's twin: `async with kv.lease(10) as lease:` keeps it alive from a
        task on this client and revokes it at the end (kvpaxos/lease.py)."""
        from kvpaxos.lease import AsyncLease
        return AsyncLease(self, ttl, lease_id)

    async def list(self, prefix: str = "", limit: int = 1000, after: str | None = None) -> list[Entry]:
        return (await self.list_page(prefix, limit, after))[0]

    async def list_page(self, prefix: str = "", limit: int = 1000, after: str | None = None,
                        keys_only: bool = False) -> tuple[list[Entry], bool]:
        """Entries in key order (after `after`, if given), and whether more matched than
        `limit`: the next page is list_page(prefix, limit, after=<the last key>). With
        keys_only, their keys and versions (value None)."""
        doc = await self._call("GET", list_path(prefix, limit, after, keys_only))
        return [entry_from(item, keys_only) for item in doc.get("items", [])], bool(doc.get("more"))

    async def count(self, prefix: str = "") -> int:
        """How many keys start with prefix ("" for every key): a linearizable read."""
        return _int_field(await self._call("GET", count_path(prefix)), "count")

    async def iter_keys(self, prefix: str = "", page: int = 1000, after: str | None = None,
                        keys_only: bool = False) -> AsyncIterator[Entry]:
        """Every entry under prefix (after `after`, if given), in key order, fetched `page`
        at a time (each page a linearizable read of its own, as Client.iter_keys)."""
        while True:
            entries, more = await self.list_page(prefix, page, after, keys_only)
            for entry in entries:
                yield entry
            if not more or not entries:
                return
            after = entries[-1].key

    async def watch_page(self, key: str | None = None, prefix: str | None = None,
                         from_revision: int | None = None, timeout_s: float = 30.0,
                         limit: int = 1000) -> tuple[list[Event], int]:
        """The changes from from_revision on, waiting up to timeout_s for one, and the
        revision to watch from next (see Client.watch_page)."""
        path = watch_path(key, prefix, from_revision, timeout_s, limit)
        refused: list[Compacted] = []
        while True:
            try:
                return watch_page_from(await self._call("GET", path,
                                                        timeout_s=watch_call_timeout(timeout_s, self.timeout_s)))
            except Compacted as exc:
                self._preferred = after_compacted(refused, exc, self._preferred, len(self.endpoints))

    def watch(self, key: str | None = None, prefix: str | None = None, from_revision: int | None = None,
              timeout_s: float = 30.0, stream: bool = True) -> AsyncIterator[Event]:
        """Every change to key or under prefix, in revision order, each once, for ever, as
        `async for event in kv.watch(...)`: a stream of server-sent events, or long polls
        with stream=False (see Client.watch)."""
        watch_path(key, prefix, from_revision, timeout_s, 1)  # a bad call fails here, not at the first step
        if stream:
            return self._stream(key, prefix, from_revision)
        return self._follow(key, prefix, from_revision, timeout_s)

    async def _stream(self, key: str | None, prefix: str | None,
                      from_revision: int | None) -> AsyncIterator[Event]:
        closes = self._closes
        if from_revision is None:  # pinned as for long polls (see Client._follow)
            events, from_revision = await self.watch_page(key, prefix, None, 0.0)
            for event in events:
                yield event
        refused: list[Compacted] = []
        idle_ends = 0  # streams in a row that ended without an event
        while self._closes == closes:
            if idle_ends:
                await asyncio.sleep(stream_backoff(idle_ends))  # nodes stopping one after the other: no spin
            try:
                response = await self._open_stream(watch_stream_path(key, prefix, from_revision), closes)
            except Compacted as exc:
                self._preferred = after_compacted(refused, exc, self._preferred, len(self.endpoints))
                continue
            except KvError:
                if self._closes != closes:
                    return  # closed from another task while it looked for a node
                raise
            reader = WatchReader()
            idle_ends += 1
            try:
                async for line in _lines(response.content):
                    event = reader.take(line)
                    if reader.stop is not None:
                        break
                    if event is None:
                        continue
                    from_revision = event.revision + 1
                    refused.clear()
                    idle_ends = 0
                    yield event
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
                pass  # cut off, silent for STREAM_SILENCE_S, or garbled: go on elsewhere
            finally:
                self._streams.discard(response)
                response.close()
            self._preferred = after_stream(reader.stop, refused, self._preferred, len(self.endpoints))

    async def _open_stream(self, path: str, closes: int) -> aiohttp.ClientResponse:
        """A watch stream from the first node that starts one."""
        attempts = Attempts(len(self.endpoints), self._preferred, self.timeout_s, False)
        while (step := attempts.next()) is not None:
            index, delay = step
            await asyncio.sleep(delay)
            if self._closes != closes:
                raise KvError("closed", "the client was closed")
            url = self.endpoints[index]
            timeout = aiohttp.ClientTimeout(total=None, sock_read=STREAM_SILENCE_S,
                                            sock_connect=min(CONNECT_TIMEOUT_S, max(attempts.remaining(), 0.01)))
            try:
                response = await self._session().get(url + path, headers={"Accept": "text/event-stream"},
                                                     timeout=timeout)
            except (aiohttp.ClientConnectorError, _CONNECT_TIMEOUT) as exc:
                attempts.failed(f"{url}: {exc or type(exc).__name__}", sent=False)
                continue
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                attempts.failed(f"{url}: {exc or type(exc).__name__}", sent=True)
                continue
            if response.status == 200:
                self._preferred = index
                self._streams.add(response)
                return response
            try:
                doc = decode_body(await response.read())
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                doc = {}
            finally:
                response.release()
            if response.status in RETRY_STATUSES:
                attempts.failed(retry_reason(url, response.status, doc), sent=True, status=response.status)
                continue
            raise_for_status(response.status, doc)
        raise give_up(attempts)

    async def _follow(self, key: str | None, prefix: str | None, from_revision: int | None,
                      timeout_s: float) -> AsyncIterator[Event]:
        closes = self._closes
        if from_revision is None:
            # Pin the start with a poll that does not wait. A long poll without `from` that
            # failed over to another node would start again at that node's "now" and skip
            # the changes made while the first node held it.
            events, from_revision = await self.watch_page(key, prefix, None, 0.0)
            for event in events:
                yield event
        while self._closes == closes:
            try:
                events, from_revision = await self.watch_page(key, prefix, from_revision, timeout_s)
            except KvError:
                if self._closes != closes:
                    return  # closed from another task while the poll waited
                raise
            for event in events:
                yield event

    async def status(self, endpoint: str | None = None) -> dict[str, Any]:
        """Status of one node: the given endpoint (no failover), else any node."""
        if endpoint is None:
            return await self._call("GET", "/v1/status")
        return await self._call("GET", "/v1/status", only=parse_endpoints([endpoint]))

    async def cluster_status(self) -> list[dict[str, Any]]:
        """Status of every endpoint and of every peer they name; unreachable ones as up=False."""
        async def probe(url: str) -> dict[str, Any]:
            try:
                # One try: a refused connection already says "down".
                doc = await self._call("GET", "/v1/status", only=[url], max_tries=1,
                                       timeout_s=min(self.timeout_s, PROBE_TIMEOUT_S))
                return {**doc, "up": True}
            except KvError:
                return {"address": urlsplit(url).netloc, "up": False}

        results = list(await asyncio.gather(*(probe(url) for url in self.endpoints)))
        extra = unprobed_peers(self.endpoints, results)
        results += await asyncio.gather(*(probe(url) for url in extra))
        return merge_cluster_status(results)

    # -- membership (as in Client) --

    async def members(self, stale: bool = False) -> dict[str, Any]:
        """The /v1/members document; linearizable unless `stale`."""
        return await self._call("GET", members_path(stale))

    async def add_member(self, node_id: int, address: str, wait: bool = False,
                         wait_timeout_s: float = WAIT_VOTER_S) -> dict[str, Any]:
        """Add a learner; with `wait`, return once it is a voter (see Client.add_member)."""
        doc = await self._member_change("POST", "/v1/members", member_body(node_id, address))
        if not wait:
            return doc
        deadline = time.monotonic() + wait_timeout_s
        while not voter_yet(doc, node_id, deadline, wait_timeout_s):
            await asyncio.sleep(WAIT_POLL_S)
            doc = await self.members()
        return doc

    async def remove_member(self, node_id: int, force: bool = False) -> dict[str, Any]:
        """Remove a node for good (see Client.remove_member)."""
        return await self._member_change("DELETE", member_path(node_id, force))

    async def _member_change(self, method: str, path: str,
                             body: dict[str, Any] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return await self._call(method, path, body,
                                        timeout_s=max(0.05, deadline - time.monotonic()))
            except Conflict as exc:
                if exc.code != "change_in_progress" or deadline - time.monotonic() < 2 * WAIT_POLL_S:
                    raise
            await asyncio.sleep(WAIT_POLL_S)

    # -- transport --

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            headers = {"Accept": "application/json"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            connector = aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None
            self._http = aiohttp.ClientSession(headers=headers, connector=connector)
            # aiohttp silently resends a PUT/DELETE once when its connection breaks and
            # reports only the second attempt's error: a write the node applied could
            # then look "certainly not applied". Resends are this client's decision.
            self._http._retry_connection = False
        return self._http

    async def _write(self, method: str, path: str, body: dict[str, Any],
                     timeout_s: float | None = None) -> dict[str, Any]:
        session = self._sessions.acquire()
        try:
            # A call bounded here, not by the caller's asyncio.wait_for: a node that used its
            # whole time is then known to the client (LeaderHint.silent), not cancelled unseen.
            return await self._call(method, path, {**body, "client_id": session[0], "seq": session[1]},
                                    timeout_s=timeout_s)
        finally:
            self._sessions.release(session)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
                    only: list[str] | None = None, timeout_s: float | None = None,
                    max_tries: int | None = None) -> dict[str, Any]:
        endpoints = only or self.endpoints
        write = method != "GET"
        start = self._preferred
        if only:
            start = 0
        elif write and self._leader.index is not None:
            start = self._leader.index
        attempts = Attempts(len(endpoints), start, timeout_s or self.timeout_s, write,
                            max_tries=max_tries)
        payload = None if body is None else json.dumps(body).encode("utf-8")
        closes = self._closes
        while (step := attempts.next()) is not None:
            index, delay = step
            await asyncio.sleep(delay)
            if self._closes != closes:
                raise KvError("closed", "the client was closed")
            url = endpoints[index]
            try:
                status, retry_after, doc, leader = await self._send(url + path, method, payload,
                                                                    attempts.remaining())
            except (aiohttp.ClientConnectorError, _CONNECT_TIMEOUT) as exc:
                attempts.failed(f"{url}: {exc or type(exc).__name__}", sent=False)
                if not only:
                    self._leader.unreachable(index)
                continue
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                attempts.failed(f"{url}: {exc or type(exc).__name__}", sent=True)
                if isinstance(exc, asyncio.TimeoutError) and not only:
                    self._preferred = self._leader.silent(index, self._preferred)
                continue
            if not only:
                self._leader.heard(leader)
            if status in RETRY_STATUSES:
                attempts.failed(retry_reason(url, status, doc), sent=True, status=status,
                                retry_after=retry_after)
                continue
            if not only:
                self._preferred = index
            return raise_for_status(status, doc)
        raise give_up(attempts)

    async def _send(self, url: str, method: str, payload: bytes | None,
                    timeout_s: float) -> tuple[int, float | None, dict[str, Any], str | None]:
        timeout = aiohttp.ClientTimeout(total=max(timeout_s, 0.01),
                                        sock_connect=min(CONNECT_TIMEOUT_S, max(timeout_s, 0.01)))
        headers = {"Content-Type": "application/json"} if payload is not None else None
        async with self._session().request(method, url, data=payload, headers=headers,
                                           timeout=timeout) as response:
            raw = await response.read()
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            return response.status, retry_after, decode_body(raw), response.headers.get(LEADER_HEADER)


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The lines of a response body, each with its newline, however long (aiohttp's own
    line reader refuses lines past 512 KiB, and a change may carry a 1 MiB value)."""
    buf = bytearray()
    async for chunk in content.iter_any():
        start = len(buf)
        buf += chunk
        end = buf.find(b"\n", start)
        begin = 0
        while end >= 0:
            yield bytes(buf[begin:end + 1])
            begin = end + 1
            end = buf.find(b"\n", begin)
        del buf[:begin]
