"""A bug in a route still answers in JSON: a real node (SQLite, its HTTP API on a port)
whose write path is made to raise what no handler expects."""
from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from kvpaxos.client_support import LEADER_HEADER
from kvpaxos.config import NodeConfig
from kvpaxos.core.replica import Role
from kvpaxos.http import init_app
from kvpaxos.node import Node
from kvpaxos.transport import PeerTransport
from storage.sqlite import SqliteStorage
from support.cluster import free_ports


def test_an_unexpected_exception_is_a_json_500_naming_the_leader(tmp_path, caplog) -> None:
    async def main() -> dict[str, tuple[int, dict, str | None]]:
        port = free_ports(1)[0]
        config = NodeConfig(1, {1: ("127.0.0.1", port)}, str(tmp_path), election_ticks=2)
        node = Node(config, SqliteStorage(str(tmp_path), 1), fresh=True)
        transport = PeerTransport(1, config.cluster, node.deliver)
        runner = web.AppRunner(init_app(node, transport), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await node.start()
        answers = {}
        try:
            async with asyncio.timeout(20):
                while node.replica.role is not Role.LEADER:
                    await asyncio.sleep(0.02)

            async def broken(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202 - any call
                raise RuntimeError("a bug")

            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
                async def ask(method: str, path: str, **kw) -> tuple[int, dict, str | None]:  # noqa: ANN003
                    async with http.request(method, path, **kw) as resp:
                        return resp.status, await resp.json(), resp.headers.get(LEADER_HEADER)

                answers["put before"] = await ask("PUT", "/v1/kv/a", json={"value": "1"})
                node.submit_group = broken  # the PUT route's own error handling
                node.submit = broken  # every other route's (json_errors)
                answers["put"] = await ask("PUT", "/v1/kv/a", json={"value": "2"})
                answers["cross-origin put"] = await ask("PUT", "/v1/kv/a", json={"value": "2"},
                                                        headers={"Origin": "http://elsewhere"})
                answers["delete"] = await ask("DELETE", "/v1/kv/a")

                async def reset(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202 - any call
                    raise ConnectionResetError("a connection of the node's own")

                node.submit = reset  # a connection error, with the client still there: a bug too
                answers["delete, reset"] = await ask("DELETE", "/v1/kv/a")
                answers["status"] = await ask("GET", "/v1/status")  # the node still serves
        finally:
            await transport.stop()
            await runner.cleanup()
            await node.stop()
        return answers

    with caplog.at_level(logging.ERROR, logger="kvpaxos.http"):
        answers = asyncio.run(main())
    assert answers["put before"][0] == 200
    for name, error in (("put", "RuntimeError"), ("cross-origin put", "RuntimeError"), ("delete", "RuntimeError"),
                        ("delete, reset", "ConnectionResetError")):
        status, body, leader = answers[name]
        assert status == 500, (name, answers[name])
        assert body["error"] == "internal_error" and error in body["message"], body
        assert leader is not None and leader.startswith("http://127.0.0.1:"), answers[name]
    assert answers["status"][0] == 200
    logged = [r for r in caplog.records if r.name == "kvpaxos.http" and "internal error" in r.getMessage()]
    assert [r.exc_info[0] for r in logged if r.exc_info] == [RuntimeError] * 3 + [ConnectionResetError]
