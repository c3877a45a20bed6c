"""The fault-injection harness: a cluster behind per-link proxies, a nemesis, a
recorded workload, and the checks and report after the run.

A run (run_plan):
  1. warm-up: clients only, for the "before" throughput;
  2. faults: the nemesis injects one fault at a time per stream (two streams,
     process and network, may overlap in soak mode), each held a few seconds and
     undone; then it heals everything (network healed, paused nodes resumed,
     killed nodes restarted and serving);
  3. after: clients go on for a few seconds while a probe writes until the
     cluster takes a write;
  4. checks: every key read from every node (linearizable reads, part of the
     history), the whole history linearizable per key, no acknowledged write
     lost, versions consistent with values, all nodes' content identical once
     they applied the same slot, the probe's write accepted soon after
     healing, a watcher's replay of every change equal to that content, and
     every key put with a time to live (a writer beside the workload puts keys
     under ttl/ with ttls of 0.3-1.5 s all through the run, and now and then
     deletes them all by prefix) gone from every node soon after its deadline,
     every node's accounts adding up to what was opened (a writer beside the
     workload moves amounts between five accounts under bank/ with
     transactions all through the run, and audits them meanwhile: a read of all
     five in one transaction of gets must add up too), and no node's log holding a line at
     error level or a traceback (a fault is no bug: a peer or a client gone).

The report (seed, ops by kind and outcome, faults by kind and their log,
anomalies, the longest time without an acknowledged write, throughput
before/during/after, first write after healing, checker and proxy figures) is
printed and written as JSON to tests/artifacts/jepsen/, with the history as
JSON lines next to it when the run found anomalies.

Fault kinds (Nemesis.KINDS):
  kill_random, kill_leader   SIGKILL one node, restart it after the hold
  kill_all                   SIGKILL every node at once, restart them all
  kill_majority              SIGKILL a majority (the leader among it)
  wipe_random                SIGKILL one node and delete its data directory; it
                             restarts empty and rebuilds from its peers
  pause_random, pause_leader SIGSTOP, SIGCONT after the hold
  partition_half             a random minority cut off from the majority
  isolate_leader             the leader alone on one side
  bridge                     two halves that cannot see each other, and one
                             node that sees both
  one_way_leader             the leader's messages reach everyone, nothing
                             reaches it (an asymmetric partition)
  stall_half                 partition_half, black-holed: connections hang
                             instead of being reset
  delay                      every link delayed (20-120 ms, plus jitter)
  loss                       every link loses connections (TCP's way to lose
                             messages; the transport reconnects)
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import shutil
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from support.cluster import REPO_ROOT, Cluster
from support.history import (Recorder, Workload, errors, first_write_after, longest_gap_without_write, summarize,
                             took_effect, version_anomalies)
from support.linearizability import OK, READ, Op, check
from support.netproxy import NetProxy
from support.watcher import Watcher

from .test_faults import CONVERGE_WITHIN_S, _converged_scans, _diff_scans, _dump_history, _lost_writes

ARTIFACTS = REPO_ROOT / "tests" / "artifacts" / "jepsen"
PLANTED = REPO_ROOT / "tests" / "support" / "planted.py"
HEALED_WRITE_WITHIN_S = 10.0  # a write must be accepted this soon after healing
# Keys with a time to live, put all through a run beside the checked workload: every one
# acknowledged must be gone from every node this soon after the last deadline.
TTL_PREFIX = "ttl/"
# Accounts that transactions move amounts between all through a run: their total never changes.
BANK_PREFIX = "bank/"
BANK_ACCOUNTS = 5
BANK_START = 100
TTL_CHOICES_S = (0.3, 0.8, 1.5)
TTL_EXPIRED_WITHIN_S = 15.0
CHECK_MAX_STEPS = 2_000_000  # per key
FINAL_READS_BUDGET_S = 120.0
FINAL_READS_FAILING_MAX = 12

PROCESS_KINDS = ("kill_random", "kill_leader", "kill_all", "pause_random", "pause_leader")
NETWORK_KINDS = ("partition_half", "isolate_leader", "bridge", "one_way_leader", "stall_half",
                 "delay", "loss")
EXTRA_KINDS = ("kill_majority", "wipe_random")
ALL_KINDS = PROCESS_KINDS + NETWORK_KINDS

# What a finding means: a safety anomaly is a wrong answer; a liveness one is a missing answer.
SAFETY = ("nonlinearizable", "lost_write", "divergence", "version", "watch", "bank_total")


class FaultCluster(Cluster):
    """A Cluster whose nodes reach each other through a NetProxy, optionally running a
    planted bug (tests/support/planted.py)."""

    def __init__(self, tmp_path: str | os.PathLike, n: int = 3, planted: str | None = None,
                 proxy: bool = True, seed: int = 0, node_args: tuple[str, ...] = (), **kwargs: Any) -> None:
        self.net: NetProxy | None = None
        super().__init__(tmp_path, n=n, **kwargs)
        self.planted = planted
        self.node_args = list(node_args)  # more `kv serve` options, e.g. snapshot settings
        if proxy:
            self.net = NetProxy(self.ports, seed=seed, log_path=self.dir / "netproxy.log")

    def _pick_ports(self) -> None:
        super()._pick_ports()
        if self.net is not None:
            self.net.retarget(self.ports)

    def command(self, i: int) -> list[str]:
        cmd = super().command(i)
        if self.net is not None:
            cmd[cmd.index("--cluster") + 1] = self.net.spec_for(i, self.ports)
        if self.planted:
            assert cmd[1:3] == ["-m", "cli.main"], cmd
            cmd[1:3] = [str(PLANTED), self.planted]
        return cmd + self.node_args

    def pause(self, i: int) -> None:
        self._signal(i, signal.SIGSTOP)

    def resume(self, i: int) -> None:
        self._signal(i, signal.SIGCONT)

    def _signal(self, i: int, sig: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)  # each node runs in its own session
            except ProcessLookupError:
                pass

    def stop_all(self) -> None:
        for i in self.ids:
            self.resume(i)
        super().stop_all()
        if self.net is not None:
            self.net.close()


# -- the nemesis -----------------------------------------------------------------------


class Nemesis:
    def __init__(self, cluster: FaultCluster, rng: random.Random, t0: float,
                 quiet_s: tuple[float, float], hold_s: tuple[float, float]) -> None:
        self.cluster = cluster
        self.net = cluster.net
        self.rng = rng
        self.t0 = t0
        self.quiet_s, self.hold_s = quiet_s, hold_s
        self.log: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.down: set[int] = set()
        self.paused: set[int] = set()
        self.net_faulty = False
        self.first_fault_at: float | None = None
        self.errors: list[str] = []  # nodes that did not come back
        self.rebuilding: set[int] = set()  # wiped, and not seen voting again since

    def _forget_rebuilt(self) -> None:
        for i in list(self.rebuilding):
            try:
                st = self.cluster.status(i, timeout=2)
            except (OSError, AssertionError, http.client.HTTPException):
                continue
            if st.get("voting") and not st.get("deciding"):
                self.rebuilding.discard(i)

    def note(self, event: str, **extra: Any) -> None:
        self.log.append({"t": round(time.monotonic() - self.t0, 2), "event": event, **extra})

    async def run(self, streams: list[tuple[str, ...]], until: float, every_kind_once: bool = True,
                  cover_all: bool = False) -> None:
        """One task per stream of kinds, each injecting one fault at a time until `until`
        (with cover_all, until every kind ran at least once, however long that takes);
        then heal everything."""
        try:
            await asyncio.gather(*(self._stream(kinds, until, every_kind_once, cover_all)
                                   for kinds in streams))
        finally:
            await self.heal()

    async def _stream(self, kinds: tuple[str, ...], until: float, every_kind_once: bool,
                      cover_all: bool) -> None:
        bag: list[str] = []
        while True:
            if not bag:
                bag = list(kinds)
                self.rng.shuffle(bag)
            kind = bag[-1] if every_kind_once else self.rng.choice(kinds)
            quiet = self.rng.uniform(*self.quiet_s)
            hold = self.rng.uniform(*self.hold_s)
            missing = cover_all and any(k not in self.counts for k in kinds)
            if time.monotonic() + quiet + hold > until and not missing:
                return
            await asyncio.sleep(quiet)
            if every_kind_once:
                bag.pop()
            if self.first_fault_at is None:
                self.first_fault_at = time.monotonic()
            await self.fault(kind, hold)

    async def leader(self) -> int | None:
        return await asyncio.to_thread(self.cluster.current_leader)

    async def _target(self, kind: str) -> int:
        if kind.endswith("_leader"):
            leader = await self.leader()
            if leader is not None:
                return leader
            self.note("no leader to target", kind=kind)
        return self.rng.choice(self.cluster.ids)

    async def fault(self, kind: str, hold: float) -> None:
        self.counts[kind] += 1
        ids = self.cluster.ids
        if kind in ("kill_random", "kill_leader"):
            target = await self._target(kind)
            await self.kill([target], kind, hold)
        elif kind == "kill_all":
            await self.kill(list(ids), kind, hold)
        elif kind == "kill_majority":
            leader = await self.leader()
            rest = [i for i in ids if i != leader]
            self.rng.shuffle(rest)
            targets = ([leader] if leader is not None else []) + rest
            await self.kill(targets[: len(ids) // 2 + 1], kind, hold)
        elif kind == "wipe_random":
            # Paxos survives the loss of a minority's disks, not more: wipe a node only if,
            # with it, no more than a minority would be without their state at once.
            await asyncio.to_thread(self._forget_rebuilt)
            if len(self.rebuilding) + 1 > (len(ids) - 1) // 2:
                self.counts[kind] -= 1
                if not self.counts[kind]:
                    del self.counts[kind]
                self.note("wipe skipped: nodes still rebuilding", nodes=sorted(self.rebuilding))
                await asyncio.sleep(hold)
                return
            target = self.rng.choice([i for i in ids if i not in self.rebuilding])
            self.rebuilding.add(target)
            await self.kill([target], kind, hold, wipe=True)
        elif kind in ("pause_random", "pause_leader"):
            target = await self._target(kind)
            await self.pause([target], kind, hold)
        elif kind in ("partition_half", "stall_half"):
            minority = self.rng.sample(ids, self.rng.randint(1, (len(ids) - 1) // 2))
            majority = [i for i in ids if i not in minority]
            await self.partition([minority, majority], kind, hold, mode="stall" if kind == "stall_half" else "block")
        elif kind == "isolate_leader":
            leader = await self._target(kind)
            await self.partition([[leader], [i for i in ids if i != leader]], kind, hold)
        elif kind == "bridge":
            bridge = self.rng.choice(ids)
            rest = [i for i in ids if i != bridge]
            self.rng.shuffle(rest)
            half = len(rest) // 2
            await self.partition([rest[:half], rest[half:]], kind, hold, bridge=bridge)
        elif kind == "one_way_leader":
            leader = await self._target(kind)
            await self.links([(i, leader) for i in ids if i != leader], kind, hold, {"mode": "block"},
                             deaf=leader)
        elif kind == "delay":
            delay, jitter = self.rng.randint(20, 120), self.rng.randint(0, 50)
            await self.links("all", kind, hold, {"delay_ms": delay, "jitter_ms": jitter})
        elif kind == "loss":
            await self.links("all", kind, hold, {"loss": round(self.rng.uniform(0.02, 0.1), 3)})
        else:
            raise ValueError(f"unknown fault kind {kind!r}")

    async def kill(self, targets: list[int], kind: str, hold: float, wipe: bool = False) -> None:
        targets = [i for i in targets if i not in self.down]
        await asyncio.to_thread(self.cluster.kill_many, targets, signal.SIGKILL)
        if wipe:  # the disk is lost: the node comes back empty and must rebuild
            for i in targets:
                await asyncio.to_thread(shutil.rmtree, self.cluster.data_dir(i), True)
        self.down.update(targets)
        self.paused.difference_update(targets)
        self.note(kind, nodes=targets, hold_s=round(hold, 2))
        await asyncio.sleep(hold)
        await self.restart(targets)

    async def restart(self, targets: list[int]) -> None:
        targets = [i for i in targets if i in self.down]
        for i in targets:
            await asyncio.to_thread(self.cluster.spawn, i)
            self.down.discard(i)
        self.note("restart", nodes=targets)
        for i in targets:
            try:
                await asyncio.to_thread(self.cluster.wait_ready, i, 30.0)
            except AssertionError as exc:  # it exited or hangs: a finding, not a harness error
                self.errors.append(f"node {i} did not come back after a restart: {exc}")
                self.note("not serving", nodes=[i])
        self.note("serving", nodes=targets)

    async def pause(self, targets: list[int], kind: str, hold: float) -> None:
        targets = [i for i in targets if i not in self.down and i not in self.paused]
        for i in targets:
            self.cluster.pause(i)
        self.paused.update(targets)
        self.note(kind, nodes=targets, hold_s=round(hold, 2))
        await asyncio.sleep(hold)
        self.resume(targets)

    def resume(self, targets: list[int]) -> None:
        for i in targets:
            if i in self.paused:
                self.cluster.resume(i)
                self.paused.discard(i)
        self.note("resume", nodes=targets)

    async def partition(self, groups: list[list[int]], kind: str, hold: float, mode: str = "block",
                        bridge: int | None = None) -> None:
        assert self.net is not None, "network faults need the proxies"
        cut = await asyncio.to_thread(self.net.partition, *groups, mode=mode)
        self.net_faulty = True
        self.note(kind, groups=groups, mode=mode, links_cut=len(cut), hold_s=round(hold, 2),
                  **({"bridge": bridge} if bridge is not None else {}))
        await asyncio.sleep(hold)
        await self.heal_net()

    async def links(self, links: Any, kind: str, hold: float, settings: dict, **extra: Any) -> None:
        assert self.net is not None, "network faults need the proxies"
        await asyncio.to_thread(self.net.set, links, **settings)
        self.net_faulty = True
        self.note(kind, **settings, **extra, hold_s=round(hold, 2))
        await asyncio.sleep(hold)
        await self.heal_net()

    async def heal_net(self) -> None:
        if self.net is not None and self.net_faulty:
            await asyncio.to_thread(self.net.heal)
            self.net_faulty = False
            self.note("heal network")

    async def heal(self) -> None:
        self.net_faulty = True
        await self.heal_net()
        self.resume(sorted(self.paused))
        await self.restart(sorted(self.down))
        self.note("healed")


# -- a run ---------------------------------------------------------------------------------


@dataclass
class Plan:
    name: str
    nodes: int = 3
    kinds: tuple[str, ...] = ALL_KINDS
    streams: int = 1  # 2: a process stream and a network stream, overlapping
    warmup_s: float = 2.0
    faults_s: float = 16.0
    after_s: float = 3.0
    quiet_s: tuple[float, float] = (0.5, 1.5)
    hold_s: tuple[float, float] = (1.5, 3.5)
    every_kind_once: bool = True  # draw kinds from a shuffled bag, not at random
    cover_all: bool = False  # go past faults_s until every kind ran once
    workload: Workload = field(default_factory=Workload)
    planted: str | None = None

    def stream_kinds(self) -> list[tuple[str, ...]]:
        if self.streams == 1:
            return [self.kinds]
        process = tuple(k for k in self.kinds if k in PROCESS_KINDS + EXTRA_KINDS)
        network = tuple(k for k in self.kinds if k not in process)
        return [s for s in (process, network) if s]


@dataclass
class Outcome:
    report: dict[str, Any]
    ops: list[Op]
    t0: float

    @property
    def anomalies(self) -> list[str]:
        return self.report["anomalies"]

    @property
    def safety(self) -> list[str]:
        """The kinds of wrong answers found (SAFETY), empty if none."""
        return sorted({k for k in self.report["anomaly_kinds"] if k in SAFETY})


def _phase_rates(ops: list[Op], phases: dict[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, (a, b) in phases.items():
        span = max(b - a, 1e-9)
        done = [o for o in ops if o.outcome == OK and a <= o.end < b]
        out[name] = {"seconds": round(b - a, 2), "ok_ops_per_s": round(len(done) / span, 1),
                     "writes_per_s": round(sum(1 for o in done if took_effect(o)) / span, 1)}
    return out


async def _ttl_writer(urls: list[str], rng: random.Random, stop: asyncio.Event,
                      acked: list[tuple[float, str]]) -> None:
    """Put keys under TTL_PREFIX with short times to live through the run (not part of the
    checked history), to random nodes; each acknowledged put as (its deadline, key). Now
    and then it deletes every key under TTL_PREFIX at once instead (a prefix delete)."""
    n = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while not stop.is_set():
            n += 1
            key, ttl, url = f"{TTL_PREFIX}{n % 20}", rng.choice(TTL_CHOICES_S), rng.choice(urls)
            try:
                if n % 25 == 0:
                    async with session.delete(f"{url}/v1/kv", params={"prefix": TTL_PREFIX}) as r:
                        await r.read()
                    continue
                async with session.put(f"{url}/v1/kv/{key}", json={"value": str(n), "ttl": ttl}) as r:
                    if r.status == 200:
                        acked.append((time.monotonic() + ttl, key))
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass  # a node down or cut off: the next put goes elsewhere
            finally:
                await asyncio.sleep(0.1)


async def _bank(urls: list[str], rng: random.Random, stop: asyncio.Event, bank: dict[str, Any]) -> None:
    """Open BANK_ACCOUNTS accounts of BANK_START each (one transaction, exactly once), then
    move amounts between two of them through random nodes until stopped (not part of the
    checked history): read both balances, then a transaction that moves the amount only
    if neither version moved meanwhile. Every fifth turn instead reads every account in
    one transaction of gets, whose total must be what was opened at any moment.
    bank["opened"] once open; bank["moved"] counts the transfers acknowledged,
    bank["audits"] the reads of every account, bank["bad_audits"] those off the total."""
    accounts = [f"{BANK_PREFIX}{i}" for i in range(BANK_ACCOUNTS)]
    opening = {"if": [{"key": a, "exists": False} for a in accounts],
               "then": [{"op": "put", "key": a, "value": str(BANK_START)} for a in accounts],
               "client_id": f"bank-{rng.random()}", "seq": 1}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while not stop.is_set():
            url = rng.choice(urls)
            try:
                if not bank["opened"]:
                    async with session.post(f"{url}/v1/txn", json=opening) as r:
                        bank["opened"] = r.status == 200  # the same answer to every retry: it ran once
                    continue
                if rng.random() < 0.2:
                    audit = {"then": [{"op": "get", "key": a} for a in accounts]}
                    async with session.post(f"{url}/v1/txn", json=audit) as r:
                        results = (await r.json())["results"] if r.status == 200 else None
                    if results is not None:
                        bank["audits"] += 1
                        total = sum(int(x["value"]) for x in results if x["ok"])
                        if total != BANK_ACCOUNTS * BANK_START or not all(x["ok"] for x in results):
                            bank["bad_audits"].append(results)
                    continue
                src, dst = rng.sample(accounts, 2)
                held = []
                for account in (src, dst):
                    async with session.get(f"{url}/v1/kv/{account}") as r:
                        doc = await r.json() if r.status == 200 else None
                    if doc is None:
                        break
                    held.append((int(doc["value"]), doc["version"]))
                if len(held) == 2:
                    amount = rng.randrange(1, 20)
                    body = {"if": [{"key": src, "version": held[0][1]}, {"key": dst, "version": held[1][1]}],
                            "then": [{"op": "put", "key": src, "value": str(held[0][0] - amount)},
                                     {"op": "put", "key": dst, "value": str(held[1][0] + amount)}]}
                    async with session.post(f"{url}/v1/txn", json=body) as r:
                        bank["moved"] += r.status == 200 and (await r.json())["succeeded"]
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
                pass  # a node down or cut off: the next try goes elsewhere
            await asyncio.sleep(0.05)


def _bank_checked(bank: dict[str, Any], scans: dict[int, Any]) -> tuple[list[str], list[str]]:
    """(safety, liveness) findings: every node's accounts add up to what was opened;
    the accounts were opened and some transfer went through."""
    wrong = []
    for i, items in scans.items():
        if isinstance(items, list):
            balances = {item["key"]: int(item["value"]) for item in items if item["key"].startswith(BANK_PREFIX)}
            if bank["opened"] and sum(balances.values()) != BANK_ACCOUNTS * BANK_START:
                wrong.append(f"node {i}'s accounts add up to {sum(balances.values())}, not "
                             f"{BANK_ACCOUNTS * BANK_START}: {balances}")
    wrong += [f"a read of every account in one transaction added up to "
              f"{sum(int(x['value']) for x in r if x['ok'])}: {r}" for r in bank["bad_audits"][:3]]
    idle = [] if bank["moved"] else [f"no transfer went through (accounts opened: {bank['opened']})"]
    return wrong, idle


def _ttl_left(cluster: FaultCluster, acked: list[tuple[float, str]]) -> list[str]:
    """Keys with a time to live still on some node well after the last deadline."""
    if not acked:
        return ["no put with a time to live was acknowledged in the whole run"]
    until = max(d for d, _ in acked) + TTL_EXPIRED_WITHIN_S
    left: list[str] = []
    while True:
        left = []
        for i in cluster.ids:
            resp = cluster.list(i, prefix=TTL_PREFIX, stale=True)
            items = resp.body.get("items") if resp.status == 200 else None
            if items is None:
                left.append(f"node {i} did not list its keys: {resp}")
            left += [f"node {i} still holds {item['key']!r} (ttl {item.get('ttl')})" for item in items or []]
        if not left or time.monotonic() > until:
            return left
        time.sleep(0.3)


async def _record(cluster: FaultCluster, plan: Plan, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    recorder = Recorder([cluster.url(i) for i in cluster.ids], plan.workload, seed=seed, run_id=f"s{seed}")
    task = asyncio.create_task(recorder.run(24 * 3600))  # stopped below
    ttl_stop, ttl_acked = asyncio.Event(), []
    ttl_task = asyncio.create_task(_ttl_writer([cluster.url(i) for i in cluster.ids], random.Random(seed + 7),
                                               ttl_stop, ttl_acked))
    bank: dict[str, Any] = {"opened": False, "moved": 0, "audits": 0, "bad_audits": []}
    bank_task = asyncio.create_task(_bank([cluster.url(i) for i in cluster.ids], random.Random(seed + 11),
                                          ttl_stop, bank))
    await asyncio.sleep(0)
    t0 = recorder.t0
    nemesis = Nemesis(cluster, rng, t0, plan.quiet_s, plan.hold_s)
    probe: dict[str, Any] = {}
    try:
        await asyncio.sleep(plan.warmup_s)
        faults_from = time.monotonic()
        await nemesis.run(plan.stream_kinds(), faults_from + plan.faults_s, plan.every_kind_once, plan.cover_all)
        healed_at = time.monotonic()
        # The cluster must take a write soon after healing; clients keep going meanwhile.
        first = await first_write_after(recorder, healed_at, HEALED_WRITE_WITHIN_S + 5, f"s{seed}-probe",
                                        pause_s=0.1)
        if first is not None:
            probe["first_write_after_heal_s"] = round(first, 2)
        await asyncio.sleep(max(0.0, healed_at + plan.after_s - time.monotonic()))
    finally:
        recorder.stop()
        ttl_stop.set()
        await task
        await ttl_task
        await bank_task
    run_end = time.monotonic()
    finals, abandoned = await _read_everywhere(recorder, recorder.keys_used + ["heal-probe"])
    return {"recorder": recorder, "nemesis": nemesis, "finals": finals, "t0": t0, "abandoned": abandoned,
            "faults_from": faults_from, "healed_at": healed_at, "run_end": run_end, "ttl_acked": ttl_acked,
            "bank": bank, **probe}


async def _read_everywhere(recorder: Recorder, keys: list[str]) -> tuple[list[Op], str | None]:
    """Every key from every node (as Recorder.read_everywhere), but a cluster that stopped
    answering ends it early instead of costing a request timeout per read: (reads, why
    they were abandoned or None)."""
    out: list[Op] = []
    deadline = time.monotonic() + FINAL_READS_BUDGET_S
    failed_in_a_row = 0
    async with recorder.session() as session:
        for key in keys:
            for i, url in enumerate(recorder.urls, start=1):
                op = await recorder.execute(session, f"final@{i}", READ, key, url)
                out.append(op)
                failed_in_a_row = 0 if op.outcome == OK else failed_in_a_row + 1
                if failed_in_a_row >= FINAL_READS_FAILING_MAX:
                    return out, f"{failed_in_a_row} final reads in a row failed"
                if time.monotonic() > deadline:
                    return out, f"final reads took over {FINAL_READS_BUDGET_S:g}s"
    return out, None


def run_plan(cluster: FaultCluster, plan: Plan, seed: int, write_artifacts: bool = True) -> Outcome:
    """Run `plan` against a started cluster; the report (never raises on anomalies)."""
    started = time.monotonic()
    cluster.wait_for_leader(timeout=30)
    watcher = Watcher([cluster.url(i) for i in cluster.ids])
    rec = asyncio.run(_record(cluster, plan, seed))
    recorder: Recorder = rec["recorder"]
    nemesis: Nemesis = rec["nemesis"]
    t0, finals = rec["t0"], rec["finals"]
    ops = recorder.history()
    run_ops = [o for o in ops if not str(o.process).startswith(("final", "probe"))]
    anomalies: list[str] = []
    kinds: set[str] = set()

    def found(kind: str, items: list[str]) -> None:
        if items:
            kinds.add(kind)
            anomalies.extend(items)

    report: dict[str, Any] = {
        "name": plan.name, "seed": seed, "nodes": plan.nodes, "planted_bug": plan.planted,
        "plan": {k: v for k, v in asdict(plan).items() if k not in ("name", "planted")},
        "ops": summarize(run_ops), "not_ok": errors(run_ops),
        "final_reads": summarize(finals),
        "faults": dict(nemesis.counts), "fault_log": nemesis.log,
        "unexpected_responses": dict(recorder.unexpected),
    }
    faults_from = nemesis.first_fault_at or rec["faults_from"]
    report["throughput"] = _phase_rates(run_ops, {"before": (t0, faults_from),
                                                  "during": (faults_from, rec["healed_at"]),
                                                  "after": (rec["healed_at"], rec["run_end"])})
    gap, g_from, g_to = longest_gap_without_write(run_ops, t0, rec["run_end"])
    report["longest_without_write_s"] = {"gap": round(gap, 2), "from": round(g_from - t0, 2),
                                         "to": round(g_to - t0, 2)}
    report["first_write_after_heal_s"] = rec.get("first_write_after_heal_s")
    report["healed_at_s"] = round(rec["healed_at"] - t0, 2)

    # Liveness: a write soon after healing, every final read answered.
    if report["first_write_after_heal_s"] is None:
        found("no_write_after_heal", [f"no write accepted within {HEALED_WRITE_WITHIN_S + 5:g}s of healing"])
    elif report["first_write_after_heal_s"] > HEALED_WRITE_WITHIN_S:
        found("slow_write_after_heal", [f"first write after healing took {report['first_write_after_heal_s']}s"])
    if rec["abandoned"]:
        found("final_reads_abandoned", [f"final reads abandoned: {rec['abandoned']} ({len(finals)} of "
                                        f"{len(recorder.keys_used) + 1} keys x {cluster.n} nodes done)"])
    failed_finals = [f for f in finals if f.outcome != OK]
    found("final_reads_failed", [f"{len(failed_finals)} final read(s) failed: "
                                 + "; ".join(f.describe(t0) for f in failed_finals[:5])] if failed_finals else [])
    found("unexpected_responses", [f"unexpected responses: {dict(recorder.unexpected)}"]
          if recorder.unexpected else [])
    found("node_failed", nemesis.errors)
    # A node's log says nothing at error level: faults are no bugs (a peer or client gone).
    found("logged_error", [f"node {i} logged: {line[:3000]}"
                           for i in cluster.ids for line in cluster.logged_errors(i, 5)])

    # Safety: linearizable, nothing acknowledged lost, versions name values, same content.
    found("lost_write", _lost_writes(ops, finals, t0))
    found("version", version_anomalies(ops)[:10])
    checked_at = time.monotonic()
    result = check(ops, max_steps=CHECK_MAX_STEPS)
    report["checker"] = {
        "verdict": result.verdict, "keys": len(result.keys),
        "seconds": round(time.monotonic() - checked_at, 2),
        "max_steps": max((r.steps for r in result.keys.values()), default=0),
        "max_ops_per_key": max((r.ops for r in result.keys.values()), default=0),
        "violations": len(result.violations), "undecided": len(result.undecided),
    }
    found("nonlinearizable", [r.describe(t0) for r in result.violations])
    found("checker_undecided", [f"checker ran out of steps on {r.key!r}" for r in result.undecided])

    # Every key put with a time to live through the faults expires, on every node. Checked
    # first: until the last has expired the store keeps changing (each expiry is a change),
    # and the scans and the watcher's replay below must see one and the same store.
    report["ttl_puts_acknowledged"] = len(rec["ttl_acked"])
    found("ttl_not_expired", _ttl_left(cluster, rec["ttl_acked"])[:10])
    scans, applied = _converged_scans(cluster, "")
    report["applied"] = applied
    report["snapshots"] = {i: {k: v for k, v in st.get("snapshot", {}).items() if k in ("slot", "taken", "installed")}
                           for i, st in cluster.statuses().items()}
    report["bank"] = rec["bank"]
    bank_wrong, bank_idle = _bank_checked(rec["bank"], scans)
    found("bank_total", bank_wrong)
    found("bank_idle", bank_idle)
    if not scans:
        found("not_converged", [f"nodes did not reach the same applied slot: {applied}"])
    else:
        reference = scans[cluster.ids[0]]
        found("divergence", [f"node {i}'s content differs from node {cluster.ids[0]}'s at slot "
                             f"{applied.get(i)}: {_diff_scans(reference, items)}"
                             for i, items in scans.items() if items != reference])
        if isinstance(reference, list):
            report["keys_in_store"] = len(reference)
            content = {item["key"]: item["value"] for item in reference}
            wrong = [f for f in finals if f.outcome == OK and content.get(f.key) != f.value]
            found("divergence", [f"final read {f.describe(t0)} disagrees with the converged store "
                                 f"({content.get(f.key)!r})" for f in wrong[:5]])
    # A watcher that followed every change through the faults saw each once, in order.
    revision = max((st["watch"]["revision"] for st in cluster.statuses().values()), default=0)
    watcher.wait_for(revision, CONVERGE_WITHIN_S)
    content = None
    if scans and isinstance(scans[cluster.ids[0]], list):
        content = {item["key"]: item["value"] for item in scans[cluster.ids[0]]}
    found("watch", watcher.anomalies(ops, content, revision))
    report["watcher"] = {**watcher.report(), "revision": revision}
    if cluster.net is not None:
        stats = cluster.net.stats()
        report["network"] = {k: sum(s[k] for s in stats.values()) for k in ("accepted", "refused", "cut")}
    report["anomaly_kinds"] = sorted(kinds)
    report["anomalies"] = anomalies
    report["verdict"] = "fail" if anomalies else "pass"
    report["total_s"] = round(time.monotonic() - started, 1)
    outcome = Outcome(report, ops, t0)
    if write_artifacts:
        save_artifacts(outcome, cluster)
    print(json.dumps(report, indent=1, default=str))
    return outcome


def save_artifacts(outcome: Outcome, cluster: Cluster | None = None) -> Path:
    """Write the report (and the history, if the run found anomalies) under tests/artifacts/jepsen/."""
    report = outcome.report
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    stem = f"{report['name']}-seed{report['seed']}"
    if outcome.anomalies:
        history = ARTIFACTS / f"{stem}-history.jsonl"
        _dump_history(outcome.ops, outcome.t0, history)
        report["history_file"] = str(history)
        if cluster is not None:
            report["node_logs"] = [str(cluster.log_path(i)) for i in cluster.ids]
    path = ARTIFACTS / f"{stem}-{report['verdict']}.json"
    path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    report["report_file"] = str(path)
    return path


def failure_message(outcome: Outcome) -> str:
    r = outcome.report
    return (f"{len(r['anomalies'])} anomalies in {r['name']} (seed {r['seed']}; KV_JEPSEN_SEED={r['seed']} "
            f"replays the nemesis and workload choices; report {r.get('report_file')}):\n"
            + "\n".join(r["anomalies"][:20]))


def seeds(count: int) -> list[int]:
    """KV_JEPSEN_SEED (one seed, replayed everywhere), else `count` fresh seeds."""
    fixed = os.environ.get("KV_JEPSEN_SEED")
    if fixed:
        return [int(fixed)] * count
    rng = random.SystemRandom()
    return [rng.randrange(1, 2**31) for _ in range(count)]
