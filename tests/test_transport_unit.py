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


def test_a_link_between_two_clusters_is_refused_until_the_ids_agree(caplog):
    """Node 1 of one cluster dials node 2 of another (same ids, other genesis): node 2
    refuses the link with 409 and counts it, node 1 says why; once the ids agree (a
    rebuilding node took its cluster's), the next attempt links them."""
    import logging

    from aiohttp import web

    from kvpaxos.transport import PeerTransport
    from support.cluster import free_ports

    async def main() -> None:
        ports = free_ports(2)
        cluster = {1: ("127.0.0.1", ports[0]), 2: ("127.0.0.1", ports[1])}
        got: list[tuple[int, list]] = []
        ids = {1: "aaaa", 2: "bbbb"}
        one = PeerTransport(1, {1: cluster[1], 2: cluster[2]}, lambda src, msgs: None, cluster_id=lambda: ids[1])
        two = PeerTransport(2, {2: cluster[2]}, lambda src, msgs: got.append((src, msgs)),
                            cluster_id=lambda: ids[2])
        app = web.Application()
        app.router.add_get("/v1/peer", two.handle_inbound)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", ports[1]).start()
        await one.start()
        try:
            async with asyncio.timeout(10):
                while two.counters["cluster_refused"] < 2:
                    await asyncio.sleep(0.02)
            assert not one.links[2].connected and two.counters["links_up_inbound"] == 0
            said = [getattr(r, "kv", {}).get("reason") for r in caplog.records if r.name == "kvpaxos.transport"]
            assert "refused: the peer belongs to another cluster (ours is aaaa)" in said, said
            ids[1] = "bbbb"
            async with asyncio.timeout(10):
                while not one.links[2].connected:
                    await asyncio.sleep(0.02)
            assert two.counters["links_up_inbound"] == 1
        finally:
            await one.stop()
            await runner.cleanup()

    caplog.set_level(logging.INFO, logger="kvpaxos.transport")
    asyncio.run(main())
