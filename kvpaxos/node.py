"""The node runtime: drives one Replica with a clock, a disk and a network.

The loop, per event-loop turn: feed inputs (peer messages, client commands,
reads, ticks) into the replica, then take one Ready and
  1. merge its durable writes into the open group and commit the group in one
     SQLite transaction (one fsync) on the disk thread, off the event loop;
  2. send its messages only after every write taken before them is durable
     (writes that pile up during one fsync go out together in the next);
  3. apply its chosen slots to the key-value state, in order, and wake the
     requests waiting for them.
Requests wait by command id: any node that applies the slot holding a command
can answer it, so a follower forwards a command to the leader and answers its
client from its own copy of the log.

Membership: the configuration is replicated state (kvpaxos/core/membership.py).
The node keeps the one as of its applied slot in its key-value state (so
snapshots carry it), dials the peers it names, and stops itself once the log
removes it. The initial configuration (from --cluster) is recorded in storage
on first start: a restart replays the log from it, whatever --cluster says.

A node whose data directory is new does not vote until it knows whether the
cluster is new too: it asks its peers (enough of them that one must hold any
state a majority ever held). If some peer holds Paxos state, this node lost
its own and rebuilds as a non-voter (see kvpaxos/core/replica.py).
"""
from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import math
import os
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable, Iterable

import aiohttp

from kvpaxos.config import NodeConfig, address_text, parse_address
from kvpaxos.core import messages as m
from kvpaxos.core.ballot import ZERO
from kvpaxos.core.commands import Batch, Command, Result
from kvpaxos.core.kvstate import KVState
from kvpaxos.core.membership import Membership
from kvpaxos.core.replica import CoreConfig, Ready, Replica, Role
from kvpaxos.errors import MemberChangeRefused, NoQuorum, OutcomeUnknown, Overloaded
from kvpaxos.logs import fields
from kvpaxos.metrics import NodeMetrics
from kvpaxos.security import peer_session, peer_url
from kvpaxos.snapshotter import Snapshotter, phase_of
from kvpaxos.watch import History
from storage.base import Storage, Writes

log = logging.getLogger("kvpaxos.node")

# A Prepare leaves only once the candidate's own promise of its ballot is durable
# (so a restart never reuses a ballot); Promise and Accepted report acceptor state.
_AFTER_COMMIT = frozenset((m.Prepare, m.Promise, m.Accepted))
UNDECIDED = -1  # storage's rebuilding mark while a new data directory waits for the peers' answers
NEW_CLUSTER_QUIET_S = 1.5  # no election this long after deciding that the cluster is new
DECIDING_TELL_S = (2.0, 30.0)  # a deciding node logs what it waits for after this long, then this often

Send = Callable[[int, m.Message], bool]  # False: certainly not sent


class _CounterNames(dict):
    """Counter names per message type ("sent_Accept"), each built once."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __missing__(self, t: type) -> str:
        name = self[t] = self.prefix + t.__name__
        return name


_SENT, _RECV = _CounterNames("sent_"), _CounterNames("recv_")


class _Sleeper:
    """A request's coroutine, asleep on one bare future (`wake`) until it is resolved,
    or until the node's tick finds its deadline or its time to resend passed: no timer
    of its own, the cheapest thing asyncio can await. The node holds the sleepers of
    the requests in flight only, so memory follows what is in flight, not the rate."""

    __slots__ = ("wake", "deadline", "resend_at", "exactly_once")

    def __init__(self, deadline: float) -> None:
        self.wake: asyncio.Future | None = None
        self.deadline = deadline
        self.resend_at = math.inf  # this attempt's time to go again (writes with a client id)
        self.exactly_once = False  # a leader change sends its command again at once

    def again(self) -> None:
        """Wake the coroutine (if it still sleeps on this wait)."""
        self.resend_at = math.inf
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)


class _Call(_Sleeper):
    """One submit_group() call: its commands' results as they come in. Its coroutine
    wakes when every result is in, a command is certainly not applied (its slot went
    to others), or it is time to resend or give up."""

    __slots__ = ("results", "missing", "lost", "started")

    def __init__(self, n: int, deadline: float) -> None:
        super().__init__(deadline)
        self.reset(n)

    def reset(self, n: int) -> None:
        self.results: list[Result | None] = [None] * n
        self.missing = n
        self.lost = False  # some command certainly not applied in this attempt
        self.started = time.perf_counter()  # for the commit latency

    def resolve(self, index: int, result: Result | None) -> None:
        if result is None:
            self.lost = True
        elif self.results[index] is None:
            self.results[index] = result
            self.missing -= 1
        if self.lost or not self.missing:
            self.again()


class Node:
    def __init__(self, config: NodeConfig, storage: Storage, fresh: bool = False,
                 joined: bool = False) -> None:
        self.config = config
        self.id = config.node_id
        self.storage = storage
        self.snapshots = Snapshotter(config.data_dir, phase_of(self.id))
        self.kv = self.snapshots.load()
        # The changes applied from here on, for watches (kvpaxos/watch.py).
        self.history = History(self.kv.revision, config.watch_history_changes, config.watch_history_bytes)
        base = self.kv.applied_slot
        durable = storage.load()
        rebuild_round = storage.rebuilding()
        # Deciding must survive a crash: a restart must not turn a node that lost its state
        # into a voter. A node with no Paxos state and no snapshot has nothing to lose by
        # asking again (this also covers a crash before the marker below was written).
        # A snapshot without acceptor state (kv snapshot restore, or a lost acceptor file)
        # asks too: a restored new cluster finds no promises anywhere and votes, a node of a
        # running cluster rebuilds. A node that just joined (as a learner) promised nothing.
        empty = durable.promised == ZERO and not durable.accepted and not durable.chosen
        self.deciding = rebuild_round == UNDECIDED or (
            rebuild_round is None and ((base == 0 and (fresh or empty)) or (fresh and not joined)))
        if self.deciding and rebuild_round != UNDECIDED:
            storage.set_rebuilding(UNDECIDED)
        self.deciding_heard = (0, self._enough_for_new())  # peers answered, of those needed
        self.deciding_problem: str | None = None  # why deciding cannot end (see _decide_voting)
        if rebuild_round == UNDECIDED:
            rebuild_round = None
        stored = storage.genesis()
        genesis = (Membership.from_json(stored) if stored is not None else Membership.initial(
            config.cluster, config.window_slots, {i: address_text(a) for i, a in config.cluster.items()}))
        first = self.kv.membership.genesis() if self.kv.membership is not None else None
        if first is not None and first.identity() != genesis.identity():
            # Nodes that joined before joins took the cluster's genesis stored one made from
            # their own address; the snapshot they started from names the cluster's.
            log.info("node %d: taking the cluster's first configuration from the snapshot", self.id)
            genesis, stored = first, None
        if stored is None:
            storage.set_genesis(genesis.to_json())
        self.genesis = genesis  # the configuration this node's log begins with
        self.cluster_id = genesis.identity()
        # Whether the membership is still the genesis itself (no snapshot named one, nothing
        # applied): a rebuilding node may then swap in its cluster's (see _learn_cluster).
        self._members_from_genesis = self.kv.membership is None
        if self.kv.membership is None:
            self.kv.membership = genesis  # no snapshot yet (or one from before membership changes)
        core = CoreConfig(election_ticks=config.election_ticks, heartbeat_ticks=config.heartbeat_ticks,
                          retry_ticks=max(2, config.heartbeat_ticks * 2), window_slots=config.window_slots,
                          batch_count_max=config.batch_count_max, batch_bytes_max=config.batch_bytes_max,
                          partial_in_flight=config.partial_in_flight,
                          defer_self_vote=config.self_vote_delay_ms > 0, pre_vote=True)
        self.replica = Replica(
            self.id, self.kv.membership, core, random.Random(), promised=durable.promised,
            accepted={s: v for s, v in durable.accepted.items() if s > base},
            chosen={s: v for s, v in durable.chosen.items() if s > base}, applied_through=base,
            voting=rebuild_round is None and not self.deciding, rebuild_round=rebuild_round or 0)
        self.send_peer: Send = lambda dst, msg: False
        # A Commit no one waits for rides in the next frame to its peer, or goes on the next
        # tick: at a steady rate it travels with the next Accept, so a follower gets one
        # frame and runs one group commit per slot instead of two (see _send_all).
        self.send_peer_lazy: Send = lambda dst, msg: self.send_peer(dst, msg)
        self.flush_lazy: Callable[[], None] = lambda: None
        self.on_fatal: Callable[[BaseException], None] = lambda exc: None
        self.storage_failure: BaseException | None = None  # a group commit failed: stopping
        self.on_peers: Callable[[dict[int, tuple[str, int]]], None] = lambda cluster: None
        self.on_removed: Callable[[], None] = lambda: None
        self.removed = False
        self._peers_for: tuple[Membership, bool] | None = None
        self.counters: Counter[str] = Counter()
        self.metrics = NodeMetrics()  # histograms; GET /metrics renders both
        self.boot_id = os.urandom(4).hex()
        self._cmd_ids = itertools.count(1)
        self._cmd_id_prefix = f"{self.id}.{self.boot_id}."
        # A write with a client id is sent again after this long without an answer.
        self._resend_s = 4 * config.election_ticks * config.tick_ms / 1000
        self._read_ids = itertools.count(1)
        self._waiters: dict[str, tuple[_Call, int]] = {}  # cmd_id -> its call and place in it
        self.pending_bytes = 0  # of the commands submitted here that wait for their outcome
        # The requests in flight, swept on each tick for deadlines and resends (an ordered set).
        self._sleepers: dict[_Sleeper, None] = {}
        # Read indexes asked for and when to ask again if unanswered, in time order.
        self._read_retries: collections.deque[tuple[float, int]] = collections.deque()  # read_ids
        self._slot_waiters: dict[int, list[str]] = {}
        self._remote_cmds: dict[str, int] = {}
        self._origin_slots: dict[int, collections.deque[int]] = {}  # peer -> slots of its forwarded commands
        self._read_waiters: dict[int, list[asyncio.Future]] = {}  # read_id -> the reads sharing it
        self._read_batch: list[asyncio.Future] | None = None  # reads to ask an index for this turn
        self._apply_waiters: list[tuple[int, int, asyncio.Future]] = []
        self._open_writes = Writes()
        self._open_messages: list[tuple[int, m.Message]] = []
        self._committing = False
        self._pump_scheduled = False
        self._self_vote_timer: asyncio.TimerHandle | None = None
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"disk-{self.id}")
        self._ticker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_leader: int | None = None
        self._leader_url: tuple[int | None, tuple[str, int] | None, str] = (None, None, "")
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ticker = asyncio.create_task(self._tick_forever())
        self._http = peer_session(self.config)
        self._sync_peers()
        if self.deciding:
            self._spawn(self._decide_voting())
        self._wake()  # replay the chosen log we loaded into the state machine

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._self_vote_timer is not None:
            self._self_vote_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if not self._committing:
            self._commit_or_send(chosen_too=True)  # chosen records still open
        while self._committing:
            await asyncio.sleep(0.005)
        if self._http is not None:
            await self._http.close()
        self._disk.shutdown(wait=True)
        self.snapshots.close()
        self.storage.close()

    def _spawn(self, coro) -> None:  # noqa: ANN001 - any coroutine
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run_on_disk(self, fn, *args):  # noqa: ANN001, ANN201 - a storage call
        """Run a storage call on the disk thread, ordered with the group commits."""
        return await asyncio.get_running_loop().run_in_executor(self._disk, fn, *args)

    async def _decide_voting(self) -> None:
        """New data directory: find out whether the cluster is new or we lost our state.

        Any state a majority ever held shows in ceil(n/2) of the other nodes, which
        is enough to call the cluster new. A node that lost its state must hear
        from EVERY peer before it picks its rebuild horizon: a candidate's own
        promise of its ballot is durable before its Prepare leaves, so only asking
        everyone is sure to see a ballot we may have promised and forgotten (a
        majority can miss it while that Prepare is still in flight to them).
        """
        peers = [p for p in self.config.cluster if p != self.id]
        answers = await self._ask_peers(peers, self._enough_for_new())
        told_at = None
        while not _holds_state(answers.values()) and (odd := self._other_lists(answers)):
            # A new cluster whose nodes were given different --cluster lists would count
            # different majorities: wait, saying so, until every answer names our voters.
            told_at = await self._not_voting(
                "peer(s) " + ", ".join(f"{p} (voters {','.join(map(str, v))}"
                                       + (", another alpha)" if v == self._own_voters() else ")")
                                       for p, v in sorted(odd.items()))
                + f" were started with another --cluster list than node {self.id} (voters "
                + ",".join(map(str, self._own_voters())) + "): start every node of a new cluster with the same list",
                told_at)
            answers = await self._ask_peers(peers, self._enough_for_new())
        self.deciding_problem = None
        if not _holds_state(answers.values()):
            log.info("node %d: new cluster, voting from the start", self.id)
            await self.run_on_disk(self.storage.set_rebuilding, None)
            self.deciding = False
            self.replica.voting = True
            # Hold the first election a moment: a peer still deciding (started later, or
            # slowed down) that saw our ballot would take the cluster for one that holds
            # state and rebuild, and with a majority rebuilding no one could be elected.
            self.replica.election_elapsed = -int(NEW_CLUSTER_QUIET_S * 1000 / self.config.tick_ms)
            return
        answers = await self._ask_peers(peers, len(peers), answers)
        answers = await self._learn_cluster(answers)
        horizon = max([_round(a.get("promised", "0.0")) for a in answers.values()]
                      + [a.get("rebuilding") or 0 for a in answers.values()])
        await self.run_on_disk(self.storage.set_rebuilding, horizon)
        self.replica.rebuild_round = horizon
        self.deciding = False
        log.warning("node %d: data directory is new but the cluster holds state: rebuilding as a "
                    "non-voter until a ballot above round %d chooses a slot", self.id, horizon)

    async def _learn_cluster(self, answers: dict[int, dict]) -> dict[int, dict]:
        """A node rebuilding its state takes its cluster's first configuration, not the one
        its own --cluster list gives (a wrong list would count other majorities while it
        replays the log), and asks every voter the cluster has now, not only those its list
        names. It does not vote while its peers name different clusters."""
        told_at = None
        while True:
            doc = None
            for peer in sorted(answers):
                if (doc := await self._peer_json(peer, "/v1/members?consistency=stale")) is not None:
                    break
            problem = None if doc is not None else "no peer holding state described its cluster (/v1/members)"
            if doc is not None and isinstance(doc.get("genesis"), dict):
                try:
                    genesis = Membership.from_json(doc["genesis"])
                except ValueError:
                    genesis = None
                if genesis is None or genesis.identity() != doc.get("cluster_id"):
                    problem = f"node {peer} described its cluster's first configuration inconsistently"
                elif genesis.identity() != self.cluster_id:
                    await self._adopt_genesis(genesis)
            others = {p: a["cluster_id"] for p, a in answers.items() if self._names_other_cluster(a)}
            if others and problem is None:
                problem = ("peer(s) " + ", ".join(f"{p} (cluster {c})" for p, c in sorted(others.items()))
                           + f" belong to another cluster than the rest (cluster {self.cluster_id})")
            missing = self._unasked_voters(answers, doc)
            if problem is None and missing:
                answers = await self._ask_peers(missing, len(answers) + len(missing), answers)
                continue
            if problem is None:
                self.deciding_problem = None
                return answers
            told_at = await self._not_voting(problem, told_at)
            answers = await self._ask_peers(list(answers), len(answers))

    async def _not_voting(self, problem: str, told_at: float | None) -> float:
        """Show why deciding cannot end (status, refusals), log it at most every
        DECIDING_TELL_S[1], and wait a second before asking again; when it was told."""
        self.deciding_problem = problem
        now = asyncio.get_running_loop().time()
        if told_at is None or now - told_at >= DECIDING_TELL_S[1]:
            told_at = now
            log.error("not voting: %s", problem)
        await asyncio.sleep(1.0)
        return told_at

    def _unasked_voters(self, answers: dict[int, dict], doc: dict | None) -> list[int]:
        """Voters a peer names that have not answered yet; their addresses (from the
        members document) are added to the peers this node can reach."""
        named: set[int] = set()
        for a in [*answers.values(), doc or {}]:
            if isinstance(v := a.get("voters"), list):
                named.update(i for i in v if type(i) is int)
        members = doc.get("members") if doc is not None else None
        for member in members if isinstance(members, list) else []:
            address = parse_address(member.get("address") or "") if isinstance(member, dict) else None
            if address is not None and type(member.get("id")) is int and member["id"] not in self.config.cluster:
                self.config.cluster[member["id"]] = address
        return sorted(i for i in named if i != self.id and i not in answers and i in self.config.cluster)

    async def _adopt_genesis(self, cluster: Membership) -> None:
        # The cluster's voters and alpha; the addresses this node was given where it has them
        # (behind proxies, each node may reach a peer at another address).
        first = cluster.history[0]
        own = {i: a for i, a in self.genesis.latest.addresses if i in first.config.members}
        addresses = tuple(sorted({**dict(first.config.addresses), **own}.items()))
        genesis = Membership(cluster.alpha, (replace(first, config=replace(first.config, addresses=addresses)),))
        log.warning("node %d: the cluster began from another configuration than --cluster gives "
                    "(voters %s, not %s); rebuilding from the cluster's", self.id,
                    ",".join(map(str, genesis.latest.voters)), ",".join(map(str, self.genesis.latest.voters)))
        await self.run_on_disk(self.storage.set_genesis, genesis.to_json())
        self.genesis, self.cluster_id = genesis, genesis.identity()
        if self._members_from_genesis:
            self.kv.membership = genesis
            self.replica.adopt_membership(genesis)
            self._sync_peers()

    def _own_voters(self) -> list[int]:
        return sorted(self.kv.membership.latest.voters) if self.kv.membership else []

    def _other_lists(self, answers: dict[int, dict]) -> dict[int, list[int]]:
        """The peers whose status names other voters than ours (a peer of a new cluster
        names the voters of its own --cluster list)."""
        own = self._own_voters()
        return {p: sorted(v) for p, a in answers.items()
                if isinstance(v := a.get("voters"), list) and v and (sorted(v) != own or self._names_other_cluster(a))}

    def _names_other_cluster(self, status: dict) -> bool:
        """Whether a peer's /v1/status names another cluster id than ours (a peer too old
        to name one does not)."""
        named = status.get("cluster_id")
        return isinstance(named, str) and named != self.cluster_id

    def _enough_for_new(self) -> int:
        """Peers that must answer "no state" before a node with a new data directory
        calls the cluster new: ceil(n/2), so that they meet every majority of n."""
        n = len(self.config.cluster)
        return min(n - 1, n - n // 2)

    async def _ask_peers(self, peers: list[int], needed: int,
                         answers: dict[int, dict] | None = None) -> dict[int, dict]:
        """Poll peers' /v1/status until `needed` of them have answered. While it waits,
        /v1/status shows how many have (deciding_heard: [answered, needed]), refused
        requests say why, and the log says which peers it waits for."""
        answers = dict(answers or {})
        loop = asyncio.get_running_loop()
        tell_at = loop.time() + DECIDING_TELL_S[0]
        while True:
            self.deciding_heard = (min(len(answers), needed), needed)
            if len(answers) >= needed:
                return answers
            for peer in peers:
                if peer not in answers:
                    status = await self._peer_status(peer)
                    if status is not None:
                        answers[peer] = status
            if len(answers) < needed:
                if loop.time() >= tell_at:
                    tell_at = loop.time() + DECIDING_TELL_S[1]
                    log.info("new data directory: waiting for peers to answer before voting",
                             extra=fields(needs=needed, answered=len(answers),
                                          waiting_for=",".join(str(p) for p in peers if p not in answers)))
                await asyncio.sleep(0.2)

    def deciding_reason(self) -> str:
        """Why this node does not vote yet, while it is deciding ('' otherwise)."""
        if not self.deciding:
            return ""
        if self.deciding_problem:
            return f"node {self.id} does not vote: {self.deciding_problem}"
        heard, needs = self.deciding_heard
        return (f"node {self.id} has a new data directory and votes only once {needs} of its peers say "
                f"whether the cluster holds state ({heard} have answered); start the others")

    async def _peer_status(self, peer: int) -> dict | None:
        return await self._peer_json(peer, "/v1/status")

    async def _peer_json(self, peer: int, path: str) -> dict | None:
        assert self._http is not None
        if peer not in self.config.cluster:
            return None  # no longer a peer (the configuration changed meanwhile)
        try:
            async with self._http.get(self.peer_url(peer, path),
                                      timeout=aiohttp.ClientTimeout(total=1)) as resp:
                body = await resp.json()
                return body if resp.status == 200 and isinstance(body, dict) else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError):
            return None

    @property
    def leader_url(self) -> str | None:
        """The leader's HTTP API as its peers (and so clients) reach it, if one is known."""
        leader = self.replica.leader_id
        address = self.config.cluster.get(leader) if leader is not None else None
        if address is None:
            return None
        # Every HTTP answer names the leader: build its URL once per leader and address.
        if self._leader_url[:2] != (leader, address):
            self._leader_url = (leader, address, self.peer_url(leader, ""))
        return self._leader_url[2]

    def peer_url(self, peer: int, path: str) -> str:
        """URL of `path` on a peer's HTTP API (https when the cluster uses TLS)."""
        return peer_url(self.config, peer, path)

    def install_state(self, state: KVState) -> None:
        """Adopt a verified snapshot newer than our state and continue the log after it."""
        assert state.applied_slot > self.kv.applied_slot
        if state.membership is None:
            state.membership = self.kv.membership  # a peer's snapshot from before membership changes
        self.kv = state
        self.history.restart(state.revision)  # the changes inside the snapshot are not known
        self.replica.install_snapshot(state.applied_slot, state.membership)
        self._wake_applied()
        self._wake()

    async def _tick_forever(self) -> None:
        interval = self.config.tick_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self.replica.tick(int(time.time() * 1000))
            self._nudge_if_due()
            self._sweep_waits()
            self._wake()
            self.flush_lazy()
            self._commit_or_send(chosen_too=True)
            if self._committing and hasattr(self.storage, "check"):
                try:
                    self.storage.check()  # a commit that died never reports back
                except Exception as e:  # noqa: BLE001 - any storage failure stops the node
                    self._storage_failed(e)
                    return

    # -- inputs ---------------------------------------------------------------

    def deliver(self, src: int, msgs: list[m.Message]) -> None:
        if self.deciding:
            # Until we know whether we lost state, learning would let the replica count a
            # slot of a ballot begun before the loss as fresh, and vote again too early.
            return
        for msg in msgs:
            self.counters[_RECV[type(msg)]] += 1
            if isinstance(msg, m.ClientRequest):
                self._on_client_request(src, msg.commands)
            elif isinstance(msg, m.ClientReply):
                self._on_slot_known(msg.cmd_id, msg.slot)
            else:
                self.replica.step(src, msg)
        self._wake()

    def new_cmd_id(self) -> str:
        return self._cmd_id_prefix + str(next(self._cmd_ids))

    async def submit(self, cmd: Command) -> Result:
        """Get cmd chosen and applied; its Result, or NoQuorum / OutcomeUnknown."""
        return (await self.submit_group((cmd,)))[0]

    async def submit_group(self, cmds: tuple[Command, ...]) -> list[Result]:
        """Get cmds chosen together in one slot and applied, in order; their Results."""
        size = cmds[0].size_bytes() if len(cmds) == 1 else sum(c.size_bytes() for c in cmds)
        if self.pending_bytes and self.pending_bytes + size > self.config.pending_bytes_max:
            self.counters["requests_overloaded"] += 1
            raise Overloaded(f"node {self.id} has {self.pending_bytes} bytes of commands waiting for their "
                             f"outcome, its limit (kv serve --max-pending-bytes): retry later")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout_s
        resend_s = self._resend_s
        call = self._register(cmds, _Call(len(cmds), deadline))
        maybe_taken = False  # some attempt may still be chosen
        earlier_pending = False  # an attempt before the latest one may still be chosen
        # Resending is safe with a client id: go again after a while, or at once when the
        # leader changes. Without one a resend could apply twice: wait for this attempt.
        call.exactly_once = cmds[0].client_id is not None
        self._sleepers[call] = None
        self.pending_bytes += size
        try:
            while loop.time() < deadline:
                if self.removed:
                    break
                leader = self.replica.leader_id
                if leader is None or (leader == self.id and self.replica.role is not Role.LEADER):
                    await asyncio.sleep(self.config.tick_ms / 1000)
                    continue
                if leader == self.id:
                    self.replica.propose(cmds)
                    self._wake()
                elif not self._forward(leader, m.ClientRequest(cmds)):
                    await asyncio.sleep(self.config.tick_ms / 1000)  # link down: not sent
                    continue
                maybe_taken = True
                if call.missing and not call.lost:
                    call.wake = loop.create_future()
                    if call.exactly_once:
                        call.resend_at = loop.time() + resend_s
                    await call.wake
                if self.removed:
                    break  # the attempt may still be chosen by the members: outcome unknown
                if not call.missing:
                    self.metrics.commit_latency.observe(time.perf_counter() - call.started, len(cmds))
                    return call.results  # type: ignore[return-value] - every one is in
                if not call.lost:
                    earlier_pending = True  # time to resend (or the deadline): it may still come
                    continue
                # This attempt's slot went to other commands, so it is certainly not
                # applied; an earlier attempt that timed out may still be.
                maybe_taken = earlier_pending
                call.reset(len(cmds))
                self._register(cmds, call)
                await asyncio.sleep(self.config.tick_ms / 1000)
        finally:
            self.pending_bytes -= size
            del self._sleepers[call]
            for c in cmds:
                entry = self._waiters.get(c.cmd_id)
                if entry is not None and entry[0] is call:
                    del self._waiters[c.cmd_id]
        note = self.why_alone()
        if maybe_taken:
            raise OutcomeUnknown("the command may or may not have been applied; "
                                 f"retry with the same client_id and seq to find out{note}")
        raise NoQuorum(f"no leader could be reached{note}", retry_after_s=1)

    def why_alone(self) -> str:
        """What a request that found no leader should say about this node, if anything."""
        if self.removed:
            return " (this node was removed from the cluster: ask a member)"
        return f": {self.deciding_reason()}" if self.deciding else ""

    def _register(self, cmds: tuple[Command, ...], call: _Call) -> _Call:
        """Wait for cmds' results by command id, in `call`."""
        for i, c in enumerate(cmds):
            self._waiters[c.cmd_id] = (call, i)
        return call

    def _sweep_waits(self) -> None:
        """On a tick: wake the requests whose deadline or time to resend passed, and
        forget read indexes asked for long ago (their reads ask again)."""
        now = asyncio.get_running_loop().time()
        for sleeper in self._sleepers:
            if sleeper.deadline <= now or sleeper.resend_at <= now:
                sleeper.again()
        while self._read_retries and self._read_retries[0][0] <= now:
            self._answer_reads(self._read_retries.popleft()[1], None)  # unanswered: ask again

    async def linearizable_point(self) -> None:
        """Return once local state reflects every write completed before the call (read-index)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout_s
        sleeper = _Sleeper(deadline)
        self._sleepers[sleeper] = None
        try:
            return await self._read_point(sleeper)
        finally:
            del self._sleepers[sleeper]

    async def _read_point(self, sleeper: _Sleeper) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < sleeper.deadline and not self.removed:
            sleeper.wake = self._read_index()
            index = await sleeper.wake  # None: no answer (no leader, or not in time)
            if index is not None:
                if self.kv.applied_slot < index:
                    sleeper.wake = self._applied(index)
                    await sleeper.wake  # woken by the apply, by the deadline, or by removal
                    if self.kv.applied_slot < index:
                        if self.removed:
                            break  # this node will never apply that far
                        # A KvError, not a bare TimeoutError (HTTP 500).
                        raise OutcomeUnknown("this node did not apply the log up to the read point "
                                             "in time")
                return
            await asyncio.sleep(self.config.tick_ms / 1000)
        raise NoQuorum(f"no leader confirmed the read{self.why_alone()}", retry_after_s=1)

    def _read_index(self) -> asyncio.Future:
        """A future for a read index (or None), asked for once per event-loop turn for
        every read that wants one by then. Sharing is linearizable: the index is taken
        after each of those reads began."""
        future = asyncio.get_running_loop().create_future()
        if self._read_batch is None:
            self._read_batch = []
            asyncio.get_running_loop().call_soon(self._ask_read_index)
        self._read_batch.append(future)
        return future

    def _ask_read_index(self) -> None:
        batch, self._read_batch = self._read_batch or [], None
        read_id = next(self._read_ids)
        self._read_waiters[read_id] = batch
        retry_s = 2 * self.config.election_ticks * self.config.tick_ms / 1000
        self._read_retries.append((asyncio.get_running_loop().time() + retry_s, read_id))  # then ask again
        self.replica.read_index(read_id)
        self._wake()

    def _answer_reads(self, read_id: int, index: int | None) -> None:
        for future in self._read_waiters.pop(read_id, ()):
            if not future.done():
                future.set_result(index)

    def _applied(self, index: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if self.kv.applied_slot >= index:
            future.set_result(None)
        else:
            heapq.heappush(self._apply_waiters, (index, id(future), future))
        return future

    # -- leader-side forwarding -----------------------------------------------

    def _on_client_request(self, src: int, cmds: tuple[Command, ...]) -> None:
        if not cmds:
            return
        # A group always lands whole in one slot, so its first command stands for all of
        # them: one ClientReply per forwarded request, not one per command (a POST
        # /v1/batch forwarded with 100 commands got 100). The origin learns the slot for
        # that command, and a slot applied without it tells the whole group's call it lost.
        if self.replica.propose(cmds):
            self._remote_cmds[cmds[0].cmd_id] = src
        else:
            self.send_peer(src, m.ClientReply(cmds[0].cmd_id, 0))

    def _on_slot_known(self, cmd_id: str, slot: int) -> None:
        """The command went into `slot` (0: it was not taken and may be resent)."""
        waiter = self._waiters.get(cmd_id)
        if waiter is None:
            return
        if slot == 0 or slot <= self.kv.applied_slot:
            # Applied slots resolve their commands' waiters, so this one lost its slot.
            self._resolve(cmd_id, None)
        else:
            self._slot_waiters.setdefault(slot, []).append(cmd_id)

    def _forward(self, leader: int, msg: m.Message) -> bool:
        sent = self.send_peer(leader, msg)
        if sent:
            self.counters["requests_forwarded"] += 1
        return sent

    def _resolve(self, cmd_id: str, result: Result | None) -> None:
        entry = self._waiters.pop(cmd_id, None)
        if entry is not None:
            entry[0].resolve(entry[1], result)

    # -- the Ready loop -------------------------------------------------------

    def _wake(self) -> None:
        if not self._pump_scheduled and self._loop is not None:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        if self.replica.role is Role.LEADER:
            self.replica.observe_clock(int(time.time() * 1000))  # the reading of the slots it forms now
        ready = self.replica.take_ready()
        due = self.replica.has_due_self_votes()
        if self._self_vote_timer is None and due:
            assert self._loop is not None
            self._self_vote_timer = self._loop.call_later(self.config.self_vote_delay_ms / 1000,
                                                          self._self_votes_due)
        elif self._self_vote_timer is not None and not due:
            self._self_vote_timer.cancel()  # the followers made it: no wake-up for nothing
            self._self_vote_timer = None
        if ready.is_empty():
            return
        self._note_leader()
        self.counters["commands_proposed"] += len(ready.proposed)
        self.counters["slots_chosen"] += len(ready.chosen)
        # Only messages that report or depend on this node's acceptor state wait for
        # the group commit; the rest (Accept, heartbeats, commits, catch-up, replies to
        # forwarding peers) leave now, so the leader's fsync and its followers' overlap.
        send_now = []
        for out in ready.messages:
            if type(out[1]) in _AFTER_COMMIT:
                self._open_messages.append(out)
            else:
                send_now.append(out)
        remote = self._remote_cmds
        for cmd_id, slot in ready.proposed.items():
            origin = remote.pop(cmd_id, None) if remote else None
            if origin is not None:
                send_now.append((origin, m.ClientReply(cmd_id, slot)))
                slots = self._origin_slots.setdefault(origin, collections.deque())
                if not slots or slots[-1] != slot:
                    slots.append(slot)  # that peer waits for this slot's Commit
            self._on_slot_known(cmd_id, slot)
        for cmd in ready.dropped:
            origin = self._remote_cmds.pop(cmd.cmd_id, None)
            if origin is not None:
                send_now.append((origin, m.ClientReply(cmd.cmd_id, 0)))
            self._resolve(cmd.cmd_id, None)
        self._open_writes.merge(Writes(ready.promised, ready.accepted, ready.chosen))
        for cmd_id, result in ready.member_results.items():
            self._resolve(cmd_id, result)  # before the key-value state answers them with a placeholder
        self._apply(ready)
        if ready.membership is not None:
            self.kv.membership = ready.membership
            self._sync_peers()
        if ready.removed and not self.removed:
            self.removed = True
            log.warning("this node was removed from the cluster; stopping",
                        extra=fields(slot=self.kv.applied_slot))
            self._release_waiters()
            self.on_removed()
        if ready.snapshot_from is not None and self._http is not None:
            self._spawn(self.snapshots.fetch_and_install(self, ready.snapshot_from, self._http))
        if ready.became_voter:
            log.info("node %d: rebuilt; voting again", self.id)
            self._spawn(self.run_on_disk(self.storage.set_rebuilding, None))
        if self.snapshots.due(self):
            self._spawn(self.snapshots.take(self))
        for read_id, index in ready.reads:
            self._answer_reads(read_id, index)
        self._send_all(send_now)
        self._commit_or_send()

    def _self_votes_due(self) -> None:
        """Cast the leader's own votes that became due before the last period
        (CoreConfig.defer_self_vote); the pump persists them and sets the timer again
        for any due since. A vote falling due while the timer is idle so waits two
        periods: the first only starts its round (asyncio rounds the default 0.5 ms
        period up to whole milliseconds, so about 2 ms)."""
        self._self_vote_timer = None
        self.replica.cast_self_votes()
        self._wake()

    def _apply(self, ready: Ready) -> None:
        for slot, batch in ready.apply:
            self._apply_slot(slot, batch)
        self._wake_applied()
        if self.kv.expiry or self.kv.leases:
            self._nudge_if_due()

    def _nudge_if_due(self) -> None:
        """Replica.nudge_clock with the earliest deadline: asked each tick, and after each
        slot applied, so that many keys due at once go slot after slot (a slot deletes at
        most EXPIRE_PER_SLOT), not a slot a tick."""
        if self.replica.nudge_clock(self.kv.next_deadline()):
            self._wake()

    def _wake_applied(self) -> None:
        while self._apply_waiters and self._apply_waiters[0][0] <= self.kv.applied_slot:
            future = heapq.heappop(self._apply_waiters)[2]
            if not future.done():
                future.set_result(None)

    def _apply_slot(self, slot: int, batch: Batch) -> None:
        # The log's bytes for the snapshot schedule: the slot's own commands, not the
        # changes applying them made (a transaction's writes, keys expired).
        size = sum(cmd.size_bytes() for cmd in batch.commands)
        waiters = self._waiters
        applied = self.kv.apply(slot, batch)
        if self.kv.last_expired:  # keys whose time to live (or lease's) ran out at this slot
            self.counters["keys_expired"] += self.kv.last_expired
        if self.kv.last_leases_expired:
            self.counters["leases_expired"] += self.kv.last_leases_expired
        for cmd, result in applied:
            entry = waiters.pop(cmd.cmd_id, None)
            if entry is not None:
                entry[0].resolve(entry[1], result)
        self.history.record_applied(applied)
        self.snapshots.applied(slot, size)
        for cmd_id in self._slot_waiters.pop(slot, ()):
            if cmd_id in waiters:
                self._resolve(cmd_id, None)  # it was to be in this slot, which others took
        self.counters["slots_applied"] += 1
        self.metrics.batch_size.observe(len(batch.commands))

    def _commit_or_send(self, chosen_too: bool = False) -> None:
        if self._committing:
            return  # messages wait: they may depend on the writes being committed
        if not self._open_writes:
            self._send_all(self._open_messages)
            self._open_messages = []
            return
        if not chosen_too and not self._open_messages and self._open_writes.only_chosen():
            # Chosen records are for a faster restart, not for safety, and nothing waits
            # for them: they go with the next promise or acceptance, or on the next tick.
            # Committing them alone would cost every slot a second fsync, and the next
            # Accept would wait for it.
            return
        writes, messages = self._open_writes, self._open_messages
        self._open_writes, self._open_messages = Writes(), []
        gone = self.snapshots.compacting_through
        if gone and writes.chosen and min(writes.chosen) <= gone:
            # A compaction that may already have deleted these slots' records is under
            # way: a snapshot holds them, and writing them now would leave them behind.
            writes.chosen = {s: v for s, v in writes.chosen.items() if s > gone}
        self._committing = True
        started = time.perf_counter()
        loop = self._loop
        assert loop is not None
        submit = getattr(self.storage, "submit", None)
        if submit is not None:
            # Queued straight to the storage's own writer thread, which reports back.
            submit(writes, lambda: loop.call_soon_threadsafe(self._on_committed, None, messages, started))
        else:
            future = loop.run_in_executor(self._disk, self.storage.save, writes)
            future.add_done_callback(lambda f: self._on_committed(f.exception(), messages, started))

    def _storage_failed(self, exc: BaseException) -> None:
        """A group commit failed: the node stops (its messages never leave), said once
        however many of its paths find the failure before it is down."""
        if self.storage_failure is None:
            self.storage_failure = exc
            log.critical("storage write failed, stopping: %s", exc)
            self.on_fatal(exc)

    def _on_committed(self, exc: BaseException | None, messages: list, started: float) -> None:
        self._committing = False
        if exc is None and hasattr(self.storage, "check"):
            try:
                self.storage.check()
            except Exception as e:  # noqa: BLE001 - any storage failure stops the node
                exc = e
        if exc is not None:
            self._storage_failed(exc)
            return
        elapsed = time.perf_counter() - started
        self.counters["fsyncs"] += 1
        self.counters["fsync_us_total"] += int(elapsed * 1e6)
        self.metrics.fsync_latency.observe(elapsed)
        self._send_all(messages)
        self._commit_or_send()

    def _send_all(self, messages: list[tuple[int, m.Message]]) -> None:
        own = []
        me, counters = self.id, self.counters
        for dst, msg in messages:
            if dst == me:
                own.append(msg)
                continue
            t = type(msg)
            counters[_SENT[t]] += 1
            if t is m.Commit and not self._awaits_commit(dst, msg.commit_through):
                self.send_peer_lazy(dst, msg)
            else:
                self.send_peer(dst, msg)
        if own and self._loop is not None:
            self._loop.call_soon(self.deliver, self.id, own)

    def _awaits_commit(self, peer: int, commit_through: int) -> bool:
        """Whether peer forwarded a command chosen at or below commit_through, whose
        client it answers once it learns that slot (so the Commit goes at once)."""
        slots = self._origin_slots.get(peer)
        waits = False
        while slots and slots[0] <= commit_through:
            slots.popleft()
            waits = True
        return waits

    def _note_leader(self) -> None:
        leader = self.replica.leader_id
        if leader != self._last_leader:
            self._last_leader = leader
            self._origin_slots.clear()
            for sleeper in self._sleepers:
                if sleeper.exactly_once:
                    sleeper.again()  # resend to the new leader now
            if leader is not None:
                self.counters["leader_changes"] += 1
                log.info("leader changed", extra=fields(leader=leader, ballot=str(self.replica.ballot),
                                                        role=self.replica.role.value))
            else:
                log.info("leader lost", extra=fields(ballot=str(self.replica.ballot)))
                self.history.interrupt()  # its watchers see whether one comes soon (kvpaxos/http.py)

    def _release_waiters(self) -> None:
        """Removed: answer every request waiting here now instead of at its timeout. A
        command it forwarded may still be chosen, so its outcome is unknown."""
        for call, index in list(self._waiters.values()):
            call.resolve(index, None)  # submit_group sees self.removed
        self._waiters.clear()
        for read_id in list(self._read_waiters):
            self._answer_reads(read_id, None)
        for _, _, future in self._apply_waiters:
            if not future.done():
                future.set_result(None)  # linearizable_point sees self.removed
        self._apply_waiters.clear()

    def _sync_peers(self) -> None:
        """Dial the nodes of the configurations governing open slots (their addresses come
        from the membership); hang up on the rest."""
        ms = self.kv.membership
        assert ms is not None
        settled = ms.settled(self.kv.applied_slot + 1)
        if self._peers_for is not None and self._peers_for[0] is ms and self._peers_for[1] == settled:
            return
        first = self._peers_for is None
        self._peers_for = (ms, settled)
        cluster: dict[int, tuple[str, int]] = {}
        for cfg in (ms.at(self.kv.applied_slot + 1), ms.latest):
            for i, text in cfg.addresses:
                address = parse_address(text)
                if address is not None:
                    cluster[i] = address
        for i in set(ms.latest.members) | set(ms.at(self.kv.applied_slot + 1).members):
            if i not in cluster and i in self.config.cluster:
                cluster[i] = self.config.cluster[i]
        cluster.setdefault(self.id, self.config.address)
        if cluster != self.config.cluster:
            if not first:
                log.info("configuration changed", extra=fields(
                    voters=",".join(map(str, ms.latest.voters)),
                    learners=",".join(map(str, ms.latest.learners)) or "-",
                    change=ms.history[-1].what, slot=ms.history[-1].slot))
            self.config.cluster.clear()
            self.config.cluster.update(cluster)
            self.on_peers(dict(cluster))

    def members(self) -> dict:
        """The configuration as of the applied slot, with its history (GET /v1/members)."""
        ms = self.kv.membership
        assert ms is not None
        slot = self.kv.applied_slot
        latest = ms.latest
        last = ms.history[-1]
        members = [{"id": i, "address": latest.address(i), "role": "voter" if i in latest.voters else "learner"}
                   for i in latest.members]
        return {
            "applied": slot,
            "leader": self.replica.leader_id,
            "cluster_id": self.cluster_id,
            "genesis": self.genesis.to_json(),  # the configuration the log began with
            "alpha": ms.alpha,
            "members": members,
            "voters": list(latest.voters),
            "learners": list(latest.learners),
            "removed": list(ms.removed),
            "pending": None if ms.settled(slot + 1) else _change_json(last),
            "history": [_change_json(c) for c in ms.history],
        }

    async def change_members(self, cmd: Command) -> Result:
        """Get a membership command chosen and applied; MemberChangeRefused if the
        configuration refused it (the result says why)."""
        result = await self.submit(cmd)
        if not result.ok:
            raise MemberChangeRefused(result.error or "refused", _REFUSALS.get(result.error or "", "refused"))
        # Answer once the change governs the next slot here (the leader fills the alpha
        # window with no-ops at once), so the next change is not refused as in progress.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout_s
        while loop.time() < deadline and not self.removed:
            ms = self.kv.membership
            assert ms is not None
            if ms.settled(self.kv.applied_slot + 1):
                break
            await asyncio.sleep(self.config.tick_ms / 1000)
        return result

    async def wait_for_voter(self, node_id: int, timeout_s: float) -> None:
        """Return once node_id votes in the configuration governing the next slot here."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            ms = self.kv.membership
            assert ms is not None
            if node_id in ms.latest.voters and ms.settled(self.kv.applied_slot + 1):
                return
            if node_id not in ms.latest.members:
                raise MemberChangeRefused("not_a_member", f"node {node_id} is not a member")
            if loop.time() > deadline:
                raise OutcomeUnknown(f"node {node_id} is not a voter yet (it is promoted once "
                                     "it has caught up with the log)")
            await asyncio.sleep(self.config.tick_ms / 1000)

    async def check_quorum_without(self, node_id: int) -> None:
        """Refuse to remove node_id if a majority of the voters left could not be reached
        now (removing one more node would stop the cluster): MemberChangeRefused."""
        ms = self.kv.membership
        assert ms is not None
        remaining = [p for p in ms.latest.voters if p != node_id]
        if not remaining:
            return  # the configuration refuses it with last_voter
        up = 0
        for p in remaining:
            if p == self.id:
                up += self.replica.voting
                continue
            if p not in self.config.cluster:
                continue
            status = await self._peer_status(p)
            up += status is not None and status.get("voting") is True
        if up < len(remaining) // 2 + 1:
            raise MemberChangeRefused(
                "would_lose_quorum", f"only {up} of the {len(remaining)} voters left after removing node "
                f"{node_id} answer now, fewer than a majority; bring them back first (or force it)")

    def member_role(self) -> str:
        ms = self.kv.membership
        assert ms is not None
        if self.id in ms.removed or self.removed:
            return "removed"
        return "voter" if self.id in ms.latest.voters else "learner" if self.id in ms.latest.learners else "joining"

    # -- views ----------------------------------------------------------------

    def status(self) -> dict:
        r = self.replica
        return {
            "id": self.id,
            "cluster_id": self.cluster_id,
            "role": r.role.value,
            "leader": r.leader_id,
            "ballot": str(r.ballot),
            "promised": str(r.acceptor.promised),
            "chosen": r.learner.chosen_through,
            "applied": self.kv.applied_slot,
            "elections": r.elections,
            "pre_votes": r.pre_votes,
            "malformed_messages": r.malformed,
            "voting": r.voting,
            "member": self.member_role(),
            "voters": list(self.kv.membership.latest.voters) if self.kv.membership else [],
            "deciding": self.deciding,
            # While deciding: how many peers answered, of how many it needs (see _decide_voting).
            "deciding_heard": list(self.deciding_heard) if self.deciding else None,
            "deciding_problem": self.deciding_problem if self.deciding else None,
            "rebuilding": None if r.voting or self.deciding else r.rebuild_round,
            "snapshot": self.snapshots.describe(),
            "watch": self.history.describe(),
            # Keys with a time to live: how many, the next deadline (cluster clock, Unix
            # ms) and how many expired here since this process started.
            "ttl": {"keys": len(self.kv.expiry), "next_deadline_ms": self.kv.next_deadline(),
                    "expired": self.counters["keys_expired"]},
            # Leases: how many, the keys attached to them, and how many ran out here since
            # this process started.
            "leases": {"leases": len(self.kv.leases), "keys": len(self.kv.key_lease),
                       "expired": self.counters["leases_expired"]},
        }


_REFUSALS = {
    "change_in_progress": "another membership change has not taken effect yet; retry shortly",
    "id_reused": "that id belonged to a removed node; ids are never reused, pick a new one",
    "already_member": "that id is already a member, with another address",
    "address_in_use": "another member already has that address",
    "not_a_member": "no member has that id",
    "not_a_learner": "that node is not a learner",
    "last_voter": "the last voter cannot be removed",
    "bad_address": "the address must be HOST:PORT",
    "bad_member_id": "member ids are positive integers",
}


def _change_json(c) -> dict:  # noqa: ANN001 - a membership Change
    return {"slot": c.slot, "effective": c.effective, "what": c.what,
            "voters": list(c.config.voters), "learners": list(c.config.learners)}


def _holds_state(answers: Iterable[dict]) -> bool:
    """Whether any of these /v1/status answers shows Paxos state (or a rebuilding node)."""
    # Promises, not chosen slots: anything ever chosen was accepted, so promised, by a
    # majority, while nodes seeded from a restored snapshot know chosen slots and no ballot.
    return any(_round(a.get("promised", "0.0")) > 0 or (a.get("rebuilding") or 0) > 0
               or (a.get("voting") is False and not a.get("deciding")) for a in answers)


def _round(ballot: object) -> int:
    """The round of a ballot as /v1/status prints it ("round.node")."""
    head = str(ballot).split(".", 1)[0]
    return int(head) if head.isdigit() else 0
