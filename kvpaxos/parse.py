"""Request parsing shared by the HTTP views: keys, JSON bodies, typed fields.

Every failure is a KvError subclass (400/413) that the HTTP layer answers as
JSON; nothing here lets bad input through as a 500.
"""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from kvpaxos.core.codec import load_json
from kvpaxos.core.commands import KEY_BYTES_MAX, LEASE_ID_MAX, TTL_MS_MAX
from kvpaxos.errors import BadRequest, InvalidJson, InvalidKey


def key_of(key: str) -> str:
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        size = -1  # a lone surrogate: the checks below say which error it is
    if 0 < size <= KEY_BYTES_MAX:
        return key
    if not key or len(key.encode("utf-8", "surrogatepass")) > KEY_BYTES_MAX:
        raise InvalidKey(f"keys must be 1 to {KEY_BYTES_MAX} bytes of UTF-8")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey("keys must be valid UTF-8") from None
    return key


async def json_body(request: web.Request, required: bool) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if required:
            raise InvalidJson("a JSON object body is required")
        return {}
    try:
        # What json.loads does with UTF-8 bytes, minus its encoding detection: a body
        # in UTF-16 or UTF-32 has a NUL among its first bytes, and one that opens with
        # a byte-order mark goes the long way too.
        body = (load_json(raw.decode("utf-8", "surrogatepass")) if raw[0] < 0x80 and b"\x00" not in raw[:4]
                else json.loads(raw))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: absurd nesting
        raise InvalidJson(f"body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise InvalidJson("body must be a JSON object")
    return body


def field(body: dict, name: str, kind: type, optional: bool = True, where: str = "") -> Any:
    value = body.get(name)
    if value is None:
        if optional:
            return None
        raise BadRequest(f"field {_label(name, where)} is required")
    if type(value) is not kind:
        raise BadRequest(f"field {_label(name, where)} must be a {kind.__name__}")
    if kind is int and value < 0:
        raise BadRequest(f"field {_label(name, where)} must not be negative")
    if kind is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"field {_label(name, where)} must be valid UTF-8") from None
    return value


def identity(body: dict) -> tuple[str | None, int]:
    """A request's optional exactly-once identity: client_id and seq, which come together."""
    client_id = field(body, "client_id", str)
    seq = field(body, "seq", int)
    if (client_id is None) != (seq is None) or (client_id is not None and (not client_id or seq < 1)):
        raise BadRequest("client_id (non-empty) and seq (>= 1) come together")
    return client_id, seq or 0


def ttl_field(body: dict, allowed: bool, where: str = "") -> int | None:
    """A put's or a refresh's "ttl": seconds until the key expires (a number above 0, at
    most a year), in whole milliseconds (at least 1); None when there is none. `allowed`:
    whether the operation takes one (a delete does not)."""
    ttl = body.get("ttl")
    if ttl is None:
        return None
    label = _label("ttl", where)
    if not allowed:
        raise BadRequest(f"field {label} is for a put or a refresh only")
    if type(ttl) not in (int, float) or not 0 < ttl <= TTL_MS_MAX / 1000:
        raise BadRequest(f"field {label} must be a number of seconds above 0 and at most {TTL_MS_MAX // 1000}")
    return max(1, round(ttl * 1000))


def lease_field(body: dict, allowed: bool, where: str = "") -> int | None:
    """A put's "lease": the id of the lease its key is attached to (an integer from 1),
    never beside a "ttl"; None when there is none. `allowed`: whether the operation takes
    one (a put does)."""
    lease = body.get("lease")
    if lease is None:
        return None
    label = _label("lease", where)
    if not allowed:
        raise BadRequest(f"field {label} is for a put only")
    if type(lease) is not int or not 0 < lease <= LEASE_ID_MAX:
        raise BadRequest(f"field {label} must be a lease id, an integer from 1 to {LEASE_ID_MAX}")
    if body.get("ttl") is not None:
        raise BadRequest(f"a key with a {label} has no 'ttl' of its own: it goes when its lease does")
    return lease


def lease_ttl_ms(body: dict) -> int:
    """A lease grant's "ttl": seconds, required (as a put's ttl_field)."""
    if body.get("ttl") is None:
        raise BadRequest("field 'ttl' is required: the lease's time to live in seconds")
    ttl_ms = ttl_field(body, True)
    assert ttl_ms is not None
    return ttl_ms


def _label(name: str, where: str) -> str:
    return f"{where}.{name}" if where else repr(name)
