"""The I/O-free parts of the kvpaxos clients: endpoints, request shapes, retry policy.

Shared by the synchronous client (kvpaxos.client) and the asyncio one
(kvpaxos.aioclient), and small enough to unit test with a fake clock.
"""
from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from kvpaxos.core.commands import LEASE_ID_MAX  # plain constants: the client stays light

# Backoff after every endpoint failed once in a row: small, because a leader
# election takes a few hundred milliseconds and callers wait on us.
BACKOFF_BASE_S = 0.05
BACKOFF_MAX_S = 1.0
# Statuses after which another node may well succeed.
RETRY_STATUSES = frozenset({500, 502, 503, 504})
# Every node's answers name the leader's URL here; the clients send writes there.
LEADER_HEADER = "X-Kv-Leader"


# A client that could not connect to the leader sends its writes through the other
# nodes for this long before it tries the leader directly again.
LEADER_AVOID_S = 5.0


class LeaderHint:
    """Where a client starts its writes: the endpoint that answers named as the leader
    (X-Kv-Leader), if it is one of the client's endpoints and the client has not
    failed to reach it lately. None: start where reads do."""

    def __init__(self, endpoints: list[str], clock: Callable[[], float] = time.monotonic) -> None:
        self._endpoints, self._clock = endpoints, clock
        self.index: int | None = None
        self._unreachable: dict[int, float] = {}  # endpoint index -> when a connect failed

    def heard(self, header: str | None) -> None:
        """An answer came, naming the leader in `header` (or no leader)."""
        index = None
        if header:
            try:
                index = self._endpoints.index(normalize_endpoint(header))
            except ValueError:
                pass  # not one of ours (or malformed): a client follows only its endpoints
        failed = self._unreachable.get(index, None) if index is not None else None
        if failed is not None and self._clock() - failed < LEADER_AVOID_S:
            index = None
        self.index = index

    def unreachable(self, index: int) -> None:
        """Connecting to endpoint `index` failed."""
        self._unreachable[index] = self._clock()
        if self.index == index:
            self.index = None

    def silent(self, index: int, preferred: int) -> int:
        """Endpoint `index` took a request and did not answer in the call's time (a leader
        cut off from its peers waits for a majority it cannot reach): left alone as an
        unreachable one is, and the start of the next calls, `preferred`, moved past it
        (where calls start now). The next write, a retry with the same identity, then goes
        through another node instead of waiting on the same one again."""
        self.unreachable(index)
        return (index + 1) % len(self._endpoints) if preferred == index else preferred


def keeper_pause(ttl_s: float, sent: float, sure_until: float, now: float | None = None) -> float:
    """How long a lock's or a lease's keeper pauses after a refresh or keepalive sent at
    `sent` (monotonic) failed while the lock or lease may still be held (until
    `sure_until`): the rest of a third of a ttl from when it was sent. None after one that
    used its whole time (a node that took it and never answered, as a leader cut off from
    its peers: the client's next try goes elsewhere); up to a third of a ttl after one
    refused at once (no spinning on nodes that are down)."""
    now = time.monotonic() if now is None else now
    return max(0.0, min(ttl_s / 3 - (now - sent), sure_until - now))


def normalize_endpoint(endpoint: str) -> str:
    """Turn "host:port" or "http://host:port/" into "http://host:port"."""
    text = endpoint.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad endpoint {endpoint!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise ValueError(f"bad endpoint {endpoint!r}: expected http://HOST:PORT or HOST:PORT")
    if parts.path.strip("/") or parts.query:
        raise ValueError(f"bad endpoint {endpoint!r}: no path or query expected")
    return f"{parts.scheme}://{parts.netloc}"


def parse_endpoints(endpoints: list[str] | tuple[str, ...] | str) -> list[str]:
    """Accept a list of endpoints or one comma-separated string; keep order, drop repeats."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    result: list[str] = []
    for item in items:
        if item.strip():
            url = normalize_endpoint(item)
            if url not in result:
                result.append(url)
    if not result:
        raise ValueError("no endpoints given")
    return result


def kv_path(key: str) -> str:
    # safe="" so that "/" and "?" in a key stay part of the key.
    return "/v1/kv/" + quote(key, safe="")


def list_path(prefix: str, limit: int, after: str | None = None, keys_only: bool = False) -> str:
    query: dict[str, Any] = {"prefix": prefix, "limit": int(limit)}
    if after is not None:
        query["after"] = after
    if keys_only:
        query["keys_only"] = "true"
    return "/v1/kv?" + urlencode(query)


def count_path(prefix: str) -> str:
    return "/v1/kv?" + urlencode({"prefix": prefix, "count": "true"})


def delete_prefix_path(prefix: str) -> str:
    return "/v1/kv?" + urlencode({"prefix": prefix})


def watch_path(key: str | None, prefix: str | None, from_revision: int | None, timeout_s: float,
               limit: int) -> str:
    """GET /v1/watch for one key or the keys under prefix ("" for every key); exactly
    one of the two, else ValueError."""
    if (key is None) == (prefix is None):
        raise ValueError("give exactly one of key and prefix")
    query: dict[str, Any] = {"key": key} if key is not None else {"prefix": prefix}
    if from_revision is not None:
        query["from"] = int(from_revision)
    query["timeout"] = f"{max(0.0, float(timeout_s)):.3f}"  # plain decimals: the node takes no 1e-05
    query["limit"] = int(limit)
    return "/v1/watch?" + urlencode(query)


# A node sends a comment line every 15 s on a watch stream with nothing to say: a stream
# silent this long is cut off (the node paused, or the network), and the watch goes on
# elsewhere from the revision after its last event.
STREAM_SILENCE_S = 25.0


def stream_backoff(idle_ends: int) -> float:
    """Seconds to wait before opening a watch stream again after `idle_ends` streams in a
    row ended without an event (50 ms, doubling, at most 1 s)."""
    return min(1.0, 0.05 * 2 ** (idle_ends - 1))


def watch_stream_path(key: str | None, prefix: str | None, from_revision: int) -> str:
    """GET /v1/watch as server-sent events from revision from_revision on."""
    query: dict[str, Any] = {"key": key} if key is not None else {"prefix": prefix}
    query["from"] = int(from_revision)
    query["stream"] = "true"
    return "/v1/watch?" + urlencode(query)


class EventStream:
    """Reads a watch stream's lines (text/event-stream): feed() each one; it gives
    ("change", doc) for a change and ("stop", error document) for the node's last word,
    and None for everything else (ids, comments, retry hints, the blank line between)."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""

    def feed(self, raw: bytes) -> tuple[str, Any] | None:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            data, event = self._data, self._event
            self._data, self._event = [], ""
            if not data:
                return None
            return ("stop" if event == "stop" else "change"), json.loads("\n".join(data))  # ValueError if not JSON
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


def watch_call_timeout(poll_s: float, call_s: float) -> float:
    """The budget of one watch call: the poll's wait on the node, which holds the request
    that long when nothing changes, and the client's usual budget on top to reach a node
    and fail over. The default budget alone would cut every quiet poll off as a timeout."""
    return max(0.0, float(poll_s)) + call_s


def members_path(stale: bool) -> str:
    return "/v1/members" + ("?consistency=stale" if stale else "")


def member_path(node_id: int, force: bool) -> str:
    return f"/v1/members/{_member_id(node_id)}" + ("?force=true" if force else "")


def member_body(node_id: int, address: str) -> dict[str, Any]:
    if not isinstance(address, str) or not address:
        raise ValueError(f"a member's address must be 'host:port', not {address!r}")
    return {"id": _member_id(node_id), "address": address}


def _member_id(node_id: int) -> int:
    if isinstance(node_id, bool) or not isinstance(node_id, int) or node_id < 1:
        raise ValueError(f"member ids are positive integers, not {node_id!r}")
    return node_id


def put_body(value: str, if_value: str | None, if_version: int | None,
             ttl: float | None = None, lease: int | None = None) -> dict[str, Any]:
    """PUT /v1/kv/KEY's body; a key on a lease has no ttl of its own (ValueError if both)."""
    body: dict[str, Any] = {"value": value}
    if if_value is not None:
        body["if_value"] = if_value
    if if_version is not None:
        body["if_version"] = int(if_version)
    if ttl is not None:
        body["ttl"] = ttl
    if lease is not None:
        if ttl is not None:
            raise ValueError("a key on a lease has no ttl of its own: it goes when its lease does")
        body["lease"] = lease_id_of(lease)
    return body


def refresh_body(ttl: float, if_value: str | None, if_version: int | None) -> dict[str, Any]:
    body = put_body("", if_value, if_version, ttl)
    del body["value"]
    body["refresh"] = True
    return body


def txn_body(compare: Any, then: Any, otherwise: Any) -> dict[str, Any]:
    """POST /v1/txn's body: comparisons ({"key", and "version", "value" or "exists", and
    optionally "cmp": "=", "!=", "<" or ">"}) and
    the two lists of writes ({"op": "put", "key", "value"[, "ttl" or "lease"]} or {"op": "delete", "key"})
    and gets ({"op": "get", "key"})."""
    return {"if": [dict(c) for c in compare], "then": [dict(w) for w in then], "else": [dict(w) for w in otherwise]}


def lease_id_of(lease_id: int) -> int:
    """A lease id as given to a client method; ValueError (before any request) if it is
    not an integer from 1 to LEASE_ID_MAX."""
    if isinstance(lease_id, bool) or not isinstance(lease_id, int) or not 0 < lease_id <= LEASE_ID_MAX:
        raise ValueError(f"lease ids are integers from 1 to {LEASE_ID_MAX}, not {lease_id!r}")
    return lease_id


def grant_body(ttl: float, lease_id: int | None) -> dict[str, Any]:
    """POST /v1/leases's body: the ttl in seconds, and the id asked for, if any."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise ValueError(f"a lease's ttl is a number of seconds, not {ttl!r}")
    body: dict[str, Any] = {"ttl": ttl}
    if lease_id is not None:
        body["id"] = lease_id_of(lease_id)
    return body


def lease_path(lease_id: int, keys: bool = False, stale: bool = False) -> str:
    query = {**({"keys": "true"} if keys else {}), **({"consistency": "stale"} if stale else {})}
    return f"/v1/leases/{lease_id_of(lease_id)}" + ("?" + urlencode(query) if query else "")


def keepalive_path(lease_id: int) -> str:
    return f"/v1/leases/{lease_id_of(lease_id)}/keepalive"


def leases_path(limit: int, after: int | None, stale: bool = False) -> str:
    """GET /v1/leases: up to `limit` leases with ids above `after`, in id order."""
    query: dict[str, Any] = {"limit": int(limit)}
    if after is not None:
        query["after"] = int(after)
    if stale:
        query["consistency"] = "stale"
    return "/v1/leases?" + urlencode(query)


def parse_retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date; not worth parsing for a hint


def retry_reason(where: str, status: int, doc: dict[str, Any]) -> str:
    """What a retryable answer (503, 504) said, for the error a client gives up with: the
    node, the status, the code and the node's message (which says why, e.g. no leader)."""
    message = doc.get("message")
    return (f"{where}: HTTP {status} {doc.get('error', '')}".rstrip()
            + (f": {message}" if isinstance(message, str) and message else ""))


def decode_body(raw: bytes) -> dict[str, Any]:
    """Parse a JSON object body; anything else becomes an error-shaped dict."""
    try:
        doc = json.loads(raw.decode("utf-8")) if raw else {}
    except (UnicodeDecodeError, ValueError):
        return {"error": "bad_response", "message": raw[:200].decode("utf-8", "replace")}
    return doc if isinstance(doc, dict) else {"error": "bad_response", "message": str(doc)[:200]}


class Attempts:
    """The retry policy of one call, without I/O so both clients share it and tests drive it.

    Yields endpoint indexes round robin from `start`, with no pause between nodes
    of one round and a growing, jittered pause after a whole round failed, until
    the deadline. It remembers whether a write might have been applied, which
    decides between Unavailable and OutcomeUnknown when the client gives up.
    """

    def __init__(self, n: int, start: int, timeout_s: float, write: bool,
                 clock: Callable[[], float] = time.monotonic, max_tries: int | None = None) -> None:
        self._n, self._next, self._write, self._clock = n, start % n, write, clock
        self._max_tries = max_tries
        self.deadline = clock() + timeout_s
        self.tries = 0
        self.maybe_applied = False
        self.last_error = "no attempt was made"
        self.last_status = 0
        self.last_refusal = ""  # the latest 503's reason: why the cluster would not take it
        self._retry_after = 0.0

    def remaining(self) -> float:
        return max(0.0, self.deadline - self._clock())

    def next(self) -> tuple[int, float] | None:
        """(endpoint index, seconds to sleep first), or None when time is up."""
        delay = 0.0
        if self.tries:
            if self.remaining() < 0.02 or self.tries == self._max_tries:
                return None
            if self.tries % self._n == 0:
                # A whole round failed: pause, longer each round, at least as long as a
                # Retry-After hint seen in the round, never past half the time left.
                rounds = self.tries // self._n
                delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (rounds - 1))
                delay = max(delay, min(self._retry_after, BACKOFF_MAX_S))
                delay = min(delay * random.uniform(0.8, 1.2), self.remaining() / 2)
                self._retry_after = 0.0
        index = self._next
        self._next = (index + 1) % self._n
        self.tries += 1
        return index, delay

    def failed(self, reason: str, sent: bool, status: int = 0,
               retry_after: float | None = None) -> None:
        """Record a failed try. `sent`: the node may have received and acted on it."""
        self.last_error, self.last_status = reason, status
        if status == 503:
            self.last_refusal = reason
        # A 503 is a refusal: the node did not take the write in.
        if self._write and sent and status != 503:
            self.maybe_applied = True
        if retry_after:
            self._retry_after = max(self._retry_after, retry_after)


class Sessions:
    """Hands out (client_id, seq) pairs so that one client_id never has two writes in flight.

    A server may keep only the highest seq seen per client; two concurrent writes
    of one client_id could then arrive out of order and the lower one be dropped
    as a duplicate. Concurrent writers therefore get their own derived client_id.
    """

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self._free: list[list[Any]] = [[client_id, 0]]
        self._made = 1
        self._lock = threading.Lock()

    def acquire(self) -> list[Any]:
        with self._lock:
            if self._free:
                session = self._free.pop()
            else:
                session = [f"{self.client_id}.{self._made}", 0]
                self._made += 1
            session[1] += 1
            return session

    def release(self, session: list[Any]) -> None:
        with self._lock:
            self._free.append(session)


def peer_ids(results: list[dict[str, Any]]) -> dict[str, int]:
    """Address -> node id, from the peers maps in status answers."""
    ids: dict[str, int] = {}
    for doc in results:
        for peer_id, peer in (doc.get("peers") or {}).items():
            if isinstance(peer, dict) and peer.get("address") and str(peer_id).isdigit():
                ids[str(peer["address"])] = int(peer_id)
    return ids


def unprobed_peers(endpoints: list[str], results: list[dict[str, Any]]) -> list[str]:
    """Peers named in status answers that are not among the endpoints, so a report
    made through one node (kv --server 2 status) still covers the whole cluster."""
    known = {urlsplit(url).netloc for url in endpoints}
    extra: list[str] = []
    for addr in peer_ids(results):
        if addr not in known:
            try:
                extra.append(normalize_endpoint(addr))
            except ValueError:
                continue  # a peer address we cannot dial is not worth failing the report for
    return extra


def merge_cluster_status(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per node, sorted by id, entries of unknown id last.

    Down nodes get their id from the peers maps of the live ones when possible,
    so `kv status` can name a crashed node.
    """
    ids = peer_ids(results)
    for doc in results:
        if doc.get("id") is None and doc.get("address") in ids:
            doc["id"] = ids[doc["address"]]
    # One node reached under two names (say localhost and 127.0.0.1) is listed once,
    # preferring an answer that says it is up.
    by_id: dict[int, dict[str, Any]] = {}
    unnamed: list[dict[str, Any]] = []
    for doc in results:
        node_id = doc.get("id")
        if not isinstance(node_id, int):
            unnamed.append(doc)
        elif node_id not in by_id or (doc.get("up") and not by_id[node_id].get("up")):
            by_id[node_id] = doc
    return [by_id[i] for i in sorted(by_id)] + unnamed
