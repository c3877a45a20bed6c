"""The HTTP API every node serves: parse, call the node, map errors to JSON.

Routes are listed in one place (init_app). Every error leaves as
{"error": code, "message": text} with a stable code; bad input is a 4xx,
never a 500, and never reaches the log. A bug (an exception no handler
expects) is a 500 internal_error, logged with its traceback.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
import urllib.parse
from email.utils import formatdate
from json.encoder import encode_basestring_ascii
from typing import Awaitable, Callable

from aiohttp import HttpVersion11, web

from kvpaxos.core.commands import (DELETE, DELETE_PREFIX, LEASE_GRANT, LEASE_ID_MAX, LEASE_KEEPALIVE, LEASE_REVOKE, PUT,
                                   REFRESH, Command, Result)
from kvpaxos.core.membership import MEMBER_ADD, MEMBER_REMOVE
from kvpaxos.errors import (BadRequest, InvalidKey, KvError, LeaseConflict, LeaseNotFound, NoQuorum, NotFound,
                            Overloaded, PreconditionFailed, ValueTooLarge)
from kvpaxos.dashboard import cors_headers, setup_dashboard, write_stats
from kvpaxos.dashboard.stats import WriteStats
from kvpaxos.batch import run_batch, run_txn
from kvpaxos.config import parse_address
from kvpaxos.node import Node
from kvpaxos.parse import field, identity, json_body, key_of, lease_field, lease_ttl_ms, ttl_field
from kvpaxos.transport import PeerTransport
from kvpaxos import metrics, security
from kvpaxos.client_support import LEADER_HEADER

log = logging.getLogger("kvpaxos.http")

NODE = web.AppKey("node", Node)
TRANSPORT = web.AppKey("transport", PeerTransport)
LIST_LIMIT_MAX = 10_000
WATCH_TIMEOUT_S = 30.0  # how long a watch waits for a change by default ...
WATCH_TIMEOUT_MAX_S = 300.0  # ... and at most
WATCH_KEEPALIVE_S = 15.0  # a watch stream says it is alive this often when nothing changes
WATCH_LEADERLESS_S = 2.0  # a node without a leader this long sends its watchers elsewhere
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?", re.ASCII)
# A page of a list ends before the entry that would take its keys and values past this
# many characters (one entry at the least): at the limit's 10,000 values of up to 1 MiB,
# one answer could have been 10 GiB, built in memory and encoded on the event loop.
LIST_PAGE_CHARS = 4 * 1024 * 1024
KEY_PATH = "/v1/kv/"
SNAPSHOT_CHUNK_BYTES = 256 * 1024
# Keys a prefix delete deletes a slot: about 0.6 ms of each node's loop. Rounds of 1,000
# held the writes of the moment more than twice as long (benchmarks/README.md, "Deleting a prefix").
DELETE_PREFIX_ROUND = 250
CLIENT_GONE = 499  # the status of an answer to a client that hung up (logged, never sent)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


def _json_str(text: str) -> bytes:
    return encode_basestring_ascii(text).encode()  # what json.dumps(text) gives, without its wrappers


def error_body(code: str, message: str, status: int, headers: dict | None = None,
               details: dict | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message, **(details or {})}, status=status,
                             headers=headers)


def shown_details(e: KvError) -> dict:
    """The details an error's JSON document carries beside its code and message."""
    return {name: e.details[name] for name in e.shown}


def json_errors(handler: Handler, timed: Callable[[web.Request], WriteStats] | None = None) -> Handler:
    """The handler, with every error it raises answered as JSON (see error_response)
    and every answer named (answer_headers). With `timed`, each request's latency and
    outcome also go to the WriteStats it names (the dashboard's charts of writes).

    Every route is registered through this rather than through a middleware: with
    no middleware aiohttp calls the handler directly, where a middleware costs every
    request two more coroutine layers (its own and aiohttp's current-app fix-up).
    put_key, the hottest route, does this work itself without the layer this adds.
    """
    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter() if timed is not None else 0.0
        ok = False  # a server error, or no answer at all (cancelled)
        try:
            try:
                response = await handler(request)
            except (KvError, web.HTTPException) as e:
                ok = e.status < 500
                response = answer_error(request, e)
            except Exception as e:  # noqa: BLE001 - a bug still answers in JSON (internal_error)
                response = internal_error(request, e)
            ok = response.status < 500
            if not response.prepared:  # a stream named itself before it began
                answer_headers(request, response)
            return response
        finally:
            if timed is not None:
                timed(request).record(time.time(), (time.perf_counter() - started) * 1000, ok)

    return answer


def answer_error(request: web.Request, e: KvError | web.HTTPException) -> web.Response:
    """The JSON answer to e (error_response); where e stands as it is, e itself is
    raised again for aiohttp to send, named first (answer_headers)."""
    response = error_response(e)
    if response is None:
        assert isinstance(e, web.HTTPException)
        answer_headers(request, e)
        raise e
    return response


def internal_error(request: web.Request, e: Exception) -> web.Response:
    """A handler's unexpected exception (a bug): logged with its traceback and answered
    as JSON (internal_error, 500), named like every other answer, where aiohttp would
    send a text/plain 500. Raised again when a stream had already sent some of its bytes
    (aiohttp logs it and closes the connection: the answer is cut).

    A connection error on a connection that is closing is no bug: the client hung up
    (while its body was read, or a stream was written). That is logged at debug level,
    and answered with a 499 that never leaves: aiohttp's attempt to send it ends quietly,
    where an exception would be logged as an error with its traceback."""
    if isinstance(e, ConnectionError) and client_gone(request):
        log.debug("the client hung up during %s %s: %s", request.method, request.path, e)
        return web.Response(status=CLIENT_GONE)
    if request.writer.output_size > 0:
        raise e
    log.error("internal error answering %s %s", request.method, request.path, exc_info=e)
    return error_body("internal_error", f"internal error ({type(e).__name__}); see the node's log", 500)


def client_gone(request: web.BaseRequest) -> bool:
    """Whether the request's connection is closed or closing (nothing more can be sent)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def error_response(e: KvError | web.HTTPException) -> web.Response | None:
    """The JSON answer to an error: a KvError's code and status, aiohttp's own 4xx as
    no_route, method_not_allowed (with Allow), value_too_large or bad_request. None
    for what needs no change (redirects, errors already in JSON)."""
    if isinstance(e, KvError):
        retry = {"Retry-After": "1"} if isinstance(e, (NoQuorum, Overloaded)) else None
        return error_body(e.code, e.message, e.status, retry, shown_details(e))
    if isinstance(e, web.HTTPRequestEntityTooLarge):
        return error_body(ValueTooLarge.code, f"request body too large: {e.text}", 413)
    if e.status < 400 or e.content_type == "application/json":
        return None
    code = {404: "no_route", 405: "method_not_allowed"}.get(e.status, "bad_request")
    allow = e.headers.get("Allow")
    return error_body(code, e.reason, e.status, {"Allow": allow} if allow is not None else None)


async def no_route(request: web.Request) -> web.StreamResponse:
    """The last route: what the router found for no other (404, or 405 naming the
    methods the path has)."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            match, methods = await resource.resolve(request)
            allowed |= methods if match is None else set()
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
    raise web.HTTPNotFound()


def _key(request: web.Request) -> str:
    # The router leaves a percent-escape that does not decode to UTF-8 (%FF) as the
    # literal text "%FF", so a key that is not UTF-8 would be stored under another name.
    raw = request.rel_url.raw_path
    if "%" in raw and raw.startswith(KEY_PATH):
        try:
            urllib.parse.unquote_to_bytes(raw[len(KEY_PATH):]).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidKey("keys must be valid UTF-8 (percent-encode its UTF-8 bytes)") from None
    return key_of(request.match_info["key"])


def _command(node: Node, op: str, key: str, body: dict) -> Command:
    value, client_id, seq = body.get("value"), body.get("client_id"), body.get("seq")
    if (op == PUT and type(value) is str and value.isascii() and len(value) <= node.config.value_bytes_max
            and body.get("if_value") is None and body.get("if_version") is None and body.get("ttl") is None
            and "refresh" not in body and "lease" not in body
            and ((type(client_id) is str and client_id and client_id.isascii() and type(seq) is int and seq >= 1)
                 or (client_id is None and seq is None))):
        # A plain put, what nearly every write is: ASCII text is valid UTF-8 of its own
        # length, so _checked_command would pass it unchanged.
        return Command(PUT, key, value, None, None, client_id, seq or 0, node.new_cmd_id())
    return _checked_command(node, op, key, body)


def _checked_command(node: Node, op: str, key: str, body: dict) -> Command:
    refresh = body.get("refresh")
    if refresh is not None and type(refresh) is not bool:
        raise BadRequest("field 'refresh' must be true or false")
    if refresh:
        if op != PUT:
            raise BadRequest("field 'refresh' is for a put only")
        if "value" in body or body.get("ttl") is None:
            raise BadRequest("a refresh takes a 'ttl' and no 'value': it keeps the key's value")
        op = REFRESH
    value = field(body, "value", str, optional=op != PUT)
    limit = node.config.value_bytes_max
    for name in ("value", "if_value"):
        v = body.get(name)
        # A character is 1 to 4 bytes of UTF-8: only a value between the bounds is encoded.
        if isinstance(v, str) and len(v) * 4 > limit and (
                len(v) > limit or len(v.encode("utf-8", "surrogatepass")) > limit):
            raise ValueTooLarge(f"{name} exceeds {limit} bytes")
    client_id, seq = identity(body)
    return Command(op, key, value if op == PUT else None, field(body, "if_value", str),
                   field(body, "if_version", int), client_id, seq, node.new_cmd_id(),
                   ttl_ms=ttl_field(body, op != DELETE), lease=lease_field(body, op == PUT))


_LEASE_REFUSALS = {
    "lease_exists": "a lease with that id exists or existed, or the id is not above every id granted before",
    "lease_full": "the lease holds as many keys as a lease may (10,000)",
    "key_has_lease": "the key is attached to a lease: it goes when its lease does (put it without the lease first)",
    "lease_ids_exhausted": "every lease id has been granted",
}


def _check(result: Result, key: str, lease: int | None = None) -> Result:
    if result.ok:
        return result
    if result.error == "precondition_failed":
        raise PreconditionFailed(f"precondition failed for key {key!r}", version=result.version)
    if result.error == "not_found":
        raise NotFound(f"key {key!r} not found")
    if result.error == "lease_not_found":
        raise LeaseNotFound(f"lease {lease} not found (never granted, revoked, or expired)")
    if result.error in _LEASE_REFUSALS:
        raise LeaseConflict(result.error, _LEASE_REFUSALS[result.error])
    raise BadRequest(f"command rejected: {result.error}")


async def _consistent(request: web.Request) -> Node:
    node = request.app[NODE]
    consistency = request.query.get("consistency", "linearizable")
    if consistency not in ("linearizable", "stale"):
        raise BadRequest("consistency must be 'linearizable' or 'stale'")
    if consistency == "linearizable":
        await node.linearizable_point()
    return node


async def get_key(request: web.Request) -> web.Response:
    key = _key(request)
    node = await _consistent(request)
    entry = node.kv.get(key)
    if entry is None:
        raise NotFound(f"key {key!r} not found")
    answer = {"key": key, "value": entry[0], "version": entry[1]}
    left = node.kv.ttl_left_ms(key, int(time.time() * 1000))
    if left is not None:
        answer["ttl"] = left / 1000  # seconds left by this node's clock (0: due, going with the next slot)
    lease = node.kv.key_lease.get(key)
    if lease is not None:
        answer["lease"] = lease
    return web.json_response(answer)


class PutAnswer(web.StreamResponse):
    """A PUT's 200 answer, written as one block of bytes: status line, Date,
    Content-Type, Content-Length, X-Kv-Leader, Connection: close if the client asked
    for it, and the body. aiohttp's general answer path (a header multidict filled and
    serialised, its writer, chunking and compression choices) costs the leader about a
    sixth of what a PUT costs it at 64 clients (benchmarks/README.md, "A PUT's answer in
    one write"), and this answer is always the same shape. Used only for HTTP/1.1
    requests without an Origin (the CORS answers take aiohttp's path); aiohttp's server
    takes any StreamResponse whose prepare() writes it, and keeps the connection as
    keep_alive says."""

    def __init__(self, body: bytes, leader_url: str | None) -> None:
        super().__init__()
        self._answer = body
        self._leader = leader_url

    async def prepare(self, request: web.BaseRequest) -> None:
        if self._eof_sent:
            return
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection before its answer")
        self._req = request
        self._keep_alive = keep_alive = request.keep_alive
        leader = b"" if self._leader is None else b"%s: %s\r\n" % (_LEADER_HEADER_BYTES, self._leader.encode())
        transport.write(b"HTTP/1.1 200 OK\r\n%sContent-Type: application/json; charset=utf-8\r\n"
                        b"Content-Length: %d\r\n%s%s\r\n%s" % (
                            _http_date(), len(self._answer), leader,
                            b"" if keep_alive else b"Connection: close\r\n", self._answer))
        self._eof_sent = True

    async def write_eof(self, data: bytes = b"") -> None:
        return None  # prepare() wrote all of it


_HTTP_11 = HttpVersion11
_LEADER_HEADER_BYTES = LEADER_HEADER.encode()
_date_line: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """The Date header line, formatted once a second."""
    global _date_line
    now = int(time.time())
    if _date_line[0] != now:
        _date_line = (now, b"Date: %s\r\n" % formatdate(now, usegmt=True).encode())
    return _date_line[1]


async def put_key(request: web.Request) -> web.StreamResponse:
    """PUT /v1/kv/{key}, registered without json_errors: the route nearly every write
    takes does the wrapper's work in its own frame, which spares each PUT a coroutine
    layer (see benchmarks/README.md, "The answer's headers without a hook")."""
    started = time.perf_counter()
    ok = False  # a server error, or no answer at all (cancelled)
    try:
        try:
            key = _key(request)
            node = request.app[NODE]
            cmd = _command(node, PUT, key, await json_body(request, required=True))
            result = (await node.submit_group((cmd,)))[0]  # submit() without its coroutine layer
            if not result.ok:
                _check(result, key, cmd.lease)
            body = b'{"key": %s, "version": %d}' % (_json_str(key), result.version)
            if request.version == _HTTP_11 and "Origin" not in request.headers:
                ok = True
                return PutAnswer(body, node.leader_url)
            response = web.Response(body=body, headers=_JSON_HEADERS)
        except (KvError, web.HTTPException) as e:
            ok = e.status < 500
            response = answer_error(request, e)
        except Exception as e:  # noqa: BLE001 - see json_errors
            response = internal_error(request, e)
        ok = response.status < 500
        answer_headers(request, response)
        return response
    finally:
        write_stats(request).record(time.time(), (time.perf_counter() - started) * 1000, ok)


async def delete_key(request: web.Request) -> web.Response:
    key = _key(request)
    node = request.app[NODE]
    cmd = _command(node, DELETE, key, await json_body(request, required=False))
    result = _check(await node.submit(cmd), key)
    return web.json_response({"key": key, "deleted": True, "version": result.version})


_LIST_QUERY = {"prefix", "limit", "after", "consistency", "keys_only", "count"}


async def list_keys(request: web.Request) -> web.Response:
    """The keys under a prefix, in key order, a page at a time (with their values, or
    keys_only=true); or count=true: how many there are."""
    q = request.query
    unknown = set(q) - _LIST_QUERY
    if unknown:
        raise BadRequest(f"a list takes {', '.join(sorted(_LIST_QUERY))}; not {', '.join(sorted(unknown))}")
    prefix = q.get("prefix", "")
    limit = _int_query(request, "limit", 1000, 1, LIST_LIMIT_MAX)
    after = q.get("after")  # the last key of the page before (exclusive)
    keys_only, count = _bool_query(request, "keys_only"), _bool_query(request, "count")
    if count and ("limit" in q or "after" in q or keys_only):
        raise BadRequest("count=true takes a prefix only (no limit, after or keys_only)")
    node = await _consistent(request)
    if count:
        return web.json_response({"count": node.kv.keys.count_prefix(prefix), "revision": node.kv.revision})
    items, more = node.kv.scan(prefix, limit, after, LIST_PAGE_CHARS, keys_only)
    entries = ([{"key": k, "version": ver} for k, _, ver in items] if keys_only else
               [{"key": k, "value": v, "version": ver} for k, v, ver in items])
    if node.kv.expiry:  # the seconds left of the keys that expire, as a GET shows them
        now_ms = int(time.time() * 1000)
        for entry in entries:
            left = node.kv.ttl_left_ms(entry["key"], now_ms)
            if left is not None:
                entry["ttl"] = left / 1000
    if node.kv.key_lease:
        for entry in entries:
            lease = node.kv.key_lease.get(entry["key"])
            if lease is not None:
                entry["lease"] = lease
    # The revision read at: a watch from one past it misses no change made after this page.
    return web.json_response({"items": entries, "more": more, "revision": node.kv.revision})


async def delete_prefix(request: web.Request) -> web.Response:
    """DELETE /v1/kv?prefix=P: every key that starts with P (prefix= for every key), in
    rounds of DELETE_PREFIX_ROUND keys in key order, each round one command of one slot
    (all of its deletes or none); the number deleted and the store's revision after."""
    if set(request.query) != {"prefix"}:
        raise BadRequest("give the prefix of the keys to delete, and nothing else: ?prefix=P (prefix= for every key)")
    prefix = request.query["prefix"]
    if prefix:
        key_of(prefix)
    node = request.app[NODE]
    deleted = 0
    while True:
        result = await node.submit(Command(DELETE_PREFIX, prefix, str(DELETE_PREFIX_ROUND), cmd_id=node.new_cmd_id()))
        if not result.ok:
            raise BadRequest(f"command rejected: {result.error}")
        deleted += int(result.value or 0)
        if result.error != "more":
            node.counters["prefix_deletes"] += 1
            node.counters["prefix_deleted_keys"] += deleted
            return web.json_response({"prefix": prefix, "deleted": deleted, "revision": result.version})


def _lease_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and 0 < int(raw) <= LEASE_ID_MAX):
        raise BadRequest(f"a lease id is an integer from 1 to {LEASE_ID_MAX}")
    return int(raw)


def _lease_answer(node: Node, lease_id: int, keys: bool) -> dict:
    lease = node.kv.leases[lease_id]
    left = node.kv.lease_left_ms(lease_id, int(time.time() * 1000))
    answer = {"id": lease_id, "ttl": lease.ttl_ms / 1000, "ttl_left": (left or 0) / 1000}
    answer["keys"] = sorted(lease.keys) if keys else len(lease.keys)
    return answer


async def grant_lease(request: web.Request) -> web.Response:
    """POST /v1/leases {"ttl": seconds[, "id": n]}: a new lease; its id (the one asked
    for, or one above every id granted before)."""
    node = request.app[NODE]
    body = await json_body(request, required=True)
    if set(body) - {"ttl", "id", "client_id", "seq"}:
        raise BadRequest("a lease grant takes ttl, id, client_id and seq; not "
                         + ", ".join(sorted(set(body) - {"ttl", "id", "client_id", "seq"})))
    ttl_ms = lease_ttl_ms(body)
    wanted = body.get("id")
    if wanted is not None and (type(wanted) is not int or not 0 < wanted <= LEASE_ID_MAX):
        raise BadRequest(f"field 'id' must be an integer from 1 to {LEASE_ID_MAX}")
    client_id, seq = identity(body)
    cmd = Command(LEASE_GRANT, str(wanted or 0), client_id=client_id, seq=seq, cmd_id=node.new_cmd_id(),
                  ttl_ms=ttl_ms)
    result = _check(await node.submit(cmd), "", wanted)
    lease_id = int(result.value or 0)
    return web.json_response({"id": lease_id, "ttl": ttl_ms / 1000, "revision": result.version})


async def _lease_write(request: web.Request, op: str) -> tuple[int, Result]:
    node = request.app[NODE]
    lease_id = _lease_id(request)
    body = await json_body(request, required=False)
    if set(body) - {"client_id", "seq"}:
        raise BadRequest("takes client_id and seq only")
    client_id, seq = identity(body)
    cmd = Command(op, str(lease_id), client_id=client_id, seq=seq, cmd_id=node.new_cmd_id())
    return lease_id, _check(await node.submit(cmd), "", lease_id)


async def keepalive_lease(request: web.Request) -> web.Response:
    """POST /v1/leases/{id}/keepalive: the lease's time to live starts again (one log
    entry, whatever the number of its keys)."""
    lease_id, result = await _lease_write(request, LEASE_KEEPALIVE)
    return web.json_response({"id": lease_id, "ttl": int(result.value or 0) / 1000})


async def revoke_lease(request: web.Request) -> web.Response:
    """DELETE /v1/leases/{id}: end the lease now; its keys are deleted in one slot."""
    lease_id, result = await _lease_write(request, LEASE_REVOKE)
    return web.json_response({"id": lease_id, "deleted": int(result.value or 0), "revision": result.version})


async def get_lease(request: web.Request) -> web.Response:
    """GET /v1/leases/{id}[?keys=true]: its ttl, the seconds left by this node's clock,
    and its keys (their number, or keys=true: the keys)."""
    lease_id = _lease_id(request)
    unknown = set(request.query) - {"keys", "consistency"}
    if unknown:
        raise BadRequest(f"a lease read takes keys and consistency; not {', '.join(sorted(unknown))}")
    keys = _bool_query(request, "keys")
    node = await _consistent(request)
    if lease_id not in node.kv.leases:
        raise LeaseNotFound(f"lease {lease_id} not found (never granted, revoked, or expired)")
    return web.json_response({**_lease_answer(node, lease_id, keys), "revision": node.kv.revision})


async def list_leases(request: web.Request) -> web.Response:
    """GET /v1/leases[?limit=N&after=ID]: the leases in id order, a page at a time, each
    with its ttl, seconds left and number of keys; and whether there are more."""
    unknown = set(request.query) - {"consistency", "limit", "after"}
    if unknown:
        raise BadRequest(f"a list of leases takes consistency, limit and after; not {', '.join(sorted(unknown))}")
    limit = _int_query(request, "limit", 1000, 1, LIST_LIMIT_MAX)
    after = _int_query(request, "after", 0, 0, None)
    node = await _consistent(request)
    ids = sorted(i for i in node.kv.leases if i > after)
    leases = [_lease_answer(node, i, False) for i in ids[:limit]]
    return web.json_response({"leases": leases, "more": len(ids) > limit, "revision": node.kv.revision})


async def watch_keys(request: web.Request) -> web.Response:
    """The changes to a key or the keys under a prefix from a revision on, waiting for
    one (a long poll): kvpaxos/watch.py. Without `from`, from the first change after a
    linearizable point (or, with consistency=stale, after this node's state now)."""
    q = request.query
    key, prefix = q.get("key"), q.get("prefix")
    if (key is None) == (prefix is None):
        raise BadRequest("give one of key (one key) and prefix (the keys that start with it; empty for all)")
    if key is not None:
        key = key_of(key)
    limit = _int_query(request, "limit", 1000, 1, LIST_LIMIT_MAX)
    start = _int_query(request, "from", None, 1, None)
    raw_timeout = q.get("timeout", str(WATCH_TIMEOUT_S))
    # Plain decimals only: float() would also take " 5", "1e2", "nan" and other scripts' digits.
    timeout = float(raw_timeout) if _DECIMAL.fullmatch(raw_timeout) else -1.0
    if not 0 <= timeout <= WATCH_TIMEOUT_MAX_S:
        raise BadRequest(f"timeout must be a number of seconds from 0 to {WATCH_TIMEOUT_MAX_S:g}")
    stream = _bool_query(request, "stream") or request.headers.get("Accept", "").startswith("text/event-stream")
    resume = request.headers.get("Last-Event-ID") if stream else None
    if resume is not None:
        if not (resume.isascii() and resume.isdigit()):
            raise BadRequest("Last-Event-ID must be a revision this stream sent")
        start = int(resume) + 1  # a reconnecting EventSource goes on after the last change it got
    node = request.app[NODE]
    if start is None:
        node = await _consistent(request)
        start = node.kv.revision + 1
    elif q.get("consistency", "linearizable") not in ("linearizable", "stale"):
        raise BadRequest("consistency must be 'linearizable' or 'stale'")
    history = node.history
    if stream:
        history.check(start)
        await _need_leader(node)
        return await _watch_stream(request, node, start, key, prefix, limit)
    page = await history.poll(start, key, prefix, limit, timeout if node.replica.leader_id else 0,
                              LIST_PAGE_CHARS)
    if not page.changes and not history.closed:
        await _need_leader(node)
    return web.json_response({"events": [c.to_wire() for c in page.changes], "next": page.next,
                              "revision": history.revision})


async def _need_leader(node: Node) -> None:
    """A node cut off from the cluster may not hear of new changes: a watcher waiting there
    would wait for nothing, so it is sent to another node. An election takes a few hundred
    milliseconds, so a node that has a leader again within WATCH_LEADERLESS_S keeps its
    watchers (a stream is not cut at every leader change)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WATCH_LEADERLESS_S
    while node.replica.leader_id is None and not node.history.closed:
        if loop.time() >= deadline:
            raise NoQuorum(f"this node has known no leader for {WATCH_LEADERLESS_S:g} s, so it may not hear of "
                           f"changes: ask another node{node.why_alone()}", retry_after_s=1)
        await asyncio.sleep(node.config.tick_ms / 1000)


async def _watch_stream(request: web.Request, node: Node, start: int, key: str | None, prefix: str | None,
                        limit: int) -> web.StreamResponse:
    """The watch as server-sent events: one event a change (`id:` its revision, `data:` the
    change as in the long poll's answer), a comment every WATCH_KEEPALIVE_S when nothing
    changes, and a last `event: stop` (data: an error document) when the node can no
    longer go on (no leader for WATCH_LEADERLESS_S, or it no longer holds the revision).
    The stream does not pay a request per wake-up, as long polls do."""
    history = node.history
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                       "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    answer_headers(request, resp)  # before the stream begins: json_errors cannot after
    await resp.prepare(request)
    try:
        await resp.write(b"retry: 1000\n\n")
        while not history.closed:
            try:
                page = await history.poll(start, key, prefix, limit, WATCH_KEEPALIVE_S, LIST_PAGE_CHARS)
                if not page.changes and not history.closed:
                    await _need_leader(node)
            except KvError as e:
                stop = {"error": e.code, "message": e.message, **shown_details(e)}
                await resp.write(f"event: stop\ndata: {json.dumps(stop)}\n\n".encode())
                break
            if page.changes:
                await resp.write("".join(f"id: {c.revision}\ndata: {json.dumps(c.to_wire())}\n\n"
                                         for c in page.changes).encode())
            elif not history.closed:
                await resp.write(b": nothing new\n\n")
            start = page.next
    except (ConnectionError, RuntimeError):
        pass  # the reader went away (aiohttp raises ConnectionResetError or RuntimeError)
    return resp


def _bool_query(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false")
    if raw not in ("true", "false"):
        raise BadRequest(f"{name} must be 'true' or 'false'")
    return raw == "true"


def _int_query(request: web.Request, name: str, default: int | None, low: int, high: int | None) -> int | None:
    """The query's integer `name` (default when absent), or BadRequest."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < low or (high is not None and int(raw) > high):
        raise BadRequest(f"{name} must be an integer from {low}" + (f" to {high}" if high is not None else " up"))
    return int(raw)


async def post_batch(request: web.Request) -> web.Response:
    """Many operations in one request; semantics in kvpaxos/batch.py."""
    body = await json_body(request, required=True)
    return web.json_response(await run_batch(request.app[NODE], body))


async def post_txn(request: web.Request) -> web.Response:
    """Compare keys, then apply one list of writes or the other, atomically; kvpaxos/batch.py."""
    body = await json_body(request, required=True)
    return web.json_response(await run_txn(request.app[NODE], body))


async def status(request: web.Request) -> web.Response:
    node, transport = request.app[NODE], request.app[TRANSPORT]
    body = node.status()
    host, port = node.config.address
    body["address"] = f"{host}:{port}"
    reachable = transport.reachable()
    body["peers"] = {str(p): {"address": f"{h}:{pt}", "reachable": reachable.get(p, False)}
                     for p, (h, pt) in sorted(node.config.cluster.items()) if p != node.id}
    body["storage"] = await node.run_on_disk(node.storage.describe)  # reads live pragmas: off the loop
    return web.json_response(body)


async def get_snapshot(request: web.Request) -> web.StreamResponse:
    """Stream this node's latest snapshot; ?fresh=true takes one at a linearizable point first."""
    node = request.app[NODE]
    fresh = request.query.get("fresh", "false")
    if fresh not in ("true", "false"):
        raise BadRequest("fresh must be 'true' or 'false'")
    if fresh == "true":
        await node.linearizable_point()
    if fresh == "true" or node.snapshots.slot == 0:
        await node.snapshots.take(node)
    # Opened under the snapshotter's lock: a snapshot written meanwhile replaces the
    # file by rename, which leaves these bytes (and this length) intact.
    f, slot, size = await node.snapshots.open_latest()
    loop = asyncio.get_running_loop()
    try:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                           "X-Kvpaxos-Snapshot-Slot": str(slot)})
        resp.content_length = size
        answer_headers(request, resp)  # before the stream begins: json_errors cannot after
        await resp.prepare(request)
        while chunk := await loop.run_in_executor(None, f.read, SNAPSHOT_CHUNK_BYTES):
            await resp.write(chunk)
        await resp.write_eof()
        return resp
    finally:
        f.close()


async def get_members(request: web.Request) -> web.Response:
    """The configuration and its recent history (linearizable unless ?consistency=stale)."""
    node = await _consistent(request)
    return web.json_response(node.members())


async def add_member(request: web.Request) -> web.Response:
    """Add a learner: {"id": N, "address": "HOST:PORT"}. ?wait=voter returns once the
    leader has promoted it (after it caught up), ?timeout=SECONDS bounding that wait."""
    node = request.app[NODE]
    body = await json_body(request, required=True)
    node_id = field(body, "id", int, optional=False)
    address = field(body, "address", str, optional=False)
    if node_id < 1 or node_id >= 1 << 31:
        raise BadRequest("field 'id' must be a positive integer")
    if parse_address(address) is None:
        raise BadRequest("field 'address' must be HOST:PORT")
    wait = request.query.get("wait", "learner")
    if wait not in ("learner", "voter"):
        raise BadRequest("wait must be 'learner' or 'voter'")
    timeout = _seconds(request.query.get("timeout", "60"))
    await node.change_members(Command(MEMBER_ADD, str(node_id), address, cmd_id=node.new_cmd_id()))
    if wait == "voter":
        await node.wait_for_voter(node_id, timeout)
    return web.json_response(node.members())


async def remove_member(request: web.Request) -> web.Response:
    """Remove a voter or learner for good. Refused (409 would_lose_quorum) if a majority
    of the voters left does not answer now, unless ?force=true."""
    node = request.app[NODE]
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) < 1 << 31:
        raise BadRequest("the member id must be a positive integer")
    force = request.query.get("force", "false")
    if force not in ("true", "false"):
        raise BadRequest("force must be 'true' or 'false'")
    if force == "false":
        await node.check_quorum_without(int(raw))
    await node.change_members(Command(MEMBER_REMOVE, raw, cmd_id=node.new_cmd_id()))
    return web.json_response(node.members())


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise BadRequest("timeout must be a number of seconds from 0 to 3600")
    return value


async def get_metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this node (kvpaxos/metrics.py)."""
    text = metrics.render(request.app[NODE], request.app[TRANSPORT])
    return web.Response(body=text.encode("utf-8"), headers={"Content-Type": metrics.CONTENT_TYPE})


def answer_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer names the leader (X-Kv-Leader: its URL), so a client can send its
    writes there and spare them the hop through a follower; any node still takes any
    request. Not on a refusal for a missing token. Cross-origin requests get the
    dashboard's CORS headers.

    Called on each answer before it is sent: by json_errors and put_key, by the
    streaming routes before their streams begin, and by the token refusal.
    Not an aiohttp response hook: a hook costs every request two more coroutines
    (the signal's and its own). The peer link's WebSocket handshake is not an
    answer of the API and is not named."""
    url = request.app[NODE].leader_url
    if url is not None and response.status != 401:
        response.headers[LEADER_HEADER] = url
    origin = request.headers.get("Origin")
    if origin:
        cors_headers(request, response, origin)


async def _end_watches(app: web.Application) -> None:
    """A stopping node answers its waiting watches at once (with what they have)."""
    app[NODE].history.close()


def _security_middlewares(node: Node) -> list:
    """With a client token, every route that can show data needs it (security.is_open; 401)."""
    if node.config.token is None:
        return []

    def refused(request: web.Request) -> None:
        node.counters["http_unauthorized"] += 1

    return [security.token_middleware(node.config.token, refused, answer_headers)]


def init_app(node: Node, transport: PeerTransport) -> web.Application:
    # JSON escaping (json.dumps' default \uXXXX) can turn one UTF-8 byte into six,
    # and a PUT may carry both value and if_value at the limit.
    body_max = 12 * node.config.value_bytes_max + 64 * 1024
    # No middleware unless a client token is set: json_errors wraps each route instead.
    app = web.Application(middlewares=_security_middlewares(node), client_max_size=body_max)
    app[NODE] = node
    app[TRANSPORT] = transport
    r = app.router
    # "*", not "+": an empty key reaches _key and is answered 400 invalid_key.
    # [\s\S], not ".": a key may hold a newline (%0A), which "." does not match.
    r.add_get("/v1/kv/{key:[\\s\\S]*}", json_errors(get_key))
    r.add_put("/v1/kv/{key:[\\s\\S]*}", put_key)  # json_errors' work in its own frame, timed too
    r.add_delete("/v1/kv/{key:[\\s\\S]*}", json_errors(delete_key, timed=write_stats))
    r.add_get("/v1/kv", json_errors(list_keys))
    r.add_delete("/v1/kv", json_errors(delete_prefix, timed=write_stats))
    r.add_get("/v1/watch", json_errors(watch_keys))
    r.add_post("/v1/batch", json_errors(post_batch))
    r.add_post("/v1/txn", json_errors(post_txn, timed=write_stats))
    r.add_post("/v1/leases", json_errors(grant_lease, timed=write_stats))
    r.add_get("/v1/leases", json_errors(list_leases))
    r.add_get("/v1/leases/{id}", json_errors(get_lease))
    r.add_post("/v1/leases/{id}/keepalive", json_errors(keepalive_lease, timed=write_stats))
    r.add_delete("/v1/leases/{id}", json_errors(revoke_lease, timed=write_stats))
    r.add_get("/v1/status", json_errors(status))
    r.add_get("/v1/snapshot", json_errors(get_snapshot))
    r.add_get("/v1/members", json_errors(get_members))
    r.add_post("/v1/members", json_errors(add_member))
    r.add_delete("/v1/members/{id}", json_errors(remove_member))
    r.add_get("/metrics", json_errors(get_metrics))
    r.add_get("/v1/peer", json_errors(transport.handle_inbound))
    app.on_shutdown.append(_end_watches)
    setup_dashboard(app, node, transport, json_errors, answer_headers)  # GET /, /v1/events, /v1/dashboard
    r.add_route("*", "/{path:[\\s\\S]*}", json_errors(no_route))  # last: what no route above takes
    return app
