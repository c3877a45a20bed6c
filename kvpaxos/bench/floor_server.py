"""The floor: kvpaxos's process layout and libraries with no Paxos between them.

    python -m kvpaxos.bench.floor_server follower PORT DATA_DIR
    python -m kvpaxos.bench.floor_server leader PORT FOLLOWER_PORT [FOLLOWER_PORT ...]

The leader serves PUT /v1/kv/{key} with aiohttp as a node does (it reads the JSON
body and answers {"key", "version"}). Every request waiting when no slot is in
flight goes into one slot, and requests arriving while one is in flight wait for
it (kvpaxos's "Nagle for slots" with one partial slot in flight). A slot goes to
every follower as one text frame on an aiohttp WebSocket, written with
kvpaxos.transport.write_now as a node's peer frames are. Each follower commits
the slot's commands as one acceptance through storage.sqlite.SqliteStorage (one
group commit on sqlitedict's thread, WAL, synchronous=FULL, at most one in
flight, the rest gathered for the next) and answers once it is durable. The
leader answers a slot's requests once every follower has: two durable copies
of three, as a kvpaxos leader deferring its own vote waits for.

Left out is everything that makes a consensus store: ballots, promises,
elections, recovery, catch-up, a key-value map, exactly-once, errors. So this is
not a store. It is the least a write through this layout (a process per node,
aiohttp per request, WebSocket peer links, fsync on sqlitedict's thread) costs
on a machine, to measure kvpaxos's own path against (benchmarks/floor.py).
"""
from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
from aiohttp import web

from kvpaxos.core.ballot import Ballot
from kvpaxos.core.commands import PUT, Batch, Command
from kvpaxos.transport import write_now
from storage.base import Writes
from storage.sqlite import SqliteStorage

HOST = "127.0.0.1"
CONNECT_TIMEOUT_S = 15.0


async def status(_request: web.Request) -> web.Response:
    return web.json_response({"role": "floor"})


async def _serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    await asyncio.Event().wait()


class Follower:
    """Accepts slots: one group commit in flight, the slots arriving meanwhile in the next."""

    def __init__(self, data_dir: str) -> None:
        self.storage = SqliteStorage(data_dir, 1)
        self.ballot = Ballot(1, 1)
        self.waiting: list[tuple[web.WebSocketResponse, int, Batch]] = []
        self.committing = False

    async def peer(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for frame in ws:
            if frame.type is aiohttp.WSMsgType.TEXT:
                sent = json.loads(frame.data)
                slot = sent["slot"]
                batch = Batch(tuple(Command(PUT, key, value, cmd_id=f"{slot}.{i}")
                                    for i, (key, value) in enumerate(sent["cmds"])))
                self.waiting.append((ws, slot, batch))
                self._commit()
        return ws

    def _commit(self) -> None:
        if self.committing or not self.waiting:
            return
        group, self.waiting = self.waiting, []
        self.committing = True
        loop = asyncio.get_running_loop()
        self.storage.submit(Writes(None, {slot: (self.ballot, batch) for _, slot, batch in group}),
                            lambda: loop.call_soon_threadsafe(self._durable, group))

    def _durable(self, group: list[tuple[web.WebSocketResponse, int, Batch]]) -> None:
        self.storage.check()
        self.committing = False
        for ws, slot, _ in group:
            write_now(ws.send_str(str(slot)))
        self._commit()


class Leader:
    """Packs waiting requests into a slot, one slot in flight, answers once every follower has it."""

    def __init__(self) -> None:
        self.links: list[aiohttp.ClientWebSocketResponse] = []
        self.pending: list[tuple[list[str], asyncio.Future[int]]] = []
        self.in_flight: dict[int, tuple[list[asyncio.Future[int]], int]] = {}  # slot -> (waiters, acks missing)
        self.slot = 0

    async def connect(self, session: aiohttp.ClientSession, ports: list[int]) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        for port in ports:
            while True:
                try:
                    ws = await session.ws_connect(f"http://{HOST}:{port}/peer")
                    break
                except (aiohttp.ClientError, OSError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            self.links.append(ws)
            asyncio.ensure_future(self._read(ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for frame in ws:
            slot = int(frame.data)
            waiters, missing = self.in_flight[slot]
            if missing > 1:
                self.in_flight[slot] = (waiters, missing - 1)
                continue
            del self.in_flight[slot]
            for future in waiters:
                if not future.done():
                    future.set_result(slot)
            self._flush()

    def _flush(self) -> None:
        if self.in_flight or not self.pending:
            return
        self.slot += 1
        cmds, waiters = [c for c, _ in self.pending], [f for _, f in self.pending]
        self.pending = []
        self.in_flight[self.slot] = (waiters, len(self.links))
        text = json.dumps({"slot": self.slot, "cmds": cmds}, separators=(",", ":"))
        for ws in self.links:
            write_now(ws.send_str(text))

    async def put_key(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        body = json.loads(await request.read())
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending.append(([key, body.get("value")], future))
        self._flush()
        return web.json_response({"key": key, "version": await future})


async def run_follower(port: int, data_dir: str) -> None:
    follower = Follower(data_dir)
    app = web.Application()
    app.router.add_get("/peer", follower.peer)
    app.router.add_get("/v1/status", status)
    await _serve(app, port)


async def run_leader(port: int, follower_ports: list[int]) -> None:
    leader = Leader()
    async with aiohttp.ClientSession() as session:
        await leader.connect(session, follower_ports)
        app = web.Application()
        app.router.add_put("/v1/kv/{key:.*}", leader.put_key)
        app.router.add_get("/v1/status", status)
        await _serve(app, port)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "follower":
        asyncio.run(run_follower(int(args[1]), args[2]))
    elif len(args) >= 3 and args[0] == "leader":
        asyncio.run(run_leader(int(args[1]), [int(p) for p in args[2:]]))
    else:
        sys.exit("usage: python -m kvpaxos.bench.floor_server follower PORT DATA_DIR | "
                 "leader PORT FOLLOWER_PORT [FOLLOWER_PORT ...]")


if __name__ == "__main__":
    main()
