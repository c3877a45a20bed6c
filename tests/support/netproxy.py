"""A controllable TCP proxy for every directed peer link of a test cluster.

Node i reaches node j only through its own proxy port for the link (i, j), which
forwards to node j's real port: node i is started with a cluster map whose own
entry is its real address and whose peer entries are its proxy ports (see
NetProxy.spec_for). Clients still talk to the nodes' real ports. Because a
kvpaxos node sends to a peer only on the connection it dialed itself, the link
(i, j) carries exactly what i says to j (its Paxos frames, its HTTP calls to j:
status, snapshots), so faults can be one-way.

What a link can do (each can be set per link, any combination):
  block    refuse new connections (accepted and closed at once) and cut the
           ones open: the peers see resets and keep redialing;
  stall    accept, but forward nothing in either direction until healed, as a
           black-holed network does (no reset; the WebSocket heartbeat notices);
  delay    hold every chunk delay_ms (+ up to jitter_ms) before forwarding it,
           in order: a latency, not a bandwidth limit;
  loss     TCP does not lose bytes, it loses connections: each forwarded chunk
           (and each new connection) is cut with this probability;
  heal     back to open, no delay, no loss (buffered stalled bytes then flow).

The proxies run in a helper process (python tests/support/netproxy.py), so a
busy test process (checker, recorder) cannot slow the network down, and they
die with it: the helper exits when its stdin closes. It takes one JSON command
per line on stdin and answers one JSON line on stdout. NetProxy is the client.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

HOST = "127.0.0.1"
CHUNK = 64 * 1024
Link = tuple[int, int]


# -- the helper process -------------------------------------------------------------------


@dataclass
class LinkState:
    src: int
    dst: int
    target_port: int
    mode: str = "open"  # open | block | stall
    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    conns: set["_Conn"] = field(default_factory=set)
    stats: dict[str, int] = field(default_factory=lambda: {
        "accepted": 0, "refused": 0, "cut": 0, "bytes": 0, "upstream_failed": 0})

    def __post_init__(self) -> None:
        self.flowing.set()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (RST), not a polite FIN: the peer sees the connection fail."""
    try:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        writer.transport.abort()
    except Exception:  # noqa: BLE001 - already gone
        pass


class _Conn:
    """One proxied connection: downstream (the dialing node) <-> upstream (the target node)."""

    def __init__(self, link: LinkState, rng: random.Random) -> None:
        self.link = link
        self.rng = rng
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task] = []
        self.closed = False
        self.finished = 0  # directions that reached end of file

    def cut(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w in self.writers:
            _reset(w)
        for t in self.tasks:
            t.cancel()
        self.link.conns.discard(self)

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction; delayed chunks queue up so delay is latency, not bandwidth."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer))
        self.tasks.append(sender)
        link = self.link
        last_release = 0.0
        try:
            while True:
                await link.flowing.wait()
                data = await reader.read(CHUNK)
                if not data:
                    break
                if link.loss and self.rng.random() < link.loss:
                    link.stats["cut"] += 1
                    self.cut()
                    return
                delay = link.delay_s + (self.rng.uniform(0, link.jitter_s) if link.jitter_s else 0.0)
                release = max(last_release, time.monotonic() + delay)
                last_release = release
                queue.put_nowait((release, data))
            queue.put_nowait(None)
            await sender  # forwards the rest, then half-closes the other side
        except (ConnectionError, OSError, asyncio.CancelledError):
            self.cut()
            return
        self.finished += 1
        if self.finished == 2:  # both directions ended cleanly
            self.cut()

    async def _send(self, queue: asyncio.Queue, writer: asyncio.StreamWriter) -> None:
        link = self.link
        try:
            while (item := await queue.get()) is not None:
                release, data = item
                wait = release - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await link.flowing.wait()
                writer.write(data)
                link.stats["bytes"] += len(data)
                await writer.drain()
            writer.write_eof()
        except (ConnectionError, OSError, RuntimeError):
            self.cut()


class ProxyServer:
    def __init__(self, targets: dict[int, int], seed: int) -> None:
        self.rng = random.Random(seed)
        self.links: dict[Link, LinkState] = {}
        self.ports: dict[Link, int] = {}
        self.servers: list[asyncio.AbstractServer] = []
        self.targets = targets

    async def start(self) -> None:
        for src in self.targets:
            for dst in self.targets:
                if src == dst:
                    continue
                link = self.links[(src, dst)] = LinkState(src, dst, self.targets[dst])
                server = await asyncio.start_server(
                    lambda r, w, link=link: self._accept(link, r, w), HOST, 0)
                self.servers.append(server)
                self.ports[(src, dst)] = server.sockets[0].getsockname()[1]

    async def _accept(self, link: LinkState, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if link.mode == "block" or (link.loss and self.rng.random() < link.loss):
            link.stats["refused"] += 1
            _reset(writer)
            return
        conn = _Conn(link, self.rng)
        conn.writers.append(writer)
        link.conns.add(conn)
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, link.target_port), 5.0)
        except (OSError, asyncio.TimeoutError):
            link.stats["upstream_failed"] += 1
            conn.cut()
            return
        if conn.closed:  # blocked while we were connecting
            _reset(up_writer)
            return
        link.stats["accepted"] += 1
        conn.writers.append(up_writer)
        a = asyncio.create_task(conn.pump(reader, up_writer))
        b = asyncio.create_task(conn.pump(up_reader, writer))
        conn.tasks += [a, b]

    def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd.get("cmd")
        if op == "ports":
            return {"ports": {f"{s}-{d}": p for (s, d), p in self.ports.items()}}
        if op == "targets":
            self.targets = {int(k): v for k, v in cmd["ports"].items()}
            for (s, d), link in self.links.items():
                link.target_port = self.targets[d]
            return {}
        if op == "stats":
            return {"links": {f"{s}-{d}": {"mode": lk.mode, "delay_ms": round(lk.delay_s * 1000),
                                           "loss": lk.loss, "open": len(lk.conns), **lk.stats}
                              for (s, d), lk in self.links.items()}}
        if op == "heal":
            for link in self.links.values():
                self._set(link, mode="open", delay_ms=0, jitter_ms=0, loss=0.0)
            return {}
        if op == "set":
            chosen = self.links.values() if cmd.get("links") == "all" else \
                [self.links[(int(s), int(d))] for s, d in cmd["links"]]
            for link in chosen:
                self._set(link, **{k: cmd[k] for k in ("mode", "delay_ms", "jitter_ms", "loss") if k in cmd})
            return {}
        raise ValueError(f"unknown command {op!r}")

    def _set(self, link: LinkState, mode: str | None = None, delay_ms: float | None = None,
             jitter_ms: float | None = None, loss: float | None = None) -> None:
        if delay_ms is not None:
            link.delay_s = delay_ms / 1000
        if jitter_ms is not None:
            link.jitter_s = jitter_ms / 1000
        if loss is not None:
            link.loss = float(loss)
        if mode is not None:
            if mode not in ("open", "block", "stall"):
                raise ValueError(f"unknown mode {mode!r}")
            link.mode = mode
            if mode == "stall":
                link.flowing.clear()
            else:
                link.flowing.set()
            if mode == "block":
                for conn in list(link.conns):
                    link.stats["cut"] += 1
                    conn.cut()


async def _serve(targets: dict[int, int], seed: int) -> None:
    server = ProxyServer(targets, seed)
    await server.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout
    out.write(json.dumps(server.command({"cmd": "ports"})) + "\n")
    out.flush()
    while line := await reader.readline():
        try:
            reply = {"ok": True, **server.command(json.loads(line))}
        except Exception as exc:  # noqa: BLE001 - reported to the client
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    # stdin closed: the test process is gone or done.
    for conn in [c for link in server.links.values() for c in link.conns]:
        conn.cut()


# -- the client -------------------------------------------------------------------------


class NetProxy:
    """Starts the helper for nodes {id: real port} and drives it. Thread-safe."""

    def __init__(self, targets: dict[int, int], seed: int = 0, log_path: str | os.PathLike | None = None) -> None:
        self.ids = sorted(targets)
        self.targets = dict(targets)
        self._lock = threading.Lock()
        stderr = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), json.dumps({str(k): v for k, v in targets.items()}),
                 str(seed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                text=True, bufsize=1, start_new_session=True)
        finally:
            if log_path:
                stderr.close()
        first = self._readline(timeout=20)
        self.ports: dict[Link, int] = {tuple(map(int, k.split("-"))): v  # type: ignore[misc]
                                       for k, v in first["ports"].items()}
        self.state: dict[Link, dict[str, Any]] = {link: {} for link in self.ports}

    def _readline(self, timeout: float) -> dict:
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            raise RuntimeError(f"the network proxy did not answer within {timeout:g}s "
                               f"(exit code {self.proc.poll()})")
        return json.loads(result[0])

    def _call(self, **cmd: Any) -> dict:
        with self._lock:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the network proxy exited with {self.proc.returncode}")
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            reply = self._readline(timeout=20)
        if not reply.get("ok"):
            raise RuntimeError(f"network proxy: {reply.get('error')}")
        return reply

    # -- maps -----------------------------------------------------------------------

    def spec_for(self, i: int, ports: dict[int, int] | None = None) -> str:
        """Node i's cluster map: its own real address, every peer behind i's proxy for it."""
        if ports is not None and ports != self.targets:
            self.retarget(ports)
        return ",".join(f"{j}={HOST}:{self.targets[j] if j == i else self.ports[(i, j)]}" for j in self.ids)

    def retarget(self, ports: dict[int, int]) -> None:
        self.targets = dict(ports)
        self._call(cmd="targets", ports={str(k): v for k, v in ports.items()})

    # -- faults ---------------------------------------------------------------------

    def set(self, links: Iterable[Link] | str, **settings: Any) -> None:
        """Set mode ("open", "block", "stall"), delay_ms, jitter_ms and/or loss on links (or "all")."""
        chosen = list(self.ports) if links == "all" else [tuple(x) for x in links]  # type: ignore[arg-type]
        self._call(cmd="set", links=[list(x) for x in chosen], **settings)
        for link in chosen:
            self.state[link].update(settings)  # type: ignore[index]

    def block(self, links: Iterable[Link], mode: str = "block") -> None:
        self.set(list(links), mode=mode)

    def partition(self, *groups: Iterable[int], mode: str = "block") -> list[Link]:
        """Cut every link between different groups, both ways; nodes in no group keep all links.
        The links cut."""
        sets = [set(g) for g in groups]
        links = [(a, b) for a, b in self.ports
                 if any(a in g for g in sets) and any(b in g for g in sets)
                 and not any(a in g and b in g for g in sets)]
        if links:
            self.block(links, mode)
        return links

    def heal(self) -> None:
        self._call(cmd="heal")
        for link in self.state:
            self.state[link] = {}

    def stats(self) -> dict:
        return self._call(cmd="stats")["links"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def __enter__(self) -> "NetProxy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def links_between(a: Iterable[int], b: Iterable[int]) -> list[Link]:
    """Every directed link from a node of `a` to a node of `b` and back."""
    a, b = list(a), list(b)
    return [(x, y) for x in a for y in b if x != y] + [(y, x) for x in a for y in b if x != y]


if __name__ == "__main__":
    asyncio.run(_serve({int(k): v for k, v in json.loads(sys.argv[1]).items()}, int(sys.argv[2])))
