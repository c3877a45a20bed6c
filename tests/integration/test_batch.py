"""POST /v1/batch against a real cluster: one slot for all writes, results in
order, exactly-once retries, and clear errors for bad batches."""
from __future__ import annotations

import json
import urllib.request

import pytest

from kvpaxos import AsyncClient, Client, NotFound


def post(cluster, node: int, body: dict, timeout: float = 15) -> tuple[int, dict]:
    req = urllib.request.Request(f"{cluster.url(node)}/v1/batch", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_batch_results_in_order_and_writes_share_one_slot(cluster):
    cluster.wait_for_leader()
    ops = [{"op": "put", "key": "b/a", "value": "1"},
           {"op": "put", "key": "b/b", "value": "2"},
           {"op": "cas", "key": "b/a", "if_value": "wrong", "value": "3"},
           {"op": "delete", "key": "b/missing"},
           {"op": "get", "key": "b/a"},
           {"op": "get", "key": "b/missing"}]
    status, body = post(cluster, 2, {"ops": ops, "client_id": "batcher", "seq": 1})
    assert status == 200, body
    r = body["results"]
    assert [x["ok"] for x in r] == [True, True, False, False, True, False]
    assert r[2]["error"] == "precondition_failed" and r[3]["error"] == "not_found"
    assert r[4]["value"] == "1" and r[5]["error"] == "not_found"
    assert r[1]["version"] == r[0]["version"] + 1  # applied together, in order
    # A retry with the same client_id/seq is answered from the first execution.
    status, again = post(cluster, 3, {"ops": ops, "client_id": "batcher", "seq": 1})
    assert status == 200 and again["results"][:4] == r[:4]
    assert cluster.get(1, "b/b").body["version"] == r[1]["version"]


def test_the_gets_of_a_batch_answer_at_most_16_mib_of_values(cluster):
    """Gets past the bound answer answer_too_large; the writes of the batch still apply."""
    cluster.wait_for_leader()
    assert cluster.put(1, "b/huge", "h" * 1_000_000, timeout=30).status == 200
    ops = [{"op": "get", "key": "b/huge"}] * 20 + [{"op": "put", "key": "b/after-huge", "value": "x"},
                                                  {"op": "get", "key": "b/after-huge"}]
    status, body = post(cluster, 2, {"ops": ops}, timeout=60)
    assert status == 200, body
    r = body["results"]
    assert [x["ok"] for x in r[:16]] == [True] * 16 and all(x["value"] == "h" * 1_000_000 for x in r[:16])
    assert all(x == {"ok": False, "error": "answer_too_large", "key": "b/huge"} for x in r[16:20]), r[16:20]
    assert r[20]["ok"] and r[21] == {"ok": True, "key": "b/after-huge", "value": "x", "version": r[20]["version"]}


def test_batch_writes_become_visible_together(cluster):
    cluster.wait_for_leader()
    for round_ in range(20):
        ops = [{"op": "put", "key": f"pair/{k}", "value": str(round_)} for k in "xy"]
        assert post(cluster, 1 + round_ % 3, {"ops": ops})[0] == 200
        status, body = post(cluster, 1 + (round_ + 1) % 3,
                            {"ops": [{"op": "get", "key": "pair/x"}, {"op": "get", "key": "pair/y"}]})
        x, y = body["results"]
        assert x["value"] == y["value"] == str(round_), body


@pytest.mark.parametrize("body, code", [
    ({}, "bad_request"),
    ({"ops": []}, "bad_request"),
    ({"ops": [{"op": "frobnicate", "key": "k"}]}, "bad_request"),
    ({"ops": [{"op": "put", "key": "k"}]}, "bad_request"),
    ({"ops": [{"op": "put", "key": "", "value": "v"}]}, "invalid_key"),
    ({"ops": [{"op": "put", "key": "k", "value": "v"}], "seq": 3}, "bad_request"),
])
def test_bad_batches_are_400(cluster, body, code):
    status, answer = post(cluster, 1, body)
    assert status == 400 and answer["error"] == code, answer


def test_top_level_clients(cluster):
    cluster.wait_for_leader()
    urls = [cluster.url(i) for i in cluster.ids]
    with Client(urls) as kv:
        kv.put("top", "level")
        assert kv.get("top").value == "level"
        with pytest.raises(NotFound):
            kv.get("absent")

    import asyncio

    async def run() -> str:
        async with AsyncClient(urls) as akv:
            await akv.put("top", "async")
            return (await akv.get("top")).value

    assert asyncio.run(run()) == "async"
