"""Unit tests of the pieces behind /metrics, the structured logs and the security options."""
from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from kvpaxos.config import ConfigError
from kvpaxos.logs import JsonFormatter, RateLimit, StateLog, TextFormatter, fields
from kvpaxos.metrics import Exposition, Histogram
from kvpaxos.security import (AuthError, Handshake, read_secret_file, read_token_file, serve_options,
                              write_new_secret)
from secure_cluster import parse_metrics

SECRET = b"0123456789abcdef-secret"


# -- the peer handshake --------------------------------------------------------


def run_handshake(dialer: Handshake, acceptor: Handshake, dialer_id: int = 2, acceptor_id: int = 1) -> None:
    nonce, challenge = acceptor.challenge()
    answer, check_reply = dialer.answer(challenge, acceptor_id)
    ok = acceptor.check_dialer(answer, nonce, dialer_id)
    check_reply(ok)


def test_handshake_succeeds_with_the_same_secret() -> None:
    run_handshake(Handshake(SECRET, 2), Handshake(SECRET, 1))


def test_a_dialer_with_another_secret_is_refused() -> None:
    with pytest.raises(AuthError, match="does not hold"):
        run_handshake(Handshake(b"another secret, long enough", 2), Handshake(SECRET, 1))


def test_an_acceptor_with_another_secret_is_not_trusted_by_the_dialer() -> None:
    acceptor, impostor = Handshake(SECRET, 1), Handshake(b"another secret, long enough", 1)
    nonce, challenge = impostor.challenge()
    answer, check_reply = Handshake(SECRET, 2).answer(challenge, 1)
    # The impostor cannot check the proof, and cannot make an "ok" the dialer accepts.
    with pytest.raises(AuthError):
        impostor.check_dialer(answer, nonce, 2)
    forged_ok = json.dumps({"auth": "ok", "proof": json.loads(answer)["proof"]})  # reflect the proof
    with pytest.raises(AuthError):
        check_reply(forged_ok)
    assert acceptor.check_dialer(answer, nonce, 2)  # the real acceptor would accept it


def test_a_recorded_proof_does_not_work_for_a_new_challenge() -> None:
    acceptor, dialer = Handshake(SECRET, 1), Handshake(SECRET, 2)
    nonce, challenge = acceptor.challenge()
    answer, _ = dialer.answer(challenge, 1)
    new_nonce, _ = acceptor.challenge()
    with pytest.raises(AuthError):
        acceptor.check_dialer(answer, new_nonce, 2)
    with pytest.raises(AuthError):  # nor for another claimed node id
        acceptor.check_dialer(answer, nonce, 3)


@pytest.mark.parametrize("frame", [None, b"bytes", "not json", "[]", '{"auth": "challenge"}',
                                   '{"auth": "proof", "nonce": 5, "proof": "x"}', "x" * 5000,
                                   '{"src": 2, "msgs": []}'])
def test_garbage_instead_of_a_proof_is_an_auth_error(frame) -> None:
    acceptor = Handshake(SECRET, 1)
    nonce, _ = acceptor.challenge()
    with pytest.raises(AuthError):
        acceptor.check_dialer(frame, nonce, 2)


# -- files and options ---------------------------------------------------------


def test_secret_and_token_files(tmp_path) -> None:
    path = tmp_path / "secret"
    assert write_new_secret(str(path)) is True
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    first = path.read_text()
    assert write_new_secret(str(path)) is False and path.read_text() == first  # never overwritten
    assert len(read_secret_file(str(path))) >= 32
    (tmp_path / "short").write_text("short\n")
    with pytest.raises(ConfigError, match="shorter"):
        read_secret_file(str(tmp_path / "short"))
    (tmp_path / "token").write_text("abc-123\n")
    assert read_token_file(str(tmp_path / "token")) == "abc-123"
    (tmp_path / "badtoken").write_text("two words\n")
    with pytest.raises(ConfigError):
        read_token_file(str(tmp_path / "badtoken"))
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret_file(str(tmp_path / "missing"))


def test_tls_options_go_together(tmp_path) -> None:
    with pytest.raises(ConfigError, match="together"):
        serve_options(tls_cert="cert.pem")
    with pytest.raises(ConfigError, match="needs"):
        serve_options(tls_ca="ca.pem")
    with pytest.raises(ConfigError, match="cannot load"):
        serve_options(tls_cert=str(tmp_path / "nope.pem"), tls_key=str(tmp_path / "nope.key"))
    assert serve_options() == {"secret": None, "token": None, "tls_cert": None, "tls_key": None,
                               "tls_ca": None}


def test_cluster_up_passes_the_secret_to_every_node(tmp_path) -> None:
    from cli.cluster import Node, serve_args
    node = Node(1, "127.0.0.1:7001", tmp_path / "node-1")
    args = serve_args(node, {1: "127.0.0.1:7001"})
    assert args[args.index("--secret-file") + 1] == str((tmp_path / "secret").resolve())


# -- metrics -------------------------------------------------------------------


def test_histogram_buckets_are_le_and_cumulative() -> None:
    h = Histogram([1, 5, 10])
    for v in (0.5, 1, 1.01, 5, 7, 11, 100):
        h.observe(v)
    assert h.cumulative() == [("1", 2), ("5", 4), ("10", 5), ("+Inf", 7)]
    assert h.count == 7 and h.sum == pytest.approx(125.51)


def test_exposition_is_valid_text_format() -> None:
    x = Exposition()
    h = Histogram([0.1, 1.0])
    h.observe(0.05)
    x.counter("things", "Things.\nSecond line with a \\ backslash.", 3)
    x.counters("msgs", "By type.", {(("type", 'we"ird\\'),): 1, (("type", "Accept"),): 2})
    x.gauge("level", "A gauge.", 1.5, {"node": 1})
    x.histogram("latency_seconds", "Latency.", h)
    text = x.text()
    types, samples = parse_metrics(text)
    assert types == {"kvpaxos_things_total": "counter", "kvpaxos_msgs_total": "counter",
                     "kvpaxos_level": "gauge", "kvpaxos_latency_seconds": "histogram"}
    assert samples[("kvpaxos_latency_seconds_bucket", frozenset({("le", "+Inf")}))] == 1
    assert samples[("kvpaxos_level", frozenset({("node", "1")}))] == 1.5
    assert '# HELP kvpaxos_things_total Things.\\nSecond line with a \\\\ backslash.' in text
    assert 'kvpaxos_msgs_total{type="we\\"ird\\\\"} 1' in text


# -- logs ----------------------------------------------------------------------


def make_record(msg: str, *args, **kv) -> logging.LogRecord:
    record = logging.getLogger("kvpaxos.test").makeRecord(
        "kvpaxos.test", logging.WARNING, __file__, 1, msg, args, None, extra=fields(**kv) if kv else None)
    return record


def test_text_format_is_key_value_pairs() -> None:
    line = TextFormatter(node_id=2).format(make_record("link down", peer=3, reason='closed "now"'))
    assert line.startswith("ts=")
    assert ' level=warning node=2 logger=kvpaxos.test msg="link down" peer=3 ' in line
    assert line.endswith('reason="closed \\"now\\""')
    plain = TextFormatter().format(make_record("node %d: ok", 1))
    assert 'msg="node 1: ok"' in plain and "node=" not in plain


def test_json_format_is_one_object_per_line() -> None:
    line = JsonFormatter(node_id=1).format(make_record("leader changed", leader=2, ballot="3.2"))
    doc = json.loads(line)
    assert doc["level"] == "warning" and doc["node"] == 1 and doc["msg"] == "leader changed"
    assert doc["leader"] == 2 and doc["ballot"] == "3.2" and "\n" not in line


def test_state_log_reports_changes_only() -> None:
    states = StateLog()
    assert states.changed("link", "down") == 0
    assert states.changed("link", "down") is None
    assert states.changed("link", "down") is None
    assert states.changed("link", "up") == 2  # two repeats were kept quiet
    assert states.changed("other", "down") == 0


def test_rate_limit_once_per_interval_per_key() -> None:
    now = [0.0]
    limit = RateLimit(60.0, clock=lambda: now[0])
    assert limit.allow("10.0.0.1") == 0
    assert limit.allow("10.0.0.1") is None
    assert limit.allow("10.0.0.2") == 0
    now[0] = 59.0
    assert limit.allow("10.0.0.1") is None
    now[0] = 61.0
    assert limit.allow("10.0.0.1") == 2


# -- the token middleware --------------------------------------------------------


def test_token_middleware_checks_the_matched_route_not_the_raw_path() -> None:
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from kvpaxos.security import token_middleware

    refused = []

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def scenario() -> dict[str, int]:
        app = web.Application(middlewares=[token_middleware("s3cret", refused.append)])
        for path in ("/v1/status", "/metrics", "/", "/dashboard/{name}", "/v1/kv/{key:.*}", "/v1/events"):
            app.router.add_get(path, ok)
        app.router.add_route("OPTIONS", "/v1/kv/{key:.*}", ok)
        statuses = {}
        async with TestClient(TestServer(app)) as client:
            for path in ("/v1/status", "/metrics", "/", "/dashboard/app.js", "/v1/kv/a", "/v1/events",
                         "/dashboard/../v1/kv/a", "/nope"):
                statuses[path] = (await client.get(path)).status
            statuses["OPTIONS"] = (await client.options("/v1/kv/a")).status
            statuses["with token"] = (await client.get("/v1/kv/a", headers={
                "Authorization": "Bearer s3cret"})).status
            statuses["wrong token"] = (await client.get("/v1/kv/a", headers={
                "Authorization": "Bearer s3cret2"})).status
        return statuses

    statuses = asyncio.run(scenario())
    for path in ("/v1/status", "/metrics", "/", "/dashboard/app.js", "OPTIONS", "with token"):
        assert statuses[path] == 200, (path, statuses)
    for path in ("/v1/kv/a", "/v1/events", "/dashboard/../v1/kv/a", "/nope", "wrong token"):
        assert statuses[path] == 401, (path, statuses)
    assert len(refused) >= 5


def test_unparsable_requests_do_not_reach_the_log():
    import logging

    from aiohttp.http_exceptions import BadStatusLine

    from kvpaxos.logs import drop_malformed_http

    def record(exc: BaseException | None) -> logging.LogRecord:
        info = (type(exc), exc, None) if exc else None
        return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling request",
                                 None, info)

    assert not drop_malformed_http(record(BadStatusLine("GARBAGE")))
    assert drop_malformed_http(record(RuntimeError("a real server error")))
    assert drop_malformed_http(record(None))
