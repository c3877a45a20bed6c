"""`kv serve --join URL`: become a member of a running cluster, then start from its state.

Before the node starts, with an empty data directory:
  1. read the configuration from the node at URL (GET /v1/members);
  2. unless this id is already a member, ask to be added as a learner
     (POST /v1/members; a learner never votes, so a new node cannot break a
     quorum, and the leader promotes it once it has caught up);
  3. download a fresh snapshot from that node (GET /v1/snapshot?fresh=true),
     check it and put it in place: the state and the configuration as of one
     slot, which include this node, so the members it knows will talk to it.
The node keeps the configuration the cluster's log began with (the members
document's genesis, which names the cluster: its cluster_id), then starts as
usual from that snapshot and follows the log.

A node whose id already votes in the configuration lost its state (its data
directory is empty), so it must not vote on promises it forgot: it starts as a
rebuilding node, as any voter with an empty disk does (kvpaxos/node.py).
A data directory that already holds state is a restart: nothing is fetched.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from kvpaxos import snapshot
from kvpaxos.config import ConfigError, NodeConfig, address_text
from kvpaxos.core.membership import Membership
from kvpaxos.logs import fields
from kvpaxos.security import peer_session

log = logging.getLogger("kvpaxos.join")

JOIN_TIMEOUT_S = 120.0
CHUNK_BYTES = 256 * 1024


class JoinError(ConfigError):
    """The cluster refused this node, or could not be reached: the CLI prints one line."""


def has_state(data_dir: str, sqlite_file: str) -> bool:
    return os.path.exists(os.path.join(data_dir, sqlite_file)) or os.path.exists(snapshot.path_in(data_dir))


@dataclass(frozen=True)
class Joined:
    was_voter: bool  # this id voted before: the node lost its promises and must rebuild
    genesis: dict | None  # the configuration the cluster's log began with (None: an older cluster)


async def join(config: NodeConfig) -> Joined:
    """Make this node a member through config.join_url and install a snapshot to start
    from; the node's log then begins where the cluster's did (its genesis)."""
    assert config.join_url is not None
    url = config.join_url.rstrip("/")
    address = address_text(config.address)
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    async with peer_session(config, timeout=aiohttp.ClientTimeout(total=30)) as http:
        members = await _call(http, "GET", f"{url}/v1/members", deadline)
        node_id = config.node_id
        if node_id in members.get("removed", []):
            raise JoinError(f"node id {node_id} belonged to a node removed from this cluster; "
                            "ids are never reused: start this node with a new --id")
        known = {m["id"]: m for m in members.get("members", [])}
        was_voter = node_id in known and known[node_id]["role"] == "voter"
        if node_id in known and known[node_id].get("address") != address:
            raise JoinError(f"node {node_id} is already a member at {known[node_id].get('address')}, "
                            f"not {address}")
        if node_id not in known:
            log.info("asking to join", extra=fields(url=url, id=node_id, address=address))
            await _call(http, "POST", f"{url}/v1/members", deadline, json={"id": node_id, "address": address})
        await _fetch_snapshot(http, f"{url}/v1/snapshot?fresh=true", config.data_dir, deadline)
    return Joined(was_voter, _genesis(members))


def _genesis(members: dict[str, Any]) -> dict | None:
    """The cluster's genesis from its members document, checked against its cluster id."""
    if not isinstance(doc := members.get("genesis"), dict):
        return None
    try:
        genesis = Membership.from_json(doc)
    except ValueError as e:
        raise JoinError(f"the cluster described its first configuration badly: {e}") from None
    if genesis.identity() != members.get("cluster_id"):
        raise JoinError("the cluster's first configuration does not match its cluster id")
    return genesis.to_json()


async def _call(http: aiohttp.ClientSession, method: str, url: str, deadline: float,
                json: dict | None = None) -> dict[str, Any]:
    """One API call, retried while the cluster is busy (no leader, a change in flight)."""
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            async with http.request(method, url, json=json) as resp:
                body = await resp.json(content_type=None)
                if resp.status == 200 and isinstance(body, dict):
                    return body
                code = body.get("error") if isinstance(body, dict) else None
                last = f"{resp.status} {code}: {body.get('message') if isinstance(body, dict) else body}"
                if code not in ("change_in_progress", "no_quorum", "timeout"):
                    raise JoinError(f"{method} {url} refused: {last}")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError) as e:
            last = f"{type(e).__name__}: {e}"
        await asyncio.sleep(0.5)
    raise JoinError(f"{method} {url} did not succeed within {JOIN_TIMEOUT_S:g} s ({last})")


async def _fetch_snapshot(http: aiohttp.ClientSession, url: str, data_dir: str, deadline: float) -> None:
    path = snapshot.path_in(data_dir)
    tmp = path + ".join.tmp"
    loop = asyncio.get_running_loop()
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=600, sock_read=60)) as resp:
                if resp.status != 200:
                    last = f"{resp.status}"
                    await asyncio.sleep(0.5)
                    continue
                with open(tmp, "wb") as f:
                    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                        await loop.run_in_executor(None, f.write, chunk)
                    await loop.run_in_executor(None, os.fsync, f.fileno())
            state = await loop.run_in_executor(None, snapshot.read, tmp)
            if state.membership is None:
                raise JoinError("the cluster's snapshot carries no configuration (an older kvpaxos?)")
            await loop.run_in_executor(None, snapshot.install_file, tmp, path)
            log.info("joined: starting from a snapshot", extra=fields(slot=state.applied_slot,
                                                                      keys=len(state.data)))
            return
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, snapshot.SnapshotError) as e:
            last = f"{type(e).__name__}: {e}"
            await asyncio.sleep(0.5)
    raise JoinError(f"could not fetch a snapshot from {url} ({last})")
