"""PySyncObj baseline: N Raft nodes in N processes on loopback, a replicated dict.

run_syncobj() starts `python -m kvpaxos.bench.syncobj_bench --node I ...` N
times; each builds a SyncObj with a replicated `set(key, value)`, says "ready"
once a leader is known, then on the parent's signal keeps `outstanding`
asynchronous set() calls in flight (callbacks issue the next) through the
warm-up and the measured window, and reports its completions and latencies.
Load comes from every node (followers forward to the leader, as kvpaxos
followers do) or from the leader only.

PySyncObj (0.3.x) keeps its journal in an mmap'd file it never msyncs per
entry, so unlike kvpaxos it does not fsync before acknowledging; with
journal=False it keeps the log in memory only. pysyncobj is an optional extra:
`pip install 'kvpaxos[bench]'`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from kvpaxos.bench.cluster import HOST, child_env, cpu_seconds, free_ports
from kvpaxos.bench.loadgen import value_of
from kvpaxos.bench.stats import summarize


def available() -> tuple[bool, str]:
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        return False, "pysyncobj is not installed (pip install 'kvpaxos[bench]')"
    return True, "ok"


def run_syncobj(nodes: int = 3, duration_s: float = 5.0, warmup_s: float = 1.0,
                outstanding: int = 1000, value_bytes: int = 100, keys: int = 1000,
                journal: bool = True, target: str = "all", ready_timeout_s: float = 30.0,
                show_progress: bool = True) -> dict:
    """Measure PySyncObj; a summary dict ({"available": False, ...} if it is not installed)."""
    ok, why = available()
    if not ok:
        return {"available": False, "reason": why}
    ports = free_ports(nodes)
    tmp = Path(tempfile.mkdtemp(prefix="kvbench-syncobj-"))
    procs: list[subprocess.Popen] = []
    try:
        for i in range(nodes):
            cmd = [sys.executable, "-m", "kvpaxos.bench.syncobj_bench", "--node", str(i),
                   "--ports", ",".join(map(str, ports)), "--dir", str(tmp),
                   "--value-bytes", str(value_bytes), "--keys", str(keys)]
            if not journal:
                cmd.append("--memory")
            procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=open(tmp / f"node-{i}.log", "wb"), text=True,
                                          env=child_env()))
        leaders = set()
        for p in procs:
            line = _readline(p, ready_timeout_s)
            if not line.startswith("ready"):
                raise RuntimeError(f"pysyncobj node did not start: {line!r}")
            leaders.add(line.split()[1])
        leader_port = int(leaders.pop().rsplit(":", 1)[1]) if len(leaders) == 1 else None
        loaders = [i for i in range(nodes)
                   if target == "all" or (leader_port is not None and ports[i] == leader_port)]
        if not loaders:
            loaders = list(range(nodes))
        start_at = time.monotonic() + 0.2
        m0, m1 = start_at + warmup_s, start_at + warmup_s + duration_s
        for i, p in enumerate(procs):
            share = outstanding // len(loaders) + (1 if loaders.index(i) < outstanding % len(loaders)
                                                   else 0) if i in loaders else 0
            job = {"start_at": start_at, "warmup_s": warmup_s, "duration_s": duration_s,
                   "outstanding": share}
            p.stdin.write(json.dumps(job) + "\n")
            p.stdin.flush()
        if show_progress:
            print(f"  pysyncobj ({nodes} nodes, {outstanding} outstanding): running "
                  f"{warmup_s + duration_s:.0f} s ...", file=sys.stderr, flush=True)
        time.sleep(max(0.0, m0 - time.monotonic()))
        cpu0 = {i: cpu_seconds(p.pid) for i, p in enumerate(procs)}
        time.sleep(max(0.0, m1 - time.monotonic()))
        cpu1 = {i: cpu_seconds(p.pid) for i, p in enumerate(procs)}
        latencies: list[float] = []
        errors: Counter = Counter()
        for p in procs:
            doc = json.loads(_readline(p, duration_s + 60))
            latencies += doc["latencies"]
            errors.update(doc["errors"])
        summary = summarize(latencies, duration_s)
        if show_progress:
            print(f"  pysyncobj: {summary['ops_s']:,.0f} ops/s", file=sys.stderr, flush=True)
        node_cpu = {str(i + 1): round(cpu1[i] - cpu0[i], 3)
                    for i in range(nodes) if cpu0[i] is not None and cpu1[i] is not None}
        total_cpu = sum(node_cpu.values())
        ops = summary["ops_s"] * duration_s
        return {"available": True, "nodes": nodes, "outstanding": outstanding,
                "server_cpu_us_per_op": round(1e6 * total_cpu / ops, 1) if ops else None,
                "journal": "mmap file, no fsync" if journal else "memory", "load_from": target,
                "duration_s": duration_s, "ops": {"set": summary}, "ops_s": summary["ops_s"],
                "errors": dict(errors), "node_cpu_s": node_cpu}
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    p.stdin.close()
                except OSError:
                    pass
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


def _readline(p: subprocess.Popen, timeout_s: float) -> str:
    """One line of a child's stdout, or an error if it says nothing for timeout_s."""
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(p.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout_s)
    if not box:
        raise TimeoutError(f"pysyncobj node {p.pid} said nothing for {timeout_s:g} s")
    return box[0].strip()


# -- one node process ---------------------------------------------------------


def node_main(argv: list[str] | None = None) -> None:
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    ap = argparse.ArgumentParser()
    ap.add_argument("--node", type=int, required=True)
    ap.add_argument("--ports", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--memory", action="store_true")
    args = ap.parse_args(argv)
    addrs = [f"{HOST}:{p}" for p in args.ports.split(",")]
    me = addrs[args.node]

    class KV(SyncObj):
        def __init__(self) -> None:
            conf = SyncObjConf(dynamicMembershipChange=False,
                               journalFile=None if args.memory else f"{args.dir}/journal-{args.node}")
            super().__init__(me, [a for a in addrs if a != me], conf)
            self._data: dict[str, str] = {}

        @replicated
        def set(self, key: str, value: str) -> int:
            self._data[key] = value
            return len(self._data)

    kv = KV()
    while not (kv.isReady() and kv._getLeader() is not None):
        time.sleep(0.05)
    leader = kv._getLeader()
    print(f"ready {getattr(leader, 'address', leader)}", flush=True)
    job = json.loads(sys.stdin.readline())
    m0 = job["start_at"] + job["warmup_s"]
    m1 = m0 + job["duration_s"]
    latencies: list[float] = []
    errors: Counter = Counter()
    keys = [f"bench-{i:07d}" for i in range(args.keys)]
    value = value_of(args.value_bytes, 1)
    slots = threading.Semaphore(max(job["outstanding"], 1))
    lock = threading.Lock()
    time.sleep(max(0.0, job["start_at"] - time.monotonic()))
    i = 0
    while job["outstanding"] > 0 and time.monotonic() < m1:
        if not slots.acquire(timeout=0.05):
            continue
        started = time.monotonic()

        def done(result: object, err: int, started: float = started) -> None:
            ended = time.monotonic()
            with lock:
                if err == FAIL_REASON.SUCCESS:
                    if started >= m0 and ended <= m1:
                        latencies.append(ended - started)
                else:
                    errors[str(err)] += 1
            slots.release()

        kv.set(keys[i % len(keys)], value, callback=done)
        i += 1
    time.sleep(0.2)
    with lock:
        print(json.dumps({"latencies": latencies, "errors": dict(errors)}), flush=True)
    sys.stdin.read()  # keep serving the others until the parent closes our stdin
    kv.destroy()


if __name__ == "__main__":
    node_main()
