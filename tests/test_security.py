"""Cluster secret, client token and TLS, against real `kv serve` processes.

Every wait has a deadline; each test starts its own cluster and kills it at the end.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aiohttp
import pytest

from kvpaxos.aioclient import AsyncClient
from kvpaxos.client import Client, Unauthorized, Unavailable
from kvpaxos.core import messages as m
from kvpaxos.core.ballot import Ballot
from kvpaxos.core.codec import encode_frame
from kvpaxos.security import Handshake
from secure_cluster import REPO_ROOT, Nodes, make_self_signed_cert, parse_metrics, wait_until, write_private

SECRET = "correct horse battery staple, 2024"
WRONG_SECRET = "an entirely different secret value"
TOKEN = "t0ken-for-tests"


@pytest.fixture
def make_nodes(tmp_path):
    made: list[Nodes] = []

    def make(n: int = 3, **kwargs) -> Nodes:
        nodes = Nodes(tmp_path / f"cluster{len(made)}", n=n, **kwargs)
        made.append(nodes)
        return nodes.start()

    yield make
    for nodes in made:
        nodes.stop_all()
        print(nodes.logs())  # shown only if the test failed


def metric(nodes: Nodes, i: int, name: str, **labels: str) -> float:
    return parse_metrics(nodes.metrics(i))[1][(name, frozenset(labels.items()))]


def promised_round(nodes: Nodes, i: int) -> int:
    return int(nodes.status(i)["promised"].split(".")[0])


async def forge(url: str, claimed_id: int, target_id: int, secret: bytes | None, frames: list[str]) -> dict:
    """Dial /v1/peer as node `claimed_id`: answer the challenge with `secret` (if given),
    then send `frames`; report what the node did. Bounded by timeouts throughout."""
    out: dict = {"challenge": None, "reply": None, "close_code": None}
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.ws_connect(url.replace("http", "ws", 1) + "/v1/peer",
                                      headers={"X-Kv-Node": str(claimed_id)}) as ws:
            first = await asyncio.wait_for(ws.receive(), 5)
            out["challenge"] = first.data if first.type is aiohttp.WSMsgType.TEXT else None
            if secret is not None and out["challenge"]:
                answer, _ = Handshake(secret, claimed_id).answer(first.data, target_id)
                await ws.send_str(answer)
            for frame in frames:
                try:
                    await ws.send_str(frame)
                except (ConnectionError, RuntimeError):
                    break
            while True:  # until the node closes the link
                msg = await asyncio.wait_for(ws.receive(), 10)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                    break
                out["reply"] = msg.data
            out["close_code"] = ws.close_code
    return out


def test_wrong_secret_cannot_join_vote_or_inject(make_nodes, tmp_path) -> None:
    secret_file = write_private(tmp_path / "secret", SECRET)
    nodes = make_nodes(args=["--secret-file", str(secret_file)])
    leader = nodes.wait_leader()
    follower = next(i for i in nodes.ids if i != leader)

    # The right secret: the cluster works end to end.
    assert nodes.put_retry(follower, "k", "v1").status == 200
    assert nodes.get(leader, "k").json["value"] == "v1"

    # A forger that claims to be a member, skips the handshake and sends a Prepare with a
    # huge ballot (and an Accept) is cut off: nothing reaches the acceptor.
    forged = [encode_frame(follower, [m.Prepare(Ballot(1_000_000, follower), 1)])] * 3
    result = asyncio.run(forge(nodes.url(leader), follower, leader, None, forged))
    assert result["challenge"] and '"challenge"' in result["challenge"]
    assert result["close_code"] == aiohttp.WSCloseCode.POLICY_VIOLATION

    # One that answers the challenge with the wrong secret, then sends Prepares, likewise.
    attempts = 4
    for _ in range(attempts):
        result = asyncio.run(forge(nodes.url(leader), follower, leader, WRONG_SECRET.encode(), forged))
        assert result["close_code"] == aiohttp.WSCloseCode.POLICY_VIOLATION
        assert result["reply"] is None  # no "ok" proof came back

    # No node saw the forged ballot (elections under load may still raise rounds a little).
    for i in nodes.ids:
        assert promised_round(nodes, i) < 1000, nodes.status(i)
    assert nodes.put_retry(leader, "k", "v2").status == 200
    refused = metric(nodes, leader, "kvpaxos_peer_auth_failures_total", side="inbound", reason="bad_proof")
    assert refused >= attempts + 1
    # Logged once per address per minute, not per attempt.
    log = nodes.log_path(leader).read_text()
    assert log.count('msg="peer link refused"') == 1, log

    # A real `kv serve` in node 3's place with the wrong secret: it never links up,
    # never learns a slot, and the two real nodes carry on.
    victim = next(i for i in nodes.ids if i != leader and i != follower)
    nodes.kill(victim)
    wrong_file = write_private(tmp_path / "wrong-secret", WRONG_SECRET)
    nodes.spawn(victim, args=["--secret-file", str(wrong_file)], name=f"{victim}-impostor")
    wait_until(lambda: nodes.request(victim, "GET", "/v1/status", timeout=2).status == 200, 20,
               "the impostor to serve")
    before = metric(nodes, leader, "kvpaxos_peer_auth_failures_total", side="inbound", reason="bad_proof")
    wait_until(lambda: metric(nodes, leader, "kvpaxos_peer_auth_failures_total", side="inbound",
                              reason="bad_proof") > before, 15, "the impostor's links to be refused")
    for k in range(5):
        assert nodes.put_retry(follower, f"after-{k}", "x").status == 200
    impostor = nodes.status(victim)
    assert impostor["applied"] == 0 and impostor["role"] != "leader" and impostor["leader"] in (None, victim)
    assert not any(p["reachable"] for p in impostor["peers"].values())
    assert metric(nodes, victim, "kvpaxos_peer_auth_failures_total", side="outbound", reason="bad_proof") > 0
    assert "authentication failed" in nodes.log_path(f"{victim}-impostor").read_text()

    # The real node 3 (right secret, its own data) comes back and catches up.
    nodes.kill(victim)
    nodes.spawn(victim)
    nodes.wait_ready(victim)
    target = nodes.status(follower)["applied"]
    wait_until(lambda: nodes.status(victim)["applied"] >= target, 30, "node 3 to catch up")


def test_token_guards_data_routes_not_status_or_metrics(make_nodes, tmp_path) -> None:
    token_file = write_private(tmp_path / "token", TOKEN)
    secret_file = write_private(tmp_path / "secret", SECRET)
    nodes = make_nodes(args=["--secret-file", str(secret_file), "--token-file", str(token_file)],
                       token=TOKEN)
    nodes.wait_leader()

    for token in (None, "wrong-token"):
        for method, path in (("GET", "/v1/kv/a"), ("PUT", "/v1/kv/a"), ("GET", "/v1/kv"),
                             ("DELETE", "/v1/kv/a"), ("GET", "/v1/snapshot"), ("GET", "/v1/watch?prefix="),
                             ("GET", "/nope")):
            reply = nodes.request(1, method, path, body={"value": "x"} if method == "PUT" else None,
                                  token=token)
            assert reply.status == 401, (method, path, reply)
            assert reply.json["error"] == "unauthorized" and reply.json["message"]
            assert reply.headers["www-authenticate"].startswith("Bearer")
            assert "x-kv-leader" not in reply.headers  # no topology for a refused caller
    # A page from elsewhere may read the refusal of a readable route (and so tell the user why).
    reply = nodes.request(1, "GET", "/v1/kv/a", token=None, headers={"Origin": "http://elsewhere.example"})
    assert reply.status == 401 and reply.headers["access-control-allow-origin"] == "*", reply
    assert "x-kv-leader" not in reply.headers
    assert nodes.request(1, "GET", "/v1/status", token=None).status == 200
    assert nodes.request(1, "GET", "/metrics", token=None).status == 200
    assert metric(nodes, 1, "kvpaxos_http_unauthorized_total") >= 12

    assert nodes.put_retry(1, "a", "1").status == 200
    assert nodes.get(2, "a").json["value"] == "1"
    assert nodes.request(3, "GET", "/v1/snapshot").status == 200

    with Client(nodes.urls(), token=TOKEN, timeout_s=10) as kv:
        version = kv.put("b", "2")
        assert kv.get("b").value == "2"
        events, _ = kv.watch_page(key="b", from_revision=version, timeout_s=0)
        assert [(e.revision, e.value) for e in events] == [(version, "2")]
    with Client(nodes.urls(), timeout_s=5) as kv, pytest.raises(Unauthorized):
        kv.get("b")

    async def async_round_trip() -> str:
        async with AsyncClient(nodes.urls(), token=TOKEN, timeout_s=10) as kv:
            await kv.put("c", "3")
            return (await kv.get("c")).value
    assert asyncio.run(async_round_trip()) == "3"

    # The kv command: KV_TOKEN (or --token) works; without it, a one-line error, exit 1.
    env = dict(os.environ, KV_ENDPOINTS=",".join(nodes.urls()), KV_TOKEN=TOKEN)
    ok = subprocess.run([sys.executable, "-m", "cli.main", "get", "b"], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip() == "2", ok
    del env["KV_TOKEN"]
    refused = subprocess.run([sys.executable, "-m", "cli.main", "get", "b"], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "token" in refused.stderr, refused
    flag = subprocess.run([sys.executable, "-m", "cli.main", "get", "b", "--token", TOKEN], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert flag.returncode == 0 and flag.stdout.strip() == "2", flag


def test_tls_cluster_serves_https_and_links_over_wss(make_nodes, tmp_path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    secret_file = write_private(tmp_path / "secret", SECRET)
    nodes = make_nodes(args=["--secret-file", str(secret_file), "--tls-cert", str(cert),
                             "--tls-key", str(key), "--tls-ca", str(cert)], ca_file=cert)
    leader = nodes.wait_leader()  # needs the peer links, which are wss:// now
    assert all(url.startswith("https://") for url in nodes.urls())

    with Client(nodes.urls(), ca_file=str(cert), timeout_s=10) as kv:
        kv.put("secure", "yes")
        assert kv.get("secure").value == "yes"
        assert kv.status(nodes.url(leader))["leader"] == leader

    async def async_round_trip() -> str:
        async with AsyncClient(nodes.urls(), ca_file=str(cert), timeout_s=10) as kv:
            await kv.put("secure2", "also")
            return (await kv.get("secure2")).value
    assert asyncio.run(async_round_trip()) == "also"

    # Without the CA the certificate does not verify; plain HTTP gets no answer.
    with Client(nodes.urls()[:1], timeout_s=2) as kv, pytest.raises(Unavailable):
        kv.get("secure")
    with Client([nodes.urls()[0].replace("https", "http")], timeout_s=2) as kv, pytest.raises(Unavailable):
        kv.get("secure")

    env = dict(os.environ, KV_ENDPOINTS=",".join(nodes.urls()), KV_CA_FILE=str(cert))
    got = subprocess.run([sys.executable, "-m", "cli.main", "get", "secure"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0 and got.stdout.strip() == "yes", got

    assert SECRET not in nodes.logs()
    for k in range(9):  # every node takes writes over https and forwards them over wss
        assert nodes.put_retry(1 + k % 3, f"k{k}", "v").status == 200


def _serve_has(option: str) -> bool:
    out = subprocess.run([sys.executable, "-m", "cli.main", "serve", "--help"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60).stdout
    return option in out


def test_catch_up_by_snapshot_works_with_token_and_tls(make_nodes, tmp_path) -> None:
    """A node far behind fetches a peer's snapshot over https, sending the token."""
    if not _serve_has("--snapshot-every"):
        pytest.skip("kv serve has no --snapshot-every option")
    cert, key = make_self_signed_cert(tmp_path)
    token_file = write_private(tmp_path / "token", TOKEN)
    secret_file = write_private(tmp_path / "secret", SECRET)
    nodes = make_nodes(args=["--secret-file", str(secret_file), "--token-file", str(token_file),
                             "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(cert),
                             "--snapshot-every", "20", "--compact-keep", "5"], token=TOKEN, ca_file=cert)
    leader = nodes.wait_leader()
    behind = next(i for i in nodes.ids if i != leader)
    nodes.kill(behind)
    live = next(i for i in nodes.ids if i not in (leader, behind))
    for k in range(60):
        assert nodes.put_retry(live, f"k{k}", str(k)).status == 200
    wait_until(lambda: nodes.status(leader)["snapshot"]["compacted_through"] > 0, 20, "compaction")
    nodes.spawn(behind)
    nodes.wait_ready(behind)
    target = nodes.status(live)["applied"]
    wait_until(lambda: nodes.status(behind)["applied"] >= target, 30, "the node to catch up")
    assert nodes.status(behind)["snapshot"]["installed"] >= 1
    assert nodes.get(behind, "k59", token=True).json["value"] == "59"
