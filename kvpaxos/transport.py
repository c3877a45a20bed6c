"""Peer links: one persistent WebSocket per direction per pair of nodes.

Each node dials every peer at ws://HOST:PORT/v1/peer (wss:// with TLS) and
sends on that link; it receives on the links peers dialed to it. With a cluster
secret, both ends first prove they hold it (kvpaxos/security.py) and no Paxos
frame is sent or accepted before that. Messages queued during one
event-loop turn go out as one frame. A message sent lazily (a leader's Commit
that no one waits for) does not start a frame of its own: it rides in the next
frame to that peer, or goes when the node calls flush_lazy() on its next tick;
a newer lazy message replaces an older one. A link that is down drops what is queued:
Paxos tolerates loss and the core retransmits, so nothing here retries
messages, only connections. Frames from peers are decoded defensively: a
malformed message is counted and dropped, and the link stays up.

Logs say when a link's state changes (up, down, cannot connect for a new
reason), never once per reconnect attempt; refused strangers are logged at most
once a minute per address.
"""
from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections import Counter
from typing import Any, Callable, Coroutine

import aiohttp
from aiohttp import web

from kvpaxos.config import address_text, parse_address
from kvpaxos.core import messages as m
from kvpaxos.core.codec import WireError, decode_frame, encode_message, frame_of
from kvpaxos.logs import RateLimit, StateLog, fields
from kvpaxos.security import HANDSHAKE_TIMEOUT_S, AuthError, Handshake

log = logging.getLogger("kvpaxos.transport")

QUEUE_MESSAGES_MAX = 100_000
FRAME_BYTES_MAX = 64 * 1024 * 1024
NODE_HEADER = "X-Kv-Node"
FAREWELL_S = 10.0  # a link to a node that left the configuration stays up this long, for its last messages
ADDRESS_HEADER = "X-Kv-Address"  # the dialer's own HOST:PORT, so a node that does not know it yet can answer
CLUSTER_HEADER = "X-Kv-Cluster"  # the dialer's cluster id: links between clusters are refused (409)


class TurnEncoder:
    """Encodes each message once per event-loop turn, however many links send it
    (a leader's Accept goes to every peer). Entries hold their message, so its id
    cannot be reused while the entry lives; the cache empties after the turn."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[m.Message, str]] = {}

    def encode(self, msg: m.Message) -> str:
        hit = self._cache.get(id(msg))
        if hit is not None and hit[0] is msg:
            return hit[1]
        if not self._cache:
            asyncio.get_running_loop().call_soon(self._cache.clear)
        text = encode_message(msg)
        self._cache[id(msg)] = (msg, text)
        return text


class PeerLink:
    """The outbound link to one peer, reconnecting with backoff."""

    def __init__(self, self_id: int, peer_id: int, url: str, session: aiohttp.ClientSession,
                 handshake: Handshake | None = None, ssl_context: ssl.SSLContext | None = None,
                 counters: Counter[str] | None = None, encoder: TurnEncoder | None = None) -> None:
        self.self_id, self.peer_id, self.url, self.session = self_id, peer_id, url, session
        self.handshake = handshake
        self.connect_options: dict[str, Any] = {} if ssl_context is None else {"ssl": ssl_context}
        self.counters: Counter[str] = Counter() if counters is None else counters
        self.states = StateLog()
        self.failures = 0  # connection attempts failed since the link was last up
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.queue: list[m.Message] = []
        self.lazy: m.Message | None = None  # rides in the next frame (see send_lazy)
        self.flush_scheduled = False
        self.dropped = 0
        self.task: asyncio.Task | None = None
        self.encoder = encoder or TurnEncoder()
        self.address: tuple[str, int] | None = None
        self.closing: asyncio.TimerHandle | None = None  # set while its peer has left the configuration
        self.headers: dict[str, str] = {NODE_HEADER: str(self_id)}
        self.cluster_id: Callable[[], str | None] = lambda: None  # sent with every attempt
        self._dial_now = asyncio.Event()  # set by retry_now: cut the wait between attempts

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self.ws.closed

    def retry_now(self) -> None:
        """The peer just dialed us, so it is up: dial it now, not at the next attempt."""
        if not self.connected:
            self._dial_now.set()

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

    def send_lazy(self, msg: m.Message) -> bool:
        """Hold msg for the next frame to this peer (or the next flush_lazy()); it
        replaces a message held before, so msg must cover everything an older one said."""
        if not self.connected:
            self.dropped += 1
            return False
        self.lazy = msg
        return True

    def flush_lazy(self) -> None:
        if self.lazy is not None and not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        msgs, self.queue = self.queue, []
        if self.lazy is not None:
            msgs.append(self.lazy)
            self.lazy = None
        if msgs and self.connected:
            assert self.ws is not None
            frame = frame_of(self.self_id, [self.encoder.encode(msg) for msg in msgs])
            write_now(self.ws.send_str(frame))

    async def run(self) -> None:
        backoff = 0.05
        while True:
            reason = "closed"
            cluster = self.cluster_id()
            headers = self.headers if cluster is None else {**self.headers, CLUSTER_HEADER: cluster}
            try:
                async with self.session.ws_connect(
                        self.url, headers=headers, heartbeat=5.0,
                        max_msg_size=FRAME_BYTES_MAX, autoping=True, **self.connect_options) as ws:
                    if self.handshake is not None:
                        await self._authenticate(ws)
                    self.ws = ws
                    backoff = 0.05
                    self._dial_now.clear()
                    self.counters["links_up_outbound"] += 1
                    self.states.changed("state", "up")
                    log.info("link up", extra=fields(peer=self.peer_id, url=self.url,
                                                     failed_attempts=self.failures))
                    self.failures = 0
                    async for _ in ws:  # peers never write on our outbound link
                        pass
                    reason = f"closed by the peer (code {ws.close_code})"
            except AuthError as e:
                self.counters["auth_failed_outbound"] += 1
                reason = f"authentication failed: {e}"
                self.failures += 1
            except aiohttp.WSServerHandshakeError as e:
                reason = (f"refused: the peer belongs to another cluster (ours is {cluster})" if e.status == 409
                          else f"{type(e).__name__}: {e}")
                self.failures += 1
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
                reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                self.failures += 1
            was_up, self.ws = self.ws is not None, None
            # Log when the state changes: up -> down, or a different reason for failing.
            # A peer that stays unreachable is logged once, not on every attempt.
            kind = "down" if was_up else reason.split(":", 1)[0]
            if self.states.changed("state", kind) is not None:
                level = logging.WARNING if kind in ("authentication failed", "refused") else logging.INFO
                log.log(level, "link down" if was_up else "link cannot connect; retrying quietly",
                        extra=fields(peer=self.peer_id, url=self.url, reason=reason))
            try:
                async with asyncio.timeout(backoff):
                    await self._dial_now.wait()
                backoff = 0.05
            except TimeoutError:
                backoff = min(backoff * 2, 1.0)
            self._dial_now.clear()

    async def _authenticate(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Prove we hold the secret and check that the peer does too; AuthError if not."""
        assert self.handshake is not None
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                challenge = await ws.receive()
                if challenge.type is not aiohttp.WSMsgType.TEXT:
                    raise AuthError("the peer sent no challenge (is it configured with the secret?)")
                answer, check_reply = self.handshake.answer(challenge.data, self.peer_id)
                await ws.send_str(answer)
                reply = await ws.receive()
                if reply.type is not aiohttp.WSMsgType.TEXT:
                    raise AuthError("the peer refused our proof (does it hold the same secret?)")
                check_reply(reply.data)
        except TimeoutError:
            raise AuthError(f"no handshake within {HANDSHAKE_TIMEOUT_S:g} s (is the peer configured "
                            "with the secret?)") from None


class PeerTransport:
    def __init__(self, self_id: int, cluster: dict[int, tuple[str, int]],
                 deliver: Callable[[int, list[m.Message]], None], *, secret: bytes | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 cluster_id: Callable[[], str | None] = lambda: None) -> None:
        self.self_id = self_id
        self.cluster_id = cluster_id  # this node's, now (a rebuilding node takes its cluster's)
        self.cluster = cluster
        self.deliver = deliver
        self.links: dict[int, PeerLink] = {}
        self.encoder = TurnEncoder()
        self.inbound: set[web.WebSocketResponse] = set()
        self.session: aiohttp.ClientSession | None = None
        self.counters: Counter[str] = Counter()
        self.handshake = Handshake(secret, self_id) if secret is not None else None
        self.ssl_context = ssl_context
        self.refusals = RateLimit(60.0)  # log a refused address once a minute
        self.malformed_log = RateLimit(60.0)

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=2.0))
        self.set_peers(self.cluster)

    def set_peers(self, cluster: dict[int, tuple[str, int]]) -> None:
        """Dial the peers of a new configuration and hang up on those no longer in it."""
        if cluster is not self.cluster:
            self.cluster.clear()
            self.cluster.update(cluster)
        if self.session is None:
            return  # start() dials them
        for peer in [p for p in self.links if p not in self.cluster]:
            link = self.links[peer]
            if link.closing is None:
                link.closing = asyncio.get_running_loop().call_later(FAREWELL_S, self._hang_up, peer, link)
        for peer, address in self.cluster.items():
            link = self.links.get(peer)
            if link is not None and link.closing is not None:
                link.closing.cancel()  # back in the configuration before its farewell ran out
                link.closing = None
            if peer == self.self_id or (link is not None and link.address == address):
                continue
            if link is not None and link.task is not None:
                link.task.cancel()  # the peer moved
            self._dial(peer, address)

    def _hang_up(self, peer: int, link: PeerLink) -> None:
        if self.links.get(peer) is link and peer not in self.cluster:
            del self.links[peer]
            if link.task is not None:
                link.task.cancel()
            log.info("link closed: no longer a member", extra=fields(peer=peer))

    def _dial(self, peer: int, address: tuple[str, int]) -> None:
        assert self.session is not None
        scheme = "ws" if self.ssl_context is None else "wss"
        host, port = address
        link = PeerLink(self.self_id, peer, f"{scheme}://{_host(host)}:{port}/v1/peer", self.session,
                        self.handshake, self.ssl_context, self.counters, self.encoder)
        link.address = address
        link.cluster_id = self.cluster_id
        link.headers = {NODE_HEADER: str(self.self_id)}
        own = self.cluster.get(self.self_id)
        if own is not None:
            link.headers[ADDRESS_HEADER] = address_text(own)
        link.task = asyncio.create_task(link.run())
        self.links[peer] = link

    async def stop(self) -> None:
        for link in self.links.values():
            if link.task is not None:
                link.task.cancel()
        for ws in list(self.inbound):  # else shutdown waits for peers to hang up
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        if self.session is not None:
            await self.session.close()

    def send(self, dst: int, msg: m.Message) -> bool:
        link = self.links.get(dst)
        return link is not None and link.send(msg)

    def send_lazy(self, dst: int, msg: m.Message) -> bool:
        link = self.links.get(dst)
        return link is not None and link.send_lazy(msg)

    def flush_lazy(self) -> None:
        for link in self.links.values():
            link.flush_lazy()

    def reachable(self) -> dict[int, bool]:
        return {peer: link.connected for peer, link in self.links.items()}

    async def handle_inbound(self, request: web.Request) -> web.WebSocketResponse:
        """The /v1/peer endpoint: frames from the peer that dialed us."""
        claimed = request.headers.get(NODE_HEADER, "")
        # A peer we do not know yet may be a member added since our configuration was
        # last updated (the replica drops messages from removed nodes itself).
        if not claimed.isdigit() or not 0 < int(claimed) < 1 << 31 or int(claimed) == self.self_id:
            self.counters["peer_refused"] += 1
            self._log_refusal(request, claimed[:32], "unknown peer id")
            raise web.HTTPForbidden(text='{"error": "forbidden", "message": "unknown peer"}',
                                    content_type="application/json")
        peer = int(claimed)
        theirs, ours = request.headers.get(CLUSTER_HEADER), self.cluster_id()
        if theirs is not None and ours is not None and theirs != ours:
            # Same ids, another cluster: its Prepares and Accepts would count as our peer's.
            self.counters["cluster_refused"] += 1
            self._log_refusal(request, claimed, f"another cluster: {theirs[:32]}, ours is {ours}")
            raise web.HTTPConflict(text=json.dumps({"error": "other_cluster", "message": (
                f"this node belongs to cluster {ours}, the dialer to {theirs[:32]}")}),
                content_type="application/json")
        ws = web.WebSocketResponse(heartbeat=5.0, max_msg_size=FRAME_BYTES_MAX)
        await ws.prepare(request)
        if self.handshake is not None:
            try:
                await self._check_dialer(ws, peer)
            except AuthError as e:
                self.counters["auth_refused"] += 1
                self._log_refusal(request, claimed, str(e))
                await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"authentication failed")
                return ws
        self.counters["links_up_inbound"] += 1
        link = self.links.get(peer)
        if link is not None:
            # A node back from a crash dials its peers at once; the link to it may wait up
            # to a second for its next attempt, longer than the node's election timeout.
            link.retry_now()
        elif self.session is not None:
            address = parse_address(request.headers.get(ADDRESS_HEADER, ""))
            if address is not None:  # answer a node we had not heard of, on its own address
                self.cluster[peer] = address
                self._dial(peer, address)
        self.inbound.add(ws)
        try:
            async for frame in ws:
                if frame.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    continue
                self._on_frame(peer, frame.data)
        finally:
            self.inbound.discard(ws)
        return ws

    async def _check_dialer(self, ws: web.WebSocketResponse, peer: int) -> None:
        """Challenge the dialer, check its proof, prove ourselves; AuthError if it fails."""
        assert self.handshake is not None
        nonce, challenge = self.handshake.challenge()
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                await ws.send_str(challenge)
                answer = await ws.receive()
        except TimeoutError:
            raise AuthError(f"no proof within {HANDSHAKE_TIMEOUT_S:g} s") from None
        except (ConnectionError, RuntimeError) as e:
            raise AuthError(f"link lost during the handshake: {e}") from None
        if answer.type is not aiohttp.WSMsgType.TEXT:
            raise AuthError("no proof: the dialer closed the link or sent binary data")
        await ws.send_str(self.handshake.check_dialer(answer.data, nonce, peer))

    def _log_refusal(self, request: web.Request, claimed: str, reason: str) -> None:
        remote = request.remote or "?"
        suppressed = self.refusals.allow(remote)
        if suppressed is not None:
            log.warning("peer link refused", extra=fields(remote=remote, claimed_node=claimed, reason=reason,
                                                          refused_since_last_log=suppressed))

    def _on_frame(self, peer: int, data: str | bytes) -> None:
        try:
            src, decoded = decode_frame(data)
        except WireError as e:
            self.counters["malformed_frames"] += 1
            suppressed = self.malformed_log.allow(peer)
            if suppressed is not None:
                log.warning("malformed frame from a peer", extra=fields(peer=peer, error=str(e)[:200],
                                                                         dropped_since_last_log=suppressed))
            return
        if src != peer:
            self.counters["malformed_frames"] += 1
            return
        msgs = [x for x in decoded if not isinstance(x, WireError)]
        self.counters["malformed_messages"] += len(decoded) - len(msgs)
        if msgs:
            self.deliver(peer, msgs)


_SEND_ERRORS = (ConnectionError, RuntimeError, aiohttp.ClientError)


def write_now(coro: Coroutine[Any, Any, None]) -> None:
    """Run a WebSocket send to its first suspension point now, in this callback.

    An uncompressed send_str only frames the text and writes it to the transport's
    buffer; it suspends only when the transport is paused (the peer reads too
    slowly). Running it here instead of in a task of its own saves a task and an
    event-loop turn per frame; a send that does suspend finishes in a task, and its
    bytes are already in the buffer, so frames never reorder.
    """
    try:
        yielded = _intercepted(coro.send(None))
    except StopIteration:
        return
    except _SEND_ERRORS:
        return
    task = asyncio.ensure_future(_finish(coro, yielded))
    _FINISHING.add(task)
    task.add_done_callback(_FINISHING.discard)


_FINISHING: set[asyncio.Task] = set()


def _intercepted(yielded: Any) -> Any:
    """What a task does with a future its coroutine yields: clear the flag the
    await set, so that the future can be awaited again (here, by _finish)."""
    if getattr(yielded, "_asyncio_future_blocking", False):
        yielded._asyncio_future_blocking = False
    return yielded


async def _finish(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    """Drive a coroutine that write_now started and that is waiting on `yielded`."""
    try:
        while True:
            try:
                if yielded is None:  # a bare yield: give the loop one turn
                    await asyncio.sleep(0)
                else:
                    await yielded  # the future it waits on (flow control: the transport drained)
            except BaseException as e:  # noqa: BLE001 - hand the failure to the coroutine
                yielded = _intercepted(coro.throw(e))
            else:
                yielded = _intercepted(coro.send(None))
    except StopIteration:
        pass
    except _SEND_ERRORS:
        pass
    finally:
        coro.close()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
