"""What one wake-up costs on this machine, the unit a write at low load is paid in.

A single write through a 3-node cluster that is not busy wakes about ten threads
in turn (`kv bench` reports the context switches per write): the leader for the
request and again for the acceptances, each follower for the Accept, its group
commit thread, the fsync's completion and its event loop again, and the client.
This measures that unit with nothing else around it:

  processes  two processes ping-pong one byte over a loopback TCP connection (as
             the peer links do): each round trip wakes each process once.
  threads    an asyncio loop hands a no-op to a worker thread through a queue and
             is woken by loop.call_soon_threadsafe when it is done (as a group
             commit is, without SQLite): each round trip wakes the thread and the loop.
  group commit  what a follower's vote costs on disk: an event loop submits one
             acceptance (a 100-byte write) to SqliteStorage and awaits its
             on_durable, one at a time, on sqlitedict's thread (WAL,
             synchronous=FULL); and, for the fsync alone, the same kind of
             statement committed by a plain sqlite3 connection on the calling thread.

Reports wall time per round trip and CPU time and context switches per wake-up
(both sides' user and system time together), per group commit for the last,
and writes DIR/wakeups.json.

    python benchmarks/wakeups.py                 # 20,000 round trips each, 2,000 commits
    python benchmarks/wakeups.py --rounds 2000 --commits 200 --out-dir /tmp/w
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import resource
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kvpaxos.bench.cluster import context_switches  # noqa: E402
from kvpaxos.core.ballot import Ballot  # noqa: E402
from kvpaxos.core.commands import PUT, Batch, Command  # noqa: E402
from storage.base import Writes  # noqa: E402
from storage.sqlite import SqliteStorage  # noqa: E402


def _switches() -> int:
    """Context switches of every thread of this process so far."""
    return context_switches(os.getpid()) or 0


def _usage(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


WARMUP = 100  # round trips or commits before each measured run


class _Since:
    """This process's wall time, CPU time and context switches from its creation on."""

    def __init__(self) -> None:
        self.wall, self.cpu, self.switches = time.perf_counter(), _usage(resource.RUSAGE_SELF), _switches()

    def elapsed(self) -> tuple[float, float, int]:
        return (time.perf_counter() - self.wall, _usage(resource.RUSAGE_SELF) - self.cpu,
                _switches() - self.switches)


def processes(rounds: int) -> dict:
    """Ping-pong over loopback TCP between this process and a forked child."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the echoing side
        try:
            conn = socket.create_connection(("127.0.0.1", port))
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(WARMUP + rounds):
                conn.sendall(conn.recv(1))
        finally:
            os._exit(0)
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(WARMUP):
        conn.sendall(b"x")
        conn.recv(1)
    since = _Since()
    for _ in range(rounds):
        conn.sendall(b"x")
        conn.recv(1)
    wall, cpu, sw = since.elapsed()
    os.waitpid(pid, 0)
    child_cpu = _usage(resource.RUSAGE_CHILDREN)  # all of the child's life, warm-up included
    conn.close()
    listener.close()
    wakeups = 2 * rounds  # each side is woken once per round trip
    return {"rounds": rounds, "wall_us_per_round_trip": round(1e6 * wall / rounds, 1),
            "cpu_us_per_wakeup": round(1e6 * (cpu + child_cpu * rounds / (WARMUP + rounds)) / wakeups, 1),
            "switches_per_round_trip_this_side": round(sw / rounds, 2)}


def threads(rounds: int) -> dict:
    """An event loop hands work to a thread and is woken when it is done."""
    work: queue.Queue = queue.Queue()

    def worker() -> None:
        while (item := work.get()) is not None:
            loop, fut = item
            loop.call_soon_threadsafe(fut.set_result, None)

    t = threading.Thread(target=worker, daemon=True)
    t.start()

    async def hand_off() -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        work.put((loop, fut))
        await fut

    async def run() -> tuple[float, float, int]:
        for _ in range(WARMUP):
            await hand_off()
        since = _Since()
        for _ in range(rounds):
            await hand_off()
        return since.elapsed()

    wall, cpu, sw = asyncio.run(run())
    work.put(None)
    t.join()
    return {"rounds": rounds, "wall_us_per_round_trip": round(1e6 * wall / rounds, 1),
            "cpu_us_per_wakeup": round(1e6 * cpu / (2 * rounds), 1),
            "switches_per_round_trip": round(sw / rounds, 2)}


def group_commit(commits: int, work_dir: Path | None) -> dict:
    """One acceptance per group commit through SqliteStorage, from an event loop; then the
    same number of one-row commits on a plain connection, on this thread."""
    ballot = Ballot(1, 1)
    value = "v" * 100
    with tempfile.TemporaryDirectory(prefix="kvwake-", dir=work_dir) as d:
        storage = SqliteStorage(d, 1)

        async def commit(i: int) -> None:
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            batch = Batch((Command(PUT, f"k{i % 1000}", value, cmd_id=f"c{i}"),))
            storage.submit(Writes(None, {i + 1: (ballot, batch)}),
                           lambda: loop.call_soon_threadsafe(done.set_result, None))
            await done
            storage.check()

        async def run() -> tuple[float, float, int]:
            for i in range(WARMUP):
                await commit(i)
            since = _Since()
            for i in range(WARMUP, WARMUP + commits):
                await commit(i)
            return since.elapsed()

        try:
            wall, cpu, sw = asyncio.run(run())
        finally:
            storage.close()
        conn = sqlite3.connect(os.path.join(d, "direct.sqlite"), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("CREATE TABLE t (key TEXT PRIMARY KEY, value TEXT)")
            row = json.dumps([[1, 1], {"c": [["put", "k", value]]}])
            for i in range(WARMUP):
                conn.execute("REPLACE INTO t VALUES (?, ?)", (f"a/{i:012d}", row))
            since = _Since()
            for i in range(WARMUP, WARMUP + commits):
                conn.execute("REPLACE INTO t VALUES (?, ?)", (f"a/{i:012d}", row))
            direct_wall, direct_cpu, _ = since.elapsed()
        finally:
            conn.close()
    return {"commits": commits,
            "through_sqlitedict": {"wall_us": round(1e6 * wall / commits, 1),
                                   "cpu_us": round(1e6 * cpu / commits, 1),
                                   "switches": round(sw / commits, 2)},
            "direct": {"wall_us": round(1e6 * direct_wall / commits, 1),
                       "cpu_us": round(1e6 * direct_cpu / commits, 1)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20_000, help="round trips per measurement")
    ap.add_argument("--commits", type=int, default=2_000, help="group commits per measurement")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="where the SQLite files go (default: the system's temporary directory; "
                         "put it on the disk the nodes would use)")
    ap.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.commits < 1:
        ap.error("--commits must be at least 1")
    doc = {"benchmark": "wakeups", "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                                             "platform": platform.platform(),
                                             "loadavg_before": list(os.getloadavg())},
           "processes": processes(args.rounds), "threads": threads(args.rounds),
           "group_commit": group_commit(args.commits, args.work_dir)}
    for name, r in (("two processes, loopback TCP", doc["processes"]),
                    ("event loop and a worker thread", doc["threads"])):
        print(f"{name:34}: {r['wall_us_per_round_trip']:7.1f} us per round trip, "
              f"{r['cpu_us_per_wakeup']:6.1f} us of CPU per wake-up")
    g = doc["group_commit"]
    for name, r in (("group commit, sqlitedict's thread", g["through_sqlitedict"]),
                    ("the same commit, plain sqlite3", g["direct"])):
        switches = f", {r['switches']:.1f} context switches" if "switches" in r else ""
        print(f"{name:34}: {r['wall_us']:7.1f} us per commit, {r['cpu_us']:6.1f} us of CPU{switches}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / "wakeups.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
