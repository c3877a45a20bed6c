"""Client for a kvpaxos cluster: typed errors and the synchronous Client.

Any node accepts any request, so the client needs no leader discovery: it sends
to the node that last answered and, when a node is down, overloaded (503) or
times out (504), moves round robin to the next one until the call's deadline.
Writes start at the leader when an answer has named it (the X-Kv-Leader header)
and it is one of the client's endpoints, which spares them the hop from a
follower to the leader and back; a leader the client could not connect to, or
a node that took a call and did not answer in its time, is left alone for a few
seconds. A client of one endpoint stays on it.

Writes carry (client_id, seq). A retry of one write reuses its seq, so the
cluster applies it at most once even if the first attempt was applied and only
the answer was lost; that is what makes failover of writes safe.

`AsyncClient` (aiohttp) lives in kvpaxos.aioclient and is re-exported here
lazily, so that the synchronous client and the CLI stay stdlib only and start fast.
The retry policy both share is in kvpaxos.client_support.
"""
from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urlsplit

from kvpaxos.client_support import (
    LEADER_HEADER, RETRY_STATUSES, Attempts, Sessions, decode_body, kv_path, LeaderHint, list_path,
    member_body, member_path, members_path, merge_cluster_status, normalize_endpoint, parse_endpoints,
    parse_retry_after, put_body, refresh_body, retry_reason, txn_body, unprobed_peers, watch_call_timeout, watch_path,
    count_path, delete_prefix_path, EventStream, STREAM_SILENCE_S, stream_backoff, watch_stream_path,
    grant_body, keepalive_path, lease_path, leases_path,
)

__all__ = [
    "KvError", "NotFound", "PreconditionFailed", "Unavailable", "OutcomeUnknown",
    "BadRequest", "Unauthorized", "Conflict", "Compacted", "Entry", "Event", "TxnResult", "LeaseInfo", "Client",
    "AsyncClient", "parse_endpoints", "normalize_endpoint",
]

# A blackholed host must not eat the whole budget of a call; connecting on a
# LAN or loopback takes far less than this.
CONNECT_TIMEOUT_S = 1.0
# How long `cluster_status` waits for each node: a down node should not stall `kv status`.
PROBE_TIMEOUT_S = 1.0
# add_member(wait=True): how long to wait for the new node to catch up and become a voter,
# and how often to look.
WAIT_VOTER_S = 60.0
WAIT_POLL_S = 0.2


class KvError(Exception):
    """Base of every error the client raises. `status` is 0 when no HTTP answer was had."""

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class NotFound(KvError):
    """The key does not exist (404); or, with code lease_not_found, the lease named (it was
    never granted, was revoked, or ran out)."""


class PreconditionFailed(KvError):
    """A compare-and-set condition did not hold (412)."""


class Unavailable(KvError):
    """No node could serve the call before the deadline; a write was certainly not applied."""


class OutcomeUnknown(KvError):
    """A write may or may not have been applied (504, or the connection dropped after sending)."""


class BadRequest(KvError):
    """The request was rejected as malformed or too large (400, 413)."""


class Unauthorized(KvError):
    """The node wants a (different) bearer token: pass token= / --token / KV_TOKEN (401, 403)."""


class Conflict(KvError):
    """The cluster refused a membership change or a lease write (409); `code` says why:
    change_in_progress, id_reused, already_member, address_in_use, last_voter,
    would_lose_quorum (membership); lease_exists (a grant's id exists, existed, or is not
    above every id granted before), lease_full (the lease holds 10,000 keys), key_has_lease
    (a refresh of a key that goes with its lease), lease_ids_exhausted (leases)."""


class Compacted(KvError):
    """A watch asked for changes from a revision the node no longer holds (410). `oldest` is
    the oldest revision it holds, `revision` its latest: read the keys again (a list) and
    watch from the revision after that read."""

    def __init__(self, code: str, message: str, status: int = 0, oldest: int = 0,
                 revision: int = 0) -> None:
        super().__init__(code, message, status)
        self.oldest = oldest
        self.revision = revision


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: str | None  # None in a list made with keys_only
    version: int
    ttl: float | None = None  # seconds until the key expires (by the node's clock), if it was put with a ttl
    lease: int | None = None  # the lease the key goes with, if it was put with one


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A lease as a node knows it: its id, its time to live (what each keepalive gives it
    again), the seconds left by that node's clock, and its keys: their number, or the
    sorted keys themselves (lease_info(..., keys=True))."""
    id: int
    ttl: float
    ttl_left: float
    keys: int | list[str]


@dataclass(frozen=True, slots=True)
class Event:
    """One change a watch saw: a put (value is the new value; revision is the key's new
    version) or a delete (value None)."""
    revision: int
    type: str  # "put" or "delete"
    key: str
    value: str | None


@dataclass(frozen=True, slots=True)
class TxnResult:
    """What a transaction did: whether every comparison held (then `then` ran, else
    `otherwise`), the store's revision as of that step, the version each compared key
    had then (0: absent), and one result per write that ran: {"op", "key", "ok", and
    "version" or "error"} (a delete of a missing key: ok False, error not_found); a
    get's has the "value" too."""
    succeeded: bool
    revision: int
    versions: dict[str, int]
    results: list[dict[str, Any]]


def txn_result_from(doc: dict[str, Any]) -> TxnResult:
    return TxnResult(bool(doc.get("succeeded")), int(doc.get("revision", 0)),
                     {c["key"]: int(c["version"]) for c in doc.get("compared", [])}, list(doc.get("results", [])))


def raise_for_status(status: int, doc: dict[str, Any]) -> dict[str, Any]:
    """Return the document of a 2xx answer; raise the typed error of any other."""
    if 200 <= status < 300:
        return doc
    code = str(doc.get("error") or f"http_{status}")
    message = str(doc.get("message") or code)
    if status == 404:
        raise NotFound(code, message, status)
    if status == 412:
        raise PreconditionFailed(code, message, status)
    if status == 409:
        raise Conflict(code, message, status)
    if status in (401, 403):
        raise Unauthorized(code, message, status)
    if status in (400, 413):
        raise BadRequest(code, message, status)
    if status == 410 and code == "compacted":
        raise Compacted(code, message, status, _int_field(doc, "oldest"), _int_field(doc, "revision"))
    if status == 503:
        raise Unavailable(code, message, status)
    if status == 504:
        raise OutcomeUnknown(code, message, status)
    raise KvError(code, message, status)


def entry_from(doc: dict[str, Any], keys_only: bool = False) -> Entry:
    """An entry of an answer (value None for a list made with keys_only)."""
    try:
        ttl, lease = doc.get("ttl"), doc.get("lease")
        value = None if keys_only else doc["value"]
        return Entry(str(doc["key"]), value, int(doc["version"]), None if ttl is None else float(ttl),
                     None if lease is None else int(lease))
    except (KeyError, TypeError, ValueError):
        raise KvError("bad_response", f"malformed entry in response: {doc!r:.200}") from None


def lease_info_from(doc: dict[str, Any]) -> LeaseInfo:
    """A lease of a GET /v1/leases[/ID] answer."""
    try:
        keys = doc["keys"]
        keys = [str(k) for k in keys] if isinstance(keys, list) else int(keys)
        return LeaseInfo(int(doc["id"]), float(doc["ttl"]), float(doc["ttl_left"]), keys)
    except (KeyError, TypeError, ValueError):
        raise KvError("bad_response", f"malformed lease in response: {doc!r:.200}") from None


def _int_field(doc: dict[str, Any], name: str) -> int:
    value = doc.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def event_from(doc: Any) -> Event:
    try:
        kind = doc["type"]
        if kind not in ("put", "delete"):
            raise ValueError(kind)
        value = doc["value"] if kind == "put" else None
        if kind == "put" and not isinstance(value, str):
            raise TypeError(value)
        return Event(int(doc["revision"]), kind, str(doc["key"]), value)
    except (KeyError, TypeError, ValueError):
        raise KvError("bad_response", f"malformed event in response: {doc!r:.200}") from None


def watch_page_from(doc: dict[str, Any]) -> tuple[list[Event], int]:
    """The events of a /v1/watch answer and the revision to watch from next."""
    events = doc.get("events")
    next_revision = doc.get("next")
    if not isinstance(events, list) or not isinstance(next_revision, int) or isinstance(next_revision, bool):
        raise KvError("bad_response", f"malformed watch response: {doc!r:.200}")
    return [event_from(item) for item in events], next_revision


def after_compacted(refused: list[Compacted], exc: Compacted, answered: int, endpoints: int) -> int:
    """A node answered compacted to a watch: the endpoint to ask next, or the refusal
    that names the oldest revision any node held once every endpoint has refused."""
    refused.append(exc)
    if len(refused) >= endpoints:
        raise min(refused, key=lambda e: e.oldest)
    return (answered + 1) % endpoints


class WatchReader(EventStream):
    """A watch stream's lines read as Events: take(line) is the Event the line completes,
    or None; `stop` holds the node's last word (its error document) once it came."""

    def __init__(self) -> None:
        super().__init__()
        self.stop: dict[str, Any] | None = None

    def take(self, raw: bytes) -> Event | None:
        got = self.feed(raw)
        if got is None:
            return None
        kind, doc = got
        if kind == "stop":
            self.stop = doc
            return None
        return event_from(doc)


def after_stream(stop: dict[str, Any] | None, refused: list[Compacted], answered: int, endpoints: int) -> int:
    """A watch stream from endpoint `answered` ended, with the node's stop document if it
    sent one: the endpoint to open the next at (after_compacted's, for a compacted stop;
    else the next one round)."""
    if stop is not None and stop.get("error") == "compacted":
        exc = Compacted("compacted", str(stop.get("message", "compacted")), 410,
                        _int_field(stop, "oldest"), _int_field(stop, "revision"))
        return after_compacted(refused, exc, answered, endpoints)
    return (answered + 1) % endpoints


def voter_yet(doc: dict[str, Any], node_id: int, deadline: float, waited_s: float) -> bool:
    """For add_member(wait=True): whether a /v1/members document shows node_id as a voter
    whose promotion is in effect; NotFound if it is no longer a member, OutcomeUnknown once
    the monotonic clock passes deadline."""
    pending = doc.get("pending")
    if node_id in doc.get("voters", ()) and not (
            isinstance(pending, dict) and pending.get("what") == f"promote {node_id}"):
        return True
    if node_id not in doc.get("learners", ()) and node_id not in doc.get("voters", ()):
        raise NotFound("not_a_member", f"node {node_id} is no longer a member", 404)
    if time.monotonic() >= deadline:
        raise OutcomeUnknown("timeout", f"node {node_id} is a learner but not a voter after {waited_s:g} s "
                             "(the leader promotes it once it has caught up: is it running?)")
    return False


def give_up(attempts: Attempts) -> KvError:
    """The error for a call whose every attempt failed: the last error, and the last
    refusal before it if that was another (a timeout at the end says less than the 503
    that said why no leader could be found)."""
    errors = attempts.last_error
    if attempts.last_refusal and attempts.last_refusal != attempts.last_error:
        errors += f"; before that: {attempts.last_refusal}"
    if attempts.maybe_applied:
        return OutcomeUnknown("outcome_unknown", "the write may or may not have been applied "
                              f"(last error: {errors})", attempts.last_status)
    return Unavailable("unavailable", f"no node could serve the request (last error: {errors})",
                       attempts.last_status)


class _ConnectError(Exception):
    """Could not open a connection: the request certainly never left."""


class Client:
    """Synchronous client with one keep-alive connection per endpoint.

    Not for use from several threads at once; give each thread its own Client.
    Sequence numbers start at 1 for each instance and the cluster remembers the
    last one per client_id, so a client_id passed in must not have been used before.
    `token` is sent as `Authorization: Bearer <token>`; `ca_file` verifies https://
    endpoints (default: the system's CAs).
    """

    def __init__(self, endpoints: list[str] | str, timeout_s: float = 5.0,
                 client_id: str | None = None, token: str | None = None,
                 ca_file: str | None = None) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.timeout_s = float(timeout_s)
        self._sessions = Sessions(client_id or uuid.uuid4().hex)
        self._preferred = 0  # calls start at the node that last answered ...
        self._leader = LeaderHint(self.endpoints)  # ... writes at the leader answers name
        self._conns: dict[int, http.client.HTTPConnection] = {}
        self._streams: set[http.client.HTTPConnection] = set()  # watch streams open
        self._closed = False
        self.token, self.ca_file = token, ca_file
        self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else None

    @property
    def client_id(self) -> str:
        return self._sessions.client_id

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's connections. It may be called from another thread than the one
        using the client, to end a watch there: it ends (StopIteration) once its poll in
        flight returns, instead of polling again."""
        self._closed = True
        conns, self._conns = self._conns, {}
        for conn in list(conns.values()):
            conn.close()
        for conn in list(self._streams):  # wakes a thread blocked reading one, which closes it
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    # -- key-value operations --

    def get(self, key: str, stale: bool = False) -> Entry:
        path = kv_path(key) + ("?consistency=stale" if stale else "")
        return entry_from(self._call("GET", path))

    def put(self, key: str, value: str, if_value: str | None = None,
            if_version: int | None = None, ttl: float | None = None, lease: int | None = None) -> int:
        """Set key to value (if the condition holds); with ttl, the key expires ttl
        seconds later (by the cluster's clock) unless put or refreshed again; with lease
        (not with ttl), it goes when that lease does (NotFound lease_not_found if there is
        no such lease; Conflict lease_full). A put without a lease takes the key off its lease."""
        doc = self._write("PUT", kv_path(key), put_body(value, if_value, if_version, ttl, lease))
        return int(doc.get("version", 0))

    def refresh(self, key: str, ttl: float, if_value: str | None = None,
                if_version: int | None = None) -> int:
        """Give key a new time to live (ttl seconds from now, by the cluster's clock),
        keeping its value and version: no change for watches. NotFound if it does not
        exist. Returns its version."""
        doc = self._write("PUT", kv_path(key), refresh_body(ttl, if_value, if_version))
        return int(doc.get("version", 0))

    def cas(self, key: str, old: str, new: str) -> int:
        return self.put(key, new, if_value=old)

    def txn(self, compare: Any = (), then: Any = (), otherwise: Any = ()) -> TxnResult:
        """Compare keys, then apply the writes of `then` if every comparison holds, else
        those of `otherwise`, atomically (POST /v1/txn):

            kv.txn(compare=[{"key": "a", "version": 3}, {"key": "b", "exists": False}],
                   then=[{"op": "put", "key": "b", "value": "x"}, {"op": "delete", "key": "a"}])

        A branch may also read: {"op": "get", "key": "a"} gets a as the writes before it left it.
        A comparison is equality unless its "cmp" says "!=", "<" or ">":
        {"key": "a", "version": 10, "cmp": "<"} holds while a is unchanged since revision 9.
        """
        return txn_result_from(self._write("POST", "/v1/txn", txn_body(compare, then, otherwise)))

    def lock(self, key: str, ttl_s: float = 10.0, timeout_s: float | None = None,
             owner: str | None = None) -> Any:
        """A lock held through `key` (kvpaxos/lock.py): `with kv.lock("locks/x") as lock:`
        waits until it is this client's (LockTimeout after timeout_s), keeps it while the
        block runs (refreshing the key from a thread), and releases it; `lock.token` is a
        fencing token, `lock.held` False once it was lost."""
        from kvpaxos.lock import Lock
        return Lock(self, key, ttl_s, timeout_s, owner)

    def delete(self, key: str, if_version: int | None = None) -> None:
        body = {} if if_version is None else {"if_version": int(if_version)}
        self._write("DELETE", kv_path(key), body)

    # -- leases --

    def grant(self, ttl: float, lease_id: int | None = None) -> int:
        """A new lease of ttl seconds (above 0, at most a year): its id, `lease_id` if
        given (Conflict lease_exists if that id exists, existed, or is not above every id
        granted before). It ends, deleting its keys, ttl seconds after the grant or the
        last keepalive by the cluster's clock, or when revoked."""
        return int(self._write("POST", "/v1/leases", grant_body(ttl, lease_id))["id"])

    def keepalive(self, lease_id: int) -> float:
        """Start the lease's time to live again from now; its ttl. NotFound (lease_not_found)
        once it has ended."""
        return float(self._write("POST", keepalive_path(lease_id), {})["ttl"])

    def revoke(self, lease_id: int) -> int:
        """End the lease now, deleting its keys in one step (a watch sees one delete each);
        how many keys it deleted. NotFound (lease_not_found) if it had ended already."""
        return int(self._write("DELETE", lease_path(lease_id), {}).get("deleted", 0))

    def lease_info(self, lease_id: int, keys: bool = False, stale: bool = False) -> LeaseInfo:
        """The lease's ttl, the seconds it has left, and its number of keys (with keys: the
        sorted keys). A linearizable read unless `stale`; NotFound (lease_not_found)."""
        return lease_info_from(self._call("GET", lease_path(lease_id, keys, stale)))

    def leases(self, page: int = 1000, stale: bool = False) -> list[LeaseInfo]:
        """Every lease, in id order, fetched `page` at a time (each page a read of its own)."""
        found: list[LeaseInfo] = []
        while True:
            doc = self._call("GET", leases_path(page, found[-1].id if found else None, stale))
            found += [lease_info_from(item) for item in doc.get("leases", [])]
            if not doc.get("more") or not doc.get("leases"):
                return found

    def lease(self, ttl: float, lease_id: int | None = None) -> Any:
        """A lease kept alive while a block runs (kvpaxos/lease.py):
        `with kv.lease(10) as lease: kv.put("k", "v", lease=lease.id)` grants it, keeps it
        alive from a thread every ttl/3, and revokes it at the end (its keys go with it);
        `lease.alive` is False once it was lost."""
        from kvpaxos.lease import Lease
        return Lease(self, ttl, lease_id)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key that starts with prefix ("" for every key); how many. In rounds
        of up to 250 keys, each all or nothing; after a failure, call again for the rest."""
        return int(self._call("DELETE", delete_prefix_path(prefix)).get("deleted", 0))

    def list(self, prefix: str = "", limit: int = 1000, after: str | None = None) -> list[Entry]:
        return self.list_page(prefix, limit, after)[0]

    def list_page(self, prefix: str = "", limit: int = 1000, after: str | None = None,
                  keys_only: bool = False) -> tuple[list[Entry], bool]:
        """Entries in key order (after `after`, if given), and whether more matched than
        `limit`: the next page is list_page(prefix, limit, after=<the last key>). With
        keys_only, their keys and versions (value None)."""
        doc = self._call("GET", list_path(prefix, limit, after, keys_only))
        return [entry_from(item, keys_only) for item in doc.get("items", [])], bool(doc.get("more"))

    def count(self, prefix: str = "") -> int:
        """How many keys start with prefix ("" for every key): a linearizable read."""
        return _int_field(self._call("GET", count_path(prefix)), "count")

    def iter_keys(self, prefix: str = "", page: int = 1000, after: str | None = None,
                  keys_only: bool = False) -> Iterator[Entry]:
        """Every entry under prefix (after `after`, if given), in key order, fetched `page`
        at a time. Each page is a linearizable read of its own: a key written between two
        pages shows up if it sorts after the page already read."""
        while True:
            entries, more = self.list_page(prefix, page, after, keys_only)
            yield from entries
            if not more or not entries:
                return
            after = entries[-1].key

    def watch_page(self, key: str | None = None, prefix: str | None = None,
                   from_revision: int | None = None, timeout_s: float = 30.0,
                   limit: int = 1000) -> tuple[list[Event], int]:
        """The changes to `key`, or to the keys under `prefix` ("" for every key), from
        revision `from_revision` on (without it, from just after a linearizable read),
        waiting up to timeout_s for one; and the revision to pass as from_revision next.
        No events: nothing changed meanwhile. Compacted if no node asked still holds
        from_revision (each node keeps its own latest changes: one that restarted holds
        fewer than the others, so the others are asked too). Exactly one of key and
        prefix, else ValueError."""
        path = watch_path(key, prefix, from_revision, timeout_s, limit)
        refused: list[Compacted] = []
        while True:
            try:
                return watch_page_from(self._call("GET", path,
                                                  timeout_s=watch_call_timeout(timeout_s, self.timeout_s)))
            except Compacted as exc:
                self._preferred = after_compacted(refused, exc, self._preferred, len(self.endpoints))

    def watch(self, key: str | None = None, prefix: str | None = None, from_revision: int | None = None,
              timeout_s: float = 30.0, stream: bool = True) -> Iterator[Event]:
        """Every change to `key` or under `prefix` from revision `from_revision` on (without
        it, from a linearizable read made when the first event is asked for), in revision
        order, each once, for ever, on whichever node answers (every node gives a change the
        same revision): as a stream of server-sent events, which goes on from the revision
        after its last event through another node when its node stops, goes quiet for
        STREAM_SILENCE_S or loses its leader; or (stream=False) long polls of timeout_s, each
        from the `next` of the one before. Raises Compacted when the history no longer
        holds the revision to go on from, and Unavailable (as any read) when no node
        answers within the client's budget (a poll's, for long polls)."""
        watch_path(key, prefix, from_revision, timeout_s, 1)  # a bad call fails here, not at the first next()
        if stream:
            return self._stream(key, prefix, from_revision)
        return self._follow(key, prefix, from_revision, timeout_s)

    def _stream(self, key: str | None, prefix: str | None, from_revision: int | None) -> Iterator[Event]:
        if from_revision is None:  # pinned as for long polls (see _follow)
            events, from_revision = self.watch_page(key, prefix, None, 0.0)
            yield from events
        refused: list[Compacted] = []
        idle_ends = 0  # streams in a row that ended without an event
        while not self._closed:
            if idle_ends:
                time.sleep(stream_backoff(idle_ends))  # nodes stopping one after the other: no spin
            try:
                conn, response = self._open_stream(watch_stream_path(key, prefix, from_revision))
            except Compacted as exc:
                self._preferred = after_compacted(refused, exc, self._preferred, len(self.endpoints))
                continue
            except KvError:
                if self._closed:
                    return  # closed from another thread while it looked for a node
                raise
            reader = WatchReader()
            idle_ends += 1
            try:
                while reader.stop is None and not self._closed:
                    line = response.readline()
                    if not line:
                        break  # the node closed it: go on elsewhere
                    event = reader.take(line)
                    if event is None:
                        continue
                    from_revision = event.revision + 1
                    refused.clear()
                    idle_ends = 0
                    yield event
            except (OSError, http.client.HTTPException, ValueError):
                pass  # cut off, silent for STREAM_SILENCE_S, or garbled: go on elsewhere
            finally:
                self._streams.discard(conn)
                conn.close()
            self._preferred = after_stream(reader.stop, refused, self._preferred, len(self.endpoints))

    def _open_stream(self, path: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A watch stream from the first node that starts one, on a connection of its own."""
        attempts = Attempts(len(self.endpoints), self._preferred, self.timeout_s, False)
        headers = {"Accept": "text/event-stream", **({"Authorization": f"Bearer {self.token}"} if self.token else {})}
        while (step := attempts.next()) is not None:
            index, delay = step
            time.sleep(delay)
            if self._closed:
                raise KvError("closed", "the client was closed")
            conn = self._new_connection(index, attempts.remaining())
            try:
                conn.connect()
            except OSError as exc:
                conn.close()
                attempts.failed(f"{self.endpoints[index]}: {exc or type(exc).__name__}", sent=False)
                continue
            self._streams.add(conn)
            try:
                conn.sock.settimeout(STREAM_SILENCE_S)
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                if response.status == 200:
                    self._preferred = index
                    return conn, response
                status, doc = response.status, decode_body(response.read())
            except (OSError, http.client.HTTPException) as exc:
                status, doc = 0, {}
                attempts.failed(f"{self.endpoints[index]}: {exc or type(exc).__name__}", sent=True)
            self._streams.discard(conn)
            conn.close()
            if status == 0:
                continue
            if status in RETRY_STATUSES:
                attempts.failed(retry_reason(self.endpoints[index], status, doc), sent=True, status=status)
                continue
            raise_for_status(status, doc)
        raise give_up(attempts)

    def _follow(self, key: str | None, prefix: str | None, from_revision: int | None,
                timeout_s: float) -> Iterator[Event]:
        if from_revision is None:
            # Pin the start with a poll that does not wait. A long poll without `from` that
            # failed over to another node would start again at that node's "now" and skip
            # the changes made while the first node held it.
            events, from_revision = self.watch_page(key, prefix, None, 0.0)
            yield from events
        while not self._closed:
            try:
                events, from_revision = self.watch_page(key, prefix, from_revision, timeout_s)
            except KvError:
                if self._closed:
                    return  # closed from another thread while the poll waited
                raise
            yield from events

    def status(self, endpoint: str | None = None) -> dict[str, Any]:
        """Status of one node: the given endpoint (no failover), else any node."""
        if endpoint is None:
            return self._call("GET", "/v1/status")
        return self._status_of(endpoint, self.timeout_s)

    def _status_of(self, endpoint: str, timeout_s: float, once: bool = False) -> dict[str, Any]:
        one = Client([endpoint], timeout_s=timeout_s, token=self.token)
        one.ca_file, one._ssl = self.ca_file, self._ssl
        try:
            return one._call("GET", "/v1/status", max_tries=1 if once else None)
        finally:
            one.close()

    def cluster_status(self) -> list[dict[str, Any]]:
        """Status of every endpoint and of every peer they name; unreachable ones as up=False."""
        def probe(url: str) -> dict[str, Any]:
            try:
                # One try: a refused connection already says "down".
                doc = self._status_of(url, min(self.timeout_s, PROBE_TIMEOUT_S), once=True)
                return {**doc, "up": True}
            except KvError:
                return {"address": urlsplit(url).netloc, "up": False}

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(probe, self.endpoints))
            results += pool.map(probe, unprobed_peers(self.endpoints, results))
        return merge_cluster_status(results)

    # -- membership --

    def members(self, stale: bool = False) -> dict[str, Any]:
        """The configuration: members with their roles, the pending change and the history
        (the /v1/members document). Linearizable unless `stale`."""
        return self._call("GET", members_path(stale))

    def add_member(self, node_id: int, address: str, wait: bool = False,
                   wait_timeout_s: float = WAIT_VOTER_S) -> dict[str, Any]:
        """Add node_id at address ("host:port") as a learner; with `wait`, return only once
        it is a voter (the leader promotes it when it has caught up), else raise
        OutcomeUnknown after wait_timeout_s. Adding a member again at the same address
        succeeds. Returns the /v1/members document."""
        doc = self._member_change("POST", "/v1/members", member_body(node_id, address))
        if not wait:
            return doc
        deadline = time.monotonic() + wait_timeout_s
        while not voter_yet(doc, node_id, deadline, wait_timeout_s):
            time.sleep(WAIT_POLL_S)
            doc = self.members()
        return doc

    def remove_member(self, node_id: int, force: bool = False) -> dict[str, Any]:
        """Remove node_id for good (its id is never accepted again). Refused with Conflict
        (would_lose_quorum) if a majority of the remaining voters does not answer now,
        unless `force`. Removing a removed node again succeeds."""
        return self._member_change("DELETE", member_path(node_id, force))

    def _member_change(self, method: str, path: str,
                       body: dict[str, Any] | None = None) -> dict[str, Any]:
        """A membership call, tried again while another change is still taking effect."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return self._call(method, path, body, timeout_s=max(0.05, deadline - time.monotonic()))
            except Conflict as exc:
                if exc.code != "change_in_progress" or deadline - time.monotonic() < 2 * WAIT_POLL_S:
                    raise
            time.sleep(WAIT_POLL_S)

    # -- transport --

    def _write(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        session = self._sessions.acquire()
        try:
            return self._call(method, path, {**body, "client_id": session[0], "seq": session[1]})
        finally:
            self._sessions.release(session)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              max_tries: int | None = None, timeout_s: float | None = None) -> dict[str, Any]:
        write = method != "GET"
        start = self._leader.index if write and self._leader.index is not None else self._preferred
        attempts = Attempts(len(self.endpoints), start, timeout_s or self.timeout_s, write,
                            max_tries=max_tries)
        payload = None if body is None else json.dumps(body).encode("utf-8")
        while (step := attempts.next()) is not None:
            index, delay = step
            time.sleep(delay)
            if self._closed:
                raise KvError("closed", "the client was closed")
            try:
                status, retry_after, doc, leader = self._send(index, method, path, payload,
                                                              attempts.remaining())
            except _ConnectError as exc:
                attempts.failed(f"{self.endpoints[index]}: {exc}", sent=False)
                self._leader.unreachable(index)
                continue
            except (OSError, http.client.HTTPException) as exc:
                attempts.failed(f"{self.endpoints[index]}: {exc or type(exc).__name__}", sent=True)
                if isinstance(exc, TimeoutError):
                    self._preferred = self._leader.silent(index, self._preferred)
                continue
            self._leader.heard(leader)
            if status in RETRY_STATUSES:
                attempts.failed(retry_reason(self.endpoints[index], status, doc), sent=True, status=status,
                                retry_after=retry_after)
                continue
            self._preferred = index
            return raise_for_status(status, doc)
        raise give_up(attempts)

    def _send(self, index: int, method: str, path: str, payload: bytes | None,
              timeout_s: float) -> tuple[int, float | None, dict[str, Any], str | None]:
        conn = self._connection(index, timeout_s)
        conn.sock.settimeout(max(timeout_s, 0.01))
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except BaseException:
            self._drop(index)
            raise
        if response.will_close:
            self._drop(index)
        return (response.status, parse_retry_after(response.getheader("Retry-After")), decode_body(raw),
                response.getheader(LEADER_HEADER))

    def _connection(self, index: int, timeout_s: float) -> http.client.HTTPConnection:
        conn = self._conns.get(index)
        if conn is not None and conn.sock is not None and _peer_closed(conn.sock):
            # The node closed an idle keep-alive connection (or restarted); sending on it
            # would fail after the fact and make a write look possibly applied.
            self._drop(index)
            conn = None
        if conn is None or conn.sock is None:
            conn = self._new_connection(index, timeout_s)
            try:
                conn.connect()
            except OSError as exc:
                conn.close()
                raise _ConnectError(str(exc) or type(exc).__name__) from exc
            self._conns[index] = conn
        return conn

    def _new_connection(self, index: int, timeout_s: float) -> http.client.HTTPConnection:
        """An unconnected connection to endpoint index (connecting takes at most timeout_s)."""
        parts = urlsplit(self.endpoints[index])
        timeout = min(CONNECT_TIMEOUT_S, max(timeout_s, 0.01))
        if parts.scheme == "https":
            return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def _drop(self, index: int) -> None:
        conn = self._conns.pop(index, None)
        if conn is not None:
            conn.close()


def _peer_closed(sock: Any) -> bool:
    """True if an idle connection is readable: the peer closed it (or sent junk)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def __getattr__(name: str) -> Any:
    if name == "AsyncClient":
        from kvpaxos.aioclient import AsyncClient
        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
