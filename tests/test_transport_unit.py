"""kvpaxos.transport.write_now: a send runs in the calling callback, and one that
suspends (flow control) still finishes, in order, in a task."""
from __future__ import annotations

import asyncio

import aiohttp

from kvpaxos.transport import write_now


def test_write_now_runs_a_send_that_does_not_suspend_at_once():
    out: list[str] = []

    async def send(text: str) -> None:
        out.append(text)

    async def main() -> None:
        write_now(send("a"))
        assert out == ["a"]  # no event-loop turn needed

    asyncio.run(main())


def test_write_now_finishes_a_send_that_waits_for_the_transport_to_drain():
    out: list[str] = []

    async def main() -> None:
        drained = asyncio.get_running_loop().create_future()

        async def send(text: str) -> None:
            out.append(text)        # the frame is in the buffer ...
            await drained           # ... then the writer waits for the peer to read
            out.append(text + " drained")

        write_now(send("a"))
        write_now(send("b"))
        assert out == ["a", "b"]
        drained.set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)
        assert out == ["a", "b", "a drained", "b drained"]

    asyncio.run(main())


def test_write_now_swallows_a_closed_link_before_and_after_suspending():
    async def main() -> None:
        async def closed() -> None:
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")

        write_now(closed())  # no exception escapes: Paxos tolerates the lost frame

        failed = asyncio.get_running_loop().create_future()

        async def fails_later() -> None:
            await failed

        write_now(fails_later())
        failed.set_exception(ConnectionResetError("reset"))
        for _ in range(5):
            await asyncio.sleep(0)

    asyncio.run(main())
