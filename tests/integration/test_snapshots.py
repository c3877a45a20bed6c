"""Snapshots, compaction, catch-up by snapshot, rebuilding wiped nodes, backup and restore,
on real `kv serve` processes with real files.

The nodes run with tiny thresholds (a snapshot every few dozen slots), so a few
hundred writes go through many snapshot and compaction cycles. Every test
bounds its own time: each wait has a deadline.
"""
from __future__ import annotations

import asyncio
import http.client
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kvpaxos import snapshot
from support.cluster import HOST, REPO_ROOT, Cluster, wait_until

SMALL = ["--snapshot-every", "50", "--compact-keep", "10"]


class SnapCluster(Cluster):
    """The shared real-process cluster, with extra `kv serve` options for every node."""

    def __init__(self, tmp_path: Path, serve_args: list[str], n: int = 3, **kwargs) -> None:
        super().__init__(tmp_path, n=n, serve_args=serve_args, **kwargs)

    def wipe(self, i: int) -> None:
        assert not self.is_alive(i)
        shutil.rmtree(self.data_dir(i), ignore_errors=True)


@pytest.fixture
def clusters(tmp_path):
    made: list[SnapCluster] = []

    def make(serve_args: list[str] = SMALL, n: int = 3, start: bool = True, name: str | None = None,
             **kwargs) -> SnapCluster:
        c = SnapCluster(tmp_path / (name or f"cluster{len(made)}"), serve_args, n=n, **kwargs)
        made.append(c)
        if start:
            c.start()
            c.wait_for_leader()
        return c

    yield make
    for c in made:
        c.stop_all()


# -- helpers ------------------------------------------------------------------------------

def put_many(cluster: Cluster, count: int, prefix: str, value_bytes: int = 16, threads: int = 8,
             nodes: list[int] | None = None, timeout_s: float = 60.0) -> dict[str, str]:
    """PUT count keys concurrently through `nodes` (retrying each until acknowledged)."""
    nodes = nodes or cluster.alive()
    deadline = time.monotonic() + timeout_s
    pad = "x" * max(0, value_bytes - 12)

    def one(n: int) -> tuple[str, str]:
        key, value = f"{prefix}/{n:06d}", f"{n:06d}-{pad}"
        client, attempt = f"{prefix}-{n}", 0
        while time.monotonic() < deadline:
            node = nodes[(n + attempt) % len(nodes)]
            attempt += 1
            try:
                resp = cluster.put(node, key, value, timeout=10, client_id=client, seq=1)
                if resp.status == 200:
                    return key, value
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        raise AssertionError(f"could not write {key} in {timeout_s:g}s")

    with ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(one, range(count)))


def content(cluster: Cluster, i: int) -> dict[str, tuple[str, int]]:
    """Node i's own copy of the whole map (stale read: no leader involved)."""
    resp = cluster.list(i, "", limit=10_000, stale=True)
    assert resp.status == 200 and not resp.body["more"], resp
    return {item["key"]: (item["value"], item["version"]) for item in resp.body["items"]}


def wait_converged(cluster: Cluster, ids: list[int] | None = None, timeout: float = 30.0) -> dict:
    """Wait until the nodes have applied the same slot and hold the same map; that map."""
    ids = ids or cluster.ids

    def same() -> dict | None:
        statuses = cluster.statuses(ids)
        if len(statuses) < len(ids) or len({s["applied"] for s in statuses.values()}) != 1:
            return None
        maps = [content(cluster, i) for i in ids]
        return maps[0] if all(m == maps[0] for m in maps) else None
    try:
        return wait_until(same, timeout, f"nodes {ids} to converge", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; statuses: {cluster.statuses(ids)}") from None


def rebuilt_before_voting(cluster: Cluster, i: int) -> None:
    """Node i's log since its last start says it rebuilt as a non-voter before it voted
    again, and never that it voted from the start. (Its status cannot show that reliably:
    once its peers answer, a rebuild can end within milliseconds, when the leader takes a
    higher ballot and chooses a slot under it.)"""
    text = cluster.log_path(i).read_text(errors="replace")
    since = text[text.rindex(f"--- start node {i}:"):]
    assert "voting from the start" not in since, since[-3000:]
    rebuilding, rebuilt = since.find("rebuilding as a non-voter until"), since.find("rebuilt; voting again")
    assert 0 <= rebuilding < rebuilt, since[-3000:]


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def kv(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("KV_ENDPOINTS", None)
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def endpoints(cluster: Cluster) -> str:
    return ",".join(cluster.url(i) for i in cluster.ids)


def test_the_log_kept_behind_a_snapshot_is_bounded_in_bytes_too(clusters):
    """Slots of big commands: --compact-keep-bytes keeps fewer slots than --compact-keep,
    so the log in memory and on disk stays small; a peer behind it gets the snapshot."""
    cluster = clusters(["--snapshot-every", "40", "--compact-keep", "1000", "--compact-keep-bytes", "20KiB"])
    leader = cluster.wait_for_leader()
    lagging = next(i for i in cluster.ids if i != leader)
    cluster.kill(lagging)
    value = "v" * 4000
    for n in range(120):
        assert cluster.put(leader, f"big/{n % 30:02d}", f"{n}-{value}", timeout=10).status == 200
    # 20 KiB hold four or five of these slots; by the slot count alone nothing would go
    # (a snapshot below slot 1000 keeps everything). The last compaction may still run.
    def kept() -> int:
        st = cluster.status(leader)["snapshot"]
        return st["slot"] - st["compacted_through"] if st["taken"] >= 2 and st["compacted_through"] else -1
    wait_until(lambda: 0 < kept() <= 6, 10, "the log behind the snapshot to shrink to 20 KiB")
    cluster.restart(lagging)
    wait_until(lambda: cluster.status(lagging)["snapshot"]["installed"] >= 1, 20,
               "the restarted node to install a snapshot (the log it missed is gone)")
    wait_converged(cluster)


# -- catch-up by snapshot ------------------------------------------------------------------

def test_lagging_node_installs_a_snapshot_and_converges(clusters):
    cluster = clusters()
    leader = cluster.wait_for_leader()
    lagging = next(i for i in cluster.ids if i != leader)
    cluster.kill(lagging)
    # Two writers put at most two commands into a slot, so 800 writes fill at least 400 slots:
    # several snapshots and compactions (eight writers' batches once filled fewer than 150).
    put_many(cluster, 800, "lag", threads=2)
    others = [i for i in cluster.ids if i != lagging]
    st = cluster.status(leader)
    assert st["snapshot"]["taken"] >= 2 and st["snapshot"]["compacted_through"] > 0, st

    cluster.restart(lagging)
    wait_until(lambda: cluster.status(lagging)["snapshot"]["installed"] >= 1, 20,
               "the restarted node to install a snapshot")
    final = wait_converged(cluster)
    assert len([k for k in final if k.startswith("lag/")]) == 800
    assert (cluster.data_dir(lagging) / "snapshot.json").exists()
    # The restarted node's ordered key index was built from the snapshot it installed,
    # the others' key by key: every node's scans agree with the keys it holds.
    assert cluster.delete(leader, "lag/000310").status == 200
    wanted = [f"lag/{n:06d}" for n in range(300, 400) if n != 310]
    wait_converged(cluster)
    for i in cluster.ids:
        page = cluster.list(i, "lag/0003", limit=50, stale=True).body
        assert [item["key"] for item in page["items"]] == wanted[:50] and page["more"] is True, (i, page)
        rest = cluster.list(i, "lag/0003", limit=1000, stale=True).body
        assert [item["key"] for item in rest["items"]] == wanted and rest["more"] is False, (i, rest)
    assert cluster.put(lagging, "after", "catch-up").status == 200
    assert all(cluster.get(i, "after").body["value"] == "catch-up" for i in others + [lagging])


def test_wiped_node_rebuilds_as_non_voter_then_votes(clusters):
    cluster = clusters()
    put_many(cluster, 300, "wipe")
    victim = cluster.ids[-1]
    cluster.kill(victim)
    cluster.wipe(victim)
    cluster.spawn(victim)
    seen = []
    cluster.wait_ready(victim)

    def votes() -> bool:
        st = cluster.status(victim)
        seen.append((st["voting"], st["rebuilding"], st["deciding"]))
        return st["voting"] is True
    wait_until(votes, 20, "the wiped node to vote again")
    rebuilt_before_voting(cluster, victim)  # never voting at once
    # Until it voted it said why not: still asking its peers, or rebuilding past a round.
    assert all(deciding or rebuilding is not None for voting, rebuilding, deciding in seen if not voting)
    final = wait_converged(cluster)
    assert len([k for k in final if k.startswith("wipe/")]) == 300


def test_a_wiped_node_given_a_short_list_rebuilds_with_the_clusters_voters(clusters):
    """Node 3 of five, wiped and started again with a --cluster list naming only nodes 1-3,
    would count their majority (2 of 3 where the cluster needs 3 of 5) once it voted again.
    It takes the configuration the cluster began with from its peers (and keeps it across a
    restart), asks every voter the cluster has, and rebuilds with the cluster's voters."""
    cluster = clusters([], n=5)  # no compaction: the node replays the log from its first slot
    put_many(cluster, 30, "list")
    ids = {cluster.status(i)["cluster_id"] for i in cluster.ids}
    assert len(ids) == 1, ids
    victim, full = 3, cluster.spec
    cluster.kill(victim)
    cluster.wipe(victim)
    cluster.spec = ",".join(e for e in full.split(",") if e.split("=")[0] in ("1", "2", "3"))
    try:
        cluster.spawn(victim)
        cluster.wait_ready(victim)
        wait_until(lambda: cluster.status(victim)["voting"] is True, 30, "the wiped node to vote again")
        status = cluster.status(victim)
        assert status["voters"] == [1, 2, 3, 4, 5] and {status["cluster_id"]} == ids, status
        assert "the cluster began from another configuration" in cluster.log_tail(victim, 300)
        cluster.kill(victim)  # its data directory now names the cluster's configuration
        cluster.spawn(victim)
        cluster.wait_ready(victim)
        assert cluster.status(victim)["voters"] == [1, 2, 3, 4, 5]
    finally:
        cluster.spec = full
    put_many(cluster, 10, "after")
    final = wait_converged(cluster)
    assert len([k for k in final if k.startswith(("list/", "after/"))]) == 40


def test_a_backup_restored_into_one_node_of_a_running_cluster_does_not_vote_at_once(clusters, tmp_path):
    # The node's directory then holds a snapshot and no promises: it must not vote on
    # the promises it made before (rule 5), so it asks its peers and rebuilds.
    cluster = clusters()
    put_many(cluster, 100, "rs")
    backup = tmp_path / "backup.snap"
    saved = kv("snapshot", "save", str(backup), "--endpoints", endpoints(cluster))
    assert saved.returncode == 0, saved.stderr
    put_many(cluster, 50, "after")
    victim = cluster.ids[-1]
    cluster.kill(victim)
    cluster.wipe(victim)
    restored = kv("snapshot", "restore", str(backup), "--data-dir", str(cluster.data_dir(victim)))
    assert restored.returncode == 0, restored.stderr
    cluster.spawn(victim)
    cluster.wait_ready(victim)
    wait_until(lambda: cluster.status(victim)["voting"] is True, 20, "the restored node to vote again")
    rebuilt_before_voting(cluster, victim)  # never voting at once
    final = wait_converged(cluster)
    assert len([k for k in final if k.startswith("rs/")]) == 100
    assert len([k for k in final if k.startswith("after/")]) == 50


def test_wiped_node_killed_while_deciding_still_does_not_vote(clusters):
    """A wiped node that crashes before it heard enough peers must not come back as a voter."""
    cluster = clusters()
    put_many(cluster, 50, "decide")
    victim, absent = cluster.ids[-1], cluster.ids[-2]
    cluster.kill_many([victim, absent])
    cluster.wipe(victim)
    cluster.spawn(victim)  # one peer of two is up: it cannot decide yet
    cluster.wait_ready(victim)
    assert cluster.status(victim)["deciding"] is True
    time.sleep(0.5)
    cluster.kill(victim)
    cluster.spawn(victim)
    cluster.wait_ready(victim)
    st = cluster.status(victim)
    assert st["voting"] is False and st["deciding"] is True, st
    cluster.spawn(absent)
    cluster.wait_ready(absent)
    wait_until(lambda: cluster.status(victim)["voting"] is True, 20, "the wiped node to vote again")
    final = wait_converged(cluster)
    assert len([k for k in final if k.startswith("decide/")]) == 50


# -- bounded disk use -------------------------------------------------------------------------

def test_disk_use_stays_bounded_under_long_writes(clusters):
    """The log is compacted behind every snapshot, so the data directory stops growing:
    its size after many snapshot intervals is about its size after the first few, while
    the log written meanwhile (twice the values: accepted and chosen records) is far larger."""
    cluster = clusters(["--snapshot-every", "40", "--compact-keep", "10"])
    value = "v" * 4000

    def overwrite(count: int, tag: str) -> int:
        def one(n: int) -> None:
            resp = cluster.put(cluster.ids[n % 3], f"hot/{n % 100:03d}", f"{tag}-{n}-{value}", timeout=10)
            assert resp.status == 200, resp
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(count)))
        return count * (len(value) + 20)

    def sizes() -> dict[int, int]:
        return {i: dir_bytes(cluster.data_dir(i)) for i in cluster.ids}

    # The first intervals: the SQLite WAL reaches its working size (on every node: the first
    # snapshot after a start comes up to 75 % of an interval later, depending on the node id).
    overwrite(600, "a")
    first = sizes()
    applied_first = cluster.status(1)["applied"]
    written = overwrite(2400, "b")
    wait_converged(cluster)
    later = sizes()
    st = cluster.status(1)
    intervals = (st["applied"] - applied_first) // 40
    assert intervals >= 10, st  # many more snapshot intervals went by
    print(f"data dir bytes after the first intervals {first}, after {intervals} more {later}; "
          f"{written} bytes of values written meanwhile")
    for i in cluster.ids:
        assert later[i] <= 1.5 * first[i] + 512 * 1024, (i, first, later)
        assert later[i] - first[i] < 0.2 * written, (i, first, later, written)
        assert cluster.status(i)["snapshot"]["compacted_through"] > applied_first


# -- crashes while a snapshot is written or installed -------------------------------------------

class Load:
    """A few threads overwriting large values, so snapshots come often and take a while."""

    def __init__(self, cluster: Cluster, nodes: list[int], keys: int = 150, value_bytes: int = 20_000,
                 threads: int = 3) -> None:
        self.cluster, self.nodes, self.keys = cluster, nodes, keys
        self.value = "z" * value_bytes
        self.stopping = threading.Event()
        self.acked = 0
        self.threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(threads)]

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=15)

    def _run(self, t: int) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            try:
                resp = self.cluster.put(self.nodes[n % len(self.nodes)], f"big/{(n * 7 + t) % self.keys:04d}",
                                        f"{t}-{n}-{self.value}", timeout=10)
                if resp.status == 200:
                    self.acked += 1
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)


def kill_when_present(cluster: Cluster, i: int, path: Path, timeout: float) -> bool:
    """SIGKILL node i as soon as `path` exists (True), or at the deadline anyway (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            cluster.kill(i)
            return True
        time.sleep(0.001)
    cluster.kill(i)
    return False


def check_snapshot_file(data_dir: Path) -> None:
    """Whatever a crash left behind, snapshot.json (if any) is a complete, valid snapshot."""
    path = data_dir / "snapshot.json"
    if path.exists():
        snapshot.verify(str(path))  # raises SnapshotError if it is damaged or cut short


def test_kill_during_snapshot_write_and_install(clusters):
    cluster = clusters(["--snapshot-every", "20", "--compact-keep", "5"])
    leader = cluster.wait_for_leader()
    victim = next(i for i in cluster.ids if i != leader)
    others = [i for i in cluster.ids if i != victim]
    tmp = cluster.data_dir(victim) / "snapshot.json.tmp"
    recv = cluster.data_dir(victim) / "snapshot.json.recv.tmp"
    hits = {"write": 0, "install": 0}
    with Load(cluster, others) as load:
        wait_until(lambda: load.acked >= 100, 30, "the big values to be written")
        # 1. SIGKILL while the node writes its own snapshot (snapshot.json.tmp exists);
        # each restart must come up from what the crash left and write snapshots again.
        for _ in range(3):
            hits["write"] += kill_when_present(cluster, victim, tmp, timeout=8)
            check_snapshot_file(cluster.data_dir(victim))
            cluster.spawn(victim)
        cluster.wait_ready(victim)
        # 2. SIGKILL while it downloads a peer's snapshot (snapshot.json.recv.tmp exists):
        # it falls behind the others' compaction while down, so it must install one.
        for _ in range(2):
            cluster.kill(victim)
            behind = load.acked
            wait_until(lambda: load.acked >= behind + 40, 30, "writes while the node is down")
            cluster.spawn(victim)
            hits["install"] += kill_when_present(cluster, victim, recv, timeout=10)
            check_snapshot_file(cluster.data_dir(victim))
            cluster.spawn(victim)
        cluster.wait_ready(victim)
    print(f"kills that hit a snapshot being written/installed: {hits}, writes acknowledged {load.acked}")
    assert hits["write"] >= 1 and hits["install"] >= 1, hits
    wait_until(lambda: cluster.status(victim)["snapshot"]["installed"] >= 1, 30,
               "the node to install a snapshot after the crashes")
    wait_converged(cluster, timeout=40)
    assert not recv.exists()  # removed at start, or renamed into place by the install
    check_snapshot_file(cluster.data_dir(victim))
    assert cluster.put(victim, "after-crashes", "ok").status == 200


# -- wiping nodes under continuous writes ---------------------------------------------------------

def test_wiped_nodes_rejoin_under_continuous_writes(clusters):
    """Wipe a random node's data directory and restart it, three times, while clients
    read and write; the history must stay linearizable and the node must converge."""
    try:
        from support.history import Recorder, Workload, summarize
        from support.linearizability import check
    except ImportError:  # pragma: no cover - the checker lives in a shared support module
        Recorder = None
    cluster = clusters(["--snapshot-every", "30", "--compact-keep", "10"])
    rng = random.Random(os.environ.get("KV_TEST_SEED", str(uuid.uuid4())))
    put_many(cluster, 200, "base")  # a log long enough to be compacted before the first wipe

    stop = threading.Event()
    acked: dict[str, str] = {}  # the fallback check: key -> last acknowledged value
    recorder = None
    if Recorder is not None:
        recorder = Recorder([cluster.url(i) for i in cluster.ids],
                            Workload(workers=6, rotate_s=3.0), seed=rng.randrange(1 << 30), run_id="wipe")

        def record() -> None:
            asyncio.run(recorder.run(120.0))
        worker = threading.Thread(target=record, daemon=True)
    else:
        def write() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                key, value = f"w/{n % 40:02d}", f"value-{n}"
                try:
                    resp = cluster.put(cluster.ids[n % 3], key, value, timeout=10,
                                       client_id="fallback", seq=n)
                except (OSError, http.client.HTTPException):
                    resp = None
                if resp is not None and resp.status == 200:
                    acked[key] = value
                else:
                    acked.pop(key, None)  # its outcome is unknown: skip the key in the check
        worker = threading.Thread(target=write, daemon=True)
    worker.start()
    try:
        time.sleep(1.0)
        for _ in range(3):
            victim = rng.choice(cluster.ids)
            cluster.kill(victim)
            cluster.wipe(victim)
            cluster.spawn(victim)
            cluster.wait_ready(victim)
            wait_until(lambda: cluster.status(victim)["voting"] is True, 30,
                       f"wiped node {victim} to vote again")
            cluster.wait_caught_up(victim, timeout=30)
            time.sleep(0.5)
    finally:
        stop.set()
        if recorder is not None:
            recorder.stop()
        worker.join(timeout=20)
    assert not worker.is_alive()
    final = wait_converged(cluster, timeout=30)
    if recorder is not None:
        ops = recorder.history()
        ops += asyncio.run(recorder.read_everywhere(recorder.keys_used))
        result = check(ops)
        print(f"history: {len(ops)} ops, {summarize(ops)}; {result.summary(recorder.t0)[:300]}")
        assert result.ok, result.summary(recorder.t0)
        assert not recorder.unexpected, recorder.unexpected
        assert sum(op.outcome == "ok" and op.kind != "read" for op in ops) > 50
    else:
        for key, value in acked.items():
            assert final[key][0] == value, key
    assert len([k for k in final if k.startswith("base/")]) == 200


# -- backup and restore ----------------------------------------------------------------------------

def test_save_restore_into_a_new_cluster_and_refuse_damaged_backups(clusters, tmp_path):
    source = clusters()
    put_many(source, 300, "bk")
    with ThreadPoolExecutor(8) as pool:  # deletes, so the snapshot holds more than puts
        deleted = list(pool.map(lambda n: source.delete(source.ids[n % 3], f"bk/{n:06d}").status,
                                range(0, 300, 3)))
    assert deleted == [200] * 100
    backup = tmp_path / "backup.snap"
    saved = kv("snapshot", "save", str(backup), "--endpoints", endpoints(source))
    assert saved.returncode == 0, saved.stderr
    assert saved.stdout.startswith("saved snapshot of slot ") and "200 keys" in saved.stdout
    assert not (tmp_path / "backup.snap.tmp").exists()
    expected = content(source, source.wait_for_leader())
    assert len(expected) == 200
    source.stop_all()  # the new cluster shares nothing with the old one

    info = kv("snapshot", "info", str(backup))
    assert info.returncode == 0 and "200 keys" in info.stdout and "checksum ok" in info.stdout

    target = clusters(start=False, name="restored")
    with ThreadPoolExecutor(3) as pool:
        done = list(pool.map(lambda i: kv("snapshot", "restore", str(backup), "--data-dir",
                                          str(target.data_dir(i))), target.ids))
    for i, result in zip(target.ids, done):
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("restored snapshot of slot ")
        assert sorted(p.name for p in target.data_dir(i).iterdir()) == ["snapshot.json"]
    again = kv("snapshot", "restore", str(backup), "--data-dir", str(target.data_dir(1)))
    assert again.returncode == 1 and again.stderr.startswith("error: ") and again.stderr.count("\n") == 1
    assert "already holds node state" in again.stderr

    target.start()
    leader = target.wait_for_leader()
    assert all(target.status(i)["voting"] for i in target.ids)
    assert target.put(leader, "bk/new", "after-restore").status == 200
    restored = wait_converged(target)
    assert {k: v for k, v in restored.items() if k != "bk/new"} == expected
    got = target.get(target.ids[0], "bk/000001")
    assert got.status == 200 and got.body["value"] == expected["bk/000001"][0]
    status = kv("status", "--endpoints", endpoints(target))
    assert status.returncode == 0, status.stderr
    assert status.stdout.split("\n")[0].split() == ["ID", "ADDRESS", "ROLE", "MEMBER", "LEADER", "BALLOT",
                                                    "CHOSEN", "APPLIED", "SNAPSHOT", "BEHIND", "STATE"]

    # A damaged backup is refused, with one line, and leaves nothing behind.
    data = bytearray(backup.read_bytes())
    middle = data.index(b"bk/000151")
    data[middle + 4] ^= 0x01
    bad = tmp_path / "damaged.snap"
    bad.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.snap"
    truncated.write_bytes(backup.read_bytes()[: len(data) // 2])
    commands = [("snapshot", "restore", str(broken), "--data-dir", str(tmp_path / f"new-{broken.stem}"))
                for broken in (bad, truncated)] + [("snapshot", "info", str(bad))]
    with ThreadPoolExecutor(3) as pool:
        refusals = list(pool.map(lambda args: kv(*args), commands))
    for refused in refusals:
        assert refused.returncode == 1, refused
        assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1, refused.stderr
        assert "not a usable snapshot" in refused.stderr
    assert "checksum" in refusals[0].stderr and "truncated" in refusals[1].stderr
    assert not list(tmp_path.glob("new-*/snapshot.json*"))


# -- the operator's view -------------------------------------------------------------------------

def test_serve_rejects_bad_snapshot_options_with_one_line(tmp_path):
    base = ["serve", "--id", "1", "--cluster", "1=127.0.0.1:1", "--data-dir", str(tmp_path / "n")]
    bad = [("--snapshot-every", "0"), ("--snapshot-every", "many"), ("--snapshot-every-bytes", "12 parsecs"),
           ("--compact-keep", "-1"), ("--compact-keep-bytes", "-1"), ("--request-timeout", "0"),
           ("--request-timeout", "nan"), ("--partial-in-flight", "-1"), ("--self-vote-delay-ms", "-1"),
           ("--self-vote-delay-ms", "nan")]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda opt: kv(*base, *opt, timeout=30), bad))
    for (option, value), result in zip(bad, results):
        assert result.returncode == 2, (option, value, result)
        assert result.stderr.startswith(f"error: {option} must be ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "n").exists()


def test_status_table_shows_snapshot_lag_and_rebuilding():
    from cli.main import format_status_table
    nodes = [
        {"id": 1, "address": "h:1", "role": "leader", "leader": 1, "ballot": "7.1", "chosen": 120,
         "applied": 118, "voting": True, "deciding": False, "snapshot": {"slot": 100}, "up": True},
        {"id": 2, "address": "h:2", "role": "follower", "leader": 1, "ballot": "7.1", "chosen": 30,
         "applied": 20, "voting": False, "deciding": False, "rebuilding": 6, "snapshot": {"slot": 0},
         "up": True},
        {"id": 3, "address": "h:3", "up": False},
    ]
    rows = [line.split() for line in format_status_table(nodes).splitlines()]
    assert rows[0] == ["ID", "ADDRESS", "ROLE", "MEMBER", "LEADER", "BALLOT", "CHOSEN", "APPLIED",
                       "SNAPSHOT", "BEHIND", "STATE"]
    assert rows[1] == ["1", "h:1", "leader", "-", "1", "7.1", "120", "118", "100", "2", "up"]
    assert rows[2] == ["2", "h:2", "rebuilding", "-", "1", "7.1", "30", "20", "0", "100", "up"]
    assert rows[3] == ["3", "h:3", "-", "-", "-", "-", "-", "-", "-", "-", "down"]
    no_leader = [dict(n, role="follower", leader=None) for n in nodes[:2]]
    assert [line.split()[9] for line in format_status_table(no_leader).splitlines()[1:]] == ["-", "-"]


def test_save_sends_the_client_token(clusters, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-for-backups\n")
    cluster = clusters(SMALL + ["--token-file", str(token_file)])
    backup = tmp_path / "guarded.snap"
    refused = kv("snapshot", "save", str(backup), "--endpoints", endpoints(cluster))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "token" in refused.stderr
    assert not backup.exists() and not (tmp_path / "guarded.snap.tmp").exists()
    saved = kv("snapshot", "save", str(backup), "--endpoints", endpoints(cluster),
               "--token", "s3cret-token-for-backups")
    assert saved.returncode == 0, saved.stderr
    assert kv("snapshot", "info", str(backup)).returncode == 0


def test_a_snapshot_download_cut_short_is_no_error(clusters):
    """A reader that hangs up in the middle of GET /v1/snapshot (a joining node killed,
    a backup interrupted) is not a bug of the node's: its log says nothing at error
    level and holds no traceback, and the node goes on serving snapshots."""
    cluster = clusters(serve_args=[])
    leader = cluster.wait_for_leader()
    value = "v" * (1024 * 1024 - 64)
    for n in range(12):  # a snapshot far larger than the sockets' buffers
        assert cluster.put(leader, f"big/{n}", value, timeout=30).status == 200
    for _ in range(3):
        with socket.create_connection((HOST, cluster.ports[leader]), timeout=10) as sock:
            sock.sendall(b"GET /v1/snapshot?fresh=true HTTP/1.1\r\nHost: x\r\n\r\n")
            head = sock.recv(4096)
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
            time.sleep(0.2)  # the node fills the buffers and waits for them to drain
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
    conn = http.client.HTTPConnection(HOST, cluster.ports[leader], timeout=30)
    conn.request("GET", "/v1/snapshot")
    resp = conn.getresponse()
    assert resp.status == 200 and len(resp.read()) > 12_000_000
    conn.close()
    text = cluster.log_path(leader).read_text(errors="replace")
    bad = [line for line in text.splitlines() if re.search(r"level=(error|critical)", line) or "Traceback" in line]
    assert not bad, "\n".join(bad)[:4000]
