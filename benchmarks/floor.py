"""kvpaxos against its floor: the same layout and libraries with no Paxos between them.

The floor (kvpaxos/bench/floor_server.py) is three processes: a leader serving
PUTs with aiohttp, packing the requests waiting into one slot with one slot in
flight, and two followers that commit each slot through SqliteStorage
(sqlitedict's thread, synchronous=FULL) and answer over an aiohttp WebSocket;
the leader answers once both have. What a write costs there is what any write
through this layout costs on this machine; what kvpaxos costs beyond it is its
own path.

Each round runs, in this order, the floor, a kvpaxos cluster of three (`kv
serve` processes, every client on the leader) and the bare aiohttp server
(kvpaxos/bench/echo_server.py), each fresh, under the same load generator:
writes at a fixed rate (open loop, the issue's "1,000 writes/s") and closed-loop
clients (the issue's "64 concurrent clients", not for the bare server's rate).
Reports p50 and p99, CPU per write of each process, PUTs/s and the ratio to the
bare server of the same round; writes DIR/floor.json.

    python benchmarks/floor.py                       # 2 rounds, 1,000 writes/s, 64 clients
    python benchmarks/floor.py --rounds 1 --rate 200 --rate-duration 1 --duration 1 --out-dir /tmp/f
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kvpaxos.bench.cluster import BenchCluster, child_env, free_ports, stop_process, wait_serving  # noqa: E402
from kvpaxos.bench.loadgen import LoadRunner, Workload, populate  # noqa: E402
from kvpaxos.bench.stats import summarize  # noqa: E402
from kvpaxos.bench.suite import CpuWindow, EchoServer  # noqa: E402


class FloorCluster:
    """The floor's leader and two followers in their own processes, data and logs under root."""

    def __init__(self, root: Path) -> None:
        leader_port, *follower_ports = free_ports(3)
        self.port = leader_port
        self.url = f"http://127.0.0.1:{leader_port}"
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        try:
            for i, port in enumerate(follower_ports, start=1):
                self._start(f"follower {i}", ["follower", str(port), str(root / f"follower-{i}")], port)
            self._start("leader", ["leader", str(leader_port), *map(str, follower_ports)], leader_port)
        except BaseException:
            self.close()
            raise

    def _start(self, name: str, args: list[str], port: int) -> None:
        log = self.root / f"{name.replace(' ', '-')}.log"
        with open(log, "wb") as err:
            self.procs[name] = proc = subprocess.Popen(
                [sys.executable, "-m", "kvpaxos.bench.floor_server", *args], env=child_env(),
                stdout=subprocess.DEVNULL, stderr=err)
        if not wait_serving(proc, port, timeout_s=20):
            tail = log.read_text(errors="replace")[-500:].strip()
            raise RuntimeError(f"the floor's {name} did not start{': ' + tail if tail else ''}")

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}

    def close(self) -> None:
        for p in self.procs.values():
            stop_process(p)


def measure(runner: LoadRunner, w: Workload, pids: dict[str, int]) -> dict:
    """One run of w: throughput, latency percentiles and CPU per write of each process."""
    cpu = CpuWindow(lambda: pids)
    res, dur = runner.run(w, on_window=cpu)
    s = summarize(res.latencies["put"], dur)
    n = s["count"]
    if n == 0:
        raise RuntimeError(f"no write succeeded ({dict(res.errors)})")
    per_write = {name: round(1e6 * cpu.used[name] / n) if name in cpu.used else None for name in pids}
    per_write["load generator"] = round(1e6 * res.cpu_s / n)
    return {"writes_per_s": round(s["ops_s"]), "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "writes": n,
            "errors": sum(res.errors.values()), "cpu_us_per_write": per_write}


def workloads(args: argparse.Namespace, target: dict) -> tuple[Workload, Workload]:
    rate = Workload(**target, mode="rate", rate=args.rate, warmup_s=args.warmup, duration_s=args.rate_duration)
    closed = Workload(**target, concurrency=args.concurrency, warmup_s=args.warmup, duration_s=args.duration)
    return rate, closed


def run_round(args: argparse.Namespace, runner: LoadRunner, work: Path) -> dict:
    out: dict[str, dict] = {}
    floor = FloorCluster(work)
    try:
        target = {"urls": [floor.url]}
        populate(Workload(**target))
        rate, closed = workloads(args, target)
        out["floor"] = {"rate": measure(runner, rate, floor.pids()), "closed": measure(runner, closed, floor.pids())}
    finally:
        floor.close()
    with BenchCluster(3, root=work / "kvpaxos") as cluster:
        leader = cluster.leader()
        target = cluster.client_targets("leader", leader)
        populate(Workload(**target))
        pids = {(f"node {i} (leader)" if i == leader else f"node {i}"): n.pid for i, n in cluster.nodes.items()}
        rate, closed = workloads(args, target)
        out["kvpaxos"] = {"rate": measure(runner, rate, pids), "closed": measure(runner, closed, pids)}
    echo = EchoServer()
    try:
        target = {"urls": [echo.url]}
        populate(Workload(**target))
        out["bare aiohttp"] = {"closed": measure(runner, workloads(args, target)[1], echo.pids())}
    finally:
        echo.close()
    bare = out["bare aiohttp"]["closed"]["writes_per_s"]
    for name in ("floor", "kvpaxos"):
        out[name]["closed"]["ratio_to_bare"] = round(out[name]["closed"]["writes_per_s"] / bare, 3)
    return out


def report(rounds: list[dict], args: argparse.Namespace) -> str:
    lines = []
    for i, r in enumerate(rounds, start=1):
        lines.append(f"round {i}")
        for name in ("floor", "kvpaxos"):
            rate, closed = r[name]["rate"], r[name]["closed"]
            cpu = ", ".join(f"{k} {v}" for k, v in rate["cpu_us_per_write"].items())
            lines.append(f"  {name:8s} {args.rate:g} writes/s: p50 {rate['p50_ms']:.2f} ms,"
                         f" p99 {rate['p99_ms']:.2f} ms; us of CPU per write: {cpu}")
            lines.append(f"  {'':8s} {args.concurrency} clients: {closed['writes_per_s']:,} PUTs/s,"
                         f" {closed['ratio_to_bare']:.2f} of the bare server")
        bare = r["bare aiohttp"]["closed"]["writes_per_s"]
        lines.append(f"  bare aiohttp, {args.concurrency} clients: {bare:,} PUTs/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rate", type=float, default=1000.0, help="writes per second of the fixed-rate runs")
    p.add_argument("--rate-duration", type=float, default=5.0, help="measured seconds of each fixed-rate run")
    p.add_argument("-c", "--concurrency", type=int, default=64, help="clients of the closed-loop runs")
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds of each closed-loop run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--work-dir", type=Path, default=None, help="where the data directories go (a temporary one inside)")
    args = p.parse_args(argv)
    for name in ("rounds", "concurrency"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    for name in ("rate", "rate_duration", "duration"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0:
        p.error("--warmup must not be negative")
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    rounds = []
    with LoadRunner(1, show_progress=False) as runner:
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="kvfloor-", dir=args.work_dir) as d:
                rounds.append(run_round(args, runner, Path(d)))
    print(report(rounds, args))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
           "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "rounds": rounds}
    (args.out_dir / "floor.json").write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
