"""Bad input over HTTP against a live cluster: Hypothesis sends malformed JSON, wrong
types, odd key encodings (percent-encoding of any bytes, unicode, control
characters, surrogates, malformed escapes, raw bytes) and odd query strings.

For every request:
  * never a 5xx, except 503/504 with their JSON error codes (a slow machine);
  * an error from the API is JSON {"error": code, "message": text} (the HTTP
    parser's own 400s for a malformed request line are plain text);
  * a key path that percent-decodes to valid UTF-8 of 1-1024 bytes is stored
    under exactly that key; any other key path is refused (400 invalid_key);
  * nothing is stored that should not be: after a refused PUT or DELETE, the
    key (when it is a valid one) is absent or unchanged, and at the end the
    store holds exactly the keys acknowledged;
  * the node keeps answering /v1/status, and its log holds no traceback.

Bounded: at most MAX_EXAMPLES examples and FUZZ_BUDGET_S seconds per test.
Explicit cases that random generation rarely reaches (huge bodies, deep
nesting, limits to the byte) are listed separately.
"""
from __future__ import annotations

import http.client
import json
import random
import re
import socket
import string
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.cluster import HOST, Cluster

MAX_EXAMPLES = 200
FUZZ_BUDGET_S = 25.0
KEY_BYTES_MAX = 1024
VALUE_BYTES_MAX = 1024 * 1024
PCHAR = set((string.ascii_letters + string.digits + "-._~" + "!$&'()*+,;=:@").encode())


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:300]!r}>"


def raw_http(port: int, method: bytes, target: bytes, body: bytes | None = None,
             headers: list[tuple[bytes, bytes]] = (), timeout: float = 15.0) -> Raw:
    """One request written byte for byte (no client-side validation or quoting)."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + HOST.encode(), b"Connection: close"]
    if body is not None:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines += [k + b": " + v for k, v in headers]
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))
        resp = http.client.HTTPResponse(sock, method=method.decode("latin-1"))
        resp.begin()
        data = resp.read()
        return Raw(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)


def check_answer(resp: Raw, what: str) -> None:
    """The rules every answer follows."""
    assert resp.status < 500 or (resp.status, (resp.json or {}).get("error")) in (
        (503, "no_quorum"), (504, "timeout")), f"{what}: {resp}"
    if resp.status >= 400 and resp.headers.get("content-type", "").startswith("application/json"):
        body = resp.json
        assert isinstance(body, dict) and isinstance(body.get("error"), str) \
            and isinstance(body.get("message"), str), f"{what}: {resp}"


def expected_key(segment: bytes) -> tuple[bool, str | None]:
    """(predictable, key): what the path segment names, if it is made of URL path
    characters; key None if it names no valid key."""
    if not segment or any(b not in PCHAR and b != ord("%") for b in segment):
        return False, None
    raw = urllib.parse.unquote_to_bytes(segment)
    try:
        key = raw.decode("utf-8")
    except UnicodeDecodeError:
        return True, None
    return True, key if 1 <= len(raw) <= KEY_BYTES_MAX else None


# -- strategies --------------------------------------------------------------------------

any_char = st.characters(exclude_categories=())  # surrogates and controls included
valid_char = st.characters(exclude_categories=("Cs",))  # any code point but a surrogate, controls too
key_text = st.one_of(
    st.text(valid_char, min_size=1, max_size=24),
    st.text(valid_char, min_size=1, max_size=24),
    st.text(any_char, max_size=24),
    st.text(st.sampled_from("a/.%?#+ é€😀\x00\x7f\ud800\udfff"), max_size=12),
    st.integers(KEY_BYTES_MAX - 4, KEY_BYTES_MAX + 4).map(lambda n: "k" * n),
    st.integers(339, 343).map(lambda n: "€" * n),  # 3 bytes each: around the limit
    st.sampled_from(["", ".", "..", "a/../b", "/", "%", "%25", "%zz", "%%41", "%4", "\ufeff", "\U0010ffff"]),
)


@st.composite
def key_segments(draw) -> bytes:
    text = draw(key_text)
    data = text.encode("utf-8", "surrogatepass")
    how = draw(st.sampled_from(["quote", "quote", "quote_pchar", "lower", "raw", "bytes", "mangle"]))
    if how == "quote":
        return urllib.parse.quote_from_bytes(data, safe="").encode()
    if how == "quote_pchar":
        return urllib.parse.quote_from_bytes(data, safe="!$&'()*+,;=:@").encode()
    if how == "lower":
        q = urllib.parse.quote_from_bytes(data, safe="")
        return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), q).encode()
    if how == "bytes":
        return urllib.parse.quote_from_bytes(draw(st.binary(min_size=1, max_size=12)), safe="").encode()
    if how == "mangle":
        junk = draw(st.sampled_from([b"%", b"%z", b"%%", b"%4", b"%ZZ", b"%0", b"%G1"]))
        q = urllib.parse.quote_from_bytes(data, safe="").encode()
        at = draw(st.integers(0, len(q)))
        return q[:at] + junk + q[at:]
    return data  # raw: whatever bytes the text is, unquoted


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(any_char, max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


# A time to live long enough that no key this suite writes expires while it runs (the
# model holds every acknowledged write), or one the node must refuse.
ttls = st.one_of(st.sampled_from([3600, 86400.5, 31_536_000, 0, -1, 31_622_400.5, 1e12, True, "60", None]),
                 st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**10))
refreshes = st.sampled_from([True, True, False, None, "true", 1, 0])


@st.composite
def bodies(draw) -> bytes | None:
    """A body for a PUT or DELETE. A client_id that is a string gets a unique suffix, so no
    request is a retry of another (a retry is answered with the first result, unapplied)."""
    kind = draw(st.sampled_from(["none", "value", "value", "value", "typed", "json", "bytes", "cut", "nan"]))
    if kind == "none":
        return None
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "nan":
        return draw(st.sampled_from([b'{"value": NaN}', b'{"value": "x", "seq": Infinity, "client_id": "c"}',
                                     b'{"value": "x", "if_version": -Infinity}', b'{"value": "x"} trailing',
                                     b'\xef\xbb\xbf{"value": "bom"}', b'{"value": "\\ud800"}',
                                     b'{"value": "x", "value": 5}', b'{"value": "x", "seq": 1' + b"0" * 5000 + b'}']))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    obj: dict[str, Any] = {"value": draw(st.text(any_char, max_size=16))}
    if kind == "typed":
        for name in draw(st.sets(st.sampled_from(["value", "if_value", "if_version", "client_id", "seq", "extra",
                                                  "ttl", "refresh"]))):
            obj[name] = draw(json_values)
        if draw(st.booleans()):
            obj["ttl"] = draw(ttls)
        if draw(st.integers(0, 4)) == 0:
            obj["refresh"] = draw(refreshes)
            if draw(st.booleans()):
                del obj["value"]
    elif draw(st.booleans()):  # else a plain put
        for name in draw(st.sets(st.sampled_from(["if_value", "if_version", "client_id", "seq"]))):
            obj[name] = {"if_value": draw(st.text(max_size=5)), "if_version": draw(st.integers(-3, 3)),
                         "client_id": draw(st.text(max_size=5)), "seq": draw(st.integers(-3, 3))}[name]
    elif draw(st.booleans()):  # a put with a valid time to live, or a refresh
        obj["ttl"] = draw(st.sampled_from([3600, 86400.5]))
        if draw(st.booleans()):
            obj = {"refresh": True, "ttl": obj["ttl"]}
    if isinstance(obj.get("client_id"), str):
        obj["client_id"] += f"-{draw(st.uuids())}"
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    if kind == "cut":
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    return text.encode("utf-8", "surrogatepass")


def decoded(body: bytes | None) -> Any:
    """The body as the node's JSON parser reads it (None if it does not parse)."""
    try:
        return None if body is None else json.loads(body)
    except (ValueError, RecursionError):
        return None


class Store:
    """What the cluster must hold: the keys and values acknowledged so far."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.data: dict[str, str] = self.everything()  # what earlier tests left
        # Its own generator: Hypothesis warns when a test's body moves the global one's state.
        self.rng = random.Random()

    def get(self, key: str) -> str | None:
        port = self.cluster.ports[self.rng.choice(self.cluster.ids)]
        resp = raw_http(port, b"GET", b"/v1/kv/" + urllib.parse.quote_from_bytes(key.encode(), safe="").encode())
        check_answer(resp, f"GET {key!r}")
        if resp.status == 404:
            return None
        assert resp.status == 200 and resp.json["key"] == key, resp
        return resp.json["value"]

    def everything(self) -> dict[str, str]:
        resp = self.cluster.list(self.cluster.ids[0], limit=10_000)
        assert resp.status == 200 and not resp.body["more"], resp
        return {item["key"]: item["value"] for item in resp.body["items"]}


def _alive(cluster: Cluster) -> None:
    for i in cluster.ids:
        assert cluster.is_alive(i), f"node {i} died:\n{cluster.log_tail(i)}"
        assert cluster.status(i, timeout=10)["id"] == i


class Logs:
    """The nodes' log output from now on: none of it may be a traceback."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.offsets = {i: cluster.log_path(i).stat().st_size for i in cluster.ids}

    def check_clean(self) -> None:
        for i, offset in self.offsets.items():
            with open(self.cluster.log_path(i), "rb") as f:
                f.seek(offset)
                new = f.read().decode("utf-8", "replace")
            for line in new.splitlines():
                if "Error handling request" in line and "aiohttp.http_exceptions." in line:
                    continue  # aiohttp's parser refused a malformed request (answered 400)
                for marker in ("Traceback", "Error handling request", "crashed"):
                    assert marker not in line, f"node {i} logged {marker!r}:\n{line[:4000]}"


FUZZ_SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=False,
                         suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("bad-input"), n=3)
    cluster.start()
    cluster.wait_for_leader()
    yield cluster
    cluster.stop_all()


def test_fuzz_key_paths_and_bodies(live):
    logs = Logs(live)
    store = Store(live)
    stop_at = time.monotonic() + FUZZ_BUDGET_S
    calls = [0]

    @FUZZ_SETTINGS
    @given(segment=key_segments(),
           method=st.sampled_from([b"PUT", b"PUT", b"PUT", b"GET", b"DELETE", b"POST", b"PATCH"]),
           body=bodies(), node=st.sampled_from(live.ids))
    def one(segment: bytes, method: bytes, body: bytes | None, node: int) -> None:
        if time.monotonic() > stop_at:
            return
        calls[0] += 1
        raw_body, obj = body, decoded(body)
        predictable, key = expected_key(segment)
        before = store.data.get(key) if key is not None else None
        resp = raw_http(live.ports[node], method, b"/v1/kv/" + segment, raw_body)
        what = f"{method.decode()} /v1/kv/{segment!r} body {raw_body!r:.200}"
        check_answer(resp, what)
        ok = resp.status == 200
        if predictable and key is None:
            assert resp.status in (400, 405), f"{what}: names no valid key, but {resp}"
        if ok and method in (b"PUT", b"DELETE", b"GET"):
            stored = resp.json["key"]
            if predictable:
                assert stored == key, f"{what}: stored under {stored!r}, not {key!r}"
            if method == b"PUT" and isinstance(obj, dict) and obj.get("refresh") is True:
                assert "value" not in obj and before is not None, f"{what}: refreshed {resp}"  # value kept
            elif method == b"PUT":
                assert isinstance(obj, dict) and isinstance(obj.get("value"), str), f"{what}: accepted {resp}"
                store.data[stored] = obj["value"]
            elif method == b"DELETE":
                store.data.pop(stored, None)
            else:
                assert store.data.get(stored) == resp.json["value"], f"{what}: read {resp}"
        elif key is not None and method in (b"PUT", b"DELETE") and resp.status != 504:
            if resp.status == 404 and method == b"DELETE":
                assert before is None, f"{what}: {resp}, but {key!r} holds {before!r}"
            # Refused: the key is as it was (a 412 or 404 changes nothing either).
            assert store.get(key) == before, f"{what}: refused with {resp}, yet the key changed"
        if calls[0] % 25 == 0:
            _alive(live)

    one()
    _alive(live)
    assert calls[0] >= 50, f"only {calls[0]} examples ran within {FUZZ_BUDGET_S:g}s"
    print(f"{calls[0]} examples; {len(store.data)} keys stored")
    assert store.everything() == store.data, "the store holds keys or values that were never acknowledged"
    logs.check_clean()


# A watch that finds no change waits for one up to its timeout: the first timeout wins.
QUERY_ROUTES = [b"/v1/kv", b"/v1/dashboard", b"/v1/dashboard/find", b"/v1/snapshot", b"/v1/status", b"/metrics",
                b"/v1/watch?timeout=0"]
QUERY_NAMES = ["prefix", "limit", "consistency", "slots", "series_since", "client_id", "seq", "fresh", "x",
               "key", "from", "timeout", "after"]
query_values = st.one_of(
    st.text(any_char, max_size=8),
    st.integers(-10**20, 10**20).map(str),
    st.sampled_from(["", "-", "--5", "+5", " 5", "5 ", "²", "٣", "1e3", "0x10", "1_000", "10001", "0", "-0",
                     "true", "stale", "linearizable", "STALE", "\x00"]),
)


@st.composite
def queries(draw) -> bytes:
    pairs = draw(st.lists(st.tuples(st.sampled_from(QUERY_NAMES), query_values), max_size=3))
    return "&".join(urllib.parse.quote(k, safe="") + "=" +
                    urllib.parse.quote(v.encode("utf-8", "surrogatepass"), safe="") for k, v in pairs).encode()


def _fuzz_queries(live: Cluster, routes: list[bytes]) -> None:
    before = {i: live.status(i)["applied"] for i in live.ids}
    stop_at = time.monotonic() + FUZZ_BUDGET_S / 2

    @FUZZ_SETTINGS
    @given(route=st.sampled_from(routes), query=queries(), node=st.sampled_from(live.ids))
    def one(route: bytes, query: bytes, node: int) -> None:
        if time.monotonic() > stop_at:
            return
        target = route + (b"&" if b"?" in route else b"?") + query
        resp = raw_http(live.ports[node], b"GET", target)
        check_answer(resp, f"GET {target!r}")

    one()
    _alive(live)
    assert all(live.status(i)["applied"] >= before[i] for i in live.ids)


def test_fuzz_query_strings(live):
    logs = Logs(live)
    _fuzz_queries(live, [r for r in QUERY_ROUTES if not r.startswith(b"/v1/dashboard")])
    logs.check_clean()


def test_fuzz_dashboard_query_strings(live):
    for target in (b"/v1/dashboard?slots=--5", b"/v1/dashboard/find?client_id=c&seq=%C2%B2"):
        check_answer(raw_http(live.ports[1], b"GET", target), target.decode())
    _fuzz_queries(live, [r for r in QUERY_ROUTES if r.startswith(b"/v1/dashboard")])


def _post_fuzzed(port: int, path: bytes, body: Any, unique: Any) -> tuple[Any, Raw]:
    """POST a fuzzed body (its client_id made unique: never a retry) and check the answer's rules."""
    if isinstance(body, dict) and isinstance(body.get("client_id"), str):
        body = {**body, "client_id": f"{body['client_id']}-{next(unique)}"}
    resp = raw_http(port, b"POST", path, json.dumps(body).encode("utf-8", "surrogatepass"))
    check_answer(resp, f"POST {path.decode()} {body!r:.300}")
    return body, resp


def test_fuzz_batches(live):
    logs = Logs(live)
    store = Store(live)
    unique = iter(range(10**9))
    stop_at = time.monotonic() + FUZZ_BUDGET_S / 2
    op = st.fixed_dictionaries({"op": st.sampled_from(["put", "cas", "delete", "get", "refresh", "nope", 5])},
                               optional={"key": json_values | st.text(any_char, max_size=6),
                                         "value": json_values, "if_value": json_values, "if_version": json_values,
                                         "ttl": ttls})
    batch = st.one_of(
        st.fixed_dictionaries({"ops": st.lists(op, max_size=4)},
                              optional={"client_id": json_values, "seq": json_values}),
        json_values)

    @FUZZ_SETTINGS
    @given(body=batch, node=st.sampled_from(live.ids))
    def one(body: Any, node: int) -> None:
        if time.monotonic() > stop_at:
            return
        body, resp = _post_fuzzed(live.ports[node], b"/v1/batch", body, unique)
        if resp.status == 200:
            # Accepted: apply what it says it did to the model.
            for o, r in zip(body["ops"], resp.json["results"]):
                if r.get("ok") and o["op"] in ("put", "cas"):
                    store.data[o["key"]] = o["value"]
                elif r.get("ok") and o["op"] == "delete":
                    store.data.pop(o["key"], None)

    one()
    _alive(live)
    assert store.everything() == store.data, "the store holds keys or values that were never acknowledged"
    logs.check_clean()


def test_fuzz_transactions(live):
    """POST /v1/txn with odd comparisons and writes: a 4xx with a JSON error, or a 200
    whose branch's writes are exactly what the store then holds."""
    logs = Logs(live)
    store = Store(live)
    unique = iter(range(10**9))
    stop_at = time.monotonic() + FUZZ_BUDGET_S / 2
    good_key = st.sampled_from(["tx/a", "tx/b", "tx/c"])
    some_key = good_key | json_values | st.text(any_char, max_size=6)
    good_comparison = st.one_of(
        st.fixed_dictionaries({"key": good_key, "version": st.integers(0, 3)}),
        st.fixed_dictionaries({"key": good_key, "value": st.sampled_from(["1", "2"])}),
        st.fixed_dictionaries({"key": good_key, "exists": st.booleans()}))
    comparison = st.one_of(
        good_comparison, good_comparison, good_comparison,
        st.fixed_dictionaries({"key": some_key, "version": st.integers(-1, 5) | json_values}),
        st.fixed_dictionaries({"key": some_key, "exists": st.booleans() | json_values}),
        st.fixed_dictionaries({"key": good_key, "version": st.integers(0, 3)},
                              optional={"cmp": st.sampled_from(["!=", "<", ">", "<=", "=="]) | json_values}),
        st.fixed_dictionaries({"key": good_key, "exists": st.booleans()},
                              optional={"cmp": st.sampled_from(["=", "!=", ">"])}),
        st.dictionaries(st.sampled_from(["key", "version", "value", "exists", "cmp", "x"]), json_values,
                        max_size=3))
    good_write = st.one_of(st.fixed_dictionaries({"op": st.just("put"), "key": good_key,
                                                  "value": st.sampled_from(["1", "2"])}),
                           st.fixed_dictionaries({"op": st.sampled_from(["delete", "get"]), "key": good_key}))
    write = st.one_of(
        good_write, good_write, good_write,
        st.fixed_dictionaries({"op": st.sampled_from(["put", "delete", "get", "cas", None, 5])},
                              optional={"key": some_key, "value": st.sampled_from(["1", "2"]) | json_values,
                                        "ttl": st.sampled_from([3600, 0, -1, "60", True, 1e12])}))
    body = st.one_of(
        st.fixed_dictionaries({}, optional={"if": st.lists(comparison, max_size=3),
                                            "then": st.lists(write, max_size=3), "else": st.lists(write, max_size=3)}),
        st.fixed_dictionaries({}, optional={"if": st.lists(comparison, max_size=3) | json_values,
                                            "then": st.lists(write, max_size=3) | json_values,
                                            "else": st.lists(write, max_size=3), "client_id": json_values,
                                            "seq": json_values, "other": json_values}),
        json_values)

    @FUZZ_SETTINGS
    @given(body=body, node=st.sampled_from(live.ids))
    def one(body: Any, node: int) -> None:
        if time.monotonic() > stop_at:
            return
        body, resp = _post_fuzzed(live.ports[node], b"/v1/txn", body, unique)
        if resp.status == 200:
            accepted.append(resp.json["succeeded"])
            writes = body.get("then" if resp.json["succeeded"] else "else", [])
            assert len(writes) == len(resp.json["results"]), resp
            for w, r in zip(writes, resp.json["results"]):
                assert (r["op"], r["key"]) == (w["op"], w["key"]), (w, r)
                if r["ok"] and w["op"] == "put":
                    store.data[w["key"]] = w["value"]
                elif w["op"] == "get":  # what the writes before it left
                    assert r.get("value") == store.data.get(w["key"]) and r["ok"] == (w["key"] in store.data), r
                elif r["ok"]:
                    store.data.pop(w["key"])

    accepted: list[bool] = []
    one()
    _alive(live)
    assert store.everything() == store.data, "the store holds keys or values that were never acknowledged"
    assert True in accepted and False in accepted, accepted  # both branches ran
    logs.check_clean()


# -- explicit cases --------------------------------------------------------------------------


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


EXPLICIT = [
    # (name, method, target, body, acceptable statuses)
    ("deeply nested body", b"PUT", b"/v1/kv/deep", b'{"value": ' + _deep(100_000) + b"}", {400}),
    # Prefix deletes that match no key of the fuzzed store: a bad one is refused, a good one deletes none.
    ("prefix delete without a prefix", b"DELETE", b"/v1/kv", None, {400}),
    ("prefix delete with another parameter", b"DELETE", b"/v1/kv?prefix=zz-none&limit=5", None, {400}),
    ("prefix delete of bytes that are not UTF-8", b"DELETE", b"/v1/kv?prefix=zz-none%ff%fe", None, {200, 400}),
    ("prefix delete of a lone surrogate", b"DELETE", b"/v1/kv?prefix=zz-none%ED%A0%80", None, {200, 400}),
    ("prefix delete over the key limit", b"DELETE", b"/v1/kv?prefix=" + b"z" * 1025, None, {400}),
    ("deeply nested array", b"PUT", b"/v1/kv/deep", _deep(100_000), {400}),
    ("deeply nested batch", b"POST", b"/v1/batch", b'{"ops": ' + _deep(100_000) + b"}", {400}),
    ("deeply nested object", b"DELETE", b"/v1/kv/deep", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, {400}),
    ("body over the size limit", b"PUT", b"/v1/kv/huge", b'{"value": "' + b"x" * (13 * 1024 * 1024) + b'"}', {413}),
    ("value one byte over", b"PUT", b"/v1/kv/big", json.dumps({"value": "x" * (VALUE_BYTES_MAX + 1)}).encode(), {413}),
    ("value at the limit", b"PUT", b"/v1/kv/big", json.dumps({"value": "x" * VALUE_BYTES_MAX}).encode(), {200}),
    ("multibyte value over", b"PUT", b"/v1/kv/big2",
     json.dumps({"value": "€" * (VALUE_BYTES_MAX // 3 + 1)}).encode(), {413}),
    ("escaped value at the limit", b"PUT", b"/v1/kv/big3",
     json.dumps({"value": "é" * (VALUE_BYTES_MAX // 2)}, ensure_ascii=True).encode(), {200}),
    ("key at the limit", b"PUT", b"/v1/kv/" + b"k" * KEY_BYTES_MAX, b'{"value": "v"}', {200}),
    ("key one byte over", b"PUT", b"/v1/kv/" + b"k" * (KEY_BYTES_MAX + 1), b'{"value": "v"}', {400}),
    ("empty key", b"PUT", b"/v1/kv/", b'{"value": "v"}', {400}),
    ("key of invalid UTF-8", b"PUT", b"/v1/kv/%FF", b'{"value": "v"}', {400}),
    ("key of an encoded surrogate", b"PUT", b"/v1/kv/%ED%A0%80", b'{"value": "v"}', {400}),
    ("key of an overlong encoding", b"PUT", b"/v1/kv/%C0%AF", b'{"value": "v"}', {400}),
    ("key holding a newline", b"PUT", b"/v1/kv/a%0Ab", b'{"value": "v"}', {200}),
    ("body not UTF-8", b"PUT", b"/v1/kv/k", b'{"value": "\xff"}', {400}),
    ("huge integer", b"PUT", b"/v1/kv/k", b'{"value": "v", "if_version": 1' + b"0" * 5000 + b"}", {400}),
    ("huge batch", b"POST", b"/v1/batch", json.dumps({"ops": [{"op": "get", "key": "k"}] * 10_001}).encode(), {400}),
    ("list limit of a unicode digit", b"GET", b"/v1/kv?limit=%C2%B2", None, {400}),
    ("list limit too big", b"GET", b"/v1/kv?limit=10001", None, {400}),
]


@pytest.mark.parametrize("name,method,target,body,statuses", EXPLICIT, ids=[c[0] for c in EXPLICIT])
def test_explicit_bad_input(live, name, method, target, body, statuses):
    logs = Logs(live)
    resp = raw_http(live.ports[1], method, target, body, timeout=60)
    check_answer(resp, name)
    assert resp.status in statuses, f"{name}: {resp}"
    if resp.status != 200 and method == b"PUT" and target.startswith(b"/v1/kv/"):
        predictable, key = expected_key(target[len(b"/v1/kv/"):])
        if key is not None:
            assert live.get(2, key).status in (200, 404)
            if key in ("huge", "big2", "deep"):
                assert live.get(2, key).status == 404, f"{name}: refused, but {key!r} was stored"
    if resp.status == 200 and method == b"PUT":
        key = urllib.parse.unquote_to_bytes(target[len(b"/v1/kv/"):]).decode()
        assert resp.json["key"] == key and live.get(3, key).body["key"] == key, resp
    _alive(live)
    logs.check_clean()


def test_lying_and_slow_requests(live):
    """A body shorter than its Content-Length, a connection that hangs up mid-body, a
    chunked body over the limit: the node answers or drops that connection, and serves;
    a client hanging up is not an error in its log."""
    logs = Logs(live)
    for body, length in ((b'{"value": "x"}', 1000), (b'{"val', 10_000_000)):
        with socket.create_connection((HOST, live.ports[1]), timeout=5) as sock:
            sock.sendall(b"PUT /v1/kv/liar HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length + body)
            sock.shutdown(socket.SHUT_WR)
            try:
                sock.recv(1000)
            except OSError:
                pass
    with socket.create_connection((HOST, live.ports[2]), timeout=30) as sock:
        sock.sendall(b"PUT /v1/kv/chunky HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * (1024 * 1024)
        try:
            for _ in range(14):
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
            answer = sock.recv(1000)
            assert answer.startswith(b"HTTP/1.1 413") or answer.startswith(b"HTTP/1.1 400"), answer
        except (BrokenPipeError, ConnectionResetError):
            pass  # the node stopped reading once it was over the limit: also fine
    assert live.get(1, "liar").status == 404 and live.get(1, "chunky").status == 404
    _alive(live)
    logs.check_clean()
