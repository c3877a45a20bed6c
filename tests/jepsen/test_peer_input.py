"""Malformed and forged peer input against a live cluster (no cluster secret: the
default, where anyone who can reach /v1/peer may claim to be a member).

A forger dials /v1/peer of the leader and of a follower, claiming to be another
node of the cluster map, and sends garbage frames, frames that are JSON but not
frames, messages of wrong shapes and types, impossible ballots (a node id not in
the cluster, negative rounds), and well-formed messages that lie about who sent
them (a Prepare carrying another node's ballot, an Accept for slot 0, a Promise
of a ballot that is not the receiver's). Each must be dropped and counted where
it was caught (kvpaxos_malformed_total{kind="frame"|"message"|"protocol"};
/v1/status malformed_messages is the protocol count), the node must keep
serving, and the data must be intact on every node. Dialers claiming an id that
is not a peer are refused (403) and counted.

With a secret, a forger that cannot authenticate never gets this far:
tests/test_security.py covers that.
"""
from __future__ import annotations

import asyncio
import json
import os
import re

import aiohttp

from support.cluster import Cluster, wait_until

NODE_HEADER = "X-Kv-Node"
DEEP = 100_000


def _batch(cmds: list) -> dict:
    return {"c": cmds, "ts": 1}


def _cmd(key: str = "k", value: object = "v") -> list:
    return ["put", key, value, None, None, None, 0, "forged.1", 0]


def bad_frames(claimed: int, other: int) -> list[str | bytes]:
    """Frames the transport rejects whole (kind="frame")."""
    return [
        os.urandom(256),  # binary garbage
        b"\xff\xfe\x00garbage",  # not UTF-8
        "this is not JSON",
        "",
        "[1, 2, 3]",
        '{"src": %d}' % claimed,  # no msgs
        '{"src": %d, "msgs": {"t": "Prepare"}}' % claimed,  # msgs not a list
        '{"src": "%d", "msgs": []}' % claimed,  # src not an integer
        '{"src": -1, "msgs": []}',
        '{"src": 1e999, "msgs": []}',
        json.dumps({"src": other, "msgs": []}),  # a source that is not the dialer
        '{"src": %d, "msgs": %s%s}' % (claimed, "[" * DEEP, "]" * DEEP),  # absurdly deep
        "{" * DEEP,
        json.dumps({"src": claimed, "msgs": []})[:-3],  # cut short
    ]


def bad_messages(claimed: int, target: int) -> list:
    """Messages the codec rejects one by one inside a valid frame (kind="message")."""
    return [
        42, "Prepare", None, [], {},
        {"t": "NoSuchMessage"},
        {"t": "Prepare"},  # lacks fields
        {"t": "Prepare", "ballot": [-1, claimed], "from_slot": 1},  # negative round
        {"t": "Prepare", "ballot": [5, claimed], "from_slot": -3},
        {"t": "Prepare", "ballot": [5], "from_slot": 1},  # ballot of the wrong length
        {"t": "Prepare", "ballot": "5.2", "from_slot": 1},
        {"t": "Prepare", "ballot": [5.5, claimed], "from_slot": 1},
        {"t": "Prepare", "ballot": [True, claimed], "from_slot": 1},
        {"t": "Accept", "ballot": [5, claimed], "slot": "1", "value": _batch([])},
        {"t": "Accept", "ballot": [5, claimed], "slot": 1, "value": _batch([_cmd(value=5)])},  # put of a non-string
        {"t": "Accept", "ballot": [5, claimed], "slot": 1, "value": _batch([["explode", "k"]])},
        {"t": "Accept", "ballot": [5, claimed], "slot": 1, "value": {"c": "nope"}},
        {"t": "Commit", "ballot": [5, claimed], "commit_through": -1, "first_slot": 0},
        {"t": "ClientRequest", "commands": [_cmd(value=["not", "a", "string"])]},
        {"t": "ClientReply", "cmd_id": 7, "slot": 1},
        {"t": "ReadIndexReply", "read_id": 1, "index": "everything"},
        {"t": "CatchUpReply", "entries": [[0, _batch([])]], "snapshot_slot": 0},  # slot 0 entry
    ]


def forged_messages(claimed: int, target: int, other: int) -> list:
    """Well-formed messages that cannot be true (kind="protocol"): dropped by the replica."""
    return [
        {"t": "Prepare", "ballot": [10**6, 99], "from_slot": 1},  # node 99 is not a member
        {"t": "Prepare", "ballot": [10**6, other], "from_slot": 1},  # another node's ballot
        {"t": "Prepare", "ballot": [10**6, target], "from_slot": 1},  # the receiver's own ballot
        {"t": "Accept", "ballot": [10**6, other], "slot": 1, "value": _batch([_cmd("forged")])},
        {"t": "Accept", "ballot": [10**6, claimed], "slot": 0, "value": _batch([_cmd("forged")])},
        {"t": "Heartbeat", "ballot": [10**6, 99], "commit_through": 10**6, "hb_seq": 1, "first_slot": 1},
        {"t": "Commit", "ballot": [10**6, other], "commit_through": 10**6, "first_slot": 1},
        {"t": "Promise", "ballot": [10**6, other], "from_slot": 1, "accepted": [], "compacted_through": 0,
         "chosen": []},  # a promise of a ballot the receiver never asked for
        {"t": "Accepted", "ballot": [10**6, claimed], "slot": 1},
        {"t": "Reject", "ballot": [1, 99], "promised": [10**6, 99]},
    ]


def malformed_counts(cluster: Cluster, i: int) -> dict[str, int]:
    text = cluster.request(i, "GET", "/metrics").text
    out = {kind: 0 for kind in ("frame", "message", "protocol")}
    for kind, value in re.findall(r'^kvpaxos_malformed_total\{kind="(\w+)"\} (\d+)', text, re.M):
        out[kind] = int(value)
    out["status_protocol"] = cluster.status(i)["malformed_messages"]
    refused = re.search(r'^kvpaxos_peer_auth_failures_total\{reason="unknown_peer",side="inbound"\} (\d+)|'
                        r'^kvpaxos_peer_auth_failures_total\{side="inbound",reason="unknown_peer"\} (\d+)', text, re.M)
    out["refused"] = int(next(g for g in refused.groups() if g is not None)) if refused else 0
    return out


async def attack(url: str, claimed: int, frames: list[str | bytes]) -> list[str]:
    """Send frames on one peer link as node `claimed`; what happened to the link."""
    notes = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url.replace("http", "ws", 1) + "/v1/peer",
                                      headers={NODE_HEADER: str(claimed)}, max_msg_size=0) as ws:
            for frame in frames:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame)
            await asyncio.sleep(0.2)
            notes.append("open" if not ws.closed else f"closed {ws.close_code}")
    return notes


async def refused_dialers(url: str, self_id: int) -> list[int]:
    # An id the node does not know is let in: it may be a member added since the node
    # last learned the configuration (the replica drops what removed nodes send).
    statuses = []
    async with aiohttp.ClientSession() as session:
        for claimed in ("0", str(self_id), "abc", "-1", "2" * 40, None):
            headers = {} if claimed is None else {NODE_HEADER: claimed}
            try:
                async with session.ws_connect(url.replace("http", "ws", 1) + "/v1/peer", headers=headers):
                    statuses.append(101)
            except aiohttp.WSServerHandshakeError as e:
                statuses.append(e.status)
    return statuses


def test_malformed_and_forged_peer_messages_are_dropped_and_counted(make_cluster):
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    follower = next(i for i in cluster.ids if i != leader)
    for n in range(20):
        assert cluster.put(leader if n % 2 else follower, f"keep-{n}", f"value-{n}").status == 200
    before_status = {i: cluster.status(i) for i in cluster.ids}

    for target in (leader, follower):
        claimed = next(i for i in cluster.ids if i != target)
        other = next(i for i in cluster.ids if i not in (target, claimed))
        frames = bad_frames(claimed, other)
        messages = bad_messages(claimed, target)
        forged = forged_messages(claimed, target, other)
        before = malformed_counts(cluster, target)
        # Good and bad messages mixed in one frame: only the bad ones are dropped.
        mixed = [json.dumps({"src": claimed, "msgs": messages[:5] + [
            {"t": "ReadIndexReply", "read_id": 10**9, "index": None}] + messages[5:] + forged})]
        notes = asyncio.run(attack(cluster.url(target), claimed, frames + mixed))
        assert notes == ["open"], notes  # the link survives garbage: it is only dropped
        want = {"frame": before["frame"] + len(frames), "message": before["message"] + len(messages),
                "protocol": before["protocol"] + len(forged),
                "status_protocol": before["status_protocol"] + len(forged), "refused": before["refused"]}
        wait_until(lambda: malformed_counts(cluster, target) == want, 10,
                   f"node {target} to count the malformed input as {want} "
                   f"(now {malformed_counts(cluster, target)})")

        statuses = asyncio.run(refused_dialers(cluster.url(target), target))
        assert statuses == [403] * len(statuses), statuses
        assert malformed_counts(cluster, target)["refused"] == before["refused"] + len(statuses)

    # Every node still serves, nothing forged took hold, the data is intact everywhere.
    for i in cluster.ids:
        st = cluster.status(i)
        assert st["promised"].split(".")[0] != str(10**6), st  # no forged ballot was promised
        assert st["applied"] >= before_status[i]["applied"]
    assert cluster.put(follower, "after-attack", "yes").status == 200
    assert cluster.put(leader, "after-attack-2", "yes").status == 200
    for i in cluster.ids:
        for n in range(20):
            r = cluster.get(i, f"keep-{n}")
            assert (r.status, r.body and r.body.get("value")) == (200, f"value-{n}"), (i, n, r)
        assert cluster.get(i, "forged").status == 404
        assert cluster.get(i, "after-attack-2").body["value"] == "yes"
    scans = {}
    wait_until(lambda: len({s["applied"] for s in cluster.statuses().values()}) == 1, 10, "the same applied slot")
    for i in cluster.ids:
        scans[i] = cluster.list(i, stale=True).body["items"]
    assert scans[1] == scans[2] == scans[3], scans
