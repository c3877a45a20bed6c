"""Where a node's time goes under load: cProfile or py-spy on real node processes.

cprofile: every node runs under kvpaxos.bench.profiled_serve, which profiles
    the measured window only (SIGUSR1 .. SIGUSR2, same overhead on every node);
    the leader's (and a follower's) top functions by own time are reported,
    as shares of the main thread's busy time (time not spent waiting in
    epoll). clock="wall" (the default) times with perf_counter: cheap, but
    on a loaded machine a function that was descheduled is charged for the
    wait. clock="cpu" times with the thread's CPU clock: no such charge, but
    each reading is a system call, which inflates functions in proportion to
    their call counts. Deterministic and exact in call counts, but it slows
    the node down and sees only the main thread (the SQLite commits run on the
    disk thread and show up there only as waiting).
py-spy: the nodes run normally and `py-spy record` samples the leader and a
    follower (all threads, on-CPU only) while the load runs. Low overhead;
    needs `pip install py-spy` and permission to ptrace.
"""
from __future__ import annotations

import pstats
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from kvpaxos.bench.cluster import BenchCluster
from kvpaxos.bench.loadgen import LoadRunner, Workload, level_summary, populate


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/lib/python3."):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return tail if marker == "/site-packages/" else "stdlib/" + tail.split("/", 1)[-1]
    for marker in ("/kvpaxos/", "/storage/", "/cli/"):
        if marker in filename:
            return marker.strip("/") + "/" + filename.rsplit(marker, 1)[1]
    return filename


IDLE_FUNCTIONS = ("<method 'poll' of 'select.epoll' objects>", "<method 'select' of 'select.epoll' objects>")


def cprofile_top(path: Path, top: int = 15) -> dict:
    """The top entries of a cProfile file by own time (tottime), with call counts and cumtime.

    The event loop's wait in epoll is idle time, not work: it is reported on
    its own (idle_s) and left out of the tables and of the percentages.
    """
    stats = pstats.Stats(str(path))
    total = stats.total_tt or 1e-9
    rows = []
    idle = 0.0
    for (filename, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():
        if func in IDLE_FUNCTIONS:
            idle += tt
            continue
        rows.append({"function": func, "where": f"{_short(filename)}:{line}", "ncalls": nc,
                     "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4), "_tt": tt})
    busy = max(total - idle, 1e-9)
    for r in rows:
        r["own_pct"] = round(100 * r.pop("_tt") / busy, 1)
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    by_cum = sorted(rows, key=lambda r: r["cumtime_s"], reverse=True)
    return {"total_s": round(total, 3), "idle_s": round(idle, 3), "busy_s": round(busy, 3),
            "by_own_time": rows[:top], "by_cumulative_time": by_cum[:top]}


# Leaf frames where a thread waits rather than works. py-spy counts a thread as
# active when the OS says it is runnable, so on a loaded machine a thread that
# was woken but not yet scheduled still shows in these frames.
WAIT_LEAVES = ("EpollSelector.select", "Condition.wait", "_worker (concurrent/futures/thread.py:81)",
               "SimpleQueue.get", "Queue.get")


DISPATCH_FRAMES = ("Handle._run", "_WorkItem.run", "Thread._bootstrap_inner", "Thread.run")


def pyspy_top(raw_path: Path, top: int = 15) -> dict:
    """Top functions by own (leaf) and inclusive samples from `py-spy record --format raw --threads`."""
    own: Counter = Counter()
    incl: Counter = Counter()
    threads: Counter = Counter()
    total = waiting = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        if frames and frames[0].startswith("thread ("):
            threads[frames[0].split(": ", 1)[-1]] += n
            frames = frames[1:]
        if not frames:
            continue
        total += n
        if any(frames[-1].startswith(w) for w in WAIT_LEAVES):
            waiting += n
            continue
        own[frames[-1]] += n
        # Inclusive counts below the dispatchers (event-loop callbacks, executor
        # work items, thread entry), so start-up frames do not fill the table.
        cut = max((i + 1 for i, f in enumerate(frames[:-1]) if f.startswith(DISPATCH_FRAMES)),
                  default=0)
        for f in set(frames[cut:]):
            incl[f] += n
    busy = max(total - waiting, 1)

    def rows(counter: Counter) -> list[dict]:
        return [{"function": f, "samples": n, "pct": round(100 * n / busy, 1)}
                for f, n in counter.most_common(top)]
    return {"samples": total, "waiting_samples": waiting, "busy_samples": total - waiting,
            "threads": dict(threads), "by_own_samples": rows(own), "by_inclusive_samples": rows(incl)}


def run_profile(nodes: int = 3, tool: str = "cprofile", concurrency: int = 64,
                read_ratio: float = 0.0, duration_s: float = 10.0, warmup_s: float = 1.0,
                value_bytes: int = 100, keys: int = 1000, top: int = 15,
                out_dir: Path | None = None, show_progress: bool = True, clock: str = "wall",
                rate: float = 0.0, target: str = "all") -> dict:
    """Profile the nodes of a fresh cluster under closed-loop load (or, with rate > 0,
    open-loop writes at that rate), clients spread over all nodes or (target "leader") all
    on the leader; a summary dict."""
    if tool not in ("cprofile", "py-spy"):
        raise ValueError("tool must be cprofile or py-spy")
    if tool == "py-spy" and shutil.which("py-spy") is None:
        return {"tool": tool, "available": False, "reason": "py-spy is not installed (pip install py-spy)"}
    profile_nodes = tuple(range(1, nodes + 1)) if tool == "cprofile" else ()
    cluster = BenchCluster(nodes, profile_nodes=profile_nodes, profile_clock=clock,
                           keep_data=True)  # removed below
    result: dict = {"tool": tool, "available": True, "nodes": nodes, "concurrency": concurrency,
                    "read_ratio": read_ratio, "duration_s": duration_s, "rate": rate,
                    "target": target}
    if tool == "cprofile":
        result["clock"] = clock
    spies: list[tuple[int, subprocess.Popen, Path]] = []
    try:
        cluster.start()
        leader = cluster.leader()
        follower = next((i for i in cluster.nodes if i != leader), None)  # none with one node
        result["leader"], result["follower"] = leader, follower
        w = Workload(**cluster.client_targets(target, leader), concurrency=concurrency, read_ratio=read_ratio,
                     value_bytes=value_bytes, keys=keys, warmup_s=warmup_s, duration_s=duration_s,
                     mode="rate" if rate > 0 else "closed", rate=rate,
                     label=f"profile load {rate:g}/s" if rate > 0 else f"profile load c={concurrency}")
        if read_ratio > 0:
            populate(w)

        def on_window(edge: str) -> None:
            if tool == "cprofile":
                cluster.signal_all(signal.SIGUSR1 if edge == "start" else signal.SIGUSR2)
                return
            if edge != "start":
                return
            for node_id in (n for n in (leader, follower) if n is not None):
                raw = cluster.root / f"pyspy-node-{node_id}.txt"
                spy = subprocess.Popen(
                    ["py-spy", "record", "--pid", str(cluster.nodes[node_id].pid), "--duration",
                     str(max(1, int(duration_s))), "--rate", "200", "--format", "raw",
                     "--nonblocking", "--threads", "-o", str(raw)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                spies.append((node_id, spy, raw))

        with LoadRunner(1, show_progress) as runner:
            res, d = runner.run(w, on_window=on_window)
        result["load"] = level_summary(res, d)
        for _node_id, spy, _raw in spies:
            spy.wait(timeout=duration_s + 30)
        if tool == "py-spy":
            for node_id, _spy, raw in spies:
                role = "leader" if node_id == leader else "follower"
                result[role] = {"node": node_id, **(pyspy_top(raw, top) if raw.exists() else
                                                    {"error": "py-spy wrote no samples"})}
    finally:
        cluster.stop()
    if tool == "cprofile":
        for node_id, role in ((result.get("leader"), "leader"), (result.get("follower"), "follower")):
            if node_id is None:
                continue
            path = cluster.nodes[node_id].profile_path
            deadline = time.monotonic() + 10
            while path is not None and not path.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if path is not None and path.exists():
                result[role] = {"node": node_id, **cprofile_top(path, top)}
                if out_dir is not None:
                    out_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, out_dir / f"profile-{role}.prof")
            else:
                result[role] = {"node": node_id, "error": "no profile written"}
    if cluster.root is not None:
        shutil.rmtree(cluster.root, ignore_errors=True)
    return result


def format_profile(result: dict) -> str:
    """A readable table of a run_profile() result."""
    if not result.get("available", True):
        return f"profile ({result['tool']}): {result['reason']}"
    load_shape = (f"{result['rate']:g} requests/s open loop" if result.get("rate")
                  else f"{result['concurrency']} clients")
    lines = [f"profile ({result['tool']}), {result['nodes']} nodes, {load_shape}, "
             f"read ratio {result['read_ratio']}, {result['duration_s']:g} s, "
             f"clients -> {result.get('target', 'all')}"]
    load = result.get("load", {})
    if load:
        lines.append(f"load during profiling: {load.get('total_ops_s', 0):,.0f} ops/s")
    for role in ("leader", "follower"):
        doc = result.get(role)
        if not isinstance(doc, dict):
            continue
        if "error" in doc:
            lines.append(f"{role} (node {doc['node']}): {doc['error']}")
            continue
        if "by_own_time" in doc:
            clock = "CPU" if result.get("clock") == "cpu" else "wall-clock"
            lines.append(f"\n{role} (node {doc['node']}): top by own {clock} time, main thread: "
                         f"{doc['busy_s']:.2f} s busy, {doc['idle_s']:.2f} s waiting in epoll")
            lines.append(f"  {'own s':>7} {'busy %':>6} {'cum s':>7} {'calls':>9}  function")
            for r in doc["by_own_time"]:
                lines.append(f"  {r['tottime_s']:7.3f} {r['own_pct']:6.1f} {r['cumtime_s']:7.3f} "
                             f"{r['ncalls']:9d}  {r['function']} ({r['where']})")
        else:
            threads = ", ".join(f"{k} {v}" for k, v in doc.get("threads", {}).items())
            lines.append(f"\n{role} (node {doc['node']}): top by own samples, all threads "
                         f"({doc['busy_samples']} busy + {doc['waiting_samples']} waiting samples; "
                         f"{threads}); % of busy samples")
            for r in doc["by_own_samples"]:
                lines.append(f"  {r['pct']:5.1f}%  {r['function']}")
            lines.append(f"{role}: top by inclusive samples (below the event loop / thread entry)")
            for r in doc["by_inclusive_samples"]:
                lines.append(f"  {r['pct']:5.1f}%  {r['function']}")
    return "\n".join(lines)


if __name__ == "__main__":
    tool = sys.argv[1] if len(sys.argv) > 1 else "cprofile"
    print(format_profile(run_profile(tool=tool)))
