"""Protocol safety by deterministic simulation (see tests/simulator.py).

- Many seeds across 3 and 5 replicas, in chunks so `pytest -n auto` spreads them;
  a failure names every failing seed, and `Simulation(seed, n_nodes=n).run()` replays it.
- Planted bugs prove the checks bite: acks before persisting (rule 3) and a leader
  that ignores what phase 1 found (rule 6) must each be caught within 300 seeds.
- Seeds with pre-voting switched on for all of them (nodes always pre-vote; most seeds
  do not, as fewer leader changes exercise less).
- The same seed gives the same run, also under a different string-hash seed.
- A planted lease bug (a keepalive that loses its lease's deadline) must be caught too.
- Membership changes (joins, promotions, removals) mixed into the same faults, with
  planted bugs of their own: a change that governs open slots at once, and a leader
  that counts a learner's vote.
"""
from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kvpaxos.core.kvstate import KVState
from kvpaxos.core.leader import LeaderState
from kvpaxos.core.membership import Config, Membership
from simulator import Faults, Simulation, SimulationFailure
from support.timing import time_limit as bounded

CHUNK_SEEDS = 15
CHUNKS = {3: 10, 5: 10}  # 150 seeds on 3 replicas, 150 on 5
# (n_nodes, seed) pairs that once found a bug, replayed on every run.
REGRESSION_SEEDS = [(5, 895)]  # a compacted promise let a node take its own accepts as chosen
PLANTED_BUG_SEEDS = 300
TEST_TIME_LIMIT_S = 120


@pytest.fixture(autouse=True)
def time_limit() -> Iterator[None]:
    with bounded(TEST_TIME_LIMIT_S, "simulation test"):
        yield


CASES = [(n, chunk) for n, count in CHUNKS.items() for chunk in range(count)]


@pytest.mark.parametrize(("n_nodes", "chunk"), CASES, ids=[f"{n}nodes-seeds{c * CHUNK_SEEDS}+" for n, c in CASES])
def test_seeds_keep_safety_and_liveness(n_nodes: int, chunk: int) -> None:
    failures: list[str] = []
    reads = crashes = 0
    for seed in range(chunk * CHUNK_SEEDS, (chunk + 1) * CHUNK_SEEDS):
        sim = Simulation(seed, n_nodes=n_nodes)
        try:
            sim.run()
        except SimulationFailure as e:
            failures.append(f"seed={seed} n_nodes={n_nodes}: {e}")
        reads += sim.reads_checked
        crashes += sim.crashes
    assert not failures, "\n".join(failures)
    assert reads > 0 and crashes > 0, "the simulation stopped exercising reads or crashes"


PRE_VOTE_SEEDS = {3: 90, 5: 45}  # and 45 membership runs


@pytest.mark.parametrize("n_nodes", [3, 5, "members"])
def test_seeds_with_pre_voting_keep_safety_and_liveness(n_nodes: int | str) -> None:
    # Nodes always pre-vote; most seeds do not (fewer leader changes find fewer bugs), so
    # these runs switch it on for seeds whatever they pick.
    failures: list[str] = []
    elections = 0
    for seed in range(PRE_VOTE_SEEDS.get(n_nodes, 45)):
        if n_nodes == "members":
            sim = membership_sim(seed, n_nodes=3 + seed % 3)
        else:
            sim = Simulation(seed, n_nodes=n_nodes)
        sim = Simulation(seed, n_nodes=len(sim.members), faults=sim.faults,
                         config=replace(sim.config, pre_vote=True))
        try:
            sim.run()
        except SimulationFailure as e:
            failures.append(f"seed={seed} {n_nodes}: {e}")
        elections += sum(node.replica.elections for node in sim.nodes.values() if node is not None)
    assert not failures, "\n".join(failures)
    assert elections > 0


@pytest.mark.parametrize(("n_nodes", "seed"), REGRESSION_SEEDS)
def test_seeds_that_once_found_bugs(n_nodes: int, seed: int) -> None:
    Simulation(seed, n_nodes=n_nodes).run()


def first_failure(make: Callable[[int], Simulation]) -> tuple[int, str] | None:
    """The first seed below PLANTED_BUG_SEEDS whose run breaks safety, and why."""
    for seed in range(PLANTED_BUG_SEEDS):
        try:
            make(seed).run()
        except SimulationFailure as e:
            if "no convergence" not in str(e):  # a safety violation, not just a stall
                return seed, str(e)
    return None


def test_planted_bug_ack_before_persist_is_caught() -> None:
    def make(seed: int) -> Simulation:
        faults = replace(Faults.from_seed(random.Random(seed)), ack_before_persist=True)
        return Simulation(seed, faults=faults)

    found = first_failure(make)
    assert found is not None, f"acking before persisting went unnoticed in {PLANTED_BUG_SEEDS} seeds"
    seed, message = found
    assert f"seed={seed}" in message


def test_planted_bug_leader_ignoring_phase_one_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LeaderState, "merged_values", lambda self: {})
    found = first_failure(lambda seed: Simulation(seed))
    assert found is not None, f"a leader proposing its own values went unnoticed in {PLANTED_BUG_SEEDS} seeds"
    seed, message = found
    assert f"seed={seed}" in message


def test_planted_bug_reads_without_a_heartbeat_round_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # A leader that answers read-index requests without confirming it still leads (rule 13).
    monkeypatch.setattr(LeaderState, "confirmed_seq", lambda self, self_id, config: 1 << 62)
    found = first_failure(lambda seed: Simulation(seed))
    assert found is not None and "stale read" in found[1], found


def test_planted_bug_reads_before_the_first_own_slot_is_chosen_are_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A new leader that serves reads before a slot of its own ballot is chosen (rule 13).
    monkeypatch.setattr(LeaderState, "barrier_chosen", lambda self, chosen_through: True)
    found = first_failure(lambda seed: Simulation(seed))
    assert found is not None and "stale read" in found[1], found


def test_planted_bug_a_keepalive_that_forgets_its_lease_deadline_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # A keepalive of a lease holding keys moves its deadline but leaves the old one's heap
    # entry as the only one: the lease and its keys outlive their deadline ((g)).
    push = KVState._push_lease_deadline

    def forgetful(self: KVState, lease_id: int, deadline: int) -> None:
        if not (lease_id in self.leases and self.leases[lease_id].keys):
            push(self, lease_id, deadline)

    monkeypatch.setattr(KVState, "_push_lease_deadline", forgetful)
    found = first_failure(lambda seed: Simulation(seed))
    assert found is not None and "past its deadline" in found[1], found


def fingerprint(sim: Simulation) -> str:
    parts = [sim.canonical_log(), sorted(sim.applied.items()), sim.time, sim.delivered,
             sim.reads_checked, sim.crashes, sorted(sim.done)]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


REPLAY_SEEDS = [(3, 11), (5, 4)]


@pytest.mark.parametrize(("n_nodes", "seed"), REPLAY_SEEDS)
def test_the_same_seed_replays_the_same_run(n_nodes: int, seed: int) -> None:
    first, second = Simulation(seed, n_nodes=n_nodes), Simulation(seed, n_nodes=n_nodes)
    first.run()
    second.run()
    assert first.canonical_log() == second.canonical_log()
    assert len(first.canonical_log()) > 10
    assert fingerprint(first) == fingerprint(second)


def test_replay_does_not_depend_on_string_hashing() -> None:
    n_nodes, seed = REPLAY_SEEDS[0]
    sim = Simulation(seed, n_nodes=n_nodes)
    sim.run()
    tests_dir = Path(__file__).parent
    code = (
        "import sys; sys.path[:0] = sys.argv[1:3]\n"
        "from simulator import Simulation\n"
        "from test_simulation import fingerprint\n"
        f"sim = Simulation({seed}, n_nodes={n_nodes}); sim.run(); print(fingerprint(sim))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, str(tests_dir), str(tests_dir.parent)],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == fingerprint(sim)


MEMBER_CHUNKS = 6  # 90 seeds with membership changes mixed into the faults


def membership_sim(seed: int, n_nodes: int = 3) -> Simulation:
    # No keys with a time to live, transactions or prefix deletes here: they change the
    # runs (expiries add slots, which moves every schedule), and the planted membership
    # bugs below are found by these seeds' schedules.
    faults = replace(Faults.from_seed(random.Random(seed)), member_rate=0.01, ttl_rate=0.0,
                     txn_rate=0.0, prefix_delete_rate=0.0)
    return Simulation(seed, n_nodes=n_nodes, faults=faults)


@pytest.mark.parametrize("chunk", range(MEMBER_CHUNKS), ids=[f"seeds{c * CHUNK_SEEDS}+" for c in range(MEMBER_CHUNKS)])
def test_membership_changes_keep_safety_and_liveness(chunk: int) -> None:
    failures: list[str] = []
    changes = 0
    for seed in range(chunk * CHUNK_SEEDS, (chunk + 1) * CHUNK_SEEDS):
        sim = membership_sim(seed, n_nodes=3 + seed % 3)
        try:
            sim.run()
        except SimulationFailure as e:
            failures.append(f"seed={seed}: {e}")
        changes += sim.member_changes
    assert not failures, "\n".join(failures)
    assert changes >= CHUNK_SEEDS, "the simulation stopped exercising membership changes"


# Membership seeds that once failed, replayed on every run.
MEMBER_REGRESSION_SEEDS = [
    # The check ended the run while the members stood at slot 687 and a removed leader had
    # applied (and answered clients) up to 690: chosen, and learned 4 steps later. A check
    # bug, not a protocol one; the run now waits for every chosen slot to reach the members.
    22631,
]


@pytest.mark.parametrize("seed", MEMBER_REGRESSION_SEEDS)
def test_membership_seeds_that_once_failed(seed: int) -> None:
    membership_sim(seed, n_nodes=3 + seed % 3).run()


def first_membership_failure() -> tuple[int, str] | None:
    """The first of PLANTED_BUG_SEEDS membership runs that breaks safety, and why."""
    for seed in range(PLANTED_BUG_SEEDS):
        try:
            membership_sim(seed, n_nodes=3 + seed % 3).run()
        except SimulationFailure as e:
            if "no convergence" not in str(e):
                return seed, str(e)
    return None


def test_planted_bug_every_slot_in_the_latest_configuration_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A change that governs every open slot as soon as it is chosen (no alpha window):
    # slots a leader proposed under the old configuration get counted in the new one.
    monkeypatch.setattr(Membership, "at", lambda self, slot: self.latest)
    monkeypatch.setattr(Membership, "between", lambda self, lo, hi: [self.latest])
    found = first_membership_failure()
    assert found is not None and "chosen twice" in found[1], found


def test_planted_bug_learner_votes_counted_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # A leader that counts a learner's Accepted towards the majority of a slot.
    counted = LeaderState.add_vote

    def add_vote(self: LeaderState, src: int, slot: int, config: Config) -> object:
        return counted(self, src, slot, Config(config.voters + config.learners, ()))

    monkeypatch.setattr(LeaderState, "add_vote", add_vote)
    found = first_membership_failure()
    assert found is not None and "chosen twice" in found[1], found
