"""Peer links: one persistent WebSocket per direction per pair of nodes.

Each node dials every peer at ws://HOST:PORT/v1/peer and sends on that link;
it receives on the links peers dialed to it. Messages queued during one
event-loop turn go out as one frame. A link that is down drops what is queued:
Paxos tolerates loss and the core retransmits, so nothing here retries
messages, only connections. Frames from peers are decoded defensively: a
malformed message is counted and dropped, and the link stays up.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Callable

import aiohttp
from aiohttp import web

from kvpaxos.core import messages as m
from kvpaxos.core.codec import WireError, decode_frame, encode_frame

log = logging.getLogger("kvpaxos.transport")

QUEUE_MESSAGES_MAX = 100_000
FRAME_BYTES_MAX = 64 * 1024 * 1024
NODE_HEADER = "X-Kv-Node"


class PeerLink:
    """The outbound link to one peer, reconnecting with backoff."""

    def __init__(self, self_id: int, peer_id: int, url: str, session: aiohttp.ClientSession) -> None:
        self.self_id, self.peer_id, self.url, self.session = self_id, peer_id, url, session
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.queue: list[m.Message] = []
        self.flush_scheduled = False
        self.dropped = 0
        self.task: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self.ws.closed

    def send(self, msg: m.Message) -> bool:
        """Queue msg for this turn's frame; False if it was dropped (link down or queue full)."""
        if not self.connected or len(self.queue) >= QUEUE_MESSAGES_MAX:
            self.dropped += 1
            return False
        self.queue.append(msg)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self.flush_scheduled = False
        msgs, self.queue = self.queue, []
        if msgs and self.connected:
            assert self.ws is not None
            # send_str only buffers into the transport; it does not wait for the peer.
            asyncio.ensure_future(self._write(self.ws, encode_frame(self.self_id, msgs)))

    async def _write(self, ws: aiohttp.ClientWebSocketResponse, frame: str) -> None:
        try:
            await ws.send_str(frame)
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            pass

    async def run(self) -> None:
        backoff = 0.05
        while True:
            try:
                async with self.session.ws_connect(
                        self.url, headers={NODE_HEADER: str(self.self_id)}, heartbeat=5.0,
                        max_msg_size=FRAME_BYTES_MAX, autoping=True) as ws:
                    self.ws = ws
                    backoff = 0.05
                    log.info("link %d->%d up", self.self_id, self.peer_id)
                    async for _ in ws:  # peers never write on our outbound link
                        pass
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                pass
            if self.ws is not None:
                log.info("link %d->%d down", self.self_id, self.peer_id)
            self.ws = None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)


class PeerTransport:
    def __init__(self, self_id: int, cluster: dict[int, tuple[str, int]],
                 deliver: Callable[[int, list[m.Message]], None]) -> None:
        self.self_id = self_id
        self.cluster = cluster
        self.deliver = deliver
        self.links: dict[int, PeerLink] = {}
        self.session: aiohttp.ClientSession | None = None
        self.counters: Counter[str] = Counter()

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=2.0))
        for peer, (host, port) in self.cluster.items():
            if peer != self.self_id:
                link = PeerLink(self.self_id, peer, f"http://{_host(host)}:{port}/v1/peer", self.session)
                link.task = asyncio.create_task(link.run())
                self.links[peer] = link

    async def stop(self) -> None:
        for link in self.links.values():
            if link.task is not None:
                link.task.cancel()
        if self.session is not None:
            await self.session.close()

    def send(self, dst: int, msg: m.Message) -> bool:
        link = self.links.get(dst)
        return link is not None and link.send(msg)

    def reachable(self) -> dict[int, bool]:
        return {peer: link.connected for peer, link in self.links.items()}

    async def handle_inbound(self, request: web.Request) -> web.WebSocketResponse:
        """The /v1/peer endpoint: frames from the peer that dialed us."""
        claimed = request.headers.get(NODE_HEADER, "")
        if not claimed.isdigit() or int(claimed) not in self.cluster or int(claimed) == self.self_id:
            self.counters["peer_refused"] += 1
            raise web.HTTPForbidden(text='{"error": "forbidden", "message": "unknown peer"}',
                                    content_type="application/json")
        peer = int(claimed)
        ws = web.WebSocketResponse(heartbeat=5.0, max_msg_size=FRAME_BYTES_MAX)
        await ws.prepare(request)
        async for frame in ws:
            if frame.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                continue
            self._on_frame(peer, frame.data)
        return ws

    def _on_frame(self, peer: int, data: str | bytes) -> None:
        try:
            src, decoded = decode_frame(data)
        except WireError as e:
            self.counters["malformed_frames"] += 1
            log.debug("malformed frame from node %d: %s", peer, e)
            return
        if src != peer:
            self.counters["malformed_frames"] += 1
            return
        msgs = [x for x in decoded if not isinstance(x, WireError)]
        self.counters["malformed_messages"] += len(decoded) - len(msgs)
        if msgs:
            self.deliver(peer, msgs)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
