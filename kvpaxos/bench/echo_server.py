"""The bare aiohttp baseline: the same routes as a node, no work behind them.

`python -m kvpaxos.bench.echo_server PORT` answers PUT /v1/kv/{key} with
{"key", "version"} and GET /v1/kv/{key} with {"key", "value", "version"} from a
plain dict, plus GET /v1/status and POST /v1/batch in the same shapes. What
kvpaxos costs above this is consensus, storage and the node's own code.
"""
from __future__ import annotations

import json
import sys

from aiohttp import web

_store: dict[str, bytes] = {}
_version = 0


async def put_key(request: web.Request) -> web.Response:
    global _version
    key = request.match_info["key"]
    _store[key] = await request.read()
    _version += 1
    return web.json_response({"key": key, "version": _version})


async def get_key(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    if key not in _store:
        return web.json_response({"error": "not_found", "message": "no such key"}, status=404)
    return web.json_response({"key": key, "value": "x", "version": _version})


async def batch(request: web.Request) -> web.Response:
    global _version
    ops = json.loads(await request.read()).get("ops", [])
    _version += 1
    return web.json_response({"results": [{"ok": True, "version": _version} for _ in ops]})


async def status(request: web.Request) -> web.Response:
    return web.json_response({"id": 1, "role": "leader", "leader": 1})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/kv/{key:.*}", get_key)
    app.router.add_put("/v1/kv/{key:.*}", put_key)
    app.router.add_post("/v1/batch", batch)
    app.router.add_get("/v1/status", status)
    return app


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    port = int(args[0]) if args else 7100
    web.run_app(make_app(), host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
