"""Record a concurrent history of reads, writes, compare-and-sets and deletes
against a live kvpaxos cluster, for the linearizability checker.

N workers (asyncio tasks, one aiohttp session each) each keep one request in
flight, each request to a node picked at random. Keys come from a small set
that is replaced every `rotate_s` seconds, so every key's history stays short
enough to check exhaustively. Every written value is unique, and every write,
cas and delete carries the worker's client_id and a fresh seq, so the node's own
retries apply it at most once.

How a response becomes an outcome (see Op in linearizability.py):

  request                        read               write / cas / delete
  200                            ok (value)         ok (cas: swapped; delete: deleted)
  404 not_found                  ok (None: absent)  delete: ok, found nothing
  412 precondition_failed        -                  cas: ok, precondition failed
  503 no_quorum                  failed             failed: the API promises it was not applied
  504 timeout                    unknown            unknown: may have been applied
  connection refused, or the     failed             failed: nothing was sent
    connect timed out
  no answer within               unknown            unknown
    request_timeout_s, reset,
    disconnect, bad body
  any other status (400, 500)    failed             unknown, and counted as unexpected

Reads change nothing, so a read without an answer ("unknown") says as little as
a failed one; the checker drops both. One operation is exactly one HTTP
request: connections are never reused (force_close) and aiohttp's own resend
of PUT and DELETE after a broken connection is switched off (see
one_request_per_call), so "refused" really means "never sent".
"""
from __future__ import annotations

import asyncio
import errno
import itertools
import random
import time
import urllib.parse
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import aiohttp

from .linearizability import CAS, DELETE, FAILED, INF, OK, READ, UNKNOWN, WRITE, Op

KINDS = (READ, WRITE, CAS, DELETE)


def one_request_per_call(session: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """Stop aiohttp from resending PUT and DELETE by itself.

    aiohttp (3.10 and later, up to at least 3.14) resends an "idempotent"
    request (GET, PUT, DELETE, ...) once on a new connection when the first
    connection breaks with a ClientOSError or ServerDisconnectedError, even
    with force_close, and then raises only the second attempt's error. If the
    node died after applying the first attempt, the second is refused, and a
    write that took effect looks like one that was never sent. The switch is
    private; aiohttp's own test client turns it off the same way.
    """
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session


@dataclass
class Workload:
    workers: int = 8
    keys_at_once: int = 3
    rotate_s: float = 4.0  # a fresh set of keys this often
    mix: dict[str, float] = field(default_factory=lambda: {READ: 0.45, WRITE: 0.3, CAS: 0.2, DELETE: 0.05})
    request_timeout_s: float = 7.0  # longer than a node's own 5 s, so its 504 arrives first
    # Every other worker gives up sooner, so a paused node cannot hold every
    # client at once and the others keep the healthy nodes busy.
    impatient_timeout_s: float | None = 1.5
    connect_timeout_s: float = 1.0
    think_s: float = 0.005  # each worker pauses up to this long between operations
    key_prefix: str = "lin"


class Recorder:
    def __init__(self, urls: Sequence[str], workload: Workload | None = None, seed: int = 0,
                 run_id: str | None = None) -> None:
        if not urls:
            raise ValueError("no node urls")
        self.urls = list(urls)
        self.workload = workload or Workload()
        self.seed = seed
        self.run_id = run_id or f"r{seed}"
        self.ops: list[Op] = []
        self.unexpected: Counter[str] = Counter()
        self.keys_used: list[str] = []  # every key handed out so far, in order
        self._key_set: set[str] = set()
        self.t0 = time.monotonic()
        self._ids = itertools.count()
        self._recent: dict[str, list[str]] = defaultdict(list)  # values seen per key, newest last
        self._stopping = False

    # -- keys -----------------------------------------------------------------------

    def keys_at(self, t: float) -> list[str]:
        group = int(max(0.0, t - self.t0) / self.workload.rotate_s)
        keys = [f"{self.workload.key_prefix}{group}-{i}" for i in range(self.workload.keys_at_once)]
        if keys[0] not in self._key_set:
            self._key_set.update(keys)
            self.keys_used += keys
        return keys

    # -- running ----------------------------------------------------------------------

    async def run(self, duration_s: float) -> list[Op]:
        """Run the workers for duration_s (each finishes its op in flight); the ops so far."""
        self.t0 = time.monotonic()
        deadline = self.t0 + duration_s
        await asyncio.gather(*(self._worker(w, deadline) for w in range(self.workload.workers)))
        return self.history()

    def stop(self) -> None:
        """Let every worker finish the op it has in flight and stop."""
        self._stopping = True

    def history(self) -> list[Op]:
        return sorted(self.ops, key=lambda o: o.id)

    def session(self, timeout_s: float | None = None) -> aiohttp.ClientSession:
        wl = self.workload
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0),
            timeout=aiohttp.ClientTimeout(total=timeout_s or wl.request_timeout_s,
                                          sock_connect=wl.connect_timeout_s))
        return one_request_per_call(session)

    async def _worker(self, w: int, deadline: float) -> None:
        rng = random.Random(f"{self.seed}-{w}")
        kinds, weights = zip(*self.workload.mix.items())
        seq = itertools.count(1)
        values = itertools.count(1)
        impatient = w % 2 == 1 and self.workload.impatient_timeout_s
        async with self.session(self.workload.impatient_timeout_s if impatient else None) as session:
            while not self._stopping and (now := time.monotonic()) < deadline:
                key = rng.choice(self.keys_at(now))
                kind = rng.choices(kinds, weights)[0]
                url = rng.choice(self.urls)
                if kind == READ:
                    op = await self.execute(session, w, READ, key, url)
                else:
                    value = f"{self.run_id}-w{w}-{next(values)}" if kind in (WRITE, CAS) else None
                    old = self._pick_old(key, rng) if kind == CAS else None
                    op = await self.execute(session, w, kind, key, url, value=value, old=old,
                                            client=(f"{self.run_id}-w{w}", next(seq)))
                pause = self.workload.think_s
                if op.outcome == FAILED and str(op.meta.get("error", "")).startswith("refused"):
                    pause = max(pause, 0.05)  # a dead node refuses at once: do not spin on it
                if pause:
                    await asyncio.sleep(rng.uniform(0, pause))

    def _pick_old(self, key: str, rng: random.Random) -> str:
        recent = self._recent.get(key)
        if not recent:
            return "never-written"
        if rng.random() < 0.75:
            return recent[-1]
        return rng.choice(recent[-5:])

    def _saw(self, key: str, value: Any) -> None:
        if value is not None:
            recent = self._recent[key]
            recent.append(value)
            del recent[:-10]

    # -- one operation ----------------------------------------------------------------

    async def execute(self, session: aiohttp.ClientSession, process: Any, kind: str, key: str, url: str,
                      value: str | None = None, old: str | None = None,
                      client: tuple[str, int] | None = None, stale: bool = False) -> Op:
        """Send one request, record it as an Op and return it."""
        op_id = next(self._ids)
        path = f"{url}/v1/kv/{urllib.parse.quote(key, safe='')}"
        body: dict[str, Any] | None = None
        if kind == READ:
            method = "GET"
            if stale:
                path += "?consistency=stale"
        else:
            method = "PUT" if kind in (WRITE, CAS) else "DELETE"
            body = {}
            if kind in (WRITE, CAS):
                body["value"] = value
            if kind == CAS:
                body["if_value"] = old
            if client is not None:
                body["client_id"], body["seq"] = client
        meta: dict[str, Any] = {"node": self.urls.index(url) + 1 if url in self.urls else url}
        if client is not None:
            meta["client"] = client
        start = time.monotonic()
        status, reply, error = None, None, None
        try:
            async with session.request(method, path, json=body) as resp:
                status = resp.status
                try:
                    reply = await resp.json(content_type=None)
                except ValueError:
                    reply = None
        except aiohttp.ClientConnectorError as exc:
            error = f"refused: {errno.errorcode.get(exc.errno or 0, type(exc).__name__)}"
        except aiohttp.ConnectionTimeoutError:
            error = "refused: connect timeout"
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            error = "no answer: timeout"
        except (aiohttp.ClientError, OSError) as exc:
            error = f"no answer: {type(exc).__name__}"
        end = time.monotonic()
        meta["latency_s"] = round(end - start, 4)
        if status is not None:
            meta["status"] = status
        if isinstance(reply, dict):
            if "error" in reply:
                meta["error"] = reply["error"]
            if "version" in reply:
                meta["version"] = reply["version"]
        if error is not None:
            meta["error"] = error
        outcome, read_value, result = self._classify(kind, status, reply, error, meta)
        if outcome == UNKNOWN:
            meta["gave_up_at"] = end
        op = Op(process, kind, key, start, end if outcome != UNKNOWN else INF, outcome,
                value=read_value if kind == READ else value, old=old, result=result, id=op_id, meta=meta)
        self.ops.append(op)
        if outcome == OK:
            self._saw(key, read_value if kind == READ else value if kind == WRITE or result else None)
        return op

    def _classify(self, kind: str, status: int | None, reply: Any, error: str | None,
                  meta: dict) -> tuple[str, Any, bool | None]:
        """(outcome, value read, result) for one response; see the table above."""
        if error is not None:
            return (FAILED if error.startswith("refused") else UNKNOWN), None, None
        code = reply.get("error") if isinstance(reply, dict) else None
        if status == 503 and code == "no_quorum":
            return FAILED, None, None
        if status == 504 and code == "timeout":
            return UNKNOWN, None, None
        if kind == READ:
            if status == 200 and isinstance(reply, dict) and "value" in reply:
                return OK, reply["value"], None
            if status == 404 and code == "not_found":
                return OK, None, None
        elif kind == WRITE:
            if status == 200 and isinstance(reply, dict):
                return OK, None, None
        elif kind == CAS:
            if status == 200 and isinstance(reply, dict):
                return OK, None, True
            if status == 412 and code == "precondition_failed":
                return OK, None, False
        elif kind == DELETE:
            if status == 200 and isinstance(reply, dict):
                return OK, None, True
            if status == 404 and code == "not_found":
                return OK, None, False
        self.unexpected[f"{kind} {status} {code}"] += 1
        meta["unexpected"] = True
        return (FAILED if kind == READ else UNKNOWN), None, None

    async def read_everywhere(self, keys: Iterable[str], process_prefix: str = "final",
                              stale: bool = False) -> list[Op]:
        """Read every key from every node, one request at a time; the ops (also recorded)."""
        out = []
        async with self.session() as session:
            for key in keys:
                for i, url in enumerate(self.urls, start=1):
                    out.append(await self.execute(session, f"{process_prefix}@{i}", READ, key, url,
                                                  stale=stale))
        return out


# -- summaries ---------------------------------------------------------------------------

def errors(ops: Iterable[Op]) -> dict[str, int]:
    """How the ops that were not ok ended: {"<outcome> <error or status>": count}."""
    c = Counter(f"{op.outcome} {op.meta.get('error') or op.meta.get('status')}"
                for op in ops if op.outcome != OK)
    return dict(c.most_common())


def outcome_label(op: Op) -> str:
    if op.outcome != OK:
        return op.outcome
    if op.kind == CAS:
        return "ok" if op.result else "ok-precondition-failed"
    if op.kind == DELETE:
        return "ok" if op.result else "ok-not-found"
    if op.kind == READ and op.value is None:
        return "ok-absent"
    return "ok"


def summarize(ops: Iterable[Op]) -> dict[str, dict[str, int]]:
    """{kind: {outcome: count}}, with ok split by result where it matters."""
    table: dict[str, Counter] = defaultdict(Counter)
    for op in ops:
        table[op.kind][outcome_label(op)] += 1
    return {kind: dict(sorted(c.items())) for kind, c in sorted(table.items())}


def took_effect(op: Op) -> bool:
    """An acknowledged operation that changed the value."""
    return op.outcome == OK and (op.kind == WRITE or (op.kind in (CAS, DELETE) and bool(op.result)))


def longest_gap_without_write(ops: Iterable[Op], t_from: float, t_to: float) -> tuple[float, float, float]:
    """(gap, from, to): the longest stretch of [t_from, t_to] in which no write was acknowledged."""
    acks = sorted(op.end for op in ops if took_effect(op) and t_from <= op.end <= t_to)
    points = [t_from, *acks, t_to]
    best = (0.0, t_from, t_from)
    for a, b in zip(points, points[1:]):
        if b - a > best[0]:
            best = (b - a, a, b)
    return best


def version_anomalies(ops: Iterable[Op]) -> list[str]:
    """Versions must name values: on each key one value per version, one version per value,
    and a read that starts after another ended never sees an older version."""
    per_value: dict[tuple[str, Any], set[int]] = defaultdict(set)
    per_version: dict[tuple[str, int], set[Any]] = defaultdict(set)
    reads: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        version = op.meta.get("version")
        if op.outcome != OK or version is None:
            continue
        if op.kind == READ and op.value is not None:
            reads[op.key].append(op)
        elif not (op.kind == WRITE or (op.kind == CAS and op.result)):
            continue
        per_value[(op.key, op.value)].add(version)
        per_version[(op.key, version)].add(op.value)
    out = [f"key {k!r}: value {v!r} seen with versions {sorted(vs)}"
           for (k, v), vs in per_value.items() if len(vs) > 1]
    out += [f"key {k!r}: version {ver} seen with values {sorted(map(str, vs))}"
            for (k, ver), vs in per_version.items() if len(vs) > 1]
    for key, rs in reads.items():
        rs.sort(key=lambda o: o.end)
        newest_done = None  # the highest version among reads that finished before this one started
        j = 0
        for op in sorted(rs, key=lambda o: o.start):
            while j < len(rs) and rs[j].end < op.start:
                if newest_done is None or rs[j].meta["version"] > newest_done.meta["version"]:
                    newest_done = rs[j]
                j += 1
            if newest_done is not None and op.meta["version"] < newest_done.meta["version"]:
                out.append(f"key {key!r}: read #{op.id} saw version {op.meta['version']} after read "
                           f"#{newest_done.id} had finished with version {newest_done.meta['version']}")
    return out


async def first_write_after(recorder: Recorder, since: float, within_s: float, client: str,
                            pause_s: float = 0.0) -> float | None:
    """Write "heal-probe" through the nodes in turn until one write is acknowledged;
    its end time after `since` (monotonic), or None if none was within `within_s`."""
    async with recorder.session() as session:
        n = 0
        while time.monotonic() - since < within_s:
            n += 1
            url = recorder.urls[n % len(recorder.urls)]
            op = await recorder.execute(session, "probe", WRITE, "heal-probe", url, value=f"probe-{n}",
                                        client=(client, n))
            if op.outcome == OK:
                return op.end - since
            if pause_s:
                await asyncio.sleep(pause_s)
    return None
