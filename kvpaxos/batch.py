"""POST /v1/batch: many operations in one request.

Semantics: every write in the batch (put, cas, delete, refresh) goes into ONE log slot,
in the order given, so the writes become visible together: no read anywhere
sees some of them without the others. Each write's precondition is checked on
its own when it is applied (a failed cas does not undo the others). Then the
reads are served at a linearizable point after the writes. With client_id and
seq the whole batch is exactly-once: a retry returns the first results.

The values the gets return are bounded in all (GETS_ANSWER_CHARS): a get whose
value would take them past it answers {"ok": false, "error": "answer_too_large"}
instead (10,000 gets of a 1 MiB value made one 10 GiB answer otherwise).
"""
from __future__ import annotations

import time
from typing import Any

from kvpaxos.core.commands import DELETE, PUT, REFRESH, Command, Result
from kvpaxos.errors import BadRequest, ValueTooLarge
from kvpaxos.node import Node
from kvpaxos.parse import field, key_of, ttl_field

BATCH_OPS_MAX = 10_000
GETS_ANSWER_CHARS = 16 * 1024 * 1024
_WRITE_OPS = {"put": PUT, "cas": PUT, "delete": DELETE, "refresh": REFRESH}


def _parse_op(i: int, op: Any, value_max: int) -> tuple[str, dict]:
    if not isinstance(op, dict) or op.get("op") not in ("put", "cas", "delete", "get", "refresh"):
        raise BadRequest(f"ops[{i}] must be an object with op put, cas, delete, refresh or get")
    where = f"ops[{i}]"
    if op["op"] == "refresh" and ("value" in op or op.get("ttl") is None):
        raise BadRequest(f"{where}: a refresh takes a 'ttl' and no 'value': it keeps the key's value")
    key = key_of(field(op, "key", str, optional=False, where=where))
    fields = {"key": key, "value": field(op, "value", str, op["op"] not in ("put", "cas"), where),
              "if_value": field(op, "if_value", str, op["op"] != "cas", where),
              "if_version": field(op, "if_version", int, True, where),
              "ttl_ms": ttl_field(op, op["op"] in ("put", "cas", "refresh"), where)}
    for name in ("value", "if_value"):
        v = fields[name]
        if v is not None and len(v.encode("utf-8")) > value_max:
            raise ValueTooLarge(f"{where}.{name} exceeds {value_max} bytes")
    return op["op"], fields


def _write_result(r: Result) -> dict:
    out: dict[str, Any] = {"ok": r.ok, "version": r.version}
    if not r.ok:
        out["error"] = r.error
    return out


async def run_batch(node: Node, body: dict) -> dict:
    ops = body.get("ops")
    if not isinstance(ops, list) or not 1 <= len(ops) <= BATCH_OPS_MAX:
        raise BadRequest(f"ops must be a list of 1 to {BATCH_OPS_MAX} operations")
    client_id = field(body, "client_id", str)
    seq = field(body, "seq", int)
    if (client_id is None) != (seq is None) or (client_id is not None and (not client_id or seq < 1)):
        raise BadRequest("client_id (non-empty) and seq (>= 1) come together")
    parsed = [_parse_op(i, op, node.config.value_bytes_max) for i, op in enumerate(ops)]
    writes: list[Command] = []
    for kind, f in parsed:
        if kind != "get":
            writes.append(Command(_WRITE_OPS[kind], f["key"], f["value"] if kind in ("put", "cas") else None,
                                  f["if_value"], f["if_version"], client_id, seq or 0,
                                  node.new_cmd_id(), len(writes), f["ttl_ms"]))
    results = iter(await node.submit_group(tuple(writes)) if writes else [])
    if len(writes) < len(parsed):
        await node.linearizable_point()
    out, chars = [], 0
    for kind, f in parsed:
        if kind != "get":
            out.append(_write_result(next(results)))
        elif (entry := node.kv.get(f["key"])) is None:
            out.append({"ok": False, "error": "not_found", "key": f["key"]})
        elif chars + len(entry[0]) > GETS_ANSWER_CHARS:
            out.append({"ok": False, "error": "answer_too_large", "key": f["key"]})
        else:
            chars += len(entry[0])
            got = {"ok": True, "key": f["key"], "value": entry[0], "version": entry[1]}
            left = node.kv.ttl_left_ms(f["key"], int(time.time() * 1000))
            if left is not None:
                got["ttl"] = left / 1000  # as a GET shows it
            out.append(got)
    return {"results": out}
