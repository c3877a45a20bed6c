"""Fault injection against a real 3-node cluster, checked for linearizability.

Eight clients read, write, compare-and-set and delete a rotating set of keys
through random nodes while a nemesis, one fault at a time, SIGKILLs a random
node, SIGKILLs the leader, SIGSTOPs a random node or the leader, and undoes
each fault a few seconds later. Afterwards, with every node back:
  * the cluster takes a write within a few seconds;
  * every key is read from every node (linearizable reads, part of the history);
  * the whole history is linearizable, per key (support/linearizability.py);
  * no acknowledged write is lost: a final value written before some other
    acknowledged write started is named explicitly;
  * versions are consistent with values;
  * once all nodes have applied the same slot, their stale scans are identical;
  * a watcher that followed every change all through the faults (moving between
    nodes as they died or stalled) saw each revision once, with no gap, every
    acknowledged write at the version its answer gave, and, replayed in order,
    exactly the converged store.

A report (seed, ops by kind and outcome, faults, anomalies, the longest time
without an acknowledged write) is printed and attached to any failure.
KV_JEPSEN_SEED replays a seed's choices (timing is real, so not the history);
KV_JEPSEN_DURATION sets the length of the faulty run in seconds (default 30);
KV_JEPSEN_FAULTS=kind,... picks the faults (also kill_two, pause_two: a majority).
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import Counter
from typing import Any

from support.cluster import Cluster
from support.watcher import Watcher
from support.history import (Recorder, Workload, errors, first_write_after, longest_gap_without_write, summarize,
                             took_effect, version_anomalies)
from support.linearizability import CAS, DELETE, OK, READ, UNKNOWN, WRITE, Op, check

DURATION_S = float(os.environ.get("KV_JEPSEN_DURATION", "30"))
HEALED_WRITE_WITHIN_S = 10.0  # after every node is back, a write must succeed within this
CONVERGE_WITHIN_S = 20.0
CHECK_MAX_STEPS = 2_000_000  # per key


class Nemesis:
    """One fault at a time: kill (SIGKILL) or pause (SIGSTOP) a random node or the leader,
    hold it for a few seconds, then undo it (restart / SIGCONT)."""

    KINDS = ("kill_random", "kill_leader", "pause_random", "pause_leader")
    # Not in the default rotation (they stop all progress): KV_JEPSEN_FAULTS=kill_two,...
    EXTRA = ("kill_two", "pause_two")

    def __init__(self, cluster: Cluster, rng: random.Random, t0: float,
                 kinds: tuple[str, ...] = KINDS) -> None:
        unknown = set(kinds) - set(self.KINDS) - set(self.EXTRA)
        if unknown or not kinds:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {self.KINDS + self.EXTRA}")
        self.kinds = kinds
        self.cluster = cluster
        self.rng = rng
        self.t0 = t0
        self.log: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.down: set[int] = set()
        self.paused: set[int] = set()

    def _note(self, what: str, node: int | None, **extra: Any) -> None:
        self.log.append({"t": round(time.monotonic() - self.t0, 2), "event": what, "node": node, **extra})

    async def run(self, until: float) -> None:
        """Inject faults until `until` (monotonic), then heal everything."""
        try:
            order: list[str] = []
            while True:
                if not order:
                    order = list(self.kinds)
                    self.rng.shuffle(order)
                quiet = self.rng.uniform(1.0, 2.5)
                # A majority stays down past the node's 5 s request timeout, so that
                # clients see its 503s and 504s.
                hold = self.rng.uniform(5.5, 7.5) if order[-1].endswith("_two") else self.rng.uniform(1.5, 3.5)
                if time.monotonic() + quiet + hold > until:
                    break
                await asyncio.sleep(quiet)
                await self.fault(order.pop(), hold)
        finally:
            await self.heal()

    async def _leader(self) -> int | None:
        return await asyncio.to_thread(self.cluster.current_leader)

    async def fault(self, kind: str, hold: float) -> None:
        if kind.endswith("_two"):
            await self.fault_two(kind, hold)
            return
        target: int | None = None
        if kind.endswith("_leader"):
            target = await self._leader()
            if target is None:
                self._note("no leader to target", None, kind=kind)
        if target is None:
            target = self.rng.choice(self.cluster.ids)
        self.counts[kind] += 1
        if kind.startswith("kill"):
            await asyncio.to_thread(self.cluster.kill, target, signal.SIGKILL)
            self.down.add(target)
            self._note(kind, target, hold_s=round(hold, 2))
            await asyncio.sleep(hold)
            await self.restart(target)
        else:
            self._signal(target, signal.SIGSTOP)
            self.paused.add(target)
            self._note(kind, target, hold_s=round(hold, 2))
            await asyncio.sleep(hold)
            self.resume(target)

    async def fault_two(self, kind: str, hold: float) -> None:
        """Take down a majority (two of three, the leader among them if there is one)."""
        leader = await self._leader()
        rest = [i for i in self.cluster.ids if i != leader]
        targets = (([leader] if leader is not None else []) + self.rng.sample(rest, 2))[:2]
        self.counts[kind] += 1
        for i in targets:
            if kind.startswith("kill"):
                await asyncio.to_thread(self.cluster.kill, i, signal.SIGKILL)
                self.down.add(i)
            else:
                self._signal(i, signal.SIGSTOP)
                self.paused.add(i)
        self._note(kind, None, nodes=targets, hold_s=round(hold, 2))
        await asyncio.sleep(hold)
        for i in targets:
            if kind.startswith("kill"):
                await self.restart(i)
            else:
                self.resume(i)

    def _signal(self, i: int, sig: int) -> None:
        proc = self.cluster.procs[i]
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, sig)  # Cluster starts each node in its own session

    def resume(self, i: int) -> None:
        self._signal(i, signal.SIGCONT)
        self.paused.discard(i)
        self._note("resume", i)

    async def restart(self, i: int) -> None:
        await asyncio.to_thread(self.cluster.spawn, i)
        self.down.discard(i)
        self._note("restart", i)
        await asyncio.to_thread(self.cluster.wait_ready, i, 20.0)
        self._note("serving", i)

    async def heal(self) -> None:
        for i in sorted(self.paused):
            self.resume(i)
        for i in sorted(self.down):
            await self.restart(i)


async def _record_with_faults(cluster: Cluster, seed: int, report: dict) -> tuple[Recorder, dict]:
    rng = random.Random(seed)
    recorder = Recorder([cluster.url(i) for i in cluster.ids], Workload(), seed=seed, run_id=f"s{seed}")
    t0 = time.monotonic()
    kinds = tuple(k for k in os.environ.get("KV_JEPSEN_FAULTS", "").split(",") if k) or Nemesis.KINDS
    nemesis = Nemesis(cluster, rng, t0, kinds)
    # The nemesis stops faulting (and heals) a little before the clients stop, so
    # the run ends with every node up and serving.
    nem = asyncio.create_task(nemesis.run(until=t0 + DURATION_S - 1.0))
    try:
        await recorder.run(DURATION_S)
    finally:
        await nem
    healed_at = time.monotonic()
    run_end = max((op.end for op in recorder.ops if op.end != float("inf")), default=healed_at)
    report["faults"] = dict(nemesis.counts)
    report["fault_log"] = nemesis.log

    # The cluster must take a write soon after healing.
    first_write = await first_write_after(recorder, healed_at, HEALED_WRITE_WITHIN_S + 5,
                                          f"s{seed}-probe", pause_s=0.1)
    report["first_write_after_heal_s"] = None if first_write is None else round(first_write, 2)

    # Every key from every node, linearizably; these reads are part of the history.
    finals = await recorder.read_everywhere(recorder.keys_used + ["heal-probe"])
    times = {"t0": t0, "run_end": run_end, "healed_at": healed_at}
    return recorder, {"finals": finals, **times}


def _converged_scans(cluster: Cluster, prefix: str) -> tuple[dict[int, Any], dict[int, int]]:
    """Wait until every node has applied the same slot, then scan each node's local map."""
    deadline = time.monotonic() + CONVERGE_WITHIN_S
    applied: dict[int, int] = {}
    while time.monotonic() < deadline:
        statuses = cluster.statuses()
        applied = {i: s["applied"] for i, s in statuses.items()}
        if len(applied) == cluster.n and len(set(applied.values())) == 1:
            scans = {}
            for i in cluster.ids:
                resp = cluster.list(i, prefix=prefix, limit=10_000, stale=True)
                # Without the seconds a key that expires has left: each node reads its own clock.
                scans[i] = ([{k: v for k, v in item.items() if k != "ttl"} for item in resp.body["items"]]
                            if resp.status == 200 else resp)
            after = {i: s["applied"] for i, s in cluster.statuses().items()}
            if after == applied:
                return scans, applied
        time.sleep(0.2)
    return {}, applied


def _lost_writes(ops: list, finals: list, t0: float = 0.0) -> list[str]:
    """Keys whose final value was written before some other acknowledged write started."""
    out = []
    by_key: dict[str, list] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    for key in sorted({f.key for f in finals}):
        seen = {f.value for f in finals if f.key == key and f.outcome == OK}
        if len(seen) != 1:
            continue  # no answer, or disagreeing answers: the checker's to explain
        final = seen.pop()
        if final is None:
            continue
        writers = [o for o in by_key[key] if o.value == final and (
            (o.kind == WRITE and o.outcome in (OK, UNKNOWN))
            or (o.kind == CAS and (o.outcome == UNKNOWN or (o.outcome == OK and o.result))))]
        if not writers:
            out.append(f"key {key!r}: final value {final!r} was never written (or its write failed)")
            continue
        writer = writers[0]
        later = [o for o in by_key[key] if took_effect(o) and o.kind != DELETE and o.start > writer.end]
        if later:
            first = min(later, key=lambda o: o.start)
            out.append(f"key {key!r}: final value {final!r} written by #{writer.id} (acknowledged at "
                       f"{writer.end - t0:.3f}s), but #{first.id} {first.kind} {first.value!r} started "
                       f"later ({first.start - t0:.3f}s) and was acknowledged: "
                       f"{len(later)} acknowledged write(s) lost")
    return out


def test_lost_write_detector():
    def op(i, kind, start, end, value, outcome=OK, result=None, key="k", process=1):
        return Op(process, kind, key, start, end, outcome, value=value, result=result, id=i)
    history = [op(0, WRITE, 0, 1, "a"), op(1, WRITE, 2, 3, "b"), op(2, CAS, 4, 5, "c", result=True),
               op(3, WRITE, 0, 9, "u", outcome=UNKNOWN), op(4, WRITE, 0, 1, "x", key="j")]
    finals = [op(10, READ, 10, 11, "a", process="final@1"), op(11, READ, 11, 12, "a", process="final@2"),
              op(12, READ, 10, 11, "x", key="j", process="final@1")]
    lost = _lost_writes(history, finals)
    assert len(lost) == 1 and "'k'" in lost[0] and "2 acknowledged write(s) lost" in lost[0], lost
    assert _lost_writes(history, [op(10, READ, 10, 11, "c")]) == []
    assert _lost_writes(history, [op(10, READ, 10, 11, "u")]) == []  # an unknown write may land last
    assert "never written" in _lost_writes(history, [op(10, READ, 10, 11, "zz")])[0]


def test_linearizable_under_crashes_and_pauses(make_cluster):
    seed = int(os.environ.get("KV_JEPSEN_SEED") or random.SystemRandom().randrange(1, 2**31))
    report: dict[str, Any] = {"seed": seed, "duration_s": DURATION_S}
    anomalies: list[str] = []
    started = time.monotonic()
    cluster = make_cluster(3)
    cluster.wait_for_leader()

    watcher = Watcher([cluster.url(i) for i in cluster.ids])
    recorder, extra = asyncio.run(_record_with_faults(cluster, seed, report))
    ops = recorder.history()
    t0 = extra["t0"]
    finals = extra["finals"]
    run_ops = [o for o in ops if not str(o.process).startswith(("final", "probe"))]
    report["ops"] = summarize(run_ops)
    report["not_ok"] = errors(run_ops)
    report["final_reads"] = summarize(finals)
    report["unexpected_responses"] = dict(recorder.unexpected)
    gap, g_from, g_to = longest_gap_without_write(run_ops, t0, extra["run_end"])
    report["longest_without_write_s"] = {"gap": round(gap, 2), "from": round(g_from - t0, 2),
                                         "to": round(g_to - t0, 2)}

    if report["first_write_after_heal_s"] is None:
        anomalies.append(f"no write succeeded within {HEALED_WRITE_WITHIN_S + 5:g}s of healing")
    elif report["first_write_after_heal_s"] > HEALED_WRITE_WITHIN_S:
        anomalies.append(f"first write after healing took {report['first_write_after_heal_s']}s")
    failed_finals = [f for f in finals if f.outcome != OK]
    if failed_finals:
        anomalies.append(f"{len(failed_finals)} final read(s) failed: "
                         + "; ".join(f.describe(t0) + f" {f.meta.get('error')}" for f in failed_finals[:5]))
    if recorder.unexpected:
        anomalies.append(f"unexpected responses: {dict(recorder.unexpected)}")

    # No acknowledged write lost, versions consistent, histories linearizable.
    anomalies += _lost_writes(ops, finals, t0)
    anomalies += version_anomalies(ops)[:10]
    checked_at = time.monotonic()
    result = check(ops, max_steps=CHECK_MAX_STEPS)
    report["checker"] = {
        "verdict": result.verdict, "keys": len(result.keys), "seconds": round(time.monotonic() - checked_at, 2),
        "max_steps": max((r.steps for r in result.keys.values()), default=0),
        "max_ops_per_key": max((r.ops for r in result.keys.values()), default=0),
    }
    for r in result.keys.values():
        if r.verdict != "linearizable":
            anomalies.append(r.describe(t0))

    # Same content everywhere once every node has applied the same slot.
    scans, applied = _converged_scans(cluster, "")
    report["applied"] = applied
    if not scans:
        anomalies.append(f"nodes did not reach the same applied slot within {CONVERGE_WITHIN_S:g}s: {applied}")
    else:
        reference = scans[cluster.ids[0]]
        for i, items in scans.items():
            if items != reference:
                diff = _diff_scans(reference, items)
                anomalies.append(f"node {i}'s content differs from node {cluster.ids[0]}'s at slot "
                                 f"{applied.get(i)}: {diff}")
        report["keys_in_store"] = len(reference) if isinstance(reference, list) else None
    # Final reads must agree with the converged content.
    if scans and isinstance(scans[cluster.ids[0]], list):
        content = {item["key"]: item["value"] for item in scans[cluster.ids[0]]}
        for f in finals:
            if f.outcome == OK and f.kind == READ and content.get(f.key) != f.value:
                anomalies.append(f"final read {f.describe(t0)} disagrees with the converged store "
                                 f"({content.get(f.key)!r})")
                break

    # The watcher saw every change, once, in order; replayed, they are the store.
    revision = max((st["watch"]["revision"] for st in cluster.statuses().values()), default=0)
    watcher.wait_for(revision, CONVERGE_WITHIN_S)
    content = None
    if scans and isinstance(scans[cluster.ids[0]], list):
        content = {item["key"]: item["value"] for item in scans[cluster.ids[0]]}
    anomalies += watcher.anomalies(ops, content, revision)
    report["watcher"] = {**watcher.report(), "revision": revision}

    report["anomalies"] = anomalies
    report["total_s"] = round(time.monotonic() - started, 1)
    if anomalies:
        report["history_file"] = str(_dump_history(ops, t0, cluster.dir / "history.jsonl"))
    text = json.dumps(report, indent=1, default=str)
    print(text)
    assert not anomalies, f"{len(anomalies)} anomalies (seed {seed}; KV_JEPSEN_SEED={seed} replays the " \
                          f"nemesis and workload choices):\n" + "\n".join(anomalies) + "\n\nreport:\n" + text


def _diff_scans(a: Any, b: Any) -> str:
    if not isinstance(a, list) or not isinstance(b, list):
        return f"{a!r} vs {b!r}"
    da = {i["key"]: (i["value"], i["version"]) for i in a}
    db = {i["key"]: (i["value"], i["version"]) for i in b}
    keys = sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k))
    return ", ".join(f"{k}: {da.get(k)} vs {db.get(k)}" for k in keys[:10]) + (" ..." if len(keys) > 10 else "")


def _dump_history(ops: list, t0: float, path) -> Any:
    """One JSON object per op, times relative to the start of the run."""
    with open(path, "w", encoding="utf-8") as f:
        for op in ops:
            f.write(json.dumps({"id": op.id, "p": op.process, "kind": op.kind, "key": op.key,
                                "start": round(op.start - t0, 4),
                                "end": None if op.end == float("inf") else round(op.end - t0, 4),
                                "outcome": op.outcome, "value": op.value, "old": op.old, "result": op.result,
                                "meta": {k: (round(v - t0, 4) if k == "gave_up_at" else v)
                                         for k, v in op.meta.items()}}, default=str) + "\n")
    return path
