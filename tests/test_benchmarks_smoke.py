"""The benchmarks outside `kv bench` (restart and catch-up, the cost of a wake-up, prefix scans, watch latency,
the floor, the leader's cost per write, A/B of two versions) run end to end and write their results."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_restart_catchup_benchmark_smoke(tmp_path):
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "benchmarks/restart_catchup.py", "--sizes", "500", "--concurrency", "16",
         "--timeout", "60", "--out-dir", str(out), "--work-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| keys |" in result.stdout.replace("|  keys |", "| keys |")
    doc = json.loads((out / "restart_catchup.json").read_text())
    (row,) = doc["results"]
    assert row["keys"] == 500
    assert 0 < row["restart"]["serving_s"] <= row["restart"]["seconds"] < 60
    assert 0 < row["catchup"]["seconds"] < 60 and row["catchup"]["via"] in ("log", "snapshot")
    assert row["restart"]["snapshot_slot"] > 0
    svg = ET.parse(out / "restart_catchup.svg").getroot()
    assert svg.tag.endswith("svg") and svg.findall(".//{http://www.w3.org/2000/svg}polyline")


def test_wakeups_benchmark_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/wakeups.py", "--rounds", "200", "--commits", "50", "--out-dir", str(tmp_path),
         "--work-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads((tmp_path / "wakeups.json").read_text())
    for kind in ("processes", "threads"):
        r = doc[kind]
        assert r["rounds"] == 200 and r["wall_us_per_round_trip"] > 0 and r["cpu_us_per_wakeup"] > 0, r
    # Nearly every round trip blocks this side once (it waits for the answer), so the
    # switches are counted; not quite every one: on a busy machine an answer can be there
    # before this side waits for it (198 of 200 in one clean-clone run).
    assert doc["processes"]["switches_per_round_trip_this_side"] >= 0.5, doc
    g = doc["group_commit"]
    assert g["commits"] == 50 and g["direct"]["wall_us"] > 0 and g["direct"]["cpu_us"] > 0, doc
    # A commit on sqlitedict's thread wakes that thread and then the loop, at the least.
    assert g["through_sqlitedict"]["wall_us"] > 0 and g["through_sqlitedict"]["switches"] >= 2, doc
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("kvwake-")] == []  # cleaned up
    assert "us of CPU per wake-up" in result.stdout
    bad = subprocess.run([sys.executable, "benchmarks/wakeups.py", "--rounds", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--rounds must be at least 1" in bad.stderr
    bad = subprocess.run([sys.executable, "benchmarks/wakeups.py", "--commits", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--commits must be at least 1" in bad.stderr


def test_scan_benchmark_smoke(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/scan.py", "--sizes", "300,2000", "--repeat", "2",
                             "--out-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads((tmp_path / "scan.json").read_text())
    assert [(r["keys"], r["prefix"]) for r in doc["rows"]] == [
        (n, p) for n in (300, 2000) for p in ("narrow", "absent", "whole map", "snapshot start")]
    assert all(r["index"]["p50_ms"] > 0 and r["every_key"]["p50_ms"] > 0 for r in doc["rows"])
    bad = subprocess.run([sys.executable, "benchmarks/scan.py", "--sizes", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "at least 1" in bad.stderr


def test_floor_benchmark_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/floor.py", "--rounds", "1", "--rate", "200", "--rate-duration", "0.5",
         "-c", "4", "--duration", "0.5", "--warmup", "0.2", "--out-dir", str(tmp_path), "--work-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    (r,) = json.loads((tmp_path / "floor.json").read_text())["rounds"]
    for name in ("floor", "kvpaxos"):
        rate, closed = r[name]["rate"], r[name]["closed"]
        assert rate["writes"] > 0 and rate["errors"] == 0 and 0 < rate["p50_ms"] <= rate["p99_ms"], rate
        assert closed["writes_per_s"] > 0 and closed["errors"] == 0 and closed["ratio_to_bare"] > 0, closed
        assert len(rate["cpu_us_per_write"]) == 4, rate  # three servers and the load generator
    assert r["bare aiohttp"]["closed"]["writes_per_s"] > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("kvfloor-")] == []  # cleaned up
    assert "of the bare server" in result.stdout
    bad = subprocess.run([sys.executable, "benchmarks/floor.py", "--rounds", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--rounds must be at least 1" in bad.stderr


def test_floor_answers_a_write_only_once_both_followers_hold_it(tmp_path):
    """What the floor stands for: every write it answers is durable on both followers."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from floor import FloorCluster
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from kvpaxos.bench.cluster import request_json
    from storage.sqlite import SqliteStorage

    floor = FloorCluster(tmp_path)
    try:
        versions = [request_json(floor.port, "PUT", f"/v1/kv/k{i}", {"value": f"v{i}"}) for i in range(20)]
        pids = floor.pids()
    finally:
        floor.close()
    assert all(status == 200 for status, _ in versions), versions
    assert sorted(pids) == ["follower 1", "follower 2", "leader"]
    for i in (1, 2):
        storage = SqliteStorage(str(tmp_path / f"follower-{i}"), 1)
        try:
            accepted = storage.load().accepted
            assert storage.synchronous() == "FULL"
        finally:
            storage.close()
        held = {(c.key, c.value) for _, batch in accepted.values() for c in batch.commands}
        assert held == {(f"k{i}", f"v{i}") for i in range(20)}
        # One client: each write had its own slot, the version the leader answered.
        assert sorted(accepted) == sorted(body["version"] for _, body in versions) == list(range(1, 21))


def test_leader_cost_benchmark_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/leader_cost.py", "--writes", "150", "--clients", "4,1",
         "--tick-ms", "40", "--out-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads((tmp_path / "leader_cost.json").read_text())
    assert doc["options"]["tick_ms"] == 40
    runs = doc["runs"]
    assert [r["clients"] for r in runs] == [4, 1]
    for r in runs:
        assert all(r[t]["cpu_us_per_write"] > 0 for t in ("kvpaxos", "bare", "raw")), r
        # CPU time: a short run on a busy machine may leave a server less than the clients' noise.
        assert r["bare_over_kvpaxos"] is None or r["bare_over_kvpaxos"] > 0, r
        assert r["follower"]["commands_per_slot"] == r["clients"] and r["follower"]["cpu_us_per_write"] > 0, r
    # One client: every write is a slot of its own (the warm-up's writes came first).
    assert runs[1]["kvpaxos"]["slots"] >= 150
    assert "bare / kvpaxos" in result.stdout and "a follower, 4 command(s) a slot" in result.stdout
    bad = subprocess.run([sys.executable, "benchmarks/leader_cost.py", "--clients", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--clients must be at least 1" in bad.stderr
    bad = subprocess.run([sys.executable, "benchmarks/leader_cost.py", "--tick-ms", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--tick-ms must be at least 1" in bad.stderr



def test_leader_cost_share_is_none_where_noise_exceeds_a_server():
    spec = importlib.util.spec_from_file_location("leader_cost_bench", REPO / "benchmarks" / "leader_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.share(268_000, 421_000) == 0.637
    assert module.share(-22.8, 181.8) is None and module.share(50.0, 0.0) is None
    costs = {"cpu_us_per_write": 1.0, "server_cpu_us_per_write": 1.0}
    run = {"clients": 1, "bare_over_kvpaxos": None, "follower": {"cpu_us_per_write": 9.0},
           "kvpaxos": costs, "bare": costs, "raw": costs}
    text = module.report([run], callgrind=False)
    assert "bare / kvpaxos = none" in text


def test_follower_alone_applies_every_slot_it_was_sent():
    """The follower harness feeds a real node one slot at a time; each slot's Commit
    rides with the next Accept, so all but the last are applied when it ends."""
    result = subprocess.run([sys.executable, "-m", "kvpaxos.bench.follower_alone", "20", "3"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["applied"] == 50 + 20 - 1 and out["commands"] == 3 and out["cpu_us_per_write"] > 0, out
    bad = subprocess.run([sys.executable, "-m", "kvpaxos.bench.follower_alone", "20", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "usage" in bad.stderr


def test_leader_alone_applies_every_write_it_answers(tmp_path):
    """The leader harness counts a real node's work: every PUT its clients were answered
    is chosen, applied once in the node's map and readable through its HTTP API, and
    its followers' answers are what let the slots be chosen."""
    import asyncio

    import aiohttp

    from kvpaxos.bench import leader_alone as la
    from kvpaxos.bench.cluster import free_ports

    async def run() -> tuple[dict, dict, int]:
        port = free_ports(1)[0]
        node, runner = await la._leader(port, str(tmp_path), la.TICK_MS)
        try:
            await la.load(port, 120, 6, "t")
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://{la.HOST}:{port}/v1/kv/key7") as r:
                    read = await r.json()
            sessions = {c: s.seq for c, s in node.kv.sessions.items()}
            return read, sessions, node.kv.applied_slot
        finally:
            await node.stop()
            await runner.cleanup()

    read, sessions, applied = asyncio.run(asyncio.wait_for(run(), 60))
    assert read["value"] == la.VALUE, read
    # Six clients shared 120 writes; each client's last seq is how many it sent, once each.
    assert sorted(sessions) == [f"t-{i}" for i in range(6)] and sum(sessions.values()) == 120, sessions
    assert applied >= 1


def _ab_module():
    spec = importlib.util.spec_from_file_location("ab_bench", REPO / "benchmarks" / "ab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ab_sign_test_and_summary():
    ab = _ab_module()
    assert ab.sign_test_p(0, 0) == 1.0 and ab.sign_test_p(5, 5) == 1.0
    assert ab.sign_test_p(10, 0) == ab.sign_test_p(0, 10) == 2 / 1024
    assert ab.sign_test_p(8, 2) == 2 * (1 + 10 + 45) / 1024
    runs = {"A": [{"1000/s p50 ms": 3.0, "c=64 PUTs/s": 100.0}, {"1000/s p50 ms": 2.0, "c=64 PUTs/s": 90.0},
                  {"1000/s p50 ms": 2.5, "c=64 PUTs/s": 80.0}],
            "B": [{"1000/s p50 ms": 2.0, "c=64 PUTs/s": 120.0}, {"1000/s p50 ms": 2.0, "c=64 PUTs/s": 80.0},
                  {"1000/s p50 ms": 2.4, "c=64 PUTs/s": 100.0}]}
    latency, rate = ab.summarize(runs)
    # Lower latency wins, a tie is neither's, higher throughput wins.
    assert (latency["b_won"], latency["a_won"], latency["median_a"], latency["median_b"]) == (2, 0, 2.5, 2.0)
    assert latency["median_of_b_minus_a"] == -0.1 and latency["b_over_a"] == 0.8
    assert (rate["better"], rate["b_won"], rate["a_won"], rate["median_b"]) == ("higher", 2, 1, 100.0)


def test_ab_benchmark_smoke(tmp_path):
    """A revision against a directory, one pair, a flag on B's nodes only."""
    result = subprocess.run(
        [sys.executable, "benchmarks/ab.py", "HEAD", str(REPO), "--pairs", "1", "--rate", "100",
         "--rate-duration", "0.3", "--warmup", "0", "--b-serve-arg=--partial-in-flight=2",
         "--out-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads((tmp_path / "ab.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert doc["versions"] == {"A": f"revision {head}", "B": f"directory {REPO}"}
    assert doc["node_flags"] == {"A": [], "B": ["--partial-in-flight=2"]}
    assert len(doc["runs"]["A"]) == len(doc["runs"]["B"]) == 1
    rows = {r["measure"]: r for r in doc["summary"]}
    assert set(rows) == {"100/s p50 ms", "100/s p99 ms", "100/s server CPU us/write"}
    assert all(r["pairs"] == 1 and r["sign_test_p"] == 1.0 and r["median_a"] > 0 for r in rows.values())
    assert "B won" in result.stdout and "100/s p50 ms" in result.stdout
    bad = subprocess.run([sys.executable, "benchmarks/ab.py", "HEAD", "HEAD", "--pairs", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--pairs must be at least 1" in bad.stderr
    bad = subprocess.run([sys.executable, "benchmarks/ab.py", "no-such-revision", "HEAD"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0
    assert "neither a kvpaxos directory nor a revision" in bad.stderr


def test_watch_latency_benchmark_smoke(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/watch_latency.py", "--rate", "50", "--duration", "0.5",
                             "--watchers", "1,3", "--out-dir", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads((tmp_path / "watch_latency.json").read_text())
    assert [(level["watchers"], level["stream"]) for level in doc["levels"]] == [
        (0, False), (1, False), (3, False), (1, True), (3, True)]
    assert all(level["writes"] == 25 for level in doc["levels"])
    for i in (1, 3):
        assert "seen_after_answer_ms_leader" in doc["levels"][i]  # the first watcher is on the leader
    for i in (2, 4):
        assert doc["levels"][i]["seen_after_answer_ms_follower"]["count"] == 2 * 25
    for args, says in ((["--watchers", "x"], "whole numbers"), (["--modes", "sse"], "--modes takes")):
        bad = subprocess.run([sys.executable, "benchmarks/watch_latency.py", *args],
                             cwd=REPO, capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and says in bad.stderr, bad.stderr


def test_ttl_expiry_benchmark_smoke(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/ttl_expiry.py", "--keys", "1500", "--ttl", "3",
                             "--rate", "50", "--out-dir", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads((tmp_path / "ttl_expiry.json").read_text())
    assert doc["keys"] == 1500 and len(doc["keys_left_on_nodes_after"]) == 3
    assert doc["write_ms_before"]["count"] > 0 and doc["gone_after_first_deadline_ms"] >= 0
    bad = subprocess.run([sys.executable, "benchmarks/ttl_expiry.py", "--keys", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--keys must be at least 1" in bad.stderr, bad.stderr


def test_delete_prefix_benchmark_smoke(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/delete_prefix.py", "--keys", "1500", "--rate", "50",
                             "--out-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads((tmp_path / "delete_prefix.json").read_text())
    assert doc["deleted"] == 1500 and set(doc["keys_left_on_nodes_after"].values()) == {0}
    assert doc["write_ms_before"]["count"] > 0
    bad = subprocess.run([sys.executable, "benchmarks/delete_prefix.py", "--keys", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--keys must be at least 1" in bad.stderr, bad.stderr


def test_delete_prefix_benchmark_revokes_a_lease_smoke(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/delete_prefix.py", "--lease", "--keys", "1500", "--rate",
                             "50", "--out-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads((tmp_path / "delete_lease.json").read_text())
    assert doc["by"] == "lease" and doc["deleted"] == 1500 and set(doc["keys_left_on_nodes_after"].values()) == {0}
    bad = subprocess.run([sys.executable, "benchmarks/delete_prefix.py", "--lease", "--keys", "10001"],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "at most 10000 with --lease" in bad.stderr, bad.stderr
