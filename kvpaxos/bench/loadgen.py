"""The load generator: keep-alive HTTP connections, one event loop per process.

Two HTTP clients (Workload.client): "raw" (the default), a minimal keep-alive
HTTP/1.1 client on asyncio protocols (kvpaxos/bench/rawhttp.py) that costs a
fraction of aiohttp's CPU per request, so the generator measures the server
rather than itself; and "aiohttp", the aiohttp client session (what earlier
results used).

Three shapes of load, each described by a Workload:
  closed  `concurrency` clients, each sending its next request when the last one
          is answered: single-operation PUTs (`read_ratio` of them GETs instead);
  rate    open loop: requests start at fixed times (`rate` per second) whatever
          happened to earlier ones; latency counts from the planned start, so a
          stalled server cannot hide its queue (no coordinated omission);
  batch   closed loop of POST /v1/batch requests of `batch_size` PUTs each.
Writes are single PUTs of `value_bytes`-byte values; with `exactly_once` each
client sends its own client_id and an increasing seq, as kvpaxos.client does.
Reads are linearizable GETs (or `?consistency=stale`).

Where requests go: spread over `urls` (client i on node i mod n), or, with
`follow_leader`, all to `urls[leader]` at first and then wherever the nodes'
X-Kv-Leader answer header points, as kvpaxos.client does: after a leader change
the clients move to the new leader instead of being forwarded for the rest of
the run.

Every process waits for a shared start time (CLOCK_MONOTONIC is system-wide on
Linux), runs `warmup_s` unmeasured, then `duration_s` measured: requests that
end inside the window count (throughput = completions in the window), each
with its whole latency. LoadRunner runs one Workload in this process or spread
over `procs` worker processes (`python -m kvpaxos.bench.loadgen`).
"""
from __future__ import annotations

import asyncio
import json
import random
import string
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import aiohttp
from yarl import URL

from kvpaxos.bench import rawhttp
from kvpaxos.bench.stats import summarize
from kvpaxos.client_support import LEADER_HEADER, normalize_endpoint

ERROR_PAUSE_S = 0.01  # after a failed request, so a dead node does not spin a client


@dataclass
class Workload:
    urls: list[str]
    mode: str = "closed"            # closed | rate | batch
    concurrency: int = 16
    read_ratio: float = 0.0
    value_bytes: int = 100
    keys: int = 1000
    warmup_s: float = 1.0
    duration_s: float = 5.0
    rate: float = 0.0               # rate mode: requests per second (all processes together)
    batch_size: int = 100           # batch mode: operations per request
    exactly_once: bool = True
    stale_reads: bool = False
    timeout_s: float = 10.0
    max_connections: int = 256      # rate mode: per process; requests beyond wait for a connection
    seed: int = 1
    key_prefix: str = "bench-"
    label: str = ""
    client: str = "raw"             # raw | aiohttp
    follow_leader: bool = False     # send to urls[leader], then follow X-Kv-Leader
    leader: int = 0                 # with follow_leader: the index in urls to start at


@dataclass
class WorkerResult:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)
    not_found: int = 0
    batch_ops_ok: int = 0
    batch_ops_failed: int = 0
    cpu_s: float = 0.0
    late: int = 0          # rate mode: requests that started > 1 ms after their planned time
    unsent: int = 0        # rate mode: planned but never started (too many outstanding)
    leader_moves: int = 0  # follow_leader: times X-Kv-Leader named another node

    def merge(self, other: WorkerResult) -> None:
        for op, values in other.latencies.items():
            self.latencies.setdefault(op, []).extend(values)
        self.errors.update(other.errors)
        self.not_found += other.not_found
        self.batch_ops_ok += other.batch_ops_ok
        self.batch_ops_failed += other.batch_ops_failed
        self.cpu_s += other.cpu_s
        self.late += other.late
        self.unsent += other.unsent
        self.leader_moves += other.leader_moves


def key_names(w: Workload) -> list[str]:
    return [f"{w.key_prefix}{i:07d}" for i in range(w.keys)]


def value_of(size: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(size))


class _Gen:
    """One process's share of a Workload."""

    def __init__(self, w: Workload, share: int, shares: int, start_at: float,
                 progress: Callable[[int], None] | None) -> None:
        self.w = w
        self.share, self.shares = share, shares
        self.m0 = start_at + w.warmup_s          # measured window
        self.m1 = self.m0 + w.duration_s
        self.rng = random.Random(w.seed * 1000 + share)
        self.start_at = start_at
        self.progress = progress
        self.result = WorkerResult(latencies={})
        self.value_json = json.dumps(value_of(w.value_bytes, w.seed))
        keys = key_names(w)
        self.kv_urls = [[URL(f"{base}/v1/kv/{k}", encoded=True) for k in keys] for base in w.urls]
        suffix = "?consistency=stale" if w.stale_reads else ""
        self.get_urls = [[URL(f"{base}/v1/kv/{k}{suffix}", encoded=True) for k in keys]
                         for base in w.urls]
        self.batch_urls = [URL(f"{base}/v1/batch", encoded=True) for base in w.urls]
        self.keys = keys
        self.done_ops = 0
        self.json_headers = {"Content-Type": "application/json"}
        self._free_sessions: list[list] = []  # open loop: [client_id, last seq] not in use
        self.leader = w.leader if w.follow_leader else -1
        self.url_index = {normalize_endpoint(u): i for i, u in enumerate(w.urls)}
        self._last_header: str | None = None

    def node_for(self, index: int) -> int:
        """The node that client (or request) `index` sends to now."""
        return self.leader if self.leader >= 0 else index % len(self.w.urls)

    def saw_leader(self, url: str | None) -> None:
        """An answer named the leader (X-Kv-Leader): send there from now on."""
        if self.leader < 0 or not url or url == self._last_header:
            return  # the same header as last time: nothing to look up
        self._last_header = url
        try:
            i = self.url_index.get(normalize_endpoint(url))
        except ValueError:
            return  # not a URL: ignore it, as kvpaxos.client does
        if i is not None and i != self.leader:
            self.leader = i
            self.result.leader_moves += 1

    def record(self, op: str, started: float, ended: float) -> None:
        if self.m0 <= ended <= self.m1:
            self.result.latencies[op].append(ended - started)
        self.done_ops += 1

    async def run(self) -> WorkerResult:
        w = self.w
        for op in ("put", "get", "batch"):
            self.result.latencies[op] = []
        if w.client == "raw":
            return await self._run_raw()
        if w.client != "aiohttp":
            raise ValueError(f"unknown client {w.client!r} (raw or aiohttp)")
        # Closed loop: one keep-alive connection per client. Open loop: a bounded
        # pool, as a real client has; waiting for a connection counts in latency.
        limit = w.max_connections if w.mode == "rate" else 0
        connector = aiohttp.TCPConnector(limit=limit, ttl_dns_cache=None, enable_cleanup_closed=False)
        timeout = aiohttp.ClientTimeout(total=w.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         skip_auto_headers=("User-Agent",),
                                         json_serialize=json.dumps) as session:
            self.session = session
            await asyncio.sleep(max(0.0, self.start_at - time.monotonic()))
            cpu_task = asyncio.create_task(self._cpu_window())
            ticker = asyncio.create_task(self._report_progress()) if self.progress else None
            if w.mode == "rate":
                await self._open_loop()
            else:
                clients = [asyncio.create_task(self._client(i))
                           for i in range(self.share, w.concurrency, self.shares)]
                await asyncio.gather(*clients)
            await cpu_task
            if ticker is not None:
                ticker.cancel()
        return self.result

    async def _run_raw(self) -> WorkerResult:
        w = self.w
        addresses = [rawhttp.host_port(u) for u in w.urls]
        hosts = [f"{h}:{p}" for h, p in addresses]
        suffix = "?consistency=stale" if w.stale_reads else ""
        self.raw_put = [[f"PUT /v1/kv/{k} HTTP/1.1\r\nHost: {h}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: ".encode() for k in self.keys] for h in hosts]
        self.raw_get = [[rawhttp.request_bytes("GET", f"/v1/kv/{k}{suffix}", h) for k in self.keys]
                        for h in hosts]
        self.raw_batch = [f"POST /v1/batch HTTP/1.1\r\nHost: {h}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: ".encode() for h in hosts]
        # Closed loop: one connection per client. Open loop: a bounded pool, as a real
        # client has; waiting for a connection counts in latency.
        limit = w.max_connections if w.mode == "rate" else w.concurrency + 1
        self.pool = pool = rawhttp.Pool(addresses, limit)
        share = self.share

        def new_session(conn: rawhttp.Conn) -> None:
            conn.watch_leader = w.follow_leader
            if w.exactly_once:
                conn.client_id = f"bench-{uuid.uuid4().hex[:12]}-r{share}"
        pool.on_new = new_session
        try:
            await asyncio.sleep(max(0.0, self.start_at - time.monotonic()))
            cpu_task = asyncio.create_task(self._cpu_window())
            ticker = asyncio.create_task(self._report_progress()) if self.progress else None
            expiry = asyncio.create_task(self._expire_forever())
            if w.mode == "rate":
                await self._open_loop_raw()
            else:
                clients = [asyncio.create_task(self._raw_client(i))
                           for i in range(self.share, w.concurrency, self.shares)]
                await asyncio.gather(*clients)
            await cpu_task
            expiry.cancel()
            if ticker is not None:
                ticker.cancel()
        finally:
            pool.close()
        return self.result

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(min(0.25, self.w.timeout_s / 4))
            self.pool.expire(self.w.timeout_s)

    def _raw_put_request(self, node: int, k: int, client_id: str | None, seq: int) -> bytes:
        body = self._put_body(client_id, seq)
        return b"%s%d\r\n\r\n%s" % (self.raw_put[node][k], len(body), body)

    async def _raw_client(self, index: int) -> None:
        """A closed-loop client on its own keep-alive connection (reopened after an error)."""
        w = self.w
        node = self.node_for(index)
        rng = random.Random(self.rng.random())
        nkeys = len(self.keys)
        conn: rawhttp.Conn | None = None
        seq = 0
        client_id = f"bench-{uuid.uuid4().hex[:12]}-{index}" if w.exactly_once else None
        results = self.result
        while time.monotonic() < self.m1:
            if (want := self.node_for(index)) != node:
                if conn is not None:
                    self.pool.release(node, conn)
                    conn = None
                node = want
            if conn is None or conn.closed:
                try:
                    conn = await self.pool.acquire(node)
                except OSError as exc:
                    results.errors[f"connect:{type(exc).__name__}"] += 1
                    await asyncio.sleep(ERROR_PAUSE_S)
                    continue
            if w.mode == "batch":
                seq += 1
                op, data = "batch", self._batch_request(node, rng, client_id, seq)
            elif rng.random() < w.read_ratio:
                op, data = "get", self.raw_get[node][rng.randrange(nkeys)]
            else:
                seq += 1
                op, data = "put", self._raw_put_request(node, rng.randrange(nkeys), client_id, seq)
            started = time.monotonic()
            try:
                status, body = await conn.request(data)
            except (rawhttp.HttpError, OSError, TimeoutError) as exc:
                results.errors[f"{op}:{type(exc).__name__}"] += 1
                self.pool.release(node, conn)
                conn = None
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            ended = time.monotonic()
            self.saw_leader(conn.leader)
            if not self._check(op, status, body, started, ended):
                await asyncio.sleep(ERROR_PAUSE_S)
        if conn is not None:
            self.pool.release(node, conn)

    def _check(self, op: str, status: int, body: bytes, started: float, ended: float) -> bool:
        """Count one response; False if it was an error."""
        if op == "get" and status == 404:
            self.result.not_found += 1
        elif status != 200:
            self.result.errors[f"{op}:{status}"] += 1
            return False
        elif op == "batch":
            return self._batch_done(body, started, ended)
        self.record(op, started, ended)
        return True

    def _batch_body(self, rng: random.Random, client_id: str | None, seq: int) -> bytes:
        nkeys = len(self.keys)
        ops = ",".join(
            '{"op":"put","key":"%s","value":%s}' % (self.keys[rng.randrange(nkeys)], self.value_json)
            for _ in range(self.w.batch_size))
        tail = "" if client_id is None else ',"client_id":"%s","seq":%d' % (client_id, seq)
        return ('{"ops":[%s]%s}' % (ops, tail)).encode()

    def _batch_request(self, node: int, rng: random.Random, client_id: str | None, seq: int) -> bytes:
        body = self._batch_body(rng, client_id, seq)
        return b"%s%d\r\n\r\n%s" % (self.raw_batch[node], len(body), body)

    def _batch_done(self, raw: bytes, started: float, ended: float) -> bool:
        w = self.w
        try:
            results = json.loads(raw)["results"]
        except (ValueError, KeyError, TypeError):
            self.result.errors["batch:malformed"] += 1
            return False
        if len(results) != w.batch_size:
            self.result.errors["batch:wrong_count"] += 1
            return False
        ok = sum(1 for r in results if isinstance(r, dict) and r.get("ok", True) is not False)
        if self.m0 <= ended <= self.m1:
            self.result.batch_ops_ok += ok
            self.result.batch_ops_failed += len(results) - ok
        self.record("batch", started, ended)
        return True

    # Open loop, raw client: no task per request. Every request due is started at
    # once on an idle connection (a callback records its answer); only a request
    # that must wait for a connection gets a task.

    async def _open_loop_raw(self) -> None:
        w = self.w
        rate = w.rate / self.shares
        interval = 1.0 / rate
        t0 = self.start_at + self.share * interval / self.shares  # interleave the processes
        self.outstanding = 0
        self.drained: asyncio.Future | None = None
        limit = max(1000, int(rate * w.timeout_s))
        timer = _Timer()
        i = 0
        try:
            while True:
                planned = t0 + i * interval
                if planned >= self.m1:
                    break
                now = time.monotonic()
                if planned > now:
                    await timer.sleep_until(planned)
                    now = time.monotonic()
                # Start everything due by now (a late wake-up starts several).
                while planned <= now and planned < self.m1:
                    i += 1
                    if self.outstanding >= limit:
                        self.result.unsent += 1
                    else:
                        self._start_open(planned, i)
                    planned = t0 + i * interval
        finally:
            timer.close()
        if self.outstanding:
            self.drained = asyncio.get_running_loop().create_future()
            await self.drained

    def _start_open(self, planned: float, i: int) -> None:
        if time.monotonic() - planned > 0.001:
            self.result.late += 1
        node = self.node_for(i)
        is_get = self.rng.random() < self.w.read_ratio
        k = self.rng.randrange(len(self.keys))
        self.outstanding += 1
        conn = self.pool.acquire_now(node)
        if conn is None:
            asyncio.ensure_future(self._open_after_wait(planned, node, k, is_get))
        else:
            self._send_open(conn, planned, node, k, is_get)

    async def _open_after_wait(self, planned: float, node: int, k: int, is_get: bool) -> None:
        try:
            conn = await self.pool.acquire(node)
        except OSError as exc:
            self.result.errors[f"connect:{type(exc).__name__}"] += 1
            self._open_done()
            return
        self._send_open(conn, planned, node, k, is_get)

    def _send_open(self, conn: rawhttp.Conn, planned: float, node: int, k: int, is_get: bool) -> None:
        if is_get:
            data, op = self.raw_get[node][k], "get"
        else:
            client_id = conn.client_id if self.w.exactly_once else None
            if client_id is not None:
                conn.seq += 1
            data, op = self._raw_put_request(node, k, client_id, conn.seq), "put"
        fut = conn.request(data)
        fut.add_done_callback(lambda f: self._on_open_answer(f, op, conn, node, planned))

    def _on_open_answer(self, fut: asyncio.Future, op: str, conn: rawhttp.Conn, node: int,
                        planned: float) -> None:
        ended = time.monotonic()
        self.pool.release(node, conn)
        exc = fut.exception()
        if exc is not None:
            self.result.errors[f"{op}:{type(exc).__name__}"] += 1
        else:
            status, body = fut.result()
            self.saw_leader(conn.leader)
            self._check(op, status, body, planned, ended)
        self._open_done()

    def _open_done(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0 and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    async def _cpu_window(self) -> None:
        await asyncio.sleep(max(0.0, self.m0 - time.monotonic()))
        c0 = time.process_time()
        await asyncio.sleep(max(0.0, self.m1 - time.monotonic()))
        self.result.cpu_s = time.process_time() - c0

    async def _report_progress(self) -> None:
        assert self.progress is not None
        while True:
            self.progress(self.done_ops)
            await asyncio.sleep(0.25)

    # -- closed loop --

    async def _client(self, index: int) -> None:
        w = self.w
        client_id = f"bench-{uuid.uuid4().hex[:12]}-{index}" if w.exactly_once else None
        seq = 0
        rng = random.Random(self.rng.random())
        nkeys = len(self.keys)
        while True:
            now = time.monotonic()
            if now >= self.m1:
                return
            node = self.node_for(index)
            if w.mode == "batch":
                seq += 1
                ok = await self._batch(node, rng, client_id, seq)
            elif rng.random() < w.read_ratio:
                ok = await self._get(node, rng.randrange(nkeys))
            else:
                seq += 1
                ok = await self._put(node, rng.randrange(nkeys), client_id, seq)
            if not ok:
                await asyncio.sleep(ERROR_PAUSE_S)

    def _put_body(self, client_id: str | None, seq: int) -> bytes:
        if client_id is None:
            return b'{"value":%s}' % self.value_json.encode()
        return b'{"value":%s,"client_id":"%s","seq":%d}' % (
            self.value_json.encode(), client_id.encode(), seq)

    async def _put(self, node: int, k: int, client_id: str | None, seq: int,
                   planned: float | None = None) -> bool:
        started = time.monotonic() if planned is None else planned
        try:
            async with self.session.put(self.kv_urls[node][k], data=self._put_body(client_id, seq),
                                        headers=self.json_headers) as resp:
                await resp.read()
                status = resp.status
                self.saw_leader(resp.headers.get(LEADER_HEADER))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self.result.errors[f"put:{type(exc).__name__}"] += 1
            return False
        if status != 200:
            self.result.errors[f"put:{status}"] += 1
            return False
        self.record("put", started, time.monotonic())
        return True

    async def _get(self, node: int, k: int, planned: float | None = None) -> bool:
        started = time.monotonic() if planned is None else planned
        try:
            async with self.session.get(self.get_urls[node][k]) as resp:
                await resp.read()
                status = resp.status
                self.saw_leader(resp.headers.get(LEADER_HEADER))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self.result.errors[f"get:{type(exc).__name__}"] += 1
            return False
        if status == 404:
            self.result.not_found += 1
        elif status != 200:
            self.result.errors[f"get:{status}"] += 1
            return False
        self.record("get", started, time.monotonic())
        return True

    async def _batch(self, node: int, rng: random.Random, client_id: str | None, seq: int) -> bool:
        body = self._batch_body(rng, client_id, seq)
        started = time.monotonic()
        try:
            async with self.session.post(self.batch_urls[node], data=body,
                                         headers=self.json_headers) as resp:
                raw = await resp.read()
                status = resp.status
                self.saw_leader(resp.headers.get(LEADER_HEADER))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self.result.errors[f"batch:{type(exc).__name__}"] += 1
            return False
        ended = time.monotonic()
        if status != 200:
            self.result.errors[f"batch:{status}"] += 1
            return False
        return self._batch_done(raw, started, ended)

    # -- open loop --

    async def _open_loop(self) -> None:
        w = self.w
        rate = w.rate / self.shares
        interval = 1.0 / rate
        t0 = self.start_at + self.share * interval / self.shares  # interleave the processes
        nkeys = len(self.keys)
        pending: set[asyncio.Task] = set()
        limit = max(1000, int(rate * w.timeout_s))
        i = 0
        while True:
            planned = t0 + i * interval
            if planned >= self.m1:
                break
            now = time.monotonic()
            if planned > now:
                await asyncio.sleep(planned - now)
            i += 1
            if len(pending) >= limit:
                self.result.unsent += 1
                continue
            if self.rng.random() < w.read_ratio:
                coro = self._timed_get(planned, self.rng.randrange(nkeys), i)
            else:
                coro = self._timed_put(planned, self.rng.randrange(nkeys), i)
            task = asyncio.create_task(coro)
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)

    async def _timed_put(self, planned: float, k: int, i: int) -> None:
        self._note_start(planned)
        if not self.w.exactly_once:
            await self._put(self.node_for(i), k, None, 0, planned)
            return
        # Concurrent writes each need their own session (as in kvpaxos.aioclient):
        # one client's requests must reach the store in seq order.
        session = self._free_sessions.pop() if self._free_sessions else \
            [f"bench-{uuid.uuid4().hex[:12]}-r{self.share}", 0]
        session[1] += 1
        try:
            await self._put(self.node_for(i), k, session[0], session[1], planned)
        finally:
            self._free_sessions.append(session)

    async def _timed_get(self, planned: float, k: int, i: int) -> None:
        self._note_start(planned)
        await self._get(self.node_for(i), k, planned)

    def _note_start(self, planned: float) -> None:
        """Latency counts from the planned start; note requests that started late."""
        if time.monotonic() - planned > 0.001:
            self.result.late += 1


class _Timer:
    """Sleep until a CLOCK_MONOTONIC instant with sub-millisecond precision.

    asyncio's timers wake through epoll_wait, whose timeout is whole
    milliseconds rounded up: an open loop at 1,000 requests/s would start each
    request up to 1 ms late (0.5 ms on average), which is a quarter of a 2 ms
    latency target. On Linux a timerfd (through libc) wakes the loop on time;
    elsewhere this falls back to asyncio.sleep.
    """

    def __init__(self) -> None:
        self.fd = -1
        self.waiter: asyncio.Future | None = None
        try:
            import ctypes
            import os

            libc = ctypes.CDLL(None, use_errno=True)
            self._os = os
            self._spec = (ctypes.c_long * 4)()  # itimerspec: interval (0), value (s, ns)
            self._settime = libc.timerfd_settime
            fd = libc.timerfd_create(1, 0o4000 | 0o2000000)  # CLOCK_MONOTONIC, NONBLOCK | CLOEXEC
            if fd >= 0:
                asyncio.get_running_loop().add_reader(fd, self._fired)
                self.fd = fd
        except (OSError, AttributeError, RuntimeError, NotImplementedError):
            self.fd = -1

    async def sleep_until(self, t: float) -> None:
        if self.fd < 0:
            await asyncio.sleep(max(0.0, t - time.monotonic()))
            return
        sec = int(t)
        self._spec[2], self._spec[3] = sec, max(1, int((t - sec) * 1e9))
        if self._settime(self.fd, 1, self._spec, None) != 0:  # TFD_TIMER_ABSTIME
            await asyncio.sleep(max(0.0, t - time.monotonic()))
            return
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter

    def _fired(self) -> None:
        try:
            self._os.read(self.fd, 8)
        except BlockingIOError:
            return
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        if self.fd >= 0:
            asyncio.get_running_loop().remove_reader(self.fd)
            self._os.close(self.fd)
            self.fd = -1


def run_share(w: Workload, share: int, shares: int, start_at: float,
              progress: Callable[[int], None] | None = None) -> WorkerResult:
    """One process's share of the load (the entry point of worker processes)."""
    return asyncio.run(_Gen(w, share, shares, start_at, progress).run())


def worker_main() -> None:
    """`python -m kvpaxos.bench.loadgen`: a worker process of LoadRunner.

    Reads one job per line on stdin (JSON: workload, share, shares, start_at),
    answers one result per line on stdout, until stdin closes.
    """
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        job = json.loads(line)
        result = run_share(Workload(**job["workload"]), job["share"], job["shares"], job["start_at"])
        sys.stdout.write(json.dumps(asdict(result)) + "\n")
        sys.stdout.flush()


class Progress:
    """A one-line progress bar on stderr: redrawn in place on a terminal, else start/end lines."""

    def __init__(self, label: str, total_s: float, enabled: bool = True) -> None:
        self.label, self.total_s, self.enabled = label, total_s, enabled
        self.t0 = time.monotonic()
        self.tty = sys.stderr.isatty()
        if enabled and not self.tty:
            print(f"  {label}: running {total_s:.0f} s ...", file=sys.stderr, flush=True)

    def update(self, ops: int | None = None) -> None:
        if not (self.enabled and self.tty):
            return
        elapsed = min(self.total_s, time.monotonic() - self.t0)
        width = 30
        filled = int(width * elapsed / self.total_s) if self.total_s > 0 else width
        count = "" if ops is None else f"  {ops} requests"
        sys.stderr.write(f"\r  {self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{elapsed:4.1f}/{self.total_s:.1f} s{count}   ")
        sys.stderr.flush()

    def done(self, summary: str = "") -> None:
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r\033[K")
        print(f"  {self.label}: {summary}" if summary else f"  {self.label}: done",
              file=sys.stderr, flush=True)


class LoadRunner:
    """Runs Workloads, in this process or over a pool of worker processes kept for all levels."""

    def __init__(self, procs: int = 1, show_progress: bool = True) -> None:
        self.procs = max(1, procs)
        self.show_progress = show_progress
        self._workers: list[subprocess.Popen] = []
        if self.procs > 1:
            from kvpaxos.bench.cluster import child_env
            for _ in range(self.procs):
                self._workers.append(subprocess.Popen(
                    [sys.executable, "-m", "kvpaxos.bench.loadgen"], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, env=child_env(), text=True))
            for proc in self._workers:  # imports done, ready to take a job at once
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    self.close()
                    raise RuntimeError("a load generator worker failed to start")

    def close(self) -> None:
        for proc in self._workers:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self._workers:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._workers = []

    def pids(self) -> list[int]:
        """The worker processes (empty when the load runs in this process)."""
        return [p.pid for p in self._workers]

    def __enter__(self) -> LoadRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, w: Workload, on_window: Callable[[str], None] | None = None,
            label: str | None = None) -> tuple[WorkerResult, float]:
        """Run w; on_window("start"/"end") is called at the measured window's edges.

        Returns the merged result and the measured duration in seconds.
        """
        lead_s = 0.2 if self._workers else 0.05
        start_at = time.monotonic() + lead_s
        m0, m1 = start_at + w.warmup_s, start_at + w.warmup_s + w.duration_s
        bar = Progress(label or w.label or w.mode, w.warmup_s + w.duration_s + lead_s,
                       self.show_progress)
        merged = WorkerResult(latencies={"put": [], "get": [], "batch": []})
        if not self._workers:
            async def main() -> WorkerResult:
                gen = _Gen(w, 0, 1, start_at, bar.update)
                hooks = asyncio.create_task(_window_hooks(m0, m1, on_window))
                result = await gen.run()
                await hooks
                return result
            merged.merge(asyncio.run(main()))
        else:
            for i, proc in enumerate(self._workers):
                job = {"workload": asdict(w), "share": i, "shares": self.procs, "start_at": start_at}
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(job) + "\n")
                proc.stdin.flush()
            _sleep_until(m0, bar)
            if on_window:
                on_window("start")
            _sleep_until(m1, bar)
            if on_window:
                on_window("end")
            for proc in self._workers:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"load generator worker {proc.pid} exited")
                doc = json.loads(line)
                doc["errors"] = Counter(doc["errors"])
                merged.merge(WorkerResult(**doc))
        n = sum(len(v) for v in merged.latencies.values())
        errors = sum(merged.errors.values())
        bar.done(f"{n / w.duration_s:,.0f} requests/s" + (f", {errors} errors" if errors else ""))
        return merged, w.duration_s


async def _window_hooks(m0: float, m1: float, on_window: Callable[[str], None] | None) -> None:
    if on_window is None:
        return
    await asyncio.sleep(max(0.0, m0 - time.monotonic()))
    on_window("start")
    await asyncio.sleep(max(0.0, m1 - time.monotonic()))
    on_window("end")


def _sleep_until(t: float, bar: Progress) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.25))
        bar.update()


def level_summary(result: WorkerResult, duration_s: float, batch_size: int = 1) -> dict:
    """Per-operation summaries of one measured window, as they go into the JSON."""
    ops: dict[str, Any] = {}
    for op, values in result.latencies.items():
        if values:
            ops[op] = summarize(values, duration_s, batch_size if op == "batch" else 1)
    total = sum(s["ops_s"] for op, s in ops.items() if op != "batch")
    out = {"ops": ops, "total_ops_s": round(total, 1), "errors": dict(result.errors),
           "client_cpu_s": round(result.cpu_s, 3)}
    if result.not_found:
        out["not_found"] = result.not_found
    if "batch" in ops:
        out["batch_ops_s"] = round(result.batch_ops_ok / duration_s, 1)
        out["batch_ops_failed"] = result.batch_ops_failed
    if result.leader_moves:
        out["leader_moves"] = result.leader_moves
    if result.late or result.unsent:
        out["late_starts"] = result.late
        out["unsent"] = result.unsent
    return out


async def _populate(urls: list[str], keys: list[str], value: str, concurrency: int) -> int:
    """Write every key once (so reads find them); the number of keys written."""
    body = json.dumps({"value": value}).encode()
    queue = list(enumerate(keys))
    written = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal written
        while queue:
            i, key = queue.pop()
            url = URL(f"{urls[i % len(urls)]}/v1/kv/{key}", encoded=True)
            for _ in range(20):
                try:
                    async with session.put(url, data=body,
                                           headers={"Content-Type": "application/json"}) as resp:
                        await resp.read()
                        if resp.status == 200:
                            written += 1
                            break
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    pass
                await asyncio.sleep(0.05)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return written


def populate(w: Workload, concurrency: int = 32) -> int:
    return asyncio.run(_populate(w.urls, key_names(w), value_of(w.value_bytes, w.seed), concurrency))


async def _probe_batch(url: str) -> tuple[bool, str]:
    body = {"ops": [{"op": "put", "key": "bench-probe", "value": "x"}, {"op": "get", "key": "bench-probe"}]}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.post(f"{url}/v1/batch", json=body) as resp:
                raw = await resp.read()
                status = resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return False, f"POST /v1/batch failed: {exc}"
    if status != 200:
        return False, f"POST /v1/batch answered HTTP {status}: {raw[:200].decode(errors='replace')}"
    try:
        results = json.loads(raw)["results"]
        assert isinstance(results, list) and len(results) == 2
    except (ValueError, KeyError, TypeError, AssertionError):
        return False, f"POST /v1/batch answered an unexpected body: {raw[:200]!r}"
    return True, "ok"


def probe_batch(url: str) -> tuple[bool, str]:
    """Whether the node at url serves POST /v1/batch as the benchmark expects (and why not)."""
    return asyncio.run(_probe_batch(url))


if __name__ == "__main__":
    worker_main()
