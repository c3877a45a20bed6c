"""The history recorder against a scripted HTTP server: how each way a request
can end becomes an outcome, and that one operation is exactly one request."""
from __future__ import annotations

import asyncio
import socket
from collections import Counter

from aiohttp import web

from support.history import (Recorder, Workload, errors, longest_gap_without_write, summarize,
                             version_anomalies)
from support.linearizability import CAS, DELETE, FAILED, INF, OK, READ, UNKNOWN, WRITE, Op, check


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Script:
    """Answers by key: the key names what the server does."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        self.hits[f"{request.method} {key}"] += 1
        body = await request.json() if request.can_read_body else {}
        if key == "drop":  # the node dies after reading the request
            request.transport.close()
            await asyncio.sleep(1)
        if key == "hang":
            await asyncio.sleep(1.5)
        if key.startswith("status-"):
            status, code = key.split("-", 2)[1:]
            return web.json_response({"error": code, "message": "scripted"}, status=int(status))
        if key == "absent":
            return web.json_response({"error": "not_found", "message": "no"}, status=404)
        if key == "nomatch":
            return web.json_response({"error": "precondition_failed", "message": "no"}, status=412)
        if key == "garbage":
            return web.Response(text="<html>", status=200)
        if request.method == "GET":
            return web.json_response({"key": key, "value": "v", "version": 7})
        assert body.get("client_id") and body.get("seq", 0) >= 1, body
        return web.json_response({"key": key, "version": 8})


async def _with_server(script: Script, fn):
    app = web.Application()
    app.router.add_route("*", "/v1/kv/{key}", script.handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    port = _free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        return await fn(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def test_outcomes_and_one_request_per_op():
    script = Script()
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens here

    async def run(url: str):
        rec = Recorder([url, dead], Workload(request_timeout_s=1.0), seed=1)
        ops: dict[str, Op] = {}
        async with rec.session() as s:
            ex = rec.execute
            ops["read"] = await ex(s, 1, READ, "k", url)
            ops["read absent"] = await ex(s, 1, READ, "absent", url)
            ops["write"] = await ex(s, 1, WRITE, "k", url, value="a", client=("c", 1))
            ops["cas ok"] = await ex(s, 1, CAS, "k", url, value="b", old="a", client=("c", 2))
            ops["cas 412"] = await ex(s, 1, CAS, "nomatch", url, value="b", old="a", client=("c", 3))
            ops["delete"] = await ex(s, 1, DELETE, "k", url, client=("c", 4))
            ops["delete absent"] = await ex(s, 1, DELETE, "absent", url, client=("c", 5))
            ops["write 503"] = await ex(s, 1, WRITE, "status-503-no_quorum", url, value="x", client=("c", 6))
            ops["write 504"] = await ex(s, 1, WRITE, "status-504-timeout", url, value="x", client=("c", 7))
            ops["write 500"] = await ex(s, 1, WRITE, "status-500-internal", url, value="x", client=("c", 8))
            ops["read 500"] = await ex(s, 1, READ, "status-500-internal", url)
            ops["read 503"] = await ex(s, 1, READ, "status-503-no_quorum", url)
            ops["write garbage"] = await ex(s, 1, WRITE, "garbage", url, value="x", client=("c", 9))
            ops["write refused"] = await ex(s, 1, WRITE, "k", dead, value="x", client=("c", 10))
            ops["write dropped"] = await ex(s, 1, WRITE, "drop", url, value="x", client=("c", 11))
            ops["delete dropped"] = await ex(s, 1, DELETE, "drop", url, client=("c", 12))
            ops["write hangs"] = await ex(s, 1, WRITE, "hang", url, value="x", client=("c", 13))
        return rec, ops

    rec, ops = asyncio.run(_with_server(script, run))
    got = {name: (op.outcome, op.value if op.kind == READ else op.result) for name, op in ops.items()}
    assert got == {
        "read": (OK, "v"), "read absent": (OK, None), "write": (OK, None), "cas ok": (OK, True),
        "cas 412": (OK, False), "delete": (OK, True), "delete absent": (OK, False),
        "write 503": (FAILED, None), "write 504": (UNKNOWN, None), "write 500": (UNKNOWN, None),
        "read 500": (FAILED, None), "read 503": (FAILED, None), "write garbage": (UNKNOWN, None),
        "write refused": (FAILED, None), "write dropped": (UNKNOWN, None),
        "delete dropped": (UNKNOWN, None), "write hangs": (UNKNOWN, None),
    }
    assert all(op.end == INF for op in ops.values() if op.outcome == UNKNOWN)
    assert ops["read"].meta["version"] == 7 and ops["write"].meta["version"] == 8
    assert ops["write"].meta["client"] == ("c", 1)
    # A request the server saw and then lost its connection is not resent.
    assert script.hits["PUT drop"] == 1 and script.hits["DELETE drop"] == 1, script.hits
    assert script.hits["PUT hang"] == 1
    assert rec.unexpected == Counter({"write 500 internal": 1, "read 500 internal": 1,
                                      "write 200 None": 1})
    assert errors(ops.values())["failed refused: ECONNREFUSED"] == 1


def test_workers_record_a_checkable_history():
    """A fake single-copy register behind the HTTP API: the recorded history is linearizable."""
    data: dict[str, tuple[str, int]] = {}
    version = [0]

    async def handle(request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        body = await request.json() if request.can_read_body else {}
        await asyncio.sleep(0.001)
        if request.method == "GET":
            if key not in data:
                return web.json_response({"error": "not_found"}, status=404)
            return web.json_response({"key": key, "value": data[key][0], "version": data[key][1]})
        if request.method == "DELETE":
            if key not in data:
                return web.json_response({"error": "not_found"}, status=404)
            del data[key]
            version[0] += 1
            return web.json_response({"key": key, "deleted": True, "version": version[0]})
        if "if_value" in body and (key not in data or data[key][0] != body["if_value"]):
            return web.json_response({"error": "precondition_failed"}, status=412)
        version[0] += 1
        data[key] = (body["value"], version[0])
        return web.json_response({"key": key, "version": version[0]})

    async def run():
        app = web.Application()
        app.router.add_route("*", "/v1/kv/{key}", handle)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            rec = Recorder([f"http://127.0.0.1:{port}"], Workload(workers=8, rotate_s=0.5), seed=3)
            await rec.run(1.5)
            finals = await rec.read_everywhere(rec.keys_used)
            return rec, finals
        finally:
            await runner.cleanup()

    rec, finals = asyncio.run(run())
    ops = rec.history()
    table = summarize(ops)
    assert set(table) == {READ, WRITE, CAS, DELETE}, table
    assert table[CAS].get("ok", 0) > 0 and table[CAS].get("ok-precondition-failed", 0) > 0, table
    assert len({op.process for op in ops}) >= 8
    assert len(rec.keys_used) >= 6  # keys rotated
    assert all(op.outcome == OK for op in finals)
    assert check(ops).ok
    assert version_anomalies(ops) == []
    gap, _, _ = longest_gap_without_write(ops, rec.t0, rec.t0 + 1.5)
    assert gap < 0.5
    # Damage it: a read that returns an overwritten value is caught.
    reads = [op for op in ops if op.kind == READ and op.outcome == OK and op.value is not None]
    victim = reads[len(reads) // 2]
    older = [op for op in ops if op.kind == WRITE and op.key == victim.key and op.outcome == OK
             and op.end < victim.start and op.value != victim.value]
    writes_between = [op for op in ops if op.kind == WRITE and op.key == victim.key and op.outcome == OK
                      and older and op.start > older[0].end and op.end < victim.start]
    if older and writes_between:
        victim.value = older[0].value
        assert check(ops).verdict == "violation"
