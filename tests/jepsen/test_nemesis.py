"""The fault-injection suite: real nodes behind per-link proxies, a nemesis mixing
process and network faults, checked for linearizability (see harness.py).

CI mode (the default, `pytest tests/jepsen`): 3 nodes, three runs of about 20 s
with fresh seeds; each run injects a different third of the fault kinds, so
together they cover all of them. Nodes snapshot every 300 slots, so snapshots,
compaction and catching up by snapshot happen under the faults too (the
default settings run in test_faults.py). Soak mode (`KV_SOAK=1 pytest tests/jepsen -k
soak`): 5 nodes, KV_SOAK_SEEDS runs (default 5) of KV_SOAK_DURATION seconds of
faults each (default 180), every kind (and kill_majority) in two overlapping
streams, process and network.

Planted bugs: the same harness against deliberately broken builds
(tests/support/planted.py) must report the violation each one causes.

KV_JEPSEN_SEED replays one seed's choices (timing is real, so not the history).
Every run writes its report to tests/artifacts/jepsen/.
"""
from __future__ import annotations

import os
import time

import pytest

from support.history import Workload
from support.linearizability import CAS, DELETE, READ, WRITE

from .harness import ALL_KINDS, EXTRA_KINDS, Plan, failure_message, run_plan, seeds

# Each CI run mixes process and network faults; the three runs cover every kind.
CI_GROUPS = {
    "leader-partition-delay": ("kill_leader", "partition_half", "delay", "pause_random"),
    "all-isolate-loss": ("kill_all", "isolate_leader", "loss", "pause_leader"),
    "bridge-oneway-stall": ("kill_random", "bridge", "one_way_leader", "stall_half"),
}
assert sorted(k for g in CI_GROUPS.values() for k in g) == sorted(ALL_KINDS)
# Small snapshot intervals, so that runs take snapshots, compact, and nodes that fall
# behind (killed, paused, cut off) catch up by installing a peer's snapshot.
SNAPSHOT_ARGS = ("--snapshot-every", "300", "--compact-keep", "50")


@pytest.mark.parametrize("group", list(CI_GROUPS))
def test_ci_faults(fault_cluster, group):
    seed = seeds(1)[0]
    cluster = fault_cluster(3, seed=seed, node_args=SNAPSHOT_ARGS)
    plan = Plan(name=f"ci-{group}", nodes=3, kinds=CI_GROUPS[group], warmup_s=2.0, faults_s=16.0,
                after_s=3.0, cover_all=True)
    outcome = run_plan(cluster, plan, seed)
    assert not outcome.anomalies, failure_message(outcome)
    assert set(outcome.report["faults"]) == set(plan.kinds), outcome.report["fault_log"]


SOAK = os.environ.get("KV_SOAK") == "1"
SOAK_SEEDS = int(os.environ.get("KV_SOAK_SEEDS", "5"))
SOAK_DURATION_S = float(os.environ.get("KV_SOAK_DURATION", "180"))
SOAK_NODES = int(os.environ.get("KV_SOAK_NODES", "5"))


@pytest.mark.skipif(not SOAK, reason="soak mode: KV_SOAK=1 pytest tests/jepsen -k soak")
@pytest.mark.parametrize("run", range(SOAK_SEEDS if SOAK else 1))
def test_soak(fault_cluster, run):
    seed = seeds(SOAK_SEEDS)[run]
    cluster = fault_cluster(SOAK_NODES, seed=seed, node_args=SNAPSHOT_ARGS)
    plan = Plan(name=f"soak-n{SOAK_NODES}-run{run}", nodes=SOAK_NODES, kinds=ALL_KINDS + EXTRA_KINDS,
                streams=2, warmup_s=5.0, faults_s=SOAK_DURATION_S, after_s=5.0, quiet_s=(0.5, 3.0),
                hold_s=(1.5, 6.0), every_kind_once=False,
                workload=Workload(workers=12, keys_at_once=4, rotate_s=5.0))
    outcome = run_plan(cluster, plan, seed)
    assert not outcome.anomalies, failure_message(outcome)


# -- planted bugs ---------------------------------------------------------------------

# Per bug: the faults that expose it, the workload, and the kinds of anomaly that count.
PLANTED = {
    # Reads from the local copy: a node cut off from the majority keeps answering reads
    # while the others move on.
    "stale_reads": (("partition_half", "isolate_leader"), Workload(), {"nonlinearizable"}),
    # Acknowledged before durable: killing every node at once loses the last writes.
    "no_fsync": (("kill_all",), Workload(mix={WRITE: 0.55, READ: 0.35, CAS: 0.1, DELETE: 0.0}),
                 {"lost_write", "nonlinearizable"}),
    # A follower without a leader answers reads: only a partition makes it happen.
    "follower_reads": (("partition_half", "stall_half"), Workload(), {"nonlinearizable"}),
}
PLANTED_ATTEMPTS = 3
PLANTED_BUDGET_S = 75.0  # per bug, across attempts


@pytest.mark.parametrize("bug", list(PLANTED))
def test_planted_bug_is_reported(fault_cluster, bug):
    kinds, workload, expected = PLANTED[bug]
    started = time.monotonic()
    tried = []
    for attempt, seed in enumerate(seeds(PLANTED_ATTEMPTS)):
        if attempt and time.monotonic() - started > PLANTED_BUDGET_S - 20:
            break
        cluster = fault_cluster(3, seed=seed, planted=bug)
        plan = Plan(name=f"planted-{bug}", nodes=3, kinds=kinds, planted=bug, warmup_s=1.5,
                    faults_s=8.0, after_s=1.5, quiet_s=(0.5, 1.0), hold_s=(2.0, 3.0), workload=workload)
        outcome = run_plan(cluster, plan, seed)
        cluster.stop_all()
        tried.append((seed, outcome.report["anomaly_kinds"], outcome.report["faults"]))
        if expected & set(outcome.safety):
            return
    pytest.fail(f"planted bug {bug!r} went unreported in {len(tried)} run(s) "
                f"(seed, anomaly kinds, faults): {tried}")
