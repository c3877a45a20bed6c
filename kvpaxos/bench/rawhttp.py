"""A minimal keep-alive HTTP/1.1 client on asyncio protocols, for the load generator.

The aiohttp client costs about 300 us of CPU per request on this machine, as
much as the bare aiohttp server it measures; this one costs a fraction of that
(one prebuilt request written, one response parsed from the socket buffer, one
future), so the generator measures the server instead of itself.

It only does what the benchmark needs: one request at a time per connection,
requests given as ready bytes, responses with a Content-Length (aiohttp and
kvpaxos always send one) or chunked bodies are refused as errors. Timeouts are
not per request: `Pool.expire` aborts connections whose request is older than
the timeout, which fails that request with TimeoutError.
"""
from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from typing import Callable

Response = tuple[int, bytes]  # status, body


class HttpError(Exception):
    """The connection failed, closed, or sent something this client does not parse."""


class Conn(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.sent_at = 0.0
        self.closed = False
        self.client_id: str | None = None  # exactly-once: this connection's session
        self.seq = 0
        self.watch_leader = False  # parse X-Kv-Leader from answers into `leader`
        self.leader: str | None = None  # the last answer's X-Kv-Leader (when watched)

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self._fail(HttpError("response without Content-Length"))
            return
        eol = head.find(b"\r\n", at + 2)
        length = int(head[at + 17:eol if eol > 0 else len(head)])
        total = end + 4 + length
        if len(buf) < total:
            return
        status = int(buf[9:12])
        body = bytes(buf[end + 4:total])
        if self.watch_leader:
            at = head.find(b"\r\nx-kv-leader:")
            if at >= 0:  # the name is lowercased in `head`; the value is taken as sent
                eol = head.find(b"\r\n", at + 2)
                self.leader = bytes(buf[at + 15:eol if eol > 0 else end]).decode("latin-1").strip()
        del buf[:total]
        keep = b"\r\nconnection: close" not in head
        waiter, self.waiter = self.waiter, None
        if not keep:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc if isinstance(exc, (OSError, TimeoutError)) else HttpError("connection closed"))

    # -- use --

    def request(self, data: bytes) -> asyncio.Future:
        """Send one request (whole bytes); a future of (status, body)."""
        assert self.waiter is None and self.transport is not None
        self.waiter = fut = asyncio.get_running_loop().create_future()
        if self.closed:
            fut.set_exception(HttpError("connection closed"))
            self.waiter = None
            return fut
        self.sent_at = time.monotonic()
        self.transport.write(data)
        return fut

    def busy(self) -> bool:
        return self.waiter is not None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self, exc: Exception) -> None:
        self._fail(exc)
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


async def connect(host: str, port: int) -> Conn:
    _, conn = await asyncio.get_running_loop().create_connection(Conn, host, port)
    return conn


def host_port(url: str) -> tuple[str, int]:
    """("127.0.0.1", 7001) from "http://127.0.0.1:7001"."""
    rest = url.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


def request_bytes(method: str, path: str, host: str, body: bytes | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if body is None:
        return (head + "\r\n").encode()
    return (head + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


class Pool:
    """Keep-alive connections to several servers, at most `limit` in all.

    acquire() gives an idle connection to server i (or opens one); when all
    `limit` are busy it waits, first come first served, for one to be released.
    """

    def __init__(self, addresses: list[tuple[str, int]], limit: int) -> None:
        self.addresses = addresses
        self.limit = max(1, limit)
        self.idle: list[list[Conn]] = [[] for _ in addresses]
        self.all: set[Conn] = set()
        self.opening = 0
        self.waiting: deque[tuple[int, asyncio.Future]] = deque()
        self.on_new: Callable[[Conn], None] | None = None

    async def acquire(self, i: int) -> Conn:
        conn = self.acquire_now(i)
        if conn is not None:
            return conn
        if len(self.all) + self.opening < self.limit:
            return await self._open(i)
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append((i, fut))
        return await fut

    def acquire_now(self, i: int) -> Conn | None:
        """An idle connection to server i at once, or None (then use acquire)."""
        idle = self.idle[i]
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
            self.all.discard(conn)
        return None

    async def _open(self, i: int) -> Conn:
        self.opening += 1
        try:
            conn = await connect(*self.addresses[i])
        finally:
            self.opening -= 1
        if self.on_new is not None:
            self.on_new(conn)
        self.all.add(conn)
        return conn

    def release(self, i: int, conn: Conn) -> None:
        if conn.closed:
            self.all.discard(conn)
            if self.waiting:  # room for a new connection now
                j, fut = self.waiting.popleft()
                task = asyncio.ensure_future(self._open(j))
                task.add_done_callback(lambda t: _settle(fut, t))
            return
        while self.waiting:
            j, fut = self.waiting.popleft()
            if fut.done():
                continue
            if j == i:
                fut.set_result(conn)
                return
            # Waiter for another server: hand this connection's slot over.
            self.all.discard(conn)
            conn.close()
            task = asyncio.ensure_future(self._open(j))
            task.add_done_callback(lambda t, f=fut: _settle(f, t))
            return
        self.idle[i].append(conn)

    def expire(self, timeout_s: float) -> None:
        """Abort connections whose request has waited longer than timeout_s."""
        now = time.monotonic()
        for conn in list(self.all):
            if conn.busy() and now - conn.sent_at > timeout_s:
                conn.abort(TimeoutError(f"no response within {timeout_s:g} s"))

    def close(self) -> None:
        for conn in self.all:
            conn.close()
        self.all.clear()


def _settle(fut: asyncio.Future, task: asyncio.Task) -> None:
    if fut.done():
        if not task.cancelled() and task.exception() is None:
            task.result().close()
        return
    if task.cancelled():
        fut.cancel()
    elif task.exception() is not None:
        fut.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        fut.set_result(task.result())
