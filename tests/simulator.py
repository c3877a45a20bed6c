"""A seeded, deterministic simulation of kvpaxos replicas over a faulty network.

One seed drives everything: message order (reordering), loss, duplication,
delay, partitions, crash-restarts, snapshots with log compaction, snapshot
transfer to lagging nodes, and wipes (a node loses its disk and rejoins as a
non-voting member until it may vote again), and, when asked for, membership
changes: new nodes join as learners (booting from a copy of a member's state
and configuration, as `kv serve --join` does), get promoted, and members are
removed for good. Each replica is the pure core plus an
in-memory durable store; a crash throws away everything else. After every step
the simulator checks safety:
  (a) no slot is ever learned with two different values, across all nodes;
  (b) every node's applied sequence is a prefix of one global sequence;
  (d) every node that applied slot s holds the same configuration after it;
  (e) every node's watch history (kvpaxos/watch.py) records the same change under
      each revision, without gaps, and ends at its state's revision;
  (f) no node holds a key past the deadline its time to live gave it, by the
      clock of the slots it applied;
  (g) no node holds a lease past its deadline, and its leases and the keys
      attached to them agree both ways (every such key exists, on one lease).
Clients keep submitting puts (some with a time to live, some on a lease), refreshes, deletes,
compare-and-sets, and lease grants, keepalives and revokes all through the
fault phase, so faults hit a busy cluster, and issue read-index reads at random
nodes: (c) a read point returned for a read must cover every slot any node had
applied (so any result a client could have seen) when the read was issued, and
be chosen. After the faults stop and the network heals, liveness: every
submitted command is chosen and applied exactly once, every key given a time to
live, and every lease, expires (with no writes left to carry the clock, the
leader's empty slots must), and all replicas converge, deadlines and leases included.
A broken assertion inside the core counts as a failure too.
Any failure raises SimulationFailure naming the seed that replays it.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field, replace

from kvpaxos.core import messages as m
from kvpaxos.core.ballot import ZERO, Ballot
from kvpaxos.core import txn as txns
from kvpaxos.core.commands import (DELETE, DELETE_PREFIX, LEASE_GRANT, LEASE_KEEPALIVE, LEASE_REVOKE, PUT, REFRESH,
                                   TXN, Batch, Command)
from kvpaxos.core.kvstate import KVState
from kvpaxos.core.membership import MEMBER_ADD, MEMBER_OPS, MEMBER_REMOVE, Membership
from kvpaxos.core.replica import CoreConfig, Replica, Role
from kvpaxos.watch import History


class SimulationFailure(AssertionError):
    pass


@dataclass
class Faults:
    drop: float = 0.05
    duplicate: float = 0.03
    delay_max: int = 20
    partition_rate: float = 0.002
    crash_rate: float = 0.002
    wipe_rate: float = 0.0
    snapshot_every: int = 0  # applied slots between snapshots; 0 = never
    compact_keep: int = 2    # slots kept in the log below a snapshot
    ack_before_persist: bool = False  # planted bug: replies leave before the write is durable
    member_rate: float = 0.0  # chance per step of asking for a membership change
    ttl_rate: float = 0.2  # the share of plain puts that give their key a time to live
    txn_rate: float = 0.1  # the share of commands made transactions (kvpaxos/core/txn.py)
    prefix_delete_rate: float = 0.003  # chance per step of a prefix delete sent to a leader
    lease_rate: float = 0.15  # the share of commands that are lease commands or puts on a lease

    @classmethod
    def from_seed(cls, rng: random.Random) -> "Faults":
        return cls(drop=rng.choice([0.0, 0.02, 0.1, 0.2]), duplicate=rng.choice([0.0, 0.05]),
                   delay_max=rng.choice([1, 5, 30]), partition_rate=rng.choice([0.0, 0.002, 0.01]),
                   crash_rate=rng.choice([0.0, 0.001, 0.004]), wipe_rate=rng.choice([0.0, 0.0, 0.002]),
                   snapshot_every=rng.choice([0, 3, 8]), compact_keep=rng.choice([0, 2]))


@dataclass
class DiskState:
    promised: Ballot = ZERO
    accepted: dict[int, tuple[Ballot, Batch]] = field(default_factory=dict)
    chosen: dict[int, Batch] = field(default_factory=dict)
    snapshot: KVState | None = None
    snapshot_membership: Membership | None = None  # the configuration as of the snapshot's slot
    rebuilding_round: int | None = None  # set while the node may not vote


@dataclass
class SimNode:
    replica: Replica
    disk: DiskState
    state: KVState
    membership: Membership
    history: History  # the changes applied since boot or the last snapshot installed, as a node keeps
    unpersisted: list = field(default_factory=list)  # only with ack_before_persist
    # Chosen records not yet durable: as on a node, they ride with the next promise or
    # acceptance, or go on their own some time later; a crash loses them.
    lazy_chosen: dict = field(default_factory=dict)


def seed_config(seed: int) -> CoreConfig:
    """The core's configuration for a seed. Every fourth seed holds partial batches while a
    proposal is in flight (as nodes do by default); the rest pipeline them freely, which
    lets more interleavings happen. Two seeds in five have leaders defer their own votes
    (as nodes do by default), cast at random steps or by the tick; not every third, which
    would tie it to the node count of the membership runs. Two seeds in seven pre-vote
    before running for leader, as nodes do; not more, because pre-voting leaves fewer
    leader changes to interleave with (with five in seven, a planted membership bug went
    unseen in 300 seeds). From the seed, not the rng, so that seeds replay as they did
    (those that pre-vote, as they do since pre-voting came)."""
    return CoreConfig(election_ticks=8, heartbeat_ticks=2, retry_ticks=3, window_slots=4,
                      batch_count_max=3, catchup_entries_max=5,
                      partial_in_flight=1 if seed % 4 == 3 else 0, defer_self_vote=seed % 5 in (1, 3),
                      pre_vote=seed % 7 in (2, 5))


class Simulation:
    def __init__(self, seed: int, n_nodes: int = 3, n_clients: int = 4, cmds_per_client: int = 8,
                 faults: Faults | None = None, config: CoreConfig | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.lazy_rng = random.Random(seed + 1_000_003)  # its own stream: other draws stay as they were
        self.ttl_rng = random.Random(seed + 2_000_003)  # likewise, for the puts given a time to live
        self.txn_rng = random.Random(seed + 3_000_017)  # and for the commands made transactions
        self.prefix_rng = random.Random(seed + 4_000_037)  # and for the prefix deletes
        self.lease_rng = random.Random(seed + 5_000_011)  # and for the leases
        self.faults = faults or Faults.from_seed(self.rng)
        self.config = config or seed_config(seed)
        self.members = list(range(1, n_nodes + 1))  # every node ever started and not removed
        self.genesis = Membership.initial(self.members, self.config.window_slots)
        self.removed: set[int] = set()
        self.member_cmd: tuple[Command, int] | None = None  # the change being asked for, sent when
        self.member_changes = 0  # changes that took effect in some node's log
        self.canon_membership: dict[int, Membership] = {}
        self.disks = {i: DiskState() for i in self.members}
        self.applied: dict[int, int] = {i: 0 for i in self.members}
        self.nodes: dict[int, SimNode | None] = {i: self._boot(i) for i in self.members}
        self.time = 0
        self.inflight: list[tuple[int, int, int, m.Message]] = []
        self.blocked: set[tuple[int, int]] = set()
        self.canon: dict[int, Batch] = {}
        self.snapshots_installed = 0
        self.wipes = 0
        self.clients = [_Client(f"c{c}", cmds_per_client) for c in range(n_clients)]
        self.done: set[tuple[str, int]] = set()
        self.faulty = True
        self.applied_max = 0  # the highest slot any node ever applied
        self.reads: dict[int, int] = {}  # read id -> applied_max when the read was issued
        self.reads_checked = 0
        self.canon_changes: dict[int, tuple] = {}  # revision -> (op, key, value), as first recorded
        self.crashes = 0
        self.delivered = 0

    # -- node lifecycle ---------------------------------------------------------

    def _boot(self, i: int) -> SimNode:
        d = self.disks[i]
        state = copy.deepcopy(d.snapshot) if d.snapshot is not None else KVState()
        base = state.applied_slot
        membership = d.snapshot_membership or self.genesis
        r = Replica(i, membership, self.config, random.Random(self.rng.random()),
                    promised=d.promised, accepted={s: v for s, v in d.accepted.items() if s > base},
                    chosen={s: v for s, v in d.chosen.items() if s > base}, applied_through=base,
                    voting=d.rebuilding_round is None, rebuild_round=d.rebuilding_round or 0)
        self.applied[i] = base
        return SimNode(r, d, state, membership, History(state.revision))

    def crash(self, i: int) -> None:
        self.nodes[i] = None
        self.crashes += 1
        self.inflight = [x for x in self.inflight if x[2] != i]

    def restart(self, i: int) -> None:
        self.nodes[i] = self._boot(i)

    def wipe(self, i: int) -> None:
        """Crash node i and lose its disk. Like the runtime, it asks every other node
        for the highest round it knows and rebuilds below it as a non-voter."""
        self.crash(i)
        self.wipes += 1
        others = [p for p in self.members if p != i]
        seen = max([self.disks[p].promised.round for p in others] + [0])
        self.disks[i] = DiskState(rebuilding_round=seen)
        live = [n for p, n in self.nodes.items() if n is not None and p != i]
        if self.member_changes and live:
            # The configuration changed since the start: like `kv serve --join`, begin from
            # a member's state and configuration instead of the initial one.
            donor = max(live, key=lambda n: n.state.applied_slot)
            self.disks[i].snapshot = copy.deepcopy(donor.state)
            self.disks[i].snapshot_membership = donor.membership
            if i in donor.membership.latest.learners:
                # A learner never made a promise (a voter never turns learner again, ids are
                # never reused): it has nothing to rebuild, as `kv serve --join` knows.
                self.disks[i].rebuilding_round = None
        self.restart(i)

    # -- the step loop ----------------------------------------------------------

    def fail(self, what: str) -> None:
        raise SimulationFailure(f"{what} (reproduce with seed={self.seed}, faults={self.faults})")

    def step(self) -> None:
        self.time += 1
        rng = self.rng
        if self.faulty:
            self._inject_faults()
        if self.time % 4 == 0:
            for i, node in self.nodes.items():
                if node is not None:
                    node.replica.tick(self.time)
                    # As the runtime asks each tick (Node._nudge_if_due; it also asks after
                    # each slot it applies).
                    node.replica.nudge_clock(node.state.next_deadline())
        if self.config.defer_self_vote:  # the runtime's timer for the leader's own votes
            for node in self.nodes.values():
                if node is not None and rng.random() < 0.3:
                    node.replica.cast_self_votes()
        due = [x for x in self.inflight if x[0] <= self.time]
        rng.shuffle(due)
        # A few messages per step keeps reordering rich; a backlog drains faster, as a real
        # network's would (a fixed rate lets retries of a long re-proposal pile up forever).
        for item in due[: rng.randint(1, 8) + len(due) // 4]:
            self.inflight.remove(item)
            _, src, dst, msg = item
            node = self.nodes.get(dst)
            if node is not None:
                self.delivered += 1
                node.replica.step(src, msg)
        self._drive_clients()
        self._drive_membership()
        for i in list(self.members):
            self._process_ready(i)

    def _inject_faults(self) -> None:
        rng, f = self.rng, self.faults
        if rng.random() < f.partition_rate and len(self.members) > 1:
            a, b = rng.sample(self.members, 2)
            self.blocked ^= {(a, b), (b, a)}
        if rng.random() < f.crash_rate:
            i = rng.choice(self.members)
            if self.nodes[i] is None:
                self.restart(i)
            elif sum(self.nodes[p] is None for p in self.members) < len(self.members) // 2 \
                    and self._may_lose(i):
                self.crash(i)
        if rng.random() < f.wipe_rate:
            i = rng.choice(self.members)
            down = sum(self.nodes[p] is None for p in self.members)
            rebuilding = sum(self.disks[p].rebuilding_round is not None for p in self.members)
            if down + rebuilding < len(self.members) // 2 and self.disks[i].rebuilding_round is None \
                    and self._may_lose(i):
                self.wipe(i)
        if f.ack_before_persist and rng.random() < 0.05:
            i = rng.choice(self.members)
            if self.nodes[i] is not None and rng.random() < 0.5:
                self.crash(i)
                self.restart(i)

    def _send(self, src: int, dst: int, msg: m.Message) -> None:
        rng, f = self.rng, self.faults
        if src != dst and self.faulty:
            if (src, dst) in self.blocked or rng.random() < f.drop:
                return
            copies = 2 if rng.random() < f.duplicate else 1
        else:
            copies = 1
        for _ in range(copies):
            delay = 1 if src == dst else rng.randint(1, max(1, f.delay_max if self.faulty else 3))
            self.inflight.append((self.time + delay, src, dst, msg))

    def _process_ready(self, i: int) -> None:
        node = self.nodes[i]
        if node is None:
            return
        ready = node.replica.take_ready()
        if ready.is_empty():
            return
        node.lazy_chosen.update(ready.chosen)
        chosen: dict = {}
        if node.lazy_chosen and (ready.promised is not None or ready.accepted
                                 or self.lazy_rng.random() < 0.2):
            chosen, node.lazy_chosen = node.lazy_chosen, {}
        write = (ready.promised, dict(ready.accepted), chosen)
        if self.faults.ack_before_persist:
            node.unpersisted.append(write)
            if self.rng.random() < 0.3:
                for w in node.unpersisted:
                    _persist(node.disk, *w)
                node.unpersisted.clear()
        else:
            _persist(node.disk, *write)
        if ready.became_voter:
            node.disk.rebuilding_round = None
        for dst, msg in ready.messages:
            self._send(i, dst, msg)
        for slot, value in ready.chosen.items():
            known = self.canon.setdefault(slot, value)
            if known != value:
                self.fail(f"slot {slot} chosen twice: {known} vs {value}")
        for slot, value in ready.apply:
            if self.canon.get(slot) != value:
                self.fail(f"node {i} applied slot {slot} with a value not chosen there")
            if slot != self.applied[i] + 1:
                self.fail(f"node {i} applied slot {slot} after {self.applied[i]}")
            self.applied[i] = slot
            self.applied_max = max(self.applied_max, slot)
            applied = node.state.apply(slot, value)
            for cmd, result in applied:
                if result.error != "stale_sequence":
                    self.done.add((cmd.client_id or "", cmd.seq))
            self._check_changes(i, node, applied)
        if ready.membership is not None:
            node.membership = ready.membership
            for new_id in ready.membership.latest.members:
                if new_id not in self.disks:
                    # Added: the new node starts from a copy of this member's state and
                    # configuration, as `kv serve --join` does.
                    self.disks[new_id] = DiskState(snapshot=copy.deepcopy(node.state),
                                                   snapshot_membership=ready.membership)
                    self.members.append(new_id)
                    self.nodes[new_id] = self._boot(new_id)
            if ready.apply:
                last = ready.apply[-1][0]
                known = self.canon_membership.setdefault(last, ready.membership)
                if known != ready.membership:
                    self.fail(f"node {i} holds configuration {ready.membership.latest} after slot "
                              f"{last}, another node {known.latest}")
        for read_id, index in ready.reads:
            self._check_read(i, read_id, index)
        for cmd_id, result in ready.member_results.items():
            self._member_result(i, node, cmd_id, result)
        if ready.removed:
            self._remove_node(i)
            return
        self._maybe_snapshot(i, node)
        if ready.snapshot_from is not None:
            self._transfer_snapshot(ready.snapshot_from, i)

    def _check_changes(self, i: int, node: SimNode, applied: list) -> None:
        """(e): record the slot's changes as a node does, and compare them across nodes.
        (f): no key outlives its deadline by the slot's clock, and each has a value (a
        slot expires at most EXPIRE_PER_SLOT keys, which the simulation's three never reach)."""
        state = node.state
        for key, deadline in state.expiry.items():
            if deadline <= state.cluster_ms or key not in state.data:
                self.fail(f"node {i} holds {key!r} past its deadline {deadline} at clock {state.cluster_ms}"
                          f" (slot {state.applied_slot})")
        self._check_leases(i, state)
        before = node.history.revision
        node.history.record_applied(applied)
        if node.history.revision != node.state.revision:
            self.fail(f"node {i}'s watch history ends at {node.history.revision}, its state at {node.state.revision}")
        for change in node.history.page(before + 1, None, "", 10**9).changes:
            got = (change.op, change.key, change.value)
            known = self.canon_changes.setdefault(change.revision, got)
            if known != got:
                self.fail(f"node {i} recorded revision {change.revision} as {got}, another node as {known}")

    def _check_leases(self, i: int, state: KVState) -> None:
        """(g): no lease outlives its deadline by the slot's clock (a slot ends at most
        EXPIRE_PER_SLOT keys and leases, which the simulation never reaches), and leases
        and their keys agree both ways."""
        attached = {}
        for lease_id, lease in state.leases.items():
            if lease.deadline <= state.cluster_ms or lease_id > state.lease_last:
                self.fail(f"node {i} holds lease {lease_id} past its deadline {lease.deadline} at clock "
                          f"{state.cluster_ms} (slot {state.applied_slot})")
            attached.update(dict.fromkeys(lease.keys, lease_id))
        if attached != state.key_lease or any(k not in state.data or k in state.expiry for k in attached):
            self.fail(f"node {i}'s leases hold {attached}, its keys say {state.key_lease} (slot {state.applied_slot})")

    def _maybe_snapshot(self, i: int, node: SimNode) -> None:
        every = self.faults.snapshot_every
        last = node.disk.snapshot.applied_slot if node.disk.snapshot else 0
        if every and node.state.applied_slot - last >= every:
            node.disk.snapshot = copy.deepcopy(node.state)
            node.disk.snapshot_membership = node.membership
            keep_from = node.state.applied_slot - self.faults.compact_keep
            node.disk.accepted = {s: v for s, v in node.disk.accepted.items() if s > keep_from}
            node.disk.chosen = {s: v for s, v in node.disk.chosen.items() if s > keep_from}
            node.replica.compact(keep_from)

    def _transfer_snapshot(self, src: int, dst: int) -> None:
        """Copy src's durable snapshot into dst (the runtime streams the file)."""
        node, peer = self.nodes[dst], self.nodes[src]
        snap = self.disks[src].snapshot
        if node is None or peer is None or snap is None or snap.applied_slot <= node.state.applied_slot:
            if node is not None:
                node.replica.snapshot_failed()
            return
        slot = snap.applied_slot
        for s in range(1, slot + 1):
            if s not in self.canon:
                self.fail(f"node {src} has a snapshot at {slot} but slot {s} was never chosen")
        node.state = copy.deepcopy(snap)
        node.disk.snapshot = copy.deepcopy(snap)
        node.disk.snapshot_membership = node.membership = self.disks[src].snapshot_membership
        node.replica.install_snapshot(slot, node.membership)
        node.history.restart(node.state.revision)
        self.applied[dst] = slot
        self.snapshots_installed += 1

    def _check_read(self, i: int, read_id: int, index: int | None) -> None:
        need = self.reads.get(read_id)
        if need is None:
            self.fail(f"node {i} got an answer to read {read_id}, which was never issued")
        if index is None:
            return  # refused (no leader, or it stepped down): the reader retries elsewhere
        self.reads_checked += 1
        if index < need:
            self.fail(f"read {read_id} at node {i} got read point {index}, but slot {need} "
                      f"was applied before the read was issued (stale read)")
        if any(s not in self.canon for s in range(1, index + 1)):
            self.fail(f"read {read_id} at node {i} got read point {index}, which is not chosen yet")

    def _drive_clients(self) -> None:
        rng = self.rng
        leaders = [i for i, n in self.nodes.items() if n is not None and n.replica.role is Role.LEADER]
        for c in self.clients:
            if c.cmd is not None and (c.name, c.seq) in self.done:
                c.cmd, c.sent_at = None, None
                c.seq += 1
                c.idle_until = self.time + rng.randrange(_THINK_STEPS_MAX)
            if c.cmd is None:
                # While faults run, clients keep going; afterwards they stop at their total.
                if (c.seq > c.total and not self.faulty) or self.time < c.idle_until:
                    continue
                c.cmd = self._new_command(c)
                c.total = max(c.total, c.seq)
            if leaders and (c.sent_at is None or self.time - c.sent_at > 60):
                target = rng.choice(leaders)
                # A retry is the same request (same client id and seq) under a new cmd_id.
                cmd = replace(c.cmd, cmd_id=f"{c.name}.{c.seq}.{self.time}")
                if self.nodes[target].replica.propose(cmd):  # type: ignore[union-attr]
                    c.sent_at = self.time
        if leaders and self.prefix_rng.random() < self.faults.prefix_delete_rate:
            # Not a client's: a prefix delete carries no client id (it is retried by asking again).
            prefix, limit = self.prefix_rng.choice(["", "k", "k1"]), 1 + self.prefix_rng.randrange(3)
            self.nodes[self.prefix_rng.choice(leaders)].replica.propose(  # type: ignore[union-attr]
                Command(DELETE_PREFIX, prefix, str(limit), cmd_id=f"prefix.{self.time}"))
        if rng.random() < _READ_RATE:
            live = [i for i, n in self.nodes.items() if n is not None]
            read_id = len(self.reads) + 1
            self.reads[read_id] = self.applied_max
            self.nodes[rng.choice(live)].replica.read_index(read_id)  # type: ignore[union-attr]

    def _new_command(self, c: "_Client") -> Command:
        cmd = self._plain_command(c)
        lease = self._lease_command(c)
        if lease is not None:
            return lease
        rng = self.txn_rng  # its own stream: the other draws of a seed stay what they were
        if rng.random() >= self.faults.txn_rate:
            return cmd
        keys = [f"k{i}" for i in range(3)]
        conditions = [(k, txns.VERSION, rng.randrange(6), rng.choice(txns.CMPS)) if rng.random() < 0.4 else
                      (k, txns.EXISTS, rng.random() < 0.5, rng.choice((txns.EQ, txns.NE))) if rng.random() < 0.5
                      else (k, txns.VALUE, f"{c.name}-{c.seq - 1}", rng.choice(txns.CMPS))
                      for k in rng.sample(keys, rng.randrange(3))]

        def writes(branch: str) -> list[Command]:
            return [Command(PUT, k, f"{c.name}-{c.seq}-{branch}", ttl_ms=1 + rng.randrange(_TTL_STEPS_MAX)
                            if rng.random() < self.faults.ttl_rate else None) if rng.random() < 0.6 else
                    Command(DELETE, k) if rng.random() < 0.6 else Command(txns.GET, k)
                    for k in rng.sample(keys, rng.randrange(3))]
        return Command(TXN, keys[0], txns.encode(conditions, writes("then"), writes("else")),
                       client_id=c.name, seq=c.seq)

    def _lease_command(self, c: "_Client") -> Command | None:
        """Now and then a lease command, or a put on a lease, instead of the command drawn
        (from a stream of its own, so the other draws of a seed stay what they were). The
        ids are guesses near the latest granted: some name no lease (yet, or any more)."""
        rng = self.lease_rng
        if rng.random() >= self.faults.lease_rate:
            return None
        last = max((n.state.lease_last for n in self.nodes.values() if n is not None), default=0)
        roll, lease_id = rng.random(), max(1, last + 1 - rng.randrange(4))
        if roll < 0.3:
            return Command(LEASE_GRANT, "0", client_id=c.name, seq=c.seq, ttl_ms=1 + rng.randrange(_TTL_STEPS_MAX))
        if roll < 0.5:
            return Command(LEASE_KEEPALIVE, str(lease_id), client_id=c.name, seq=c.seq)
        if roll < 0.6:
            return Command(LEASE_REVOKE, str(lease_id), client_id=c.name, seq=c.seq)
        if roll < 0.7:  # a transaction's put on a lease
            value = txns.encode([], [Command(PUT, f"k{rng.randrange(3)}", f"{c.name}-{c.seq}", lease=lease_id)], [])
            return Command(TXN, "k0", value, client_id=c.name, seq=c.seq)
        return Command(PUT, f"k{rng.randrange(3)}", f"{c.name}-{c.seq}", client_id=c.name, seq=c.seq, lease=lease_id)

    def _plain_command(self, c: "_Client") -> Command:
        rng = self.rng
        key, value = f"k{rng.randrange(3)}", f"{c.name}-{c.seq}"
        kind = rng.random()
        if kind < 0.5:
            # Some keys expire (the clock is the step count); drawn from a stream of their
            # own, so that the other draws of a seed stay what they were.
            roll, ttl = self.ttl_rng.random(), 1 + self.ttl_rng.randrange(_TTL_STEPS_MAX)
            if roll < self.faults.ttl_rate / 4:  # a new deadline for the key, whatever it holds
                return Command(REFRESH, key, client_id=c.name, seq=c.seq, ttl_ms=ttl)
            return Command(PUT, key, value, client_id=c.name, seq=c.seq,
                           ttl_ms=ttl if roll < self.faults.ttl_rate else None)
        if kind < 0.65:
            return Command(DELETE, key, client_id=c.name, seq=c.seq)
        if kind < 0.8:  # compare-and-set on a value this client may have written before
            return Command(PUT, key, value, if_value=f"{c.name}-{c.seq - 1}", client_id=c.name, seq=c.seq)
        return Command(PUT, key, value, if_version=rng.randrange(4), client_id=c.name, seq=c.seq)

    # -- membership changes -------------------------------------------------------

    def _current(self) -> tuple[Membership, int]:
        """The membership as the most advanced live node knows it, and that node's slot."""
        live = [n for n in self.nodes.values() if n is not None]
        if not live:
            return self.genesis, 0
        node = max(live, key=lambda n: n.state.applied_slot)
        return node.membership, node.state.applied_slot

    def _intact_voters(self, voters: tuple[int, ...], losing: int = 0) -> int:
        return sum(1 for p in voters if p != losing and self.nodes.get(p) is not None
                   and self.disks[p].rebuilding_round is None)

    def _may_lose(self, i: int) -> bool:
        """Whether crashing or wiping node i keeps a majority of every open configuration
        up and intact (losing more is losing the cluster, for real clusters too)."""
        if not self.member_changes and not self.faults.member_rate:
            return True  # the fixed-membership runs keep their original fault schedule
        ms, slot = self._current()
        voter_sets = [ms.at(slot + 1).voters, ms.latest.voters]
        if self.member_cmd is not None and self.member_cmd[0].op == MEMBER_REMOVE:
            # A removal asked for may still be chosen: it must not leave a lost majority either.
            gone = int(self.member_cmd[0].key)
            voter_sets.append(tuple(p for p in ms.latest.voters if p != gone))
        return all(self._intact_voters(v, i) >= len(v) // 2 + 1 for v in voter_sets)

    def _drive_membership(self) -> None:
        """While faults run, now and then ask the leader to add a node or remove one."""
        rng = self.rng
        if self.member_cmd is None and self.faulty and rng.random() < self.faults.member_rate:
            live = [n for n in self.nodes.values() if n is not None]
            if not live:
                return
            latest = self._current()[0].latest
            new_id = max(self.members + sorted(self.removed)) + 1
            victim = rng.choice(latest.members)
            remaining = tuple(p for p in latest.voters if p != victim)
            if len(remaining) >= 3 and self._intact_voters(remaining) >= len(remaining) // 2 + 1 \
                    and rng.random() < 0.5:
                cmd = Command(MEMBER_REMOVE, str(victim), cmd_id=f"remove.{victim}.{self.time}")
            elif len(latest.members) < 7:
                cmd = Command(MEMBER_ADD, str(new_id), f"sim:{new_id}", cmd_id=f"add.{new_id}.{self.time}")
            else:
                return
            self.member_cmd = (cmd, -1000)
        if self.member_cmd is None:
            return
        cmd, sent_at = self.member_cmd
        if self.time - sent_at > 60:
            leaders = [n for n in self.nodes.values() if n is not None and n.replica.role is Role.LEADER]
            if leaders and rng.choice(leaders).replica.propose(replace(cmd, cmd_id=f"{cmd.cmd_id}.{self.time}")):
                self.member_cmd = (cmd, self.time)

    def _member_result(self, i: int, node: SimNode, cmd_id: str, result) -> None:  # noqa: ANN001
        if self.member_cmd is None or not cmd_id.startswith(self.member_cmd[0].cmd_id + "."):
            return
        cmd = self.member_cmd[0]
        self.member_cmd = None
        if not result.ok:
            return  # e.g. change_in_progress: a later change is asked for instead
        self.member_changes += 1

    def _remove_node(self, i: int) -> None:
        """Node i learned it is no longer a member: it stops for good."""
        self.nodes[i] = None
        self.inflight = [x for x in self.inflight if x[2] != i]
        if i in self.members:
            self.members.remove(i)
        self.removed.add(i)
        self.applied.pop(i, None)

    # -- running ----------------------------------------------------------------

    def run(self, fault_steps: int = 3000, heal_steps: int = 6000) -> None:
        try:
            self._run(fault_steps, heal_steps)
        except SimulationFailure:
            raise
        except AssertionError as e:  # an invariant inside the core broke (e.g. ConflictingChoice)
            self.fail(f"core assertion at step {self.time}: {e!r}")

    def canonical_log(self) -> list[tuple[int, Batch]]:
        """The chosen log up to the highest applied slot: what a replay must reproduce."""
        return [(s, self.canon[s]) for s in range(1, self.applied_max + 1)]

    def _run(self, fault_steps: int, heal_steps: int) -> None:
        for _ in range(fault_steps):
            self.step()
        self.faulty = False
        self.blocked.clear()
        for i in self.members:
            if self.nodes[i] is None:
                self.restart(i)
        self.member_cmd = None
        for _ in range(heal_steps):
            self.step()
            if self._converged():
                break
        else:
            pending = [(c.name, c.seq) for c in self.clients if c.seq <= c.total]
            expiring = {i: len(n.state.expiry) for i, n in self.nodes.items() if n is not None and n.state.expiry}
            self.fail(f"no convergence after healing: pending={pending} applied={self.applied}"
                      + (f" keys still to expire={expiring}" if expiring else ""))
        self._check_exactly_once()

    def _converged(self) -> bool:
        current, slot = self._current()
        if current.settled(slot + 1):
            for i in [p for p in self.members if p in current.removed]:
                self._remove_node(i)  # removed while it could reach no member: its operator stops it
        if any(c.seq <= c.total for c in self.clients):
            return False
        if any(n is not None and n.state.next_deadline() is not None for n in self.nodes.values()):
            return False  # (f) every key given a time to live expires, with no writes to carry the clock
        if any(self.disks[p].rebuilding_round is not None for p in self.members):
            return False
        top = max(self.applied.values())
        if top < max(self.canon, default=0):
            # Every chosen slot, also one only a node since removed applied (its client
            # heard back from it), must reach the members: not converged before then.
            return False
        if any(n is not None and (n.membership.latest.learners or n.replica.removed
                                  or any(r in n.membership.latest.members for r in self.removed))
               for n in self.nodes.values()):
            return False  # a learner still waits for promotion, or a removal for its node to stop
        return all(a == top for a in self.applied.values()) and all(s in self.canon for s in range(1, top + 1))

    def _check_exactly_once(self) -> None:
        counter = _CountingKV()
        for slot in range(1, max(self.applied.values()) + 1):
            counter.apply(slot, self.canon[slot])
        want = {(c.name, s) for c in self.clients for s in range(1, c.total + 1)}
        if counter.executed != {k: 1 for k in want}:
            extra = {k: v for k, v in counter.executed.items() if v != 1 or k not in want}
            self.fail(f"commands not applied exactly once: {extra or want - set(counter.executed)}")
        for i in self.members:
            if self.disks[i].rebuilding_round is not None:
                self.fail(f"node {i} never became a voter again after its wipe")
        states = {i: (n.state.data, n.state.expiry, n.state.lease_last,
                      sorted((k, x.ttl_ms, x.deadline, sorted(x.keys)) for k, x in n.state.leases.items()))
                  for i, n in self.nodes.items() if n is not None}
        if len({repr((sorted(d.items()), sorted(e.items()), last, leases))
                for d, e, last, leases in states.values()}) != 1:
            self.fail("replicas ended with different key-value content")


_TTL_STEPS_MAX = 400  # the longest time to live a client gives a key
_THINK_STEPS_MAX = 12  # a client pauses up to this many steps between commands
_READ_RATE = 0.05  # chance per step that some node is asked for a read point


@dataclass
class _Client:
    name: str
    total: int  # commands to complete; grows while faults run, since clients keep going
    seq: int = 1
    cmd: Command | None = None  # the request for `seq`, retried as is until applied
    sent_at: int | None = None
    idle_until: int = 0


class _CountingKV(KVState):
    def __init__(self) -> None:
        super().__init__()
        self.executed: dict[tuple[str, int], int] = {}

    def _execute(self, cmd: Command):  # type: ignore[override]
        if cmd.op in MEMBER_OPS or cmd.client_id is None:  # a membership change, or a key's expiry
            return super()._execute(cmd)
        key = (cmd.client_id or "", cmd.seq)
        self.executed[key] = self.executed.get(key, 0) + 1
        return super()._execute(cmd)


def _persist(disk: DiskState, promised: Ballot | None, accepted: dict, chosen: dict) -> None:
    if promised is not None:
        disk.promised = max(disk.promised, promised)
    disk.accepted.update(accepted)
    disk.chosen.update(chosen)
