"""A leader alone in one process, for counting what a write costs it.

`python -m kvpaxos.bench.leader_alone TARGET WRITES CLIENTS [TICK_MS]` runs, in this one
process, a server and a load of WRITES PUTs from CLIENTS keep-alive clients
(raw HTTP over loopback, 100-byte values with a client id and sequence number,
as `kv bench` sends), and prints one JSON line: the process's CPU time per PUT
over the measured writes. TARGET is one of

- `kvpaxos`: a node that leads a cluster of three: its real HTTP app, Node,
  Replica and SqliteStorage (synchronous=FULL, in a temporary directory). Its two
  followers live in this process too and answer each Accept, Prepare and
  heartbeat at once, through the real codec (frames encoded once per turn, as
  kvpaxos/transport.py does, and decoded as it does), so that everything the
  leader does for a write is here and nothing the followers do is;
- `bare`: the bare aiohttp server (kvpaxos/bench/echo_server.py);
- `raw`: an asyncio protocol that answers every request with the same bytes, to
  tell what the clients themselves cost.

TICK_MS is the kvpaxos node's timer period (20 ms, its default, if omitted).

Run it twice with different WRITES under callgrind (benchmarks/leader_cost.py
does) and the difference counts instructions per PUT: the same on every run
of the same code, where the CPU time of a shared machine is not.
"""
from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time

from aiohttp import web

from kvpaxos.bench.cluster import free_ports

HOST = "127.0.0.1"
VALUE = "x" * 100
KEYS = 1000
WARMUP_WRITES = 200
TICK_MS = 20  # the node's default


async def load(port: int, writes: int, clients: int, tag: str) -> None:
    """writes PUTs from `clients` keep-alive connections, each waiting for its answer."""
    left = writes

    async def client(i: int) -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection(HOST, port)
        client_id, seq = f"{tag}-{i}", 0
        try:
            while left > 0:
                left -= 1
                seq += 1
                body = json.dumps({"value": VALUE, "client_id": client_id, "seq": seq}).encode()
                writer.write(b"PUT /v1/kv/key%d HTTP/1.1\r\nHost: kv\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (seq % KEYS, len(body), body))
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                if b" 200 " not in status:
                    raise RuntimeError(f"a PUT was answered {status!r}")
        finally:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))


class _Canned(asyncio.Protocol):
    """Answers each request (one per read, as the clients send them) with fixed bytes."""

    ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 29\r\n\r\n' \
             b'{"key": "key1", "version": 1}'

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(self.ANSWER)  # type: ignore[attr-defined]


async def _serve_app(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    return runner


async def _leader(port: int, data_dir: str, tick_ms: int):  # noqa: ANN202 - (node, runner)
    from kvpaxos.config import NodeConfig
    from kvpaxos.core import messages as m
    from kvpaxos.core.codec import decode_frame, frame_of
    from kvpaxos.http import init_app
    from kvpaxos.node import Node
    from kvpaxos.transport import TurnEncoder
    from storage.sqlite import SqliteStorage

    _, p2, p3 = free_ports(3)
    config = NodeConfig(1, {1: (HOST, port), 2: (HOST, p2), 3: (HOST, p3)}, data_dir, tick_ms=tick_ms)
    node = Node(config, SqliteStorage(data_dir, 1), fresh=True)
    node.deciding, node.replica.voting = False, True  # a new cluster: no peers to ask
    loop = asyncio.get_running_loop()
    encoder = TurnEncoder()

    def answer(follower: int, msg: m.Message) -> m.Message | None:
        t = type(msg)
        if t is m.Accept:
            return m.Accepted(msg.ballot, msg.slot)
        if t is m.Heartbeat:
            return m.HeartbeatAck(msg.ballot, msg.hb_seq, msg.commit_through)
        if t is m.PreVote:
            return m.PreVoteReply(msg.ballot, 1)
        if t is m.Prepare:
            return m.Promise(msg.ballot, msg.from_slot, ())
        return None  # commits: nothing to answer

    def send(dst: int, msg: m.Message) -> bool:
        encoder.encode(msg)  # what the leader's transport does for every message

        def reply() -> None:
            out = answer(dst, msg)
            if out is not None:
                src, msgs = decode_frame(frame_of(dst, [encoder.encode(out)]))
                node.deliver(src, [x for x in msgs if not isinstance(x, Exception)])

        loop.call_soon(reply)
        return True

    node.send_peer = send
    node.send_peer_lazy = send

    class _Transport:  # what the app asks of the peer transport
        def reachable(self) -> dict[int, bool]:
            return {2: True, 3: True}

        async def handle_inbound(self, request: web.Request) -> web.StreamResponse:
            raise web.HTTPNotFound()

    runner = await _serve_app(init_app(node, _Transport()), port)  # type: ignore[arg-type]
    await node.start()
    while node.replica.role.value != "leader":
        await asyncio.sleep(0.02)
    return node, runner


async def run(target: str, writes: int, clients: int, tick_ms: int = TICK_MS) -> dict:
    port = free_ports(1)[0]
    node = runner = server = None
    with tempfile.TemporaryDirectory(prefix="kvleader-") as data_dir:
        try:
            if target == "kvpaxos":
                node, runner = await _leader(port, data_dir, tick_ms)
            elif target == "bare":
                from kvpaxos.bench.echo_server import make_app
                runner = await _serve_app(make_app(), port)
            else:
                server = await asyncio.get_running_loop().create_server(_Canned, HOST, port)
            await load(port, WARMUP_WRITES, min(clients, 8), "warmup")
            started_cpu, started = time.process_time(), time.perf_counter()
            await load(port, writes, clients, "measured")
            cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started
            out = {"target": target, "writes": writes, "clients": clients,
                   "cpu_us_per_write": round(1e6 * cpu / writes, 1), "writes_per_s": round(writes / wall)}
            if node is not None:
                out["slots"] = node.counters["slots_applied"]
            return out
        finally:
            if node is not None:
                await node.stop()
            if runner is not None:
                await runner.cleanup()
            if server is not None:
                server.close()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (3, 4) or args[0] not in ("kvpaxos", "bare", "raw") or not all(a.isdigit() for a in args[1:]):
        sys.exit("usage: python -m kvpaxos.bench.leader_alone kvpaxos|bare|raw WRITES CLIENTS [TICK_MS]")
    tick_ms = max(1, int(args[3])) if len(args) == 4 else TICK_MS
    print(json.dumps(asyncio.run(run(args[0], int(args[1]), max(1, int(args[2])), tick_ms))))


if __name__ == "__main__":
    main()
