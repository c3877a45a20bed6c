"""Membership changes on a running cluster of real processes, under continuous load.

Every test keeps client tasks busy throughout: PUTs (each with a client_id and
seq, so the nodes' own retries apply it at most once) and linearizable GETs on a
rotating set of keys, each request to a node picked at random among the members
the test currently expects to serve, joining nodes included from the moment
they answer HTTP (still learners). Every answer is recorded (support/history.py)
and at the end, with every key read back through every member (those reads are
part of the history):
  * the whole history is linearizable (support/linearizability.py);
  * no acknowledged write is lost: a key's final value was never overwritten by
    an acknowledged write that started after it was acknowledged;
  * no node answered anything outside the API's documented outcomes;
  * every member reports the same configuration, with no change pending, and,
    once all have applied the same slot, the same content;
  * no node logged an error or a traceback.

The scenarios: grow 3 -> 5, shrink 5 -> 3, replace a killed node (which later
comes back by mistake), remove the leader (through itself or a follower),
requests the membership API must refuse without disturbing anyone, and the
leader killed at random moments of joins and of a removal. Where a test claims
a new configuration decides alone, it proves it by killing nodes: writes
continue only if the new voters' majority is the one that counts. Removed nodes
must stop by themselves with status 0.
"""
from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import random
import shutil
import signal
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from support.cluster import HOST, Cluster, Response, free_ports, wait_until
from support.history import (Recorder, Workload, errors, longest_gap_without_write, summarize, took_effect,
                             version_anomalies)
from support.linearizability import OK, READ, UNKNOWN, WRITE, Op, check
from support.timing import time_limit

TEST_BUDGET_S = 100.0  # each test, everything included; a hang fails the test, not the run
CHANGE_WITHIN_S = 30.0  # a membership change (or a join, with its snapshot) takes effect within this
# A removed node stops about a second after it learns it was removed, but only once the
# requests it holds are answered, which may take the node's whole 5 s request timeout.
EXIT_WITHIN_S = 12.0
NEW_LEADER_WITHIN_S = 10.0  # after the leader is removed (its successor is elected at once)
WRITES_WITHIN_S = 15.0
CONVERGE_WITHIN_S = 20.0
CHECK_MAX_STEPS = 2_000_000  # per key


# -- the load -----------------------------------------------------------------------------

RUNNING: list["Load"] = []  # started and not yet stopped: a failed test's load is stopped at teardown


@pytest.fixture(autouse=True)
def _stop_loads():
    yield
    while RUNNING:
        load = RUNNING.pop()
        load.stopping = True
        if load.thread is not None:
            load.thread.join(timeout=load.workload.request_timeout_s + 5)

class Load:
    """Client tasks on their own event loop (a thread), recording every answer.

    `targets` are the node ids requests go to; the test adds nodes as they join
    and drops them once they are dead or gone. Half the workers give up after
    1.5 s and the others after 7 s (longer than a node's own 5 s timeout), as in
    the fault-injection suite.
    """

    def __init__(self, cluster: Cluster, targets: list[int], workers: int = 6, seed: int | None = None,
                 rotate_s: float = 2.0) -> None:
        self.cluster = cluster
        self.seed = random.SystemRandom().randrange(1, 2**31) if seed is None else seed
        self.workload = Workload(workers=workers, keys_at_once=3, rotate_s=rotate_s,
                                 mix={READ: 0.5, WRITE: 0.5}, key_prefix="m")
        self.recorder = Recorder([cluster.url(i) for i in targets], self.workload, seed=self.seed,
                                 run_id=f"m{self.seed}")
        self.targets = list(targets)
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    # -- the client tasks ---------------------------------------------------------------

    def start(self) -> "Load":
        self.recorder.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._main, name="membership-load", daemon=True)
        self.thread.start()
        RUNNING.append(self)
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.failure = exc

    async def _run(self) -> None:
        await asyncio.gather(*(self._worker(w) for w in range(self.workload.workers)))

    async def _worker(self, w: int) -> None:
        rng = random.Random(f"{self.seed}-{w}")
        seq = itertools.count(1)
        impatient = w % 2 == 1
        rec = self.recorder
        async with rec.session(self.workload.impatient_timeout_s if impatient else None) as session:
            while not self.stopping:
                targets = self.targets
                if not targets:
                    await asyncio.sleep(0.05)
                    continue
                node = rng.choice(targets)
                key = rng.choice(rec.keys_at(time.monotonic()))
                if rng.random() < self.workload.mix[READ]:
                    op = await rec.execute(session, w, READ, key, self.cluster.url(node))
                else:
                    n = next(seq)
                    op = await rec.execute(session, w, WRITE, key, self.cluster.url(node),
                                           value=f"{rec.run_id}-w{w}-{n}", client=(f"{rec.run_id}-w{w}", n))
                op.meta["node"] = node
                pause = 0.05 if str(op.meta.get("error", "")).startswith("refused") else self.workload.think_s
                await asyncio.sleep(rng.uniform(0, pause))

    # -- the test's view ------------------------------------------------------------------

    def add(self, i: int) -> None:
        if i not in self.targets:
            self.targets = [*self.targets, i]

    def drop(self, i: int) -> None:
        self.targets = [t for t in self.targets if t != i]

    def ops(self) -> list[Op]:
        return list(self.recorder.ops)

    def writes_acked_since(self, t: float) -> int:
        return sum(1 for op in self.ops() if op.kind == WRITE and op.outcome == OK and op.end > t)

    def wait_writes(self, count: int, since: float | None = None, timeout: float = WRITES_WITHIN_S,
                    through: int | None = None) -> float:
        """Wait until `count` writes (through node `through`, if given) were acknowledged after
        `since` (default: now); the time it took."""
        t0 = time.monotonic() if since is None else since

        def enough() -> bool:
            acked = [op for op in self.ops() if op.kind == WRITE and op.outcome == OK and op.end > t0
                     and (through is None or op.meta.get("node") == through)]
            return len(acked) >= count

        wait_until(enough, timeout, f"{count} acknowledged writes{f' through node {through}' if through else ''} "
                   f"(targets {self.targets}; not ok so far: {errors(self.ops())})", interval=0.05)
        return time.monotonic() - t0

    def stop(self) -> None:
        self.stopping = True
        assert self.thread is not None
        self.thread.join(timeout=self.workload.request_timeout_s + 5)
        if self in RUNNING:
            RUNNING.remove(self)
        assert not self.thread.is_alive(), "a client task is stuck in a request"
        if self.failure is not None:
            raise AssertionError(f"the client tasks failed: {self.failure!r}") from self.failure

    def final_reads(self, nodes: list[int]) -> list[Op]:
        """Every key ever used, read linearizably through each of `nodes` (one task per node);
        the reads are recorded in the history like any other."""
        rec = self.recorder

        async def through(node: int) -> list[Op]:
            out = []
            async with rec.session() as session:
                for key in rec.keys_used:
                    op = await rec.execute(session, f"final@{node}", READ, key, self.cluster.url(node))
                    op.meta["node"] = node
                    out.append(op)
            return out

        async def everywhere() -> list[Op]:
            return [op for ops in await asyncio.gather(*(through(i) for i in nodes)) for op in ops]

        return asyncio.run(everywhere())


# -- checks ---------------------------------------------------------------------------------

def lost_writes(ops: list[Op], finals: list[Op]) -> list[str]:
    """Acknowledged writes the final reads show were lost.

    Values are unique, so a key's final value names the write that put it there;
    any write acknowledged before that write started is allowed to be older, but
    an acknowledged write that *started after it was acknowledged* must have
    replaced it. A key read as absent lost every acknowledged write to it.
    """
    out = []
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    for key in sorted({f.key for f in finals}):
        seen = {f.value for f in finals if f.key == key and f.outcome == OK}
        if len(seen) != 1:
            out.append(f"key {key!r}: the final reads disagree or failed: {sorted(map(str, seen))}")
            continue
        final = seen.pop()
        acked = [o for o in by_key[key] if took_effect(o)]
        if final is None:
            if acked:
                out.append(f"key {key!r}: read as absent, but {len(acked)} write(s) were acknowledged, "
                           f"e.g. #{acked[0].id} {acked[0].value!r}")
            continue
        writers = [o for o in by_key[key] if o.kind == WRITE and o.value == final and o.outcome in (OK, UNKNOWN)]
        if not writers:
            out.append(f"key {key!r}: final value {final!r} was never written (or its write failed)")
            continue
        writer = writers[0]
        later = [o for o in acked if o.start > writer.end]
        if later:
            first = min(later, key=lambda o: o.start)
            out.append(f"key {key!r}: final value {final!r} (write #{writer.id}), but #{first.id} "
                       f"{first.value!r} started after it was acknowledged and was acknowledged too: "
                       f"{len(later)} acknowledged write(s) lost")
    return out



def loaded_cluster(make_cluster) -> tuple:
    """Three nodes with a leader and a Load writing through all of them (20 writes done);
    (cluster, leader, load)."""
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    load = Load(cluster, [1, 2, 3]).start()
    load.wait_writes(20)
    return cluster, leader, load


def test_lost_write_detector():
    def op(i, start, end, value, kind=WRITE, outcome=OK, key="k", process=1):
        return Op(process, kind, key, start, end, outcome, value=value, id=i)

    history = [op(0, 0, 1, "a"), op(1, 2, 3, "b"), op(2, 2.5, 9, "u", outcome=UNKNOWN), op(3, 0, 1, "x", key="j")]
    final = lambda key, value: [op(10, 10, 11, value, READ, key=key, process="final@1"),  # noqa: E731
                                op(11, 10, 11, value, READ, key=key, process="final@2")]
    assert lost_writes(history, final("k", "b")) == []
    assert lost_writes(history, final("k", "u")) == []  # an unknown write may land last
    lost = lost_writes(history, final("k", "a"))
    assert len(lost) == 1 and "1 acknowledged write(s) lost" in lost[0], lost
    assert "read as absent" in lost_writes(history, final("j", None))[0]
    assert "never written" in lost_writes(history, final("k", "zz"))[0]
    split = [op(10, 10, 11, "b", READ, process="final@1"), op(11, 10, 11, "a", READ, process="final@2")]
    assert "disagree" in lost_writes(history, split)[0]


def members_of(cluster: Cluster, i: int) -> dict:
    resp = cluster.members(i, timeout=5)
    assert resp.status == 200, (i, resp)
    return resp.body


def wait_voter(cluster: Cluster, i: int, timeout: float = CHANGE_WITHIN_S, among: list[int] | None = None) -> float:
    """Wait until node i votes, by its own account and the leader's (the leader found among
    `among`, default every live node), with no change pending; the time it took."""
    started = time.monotonic()

    def voter() -> bool:
        st = cluster.status(i, timeout=2)
        leader = cluster.current_leader(among)
        if st["member"] != "voter" or leader is None:
            return False
        ms = members_of(cluster, leader)
        return i in ms["voters"] and ms["pending"] is None

    try:
        wait_until(voter, timeout, f"node {i} to become a voter", interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; statuses: {cluster.statuses()}") from None
    return time.monotonic() - started


def change(cluster: Cluster, send: Any, what: str, timeout: float = CHANGE_WITHIN_S) -> Response:
    """Send a membership request until it is answered 200, retrying what the API says to
    retry (409 change_in_progress, 503 no_quorum, 504 timeout, no answer); other refusals
    fail the test. Removing twice and adding the same id at the same address are no-ops,
    so retries are safe."""
    last: Any = None

    def attempt() -> Response | None:
        nonlocal last
        try:
            resp = send()
        except (OSError, http.client.HTTPException) as exc:
            last = exc
            return None
        last = resp
        if resp.status == 200:
            return resp
        if (resp.status, resp.error) in ((409, "change_in_progress"), (503, "no_quorum"), (504, "timeout")):
            return None
        raise AssertionError(f"{what}: refused: {resp}")

    try:
        return wait_until(attempt, timeout, what, interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc} (last answer: {last!r})") from None


def remove(cluster: Cluster, via: int, victim: int) -> Response:
    resp = change(cluster, lambda: cluster.remove(via, victim, timeout=10), f"removing node {victim} via {via}")
    assert victim not in [m["id"] for m in resp.body["members"]], resp
    assert victim in resp.body["removed"], resp
    return resp


class Exits:
    """Removed nodes must stop by themselves, with status 0.

    A removed node stays until every slot its configuration governs is chosen and
    known to a majority of the new voters, then stops about a second later (once the
    client requests it holds are answered). One still running after EXIT_WITHIN_S
    fails the test, with its view of the change
    (before this was fixed, a removed follower whose peers had hung up on it never
    learned the slots its removal governs, and never stopped).
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def expect(self, i: int, since: float, via: int, timeout: float = EXIT_WITHIN_S) -> float:
        """Wait for removed node i to stop; `via` is a member that knows of its removal.
        The seconds from `since` to its exit."""
        try:
            code = self.cluster.wait_exit(i, timeout=max(0.1, since + timeout - time.monotonic()))
        except AssertionError:
            st = self.cluster.statuses([i]).get(i, {})
            effective = next((h["effective"] for h in reversed(members_of(self.cluster, via)["history"])
                              if h["what"] == f"remove {i}"), None)
            tail = self.cluster.log_tail(i)
            self.cluster.kill(i)
            raise AssertionError(
                f"removed node {i} still running {timeout:g}s after its removal, which governs slots "
                f"from {effective} on (its status: member={st.get('member')!r} role={st.get('role')!r} "
                f"chosen={st.get('chosen')} applied={st.get('applied')} voters={st.get('voters')}):\n{tail}"
            ) from None
        log = self.cluster.log_path(i).read_text(errors="replace")
        assert code == 0, f"removed node {i} exited with status {code}:\n{self.cluster.log_tail(i)}"
        assert "this node was removed from the cluster; stopping" in log, self.cluster.log_tail(i)
        took = time.monotonic() - since
        print(f"removed node {i} exited {took:.2f}s after {since:.2f}")
        return took


def check_history(cluster: Cluster, load: Load, members: list[int], t_from: float | None = None,
                  gap_bound_s: float | None = None) -> dict:
    """Stop the load, read every key back through every member, and run every check; a report."""
    load.stop()
    run_end = time.monotonic()
    finals = load.final_reads(members)
    ops = load.recorder.history()
    run_ops = [o for o in ops if not str(o.process).startswith("final")]
    t0 = load.recorder.t0
    gap, g_from, g_to = longest_gap_without_write(run_ops, t_from or t0, run_end)
    report: dict[str, Any] = {
        "seed": load.seed, "ops": summarize(run_ops), "not_ok": errors(run_ops),
        "by_node": dict(sorted(_ok_by_node(run_ops).items())), "final_reads": summarize(finals),
        "refused_by_node": dict(sorted(_refused_by_node(run_ops).items())),
        "longest_without_write_s": {"gap": round(gap, 2), "from": round(g_from - t0, 2), "to": round(g_to - t0, 2)},
    }
    problems: list[str] = []
    if load.recorder.unexpected:
        problems.append(f"unexpected responses: {dict(load.recorder.unexpected)}")
    failed = [f for f in finals if f.outcome != OK]
    if failed:
        problems.append(f"{len(failed)} final read(s) failed: " + "; ".join(f.describe(t0) for f in failed[:5]))
    problems += lost_writes(ops, finals)
    problems += version_anomalies(ops)[:10]
    checked_at = time.monotonic()
    result = check(ops, max_steps=CHECK_MAX_STEPS)
    report["checker"] = {"verdict": result.verdict, "keys": len(result.keys),
                         "seconds": round(time.monotonic() - checked_at, 2),
                         "max_ops_per_key": max((r.ops for r in result.keys.values()), default=0)}
    problems += [r.describe(t0) for r in result.keys.values() if r.verdict != "linearizable"]
    if gap_bound_s is not None and gap > gap_bound_s:
        problems.append(f"no write was acknowledged for {gap:.2f}s ({g_from - t0:.2f}s to {g_to - t0:.2f}s)")
    problems += converged(cluster, members, report)
    problems += _crashes(cluster)
    print(report)
    if problems:
        report["history_file"] = str(_dump_history(ops, t0, cluster.dir / "history.jsonl"))
    assert not problems, f"{len(problems)} problem(s) (load seed {load.seed}):\n" + "\n".join(problems) \
        + f"\n\nreport: {report}"
    assert report["ops"][WRITE].get("ok", 0) > 0 and report["ops"][READ].get("ok", 0) > 0, report
    return report


def converged(cluster: Cluster, members: list[int], report: dict) -> list[str]:
    """Every member reports the same settled configuration naming exactly `members` as voters,
    and once all have applied the same slot, their content is the same."""
    problems = []
    configs = {i: members_of(cluster, i) for i in members}
    for i, ms in configs.items():
        if sorted(ms["voters"]) != sorted(members) or ms["learners"] or ms["pending"] is not None:
            problems.append(f"node {i} reports voters {ms['voters']}, learners {ms['learners']}, "
                            f"pending {ms['pending']}; expected voters {sorted(members)}")
    histories = {i: [h["what"] for h in ms["history"]] for i, ms in configs.items()}
    if len({tuple(h) for h in histories.values()}) != 1:
        problems.append(f"the members disagree on the configuration history: {histories}")
    report["config_history"] = next(iter(histories.values()))
    deadline = time.monotonic() + CONVERGE_WITHIN_S
    applied: dict[int, int] = {}
    while time.monotonic() < deadline:
        applied = {i: s["applied"] for i, s in cluster.statuses(members).items()}
        if len(applied) == len(members) and len(set(applied.values())) == 1:
            scans = {}
            for i in members:
                resp = cluster.list(i, limit=10_000, stale=True)
                scans[i] = resp.body.get("items") if resp.status == 200 else resp
            if {i: s["applied"] for i, s in cluster.statuses(members).items()} == applied:
                reference = scans[members[0]]
                problems += [f"node {i}'s content differs from node {members[0]}'s at slot {applied[i]}"
                             for i, items in scans.items() if items != reference]
                report["applied"] = applied
                return problems
        time.sleep(0.2)
    return problems + [f"the members did not reach the same applied slot within {CONVERGE_WITHIN_S:g}s: {applied}"]


def _dump_history(ops: list[Op], t0: float, path: Any) -> Any:
    """One JSON object per op, times in seconds from the start of the load."""
    with open(path, "w", encoding="utf-8") as f:
        for op in ops:
            f.write(json.dumps({"id": op.id, "p": op.process, "kind": op.kind, "key": op.key,
                                "start": round(op.start - t0, 4),
                                "end": None if op.end == float("inf") else round(op.end - t0, 4),
                                "outcome": op.outcome, "value": op.value, "meta": op.meta}, default=str) + "\n")
    return path


def _ok_by_node(ops: list[Op]) -> dict[Any, int]:
    out: dict[Any, int] = defaultdict(int)
    for op in ops:
        if op.outcome == OK:
            out[op.meta.get("node")] += 1
    return out


def _refused_by_node(ops: list[Op]) -> dict[Any, int]:
    out: dict[Any, int] = defaultdict(int)
    for op in ops:
        if str(op.meta.get("error", "")).startswith("refused"):
            out[op.meta.get("node")] += 1
    return out


def _crashes(cluster: Cluster) -> list[str]:
    out = []
    for i in cluster.ids:
        errors = cluster.logged_errors(i)
        if errors:
            out.append(f"node {i} logged an error or a traceback:\n" + "\n".join(errors)
                       + f"\n--- the end of its log:\n{cluster.log_tail(i, 40)}")
    return out


def others(cluster: Cluster, *exclude: int) -> list[int]:
    return [i for i in cluster.alive() if i not in exclude]


# -- the scenarios ----------------------------------------------------------------------------

def test_grow_three_to_five(make_cluster):
    """Two nodes join one after the other while clients use every node, the joining ones
    too: the first with `kv serve --join` alone, the second added through the first by
    POST /v1/members?wait=voter before its process starts. Then the two new voters are
    needed: with two of the original three killed, the leader's majority includes both.
    Last, a joined node is killed and restarts from its own data."""
    with time_limit(TEST_BUDGET_S, "grow 3 -> 5"):
        cluster, leader, load = loaded_cluster(make_cluster)

        n4 = cluster.join(via=leader)
        assert cluster.status(n4)["member"] in ("learner", "voter")
        load.add(n4)
        print(f"node {n4} a voter {wait_voter(cluster, n4):.2f}s after serving")
        load.wait_writes(5, through=n4)

        # The second is added first, through the newcomer, by a request that waits until it
        # votes (?wait=voter); its process then joins as a node that is already a member.
        n5, port = n4 + 1, free_ports(1)[0]
        with ThreadPoolExecutor(1) as pool:
            added = pool.submit(cluster.add_member, n4, n5, f"{HOST}:{port}", wait_voter=True,
                                timeout=CHANGE_WITHIN_S + 10)
            time.sleep(0.5)
            assert not added.done(), added.result()  # it waits: node 5 is not even running
            assert members_of(cluster, n4)["learners"] == [n5]
            cluster.join(via=n4, node_id=n5, port=port)
            load.add(n5)
            resp = added.result(timeout=CHANGE_WITHIN_S + 15)
        assert resp.status == 200 and n5 in resp.body["voters"], resp
        print(f"node {n5} a voter {wait_voter(cluster, n5):.2f}s after the answer")
        load.wait_writes(5, through=n5)
        ms = members_of(cluster, n5)
        assert ms["voters"] == [1, 2, 3, 4, 5] and ms["learners"] == [], ms
        assert [h["what"] for h in ms["history"]][-4:] == ["add 4", "promote 4", "add 5", "promote 5"], ms

        # Three of five: the leader and the two newcomers. Writes go on only if they vote.
        leader = cluster.wait_for_leader()
        down = [i for i in (1, 2, 3) if i != leader][:2]
        cluster.kill_many(down)
        for i in down:
            load.drop(i)
        killed_at = time.monotonic()
        load.wait_writes(20, since=killed_at)
        for i in down:  # the original nodes come back into the grown cluster
            cluster.restart(i)
            load.add(i)
        load.wait_writes(10)
        # A node that joined restarts from its own disk (the same `kv serve --join` command).
        cluster.kill(n4)
        load.drop(n4)
        cluster.restart(n4)
        load.add(n4)
        assert cluster.status(n4)["member"] == "voter"
        load.wait_writes(5, through=n4)
        # Joined nodes keep the configuration the cluster began with: one cluster id.
        assert len({cluster.status(i)["cluster_id"] for i in cluster.ids}) == 1
        check_history(cluster, load, [1, 2, 3, 4, 5])


def test_shrink_five_to_three(make_cluster):
    """Two followers are removed, one at a time (through the leader, then through a
    follower that stays); each stops by itself with status 0. Then the three left
    decide alone: with one of them killed, two of three still take writes (two of the
    old five could not)."""
    with time_limit(TEST_BUDGET_S, "shrink 5 -> 3"):
        cluster = make_cluster(5)
        leader = cluster.wait_for_leader()
        load = Load(cluster, [1, 2, 3, 4, 5]).start()
        load.wait_writes(20)
        exits = Exits(cluster)

        victims = [i for i in (5, 4, 3, 2, 1) if i != leader][:2]
        vias = [leader, next(i for i in cluster.ids if i not in victims and i != leader)]
        for victim, via in zip(victims, vias):
            resp = remove(cluster, via, victim)
            removed_at = time.monotonic()
            assert resp.body["pending"] is None, resp  # answered once in effect at the answering node
            exits.expect(victim, removed_at, via=via)
            load.drop(victim)
            load.wait_writes(10)
        remaining = sorted(i for i in cluster.ids if i not in victims)
        ms = members_of(cluster, remaining[0])
        assert ms["voters"] == remaining and sorted(ms["removed"]) == sorted(victims), ms

        leader = cluster.wait_for_leader(ids=remaining)
        down = next(i for i in remaining if i != leader)
        cluster.kill(down)
        load.drop(down)
        load.wait_writes(20, since=time.monotonic())
        cluster.restart(down)
        load.add(down)
        load.wait_writes(10)
        check_history(cluster, load, remaining)


def test_replace_a_killed_node(make_cluster):
    """A follower is SIGKILLed for good; the two left remove it (they are a majority of
    the voters that remain, so the removal is not refused) and a fresh node with a new
    id joins. The new node then counts: with the other original follower killed, the
    leader and the newcomer take writes. The cluster never needs the dead node again;
    when it comes back anyway, with its old data and its old configuration, it is turned
    away: it stops by itself, and the clients it answered meanwhile see nothing wrong."""
    with time_limit(TEST_BUDGET_S, "replace a killed node"):
        cluster, leader, load = loaded_cluster(make_cluster)

        dead, survivor = [i for i in cluster.ids if i != leader]
        cluster.kill(dead)
        load.drop(dead)
        load.wait_writes(10)
        remove(cluster, survivor, dead)
        load.wait_writes(10)

        new = cluster.join(via=survivor)
        assert new not in (1, 2, 3)
        load.add(new)
        wait_voter(cluster, new)
        load.wait_writes(5, through=new)
        members = sorted([leader, survivor, new])
        ms = members_of(cluster, new)
        assert ms["voters"] == members and dead in ms["removed"], ms

        leader = cluster.wait_for_leader(ids=members)
        down = next(i for i in members if i != leader and i != new) if leader != new else survivor
        cluster.kill(down)
        load.drop(down)
        load.wait_writes(20, since=time.monotonic())
        cluster.restart(down)
        load.add(down)
        load.wait_writes(10)

        # The dead machine comes back by mistake, believing it still votes.
        back_at = time.monotonic()
        cluster.restart(dead)
        load.add(dead)
        load.wait_writes(10)
        code = cluster.wait_exit(dead, timeout=max(0.1, back_at + EXIT_WITHIN_S - time.monotonic()))
        load.drop(dead)
        assert code == 0, cluster.log_tail(dead)
        assert "this node was removed from the cluster; stopping" in cluster.log_tail(dead), cluster.log_tail(dead)
        load.wait_writes(10)
        check_history(cluster, load, members, t_from=back_at, gap_bound_s=NEW_LEADER_WITHIN_S)


@pytest.mark.parametrize("via", ["itself", "a follower"])
def test_remove_the_leader(make_cluster, via):
    """The leader is asked, through itself or through a follower, to remove itself. The
    answer comes once the change is in effect; the old leader names a successor, which is
    elected promptly; writes continue, and the old leader's process stops by itself with
    status 0."""
    with time_limit(TEST_BUDGET_S, f"remove the leader through {via}"):
        cluster, old, load = loaded_cluster(make_cluster)
        exits = Exits(cluster)
        rest = [i for i in cluster.ids if i != old]
        asker = old if via == "itself" else rest[0]

        asked_at = time.monotonic()
        resp = remove(cluster, asker, old)
        answered_at = time.monotonic()
        new = cluster.wait_for_leader(ids=rest, timeout=NEW_LEADER_WITHIN_S + 5)
        elected_s = time.monotonic() - asked_at
        writes_s = load.wait_writes(1, since=answered_at, timeout=NEW_LEADER_WITHIN_S + 5)
        print(f"removal answered after {answered_at - asked_at:.2f}s; leader {new} after {elected_s:.2f}s; "
              f"a write acknowledged {writes_s:.2f}s after the answer")
        assert elected_s < NEW_LEADER_WITHIN_S, elected_s
        assert writes_s < NEW_LEADER_WITHIN_S, writes_s
        assert resp.body["voters"] == rest, resp
        exits.expect(old, answered_at, via=new)
        load.drop(old)
        load.wait_writes(20)
        st = cluster.status(cluster.wait_for_leader(ids=rest))
        assert st["voters"] == rest and st["member"] == "voter", st
        check_history(cluster, load, rest, t_from=answered_at, gap_bound_s=NEW_LEADER_WITHIN_S)


def test_bad_requests_change_nothing(make_cluster):
    """Malformed bodies (400), an unknown member (404), an existing id at another address,
    a removal that would lose the quorum, a removed id, the last voter (409), a second
    change racing the first (200 or 409 change_in_progress, and then it goes through):
    none disturbs the clients, and each refusal leaves the configuration as it was."""
    with time_limit(TEST_BUDGET_S, "bad membership requests"):
        cluster, leader, load = loaded_cluster(make_cluster)
        exits = Exits(cluster)
        f1, f2 = [i for i in cluster.ids if i != leader]
        before = members_of(cluster, leader)["history"]

        def refused(resp: Response, status: int, error: str | None = None) -> None:
            assert resp.status == status and (error is None or resp.error == error), resp
            assert isinstance(resp.body, dict) and resp.body.get("error"), resp

        # Malformed requests, through every node.
        addr = f"{HOST}:{free_ports(1)[0]}"
        for i in cluster.ids:
            def post(body: Any = None, raw: bytes | None = None, query: str = "") -> Response:
                return cluster.request(i, "POST", "/v1/members" + query, body, raw)

            refused(post(raw=b"not json"), 400)
            refused(post(raw=b""), 400)
            refused(post(body=[7, addr]), 400)
            refused(post(body={"id": "seven", "address": addr}), 400)
            refused(post(body={"id": 7.5, "address": addr}), 400)
            refused(post(body={"id": True, "address": addr}), 400)
            refused(post(body={"id": 0, "address": addr}), 400)
            refused(post(body={"id": -3, "address": addr}), 400)
            refused(post(body={"id": 2**31, "address": addr}), 400)
            refused(post(body={"id": 7}), 400)
            refused(post(body={"address": addr}), 400)
            refused(post(body={"id": 7, "address": 12345}), 400)
            refused(post(body={"id": 7, "address": "no-port"}), 400)
            refused(post(body={"id": 7, "address": f"{HOST}:99999"}), 400)
            refused(post(body={"id": 7, "address": "x" * 300 + ":1"}), 400)
            refused(post(body={"id": 7, "address": addr}, query="?wait=forever"), 400)
            refused(post(body={"id": 7, "address": addr}, query="?timeout=soon"), 400)
            for path in ("/v1/members/abc", "/v1/members/0", "/v1/members/-1", "/v1/members/1.5",
                         "/v1/members/%20", f"/v1/members/{2**31}", f"/v1/members/{f1}?force=maybe"):
                refused(cluster.request(i, "DELETE", path), 400)
            refused(cluster.remove(i, 99), 404, "not_a_member")
            refused(cluster.add_member(i, f1, addr), 409, "already_member")
        assert members_of(cluster, f1)["history"] == before
        load.wait_writes(10)

        # Removing f1 while f2 is down would leave one voter of two: refused, unless forced.
        cluster.kill(f2)
        load.drop(f2)
        refused(cluster.remove(leader, f1), 409, "would_lose_quorum")
        refused(cluster.remove(f1, f1), 409, "would_lose_quorum")
        assert members_of(cluster, leader)["history"] == before
        load.wait_writes(10)
        cluster.restart(f2)
        load.add(f2)
        cluster.wait_caught_up(f2)

        # A removed id is never accepted again: not by the API, not by `kv serve --join`.
        remove(cluster, f1, f2)
        exits.expect(f2, time.monotonic(), via=leader)
        load.drop(f2)
        refused(cluster.add_member(leader, f2, addr), 409, "id_reused")
        refused(cluster.add_member(f1, f2, f"{HOST}:{cluster.ports[f2]}"), 409, "id_reused")
        again = cluster.remove(leader, f2)  # removing twice is a no-op
        assert again.status == 200 and f2 in again.body["removed"], again
        shutil.rmtree(cluster.data_dir(f2), ignore_errors=True)
        cluster.join(via=leader, node_id=f2, wait=False)
        assert cluster.wait_exit(f2, timeout=20) != 0
        assert "never reused" in cluster.log_tail(f2, 5), cluster.log_tail(f2)
        load.wait_writes(10)

        # Two changes at once through different nodes: each is done or refused as in
        # progress (and then goes through when asked again).
        n_a, n_b = max(cluster.ids) + 1, max(cluster.ids) + 2
        a_addr, b_addr = (f"{HOST}:{p}" for p in free_ports(2))
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(cluster.add_member, leader, n_a, a_addr, timeout=10)
            second = pool.submit(cluster.add_member, f1, n_b, b_addr, timeout=10)
            answers = [first.result(), second.result()]
        print("concurrent changes:", answers)
        for resp in answers:
            assert resp.status == 200 or (resp.status, resp.error) == (409, "change_in_progress"), resp
        for resp, (node, address, via) in zip(answers, ((n_a, a_addr, leader), (n_b, b_addr, f1))):
            if resp.status != 200:
                change(cluster, lambda: cluster.add_member(via, node, address, timeout=10), f"adding {node}")
        ms = members_of(cluster, leader)
        assert sorted(ms["learners"]) == [n_a, n_b] and ms["voters"] == sorted([leader, f1]), ms
        load.wait_writes(10)
        # They never started, so they never catch up and are never promoted; remove them.
        for node in (n_a, n_b):
            remove(cluster, leader, node)
        load.wait_writes(10)
        ms = members_of(cluster, f1)
        assert ms["voters"] == sorted([leader, f1]) and ms["learners"] == [], ms
        assert sorted(ms["removed"]) == sorted([f2, n_a, n_b]), ms

        # Down to one voter, which cannot be removed: the cluster would be gone.
        removed_at = time.monotonic()
        remove(cluster, leader, f1)
        exits.expect(f1, removed_at, via=leader)
        load.drop(f1)
        refused(cluster.remove(leader, leader), 409, "last_voter")
        refused(cluster.remove(leader, leader, force=True), 409, "last_voter")
        assert members_of(cluster, leader)["voters"] == [leader]
        load.wait_writes(10)
        check_history(cluster, load, [leader], gap_bound_s=NEW_LEADER_WITHIN_S)


def test_leader_killed_during_changes(make_cluster):
    """The leader is SIGKILLed in the middle of membership changes, at random moments.

    Twice: a node starts joining through a follower and, at some point of its join
    (before it asks, while it is a learner, while it is promoted), the leader dies. The
    join must still complete (the joining node retries what it must) and the new node
    become a voter; the dead leader is then removed by the members left. Then, with four
    voters, a follower's removal is requested and the leader killed a moment later, so
    the change may die with it, be chosen with its alpha window half filled, or be done:
    asked again, it is done exactly once. The removed follower stops by itself.
    """
    seed = random.SystemRandom().randrange(1, 2**31)
    rng = random.Random(seed)
    with time_limit(TEST_BUDGET_S, f"leader killed during changes (seed {seed})"):
        cluster, _, load = loaded_cluster(make_cluster)
        exits = Exits(cluster)
        members = [1, 2, 3]
        for round_ in range(3):
            leader = cluster.wait_for_leader(ids=members)
            via = rng.choice([i for i in members if i != leader])
            joining = cluster.join(via=via, wait=False)
            delay = rng.uniform(0.0, 1.0)
            if round_ < 2:
                time.sleep(delay)
                cluster.kill(leader)
                load.drop(leader)
                print(f"seed {seed}: node {joining} joining through {via}; leader {leader} killed after {delay:.2f}s")
            cluster.wait_ready(joining, timeout=CHANGE_WITHIN_S)
            load.add(joining)
            wait_voter(cluster, joining)
            load.wait_writes(5, through=joining)
            members = sorted([*members, joining])
            if round_ < 2:
                members.remove(leader)
                remove(cluster, via, leader)
                ms = members_of(cluster, via)
                assert ms["voters"] == members and leader in ms["removed"], ms
            load.wait_writes(10)

        # Four voters: remove a follower and kill the leader a moment after asking.
        leader = cluster.wait_for_leader(ids=members)
        victim, via = rng.sample([i for i in members if i != leader], 2)
        delay = rng.uniform(0.0, 0.05)
        with ThreadPoolExecutor(1) as pool:
            asked = pool.submit(cluster.remove, via, victim, timeout=10)
            time.sleep(delay)
            cluster.kill(leader)
            load.drop(leader)
            first = asked.result()
        print(f"seed {seed}: removing {victim} through {via}, leader {leader} killed after {delay:.3f}s: {first}")
        assert first.status in (200, 503, 504) or (first.status, first.error) == (409, "change_in_progress"), first
        removed_at = time.monotonic()
        remove(cluster, via, victim)  # again: done now, and never twice
        exits.expect(victim, removed_at, via=via)
        load.drop(victim)
        members = [i for i in members if i not in (victim, leader)]
        remove(cluster, via, leader)
        ms = members_of(cluster, via)
        assert ms["voters"] == members and {victim, leader} <= set(ms["removed"]), ms
        assert [h["what"] for h in ms["history"]].count(f"remove {victim}") == 1, ms["history"]
        load.wait_writes(10)
        check_history(cluster, load, members)


def test_node_paused_through_its_removal_is_turned_away(make_cluster):
    """A follower is frozen (SIGSTOP) with client requests in flight, removed, and replaced
    by a new voter; then it wakes up still believing it votes in the old configuration.
    It must not decide or answer anything the new configuration did not (requests it
    takes after waking stay in the checked history, as do the ones it held while frozen),
    and it stops by itself once told it was removed."""
    with time_limit(TEST_BUDGET_S, "node paused through its removal"):
        cluster, leader, load = loaded_cluster(make_cluster)
        frozen, other = [i for i in cluster.ids if i != leader]
        proc = cluster.procs[frozen]
        assert proc is not None
        os.killpg(proc.pid, signal.SIGSTOP)  # its own process group (start_new_session)
        frozen_at = time.monotonic()
        try:
            remove(cluster, other, frozen)
            new = cluster.join(via=other)
            load.add(new)
            wait_voter(cluster, new, among=[leader, other, new])  # the frozen node would not answer
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
        woke_at = time.monotonic()
        print(f"node {frozen} frozen for {woke_at - frozen_at:.2f}s")
        Exits(cluster).expect(frozen, woke_at, via=other, timeout=EXIT_WITHIN_S + 5)
        load.drop(frozen)
        load.wait_writes(10)
        check_history(cluster, load, sorted([leader, other, new]), gap_bound_s=NEW_LEADER_WITHIN_S)
