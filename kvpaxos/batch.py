"""POST /v1/batch and POST /v1/txn: many operations in one request.

Semantics: every write in the batch (put, cas, delete, refresh) goes into ONE log slot,
in the order given, so the writes become visible together: no read anywhere
sees some of them without the others. Each write's precondition is checked on
its own when it is applied (a failed cas does not undo the others). Then the
reads are served at a linearizable point after the writes. With client_id and
seq the whole batch is exactly-once: a retry returns the first results.

The values the gets return are bounded in all (GETS_ANSWER_CHARS): a get whose
value would take them past it answers {"ok": false, "error": "answer_too_large"}
instead (10,000 gets of a 1 MiB value made one 10 GiB answer otherwise).

A transaction (POST /v1/txn) is all or nothing: comparisons of keys (a version,
0 for absent; a value; whether the key exists; equal unless "cmp" says "!=", "<"
or ">"), then the writes of `then` if every comparison holds, else those of
`else`, applied in one step of one slot (kvpaxos/core/txn.py); a branch may also
get keys, as its writes before left them. The answer says which branch ran, the
compared keys' versions and the store's revision as of that step, and each
write's (or get's) result.
"""
from __future__ import annotations

import time
from typing import Any

from kvpaxos.core import txn as txns
from kvpaxos.core.commands import DELETE, PUT, REFRESH, TXN, VALUE_BYTES_MAX, Command, Result
from kvpaxos.errors import BadRequest, ValueTooLarge
from kvpaxos.node import Node
from kvpaxos.parse import field, identity, key_of, lease_field, ttl_field

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
              "ttl_ms": ttl_field(op, op["op"] in ("put", "cas", "refresh"), where),
              "lease": lease_field(op, op["op"] in ("put", "cas"), where)}
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
    client_id, seq = identity(body)
    parsed = [_parse_op(i, op, node.config.value_bytes_max) for i, op in enumerate(ops)]
    writes: list[Command] = []
    for kind, f in parsed:
        if kind != "get":
            writes.append(Command(_WRITE_OPS[kind], f["key"], f["value"] if kind in ("put", "cas") else None,
                                  f["if_value"], f["if_version"], client_id, seq,
                                  node.new_cmd_id(), len(writes), f["ttl_ms"], f["lease"]))
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
            lease = node.kv.key_lease.get(f["key"])
            if lease is not None:
                got["lease"] = lease
            out.append(got)
    return {"results": out}


_TXN_FIELDS = {"if", "then", "else", "client_id", "seq"}


def _comparison(i: int, c: Any) -> tuple[str, str, Any, str]:
    where = f"if[{i}]"
    kinds = [k for k in txns.KINDS if k in c] if isinstance(c, dict) else []
    if len(kinds) != 1 or not {"key", kinds[0]} <= set(c) <= {"key", kinds[0], "cmp"}:
        raise BadRequest(f"{where} must be an object with a key, one of version, value or exists, "
                         "and optionally cmp")
    kind = kinds[0]
    arg = field(c, kind, {txns.VERSION: int, txns.VALUE: str, txns.EXISTS: bool}[kind], False, where)
    cmp = c.get("cmp", txns.EQ)
    if not txns.operator_fits(kind, cmp):
        raise BadRequest(f"{where}.cmp must be " + ('"=" or "!=" for exists' if kind == txns.EXISTS
                                                    else 'one of "=", "!=", "<" and ">"'))
    return key_of(field(c, "key", str, optional=False, where=where)), kind, arg, cmp


def _txn_write(branch: str, i: int, w: Any, value_max: int) -> Command:
    where = f"{branch}[{i}]"
    if not isinstance(w, dict) or w.get("op") not in ("put", "delete", "get"):
        raise BadRequest(f"{where} must be an object with op put, delete or get")
    put = w["op"] == "put"
    if set(w) - ({"op", "key", "value", "ttl", "lease"} if put else {"op", "key"}):
        raise BadRequest(f"{where}: a {w['op']} takes " + ("a key, a value, and a ttl or a lease" if put
                                                            else "a key only"))
    key = key_of(field(w, "key", str, optional=False, where=where))
    value = field(w, "value", str, not put, where)
    if value is not None and len(value.encode("utf-8")) > value_max:
        raise ValueTooLarge(f"{where}.value exceeds {value_max} bytes")
    return Command({"put": PUT, "delete": DELETE, "get": txns.GET}[w["op"]], key, value,
                   ttl_ms=ttl_field(w, put, where), lease=lease_field(w, put, where))


def _listed(body: dict, name: str, most: int) -> list:
    items = body.get(name, [])
    if not isinstance(items, list) or len(items) > most:
        raise BadRequest(f"{name} must be a list of at most {most} items")
    return items


async def run_txn(node: Node, body: dict) -> dict:
    if set(body) - _TXN_FIELDS:
        raise BadRequest("a transaction takes if, then, else, client_id and seq; not "
                         + ", ".join(sorted(set(body) - _TXN_FIELDS)))
    value_max = node.config.value_bytes_max
    conditions = [_comparison(i, c) for i, c in enumerate(_listed(body, "if", txns.CONDITIONS_MAX))]
    then = [_txn_write("then", i, w, value_max) for i, w in enumerate(_listed(body, "then", txns.WRITES_MAX))]
    otherwise = [_txn_write("else", i, w, value_max) for i, w in enumerate(_listed(body, "else", txns.WRITES_MAX))]
    keys = [c[0] for c in conditions] + [w.key for w in then + otherwise]
    if not keys:
        raise BadRequest("a transaction needs at least one comparison, write or get")
    client_id, seq = identity(body)
    value = txns.encode(conditions, then, otherwise)
    if len(value.encode("utf-8")) > VALUE_BYTES_MAX:
        raise ValueTooLarge(f"a transaction holds at most {VALUE_BYTES_MAX} bytes of keys and values in all")
    result = await node.submit(Command(TXN, keys[0], value, client_id=client_id, seq=seq, cmd_id=node.new_cmd_id()))
    if result.detail is None:
        raise BadRequest(f"transaction rejected: {result.error}")  # a stale client_id/seq
    compared, results = result.detail
    node.counters["txn_succeeded" if result.ok else "txn_failed"] += 1
    branch = then if result.ok else otherwise
    return {"succeeded": result.ok, "revision": result.version,
            "compared": [{"key": c[0], "version": v} for c, v in zip(conditions, compared)],
            "results": [_txn_result(w, r) for w, r in zip(branch, results)]}


def _txn_result(w: Command, r: tuple) -> dict:
    """One write's (or get's) result in a transaction's answer."""
    ok, error, version = r[:3]
    out = {"op": w.op, "key": w.key, "ok": ok, **({"version": version} if ok else {"error": error})}
    if ok and w.op == txns.GET:
        out["value"] = r[3]
    return out
