"""Where a node's time goes under load: cProfile or py-spy on real node processes.

cprofile: every node runs under kvpaxos.bench.profiled_serve, which profiles
    the measured window only (SIGUSR1 .. SIGUSR2, same overhead on every node);
    the leader's (and a follower's) top functions by own time are reported. Deterministic and exact in call counts, but it slows
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


def cprofile_top(path: Path, top: int = 15) -> dict:
    """The top entries of a cProfile file by own time (tottime), with call counts and cumtime."""
    stats = pstats.Stats(str(path))
    total = stats.total_tt or 1e-9
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():
        rows.append({"function": func, "where": f"{_short(filename)}:{line}", "ncalls": nc,
                     "tottime_s": round(tt, 3), "cumtime_s": round(ct, 3),
                     "own_pct": round(100 * tt / total, 1)})
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    by_cum = sorted(rows, key=lambda r: r["cumtime_s"], reverse=True)
    return {"total_s": round(total, 3), "by_own_time": rows[:top], "by_cumulative_time": by_cum[:top]}


def pyspy_top(raw_path: Path, top: int = 15) -> dict:
    """Top functions by own (leaf) and inclusive samples from `py-spy record --format raw`."""
    own: Counter = Counter()
    incl: Counter = Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    total = total or 1

    def rows(counter: Counter) -> list[dict]:
        return [{"function": f, "samples": n, "pct": round(100 * n / total, 1)}
                for f, n in counter.most_common(top)]
    return {"samples": total, "by_own_samples": rows(own), "by_inclusive_samples": rows(incl)}


def run_profile(nodes: int = 3, tool: str = "cprofile", concurrency: int = 64,
                read_ratio: float = 0.0, duration_s: float = 10.0, warmup_s: float = 1.0,
                value_bytes: int = 100, keys: int = 1000, top: int = 15,
                out_dir: Path | None = None, show_progress: bool = True) -> dict:
    """Profile the nodes of a fresh cluster under closed-loop load; a summary dict."""
    if tool not in ("cprofile", "py-spy"):
        raise ValueError("tool must be cprofile or py-spy")
    if tool == "py-spy" and shutil.which("py-spy") is None:
        return {"tool": tool, "available": False, "reason": "py-spy is not installed (pip install py-spy)"}
    profile_nodes = tuple(range(1, nodes + 1)) if tool == "cprofile" else ()
    cluster = BenchCluster(nodes, profile_nodes=profile_nodes, keep_data=True)  # removed below
    result: dict = {"tool": tool, "available": True, "nodes": nodes, "concurrency": concurrency,
                    "read_ratio": read_ratio, "duration_s": duration_s}
    spies: list[tuple[int, subprocess.Popen, Path]] = []
    try:
        cluster.start()
        leader = cluster.leader()
        follower = next(i for i in cluster.nodes if i != leader)
        result["leader"], result["follower"] = leader, follower
        w = Workload(cluster.urls, concurrency=concurrency, read_ratio=read_ratio,
                     value_bytes=value_bytes, keys=keys, warmup_s=warmup_s, duration_s=duration_s,
                     label=f"profile load c={concurrency}")
        if read_ratio > 0:
            populate(w)

        def on_window(edge: str) -> None:
            if tool == "cprofile":
                cluster.signal_all(signal.SIGUSR1 if edge == "start" else signal.SIGUSR2)
                return
            if edge != "start":
                return
            for node_id in (leader, follower):
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
    lines = [f"profile ({result['tool']}), {result['nodes']} nodes, {result['concurrency']} clients, "
             f"read ratio {result['read_ratio']}, {result['duration_s']:g} s"]
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
            lines.append(f"\n{role} (node {doc['node']}): top by own time "
                         f"(main thread, {doc['total_s']:.1f} s profiled)")
            lines.append(f"  {'own s':>7} {'own %':>6} {'cum s':>7} {'calls':>9}  function")
            for r in doc["by_own_time"]:
                lines.append(f"  {r['tottime_s']:7.2f} {r['own_pct']:6.1f} {r['cumtime_s']:7.2f} "
                             f"{r['ncalls']:9d}  {r['function']} ({r['where']})")
        else:
            lines.append(f"\n{role} (node {doc['node']}): top by own samples "
                         f"(all threads, {doc['samples']} samples)")
            for r in doc["by_own_samples"]:
                lines.append(f"  {r['pct']:5.1f}%  {r['function']}")
    return "\n".join(lines)


if __name__ == "__main__":
    tool = sys.argv[1] if len(sys.argv) > 1 else "cprofile"
    print(format_profile(run_profile(tool=tool)))
