"""The benchmarks run end to end on a tiny scale and produce well-formed results.

These are not timed tests: one concurrency level, about a second per mode,
and the assertions are about the shape of the results, never their values.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvpaxos.bench.cluster import cpu_seconds
from kvpaxos.bench.stats import percentile, summarize
from kvpaxos.bench.svg import throughput_latency_svg

REPO = Path(__file__).resolve().parents[1]
LATENCY_KEYS = {"count", "ops_s", "mean_ms", "max_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms"}


def run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def check_summary(s: dict) -> None:
    assert LATENCY_KEYS <= set(s)
    assert s["count"] >= 0 and s["ops_s"] >= 0
    assert 0 <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["p999_ms"] <= s["max_ms"]


def test_stats_svg_and_cpu_time():
    assert percentile([], 50) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 99.9) == 4.0
    s = summarize([0.001, 0.002, 0.003], 1.0)
    check_summary(s)
    assert s["count"] == 3 and s["ops_s"] == 3.0 and s["p50_ms"] == 2.0
    assert summarize([0.01], 2.0, ops_per_sample=100)["ops_s"] == 50.0
    sum(range(200_000))
    assert cpu_seconds(os.getpid()) > 0
    assert cpu_seconds(2 ** 22 + 12345) is None
    svg = throughput_latency_svg([{"name": "a", "points": [(100, 5.0, "c=1"), (1000, 20.0, "c=16")]},
                                  {"name": "b <&>", "points": [(3000, 1.0, "")], "dashed": True}],
                                 "title", "sub")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and root.findall(".//{http://www.w3.org/2000/svg}polyline")
    ET.fromstring(throughput_latency_svg([], "empty"))


def test_core_wait_counts_the_time_a_process_is_runnable_without_a_core():
    """Four busy processes pinned to one core: each runs about a quarter of the time and
    waits for the core the rest; the count must say waiting, not running."""
    import time

    from kvpaxos.bench.cluster import core_wait_seconds

    assert core_wait_seconds(2 ** 22 + 12345) is None
    spin = ("import os, time\nos.sched_setaffinity(0, {0})\n"
            "end = time.monotonic() + 1.2\nwhile time.monotonic() < end: pass")
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(4)]
    try:
        time.sleep(0.8)
        waited = sum(core_wait_seconds(p.pid) or 0.0 for p in procs)
        ran = sum(cpu_seconds(p.pid) or 0.0 for p in procs)
    finally:
        for p in procs:
            p.wait(timeout=30)
    # One core among four for most of 0.8 s: about three seconds waited for each one run.
    assert waited > 1.5 * ran > 0, (waited, ran)


def test_kv_bench_tiny_run_writes_json_and_svg(tmp_path):
    out = tmp_path / "results"
    result = run(["-m", "cli.main", "bench", "--concurrency", "2", "--duration", "1", "--warmup", "0.3",
                  "--keys", "20", "--batch-size", "5", "--batch-concurrency", "2", "--rate", "50",
                  "--rate-duration", "1", "--reads-concurrency", "2", "--syncobj-outstanding", "20",
                  "--out", str(out), "--quiet"], timeout=240)
    assert "ratios:" in result.stdout and "etcd" in result.stdout
    doc = json.loads((out / "bench-latest.json").read_text())
    assert doc["machine"]["cores"] >= 1 and len(doc["machine"]["loadavg_before"]) == 3
    kv = doc["kvpaxos"]
    (level,) = kv["sweep"]
    assert level["concurrency"] == 2
    assert sum(s["count"] for s in level["ops"].values()) > 0
    for s in level["ops"].values():
        check_summary(s)
    assert set(level["server_cpu_s"]) == {"1", "2", "3"}
    assert level["server_cpu_us_per_op"] is None or level["server_cpu_us_per_op"] > 0
    assert all(v >= 0 for v in level["server_cpu_s"].values())
    batch = kv["batch"]
    if batch["available"]:
        assert batch["batch_size"] == 5 and batch["batch_ops_s"] >= 0
        check_summary(batch["ops"]["batch"]) if "batch" in batch["ops"] else None
    else:
        assert batch["reason"]
    (rate,) = kv["rate"]
    assert rate["rate"] == 50 and isinstance(rate["meets_targets"], bool)
    # What the writes cost in Paxos work, from the nodes' /metrics over the window: each
    # write needs a slot (shared or not), a group commit on a majority and some messages.
    work = rate["work_per_op"]
    assert 0 < work["slots"] <= 1.5, work
    assert work["group_commits"] > 0, work
    assert work["peer_messages"] >= 2 * work["slots"], work
    assert work["gc_full_collections"] >= 0 and work["gc_full_pause_ms"] >= 0
    # A write wakes the leader (its request) and a follower (the Accept) at the least.
    assert work["context_switches"] >= 2, work
    assert set(rate["server_context_switches"]) == set(rate["server_cpu_s"]), rate
    assert set(rate["server_core_wait_s"]) == set(rate["server_cpu_s"]), rate
    assert all(v >= 0 for v in rate["server_core_wait_s"].values()), rate
    assert "runnable but waiting for a core, s per process: c=2: " in result.stdout
    assert "per write, all nodes together" in result.stdout and " context switches;" in result.stdout
    assert level["work_per_op"] is not None and "per operation, all nodes together" in result.stdout
    assert kv["reads"]["concurrency"] == 2 and kv["reads"]["writes_ops_s"] >= 0
    (base,) = doc["aiohttp"]["sweep"]
    assert base["concurrency"] == 2 and set(base["server_cpu_s"]) == {"server"}
    so = doc["pysyncobj"]
    if so["available"]:
        check_summary(so["ops"]["set"])
        assert set(so["node_cpu_s"]) <= {"1", "2", "3"}
    else:
        assert "pysyncobj" in so["reason"]
    assert doc["etcd_reference"]["measured"] is False
    assert "kvpaxos_vs_aiohttp" in doc["ratios"]
    svg = ET.parse(doc["files"]["svg"]).getroot()
    assert svg.findall(".//{http://www.w3.org/2000/svg}circle")


def test_median_round_takes_the_round_with_the_median_ratio():
    from kvpaxos.bench.suite import median_round

    def level(ops_s: float, tag: str) -> dict:
        return {"concurrency": 64, "total_ops_s": ops_s, "server_cpu_us_per_op": 100.0, "tag": tag}

    pairs = [(level(500, "k1"), level(1000, "b1")), (level(900, "k2"), level(1000, "b2")),
             (level(700, "k3"), level(1000, "b3"))]
    kv, base = median_round(pairs)
    assert (kv["tag"], base["tag"]) == ("k3", "b3")  # 0.5, 0.9, 0.7: the median is 0.7
    assert [r["throughput"] for r in kv["rounds"]] == [0.5, 0.9, 0.7]
    assert "rounds" not in pairs[2][0]  # the measured levels are left as they were
    kv, base = median_round(pairs[:2])
    assert kv["tag"] == "k1"  # of an even count, the lower median
    kv, _ = median_round(pairs[:1])
    assert "rounds" not in kv


def test_kv_bench_rounds_alternate_with_the_baseline(tmp_path):
    result = run(["-m", "cli.main", "bench", "--concurrency", "2", "--duration", "0.5", "--warmup", "0.2",
                  "--keys", "20", "--modes", "sweep,aiohttp", "--rounds", "3", "--out", str(tmp_path),
                  "--quiet", "--json"], timeout=120)
    doc = json.loads(result.stdout)
    (level,) = doc["kvpaxos"]["sweep"]
    (base,) = doc["aiohttp"]["sweep"]
    assert len(level["rounds"]) == 3
    assert level["total_ops_s"] in [r["kvpaxos_ops_s"] for r in level["rounds"]]
    assert base["total_ops_s"] in [r["aiohttp_ops_s"] for r in level["rounds"]]
    (ratio,) = doc["ratios"]["kvpaxos_vs_aiohttp"]["per_level"]
    assert sorted(ratio["throughput_rounds"])[1] == ratio["throughput"]
    bad = subprocess.run([sys.executable, "-m", "cli.main", "bench", "--modes", "rate", "--rounds", "3"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--modes must include sweep and aiohttp" in bad.stderr, bad.stderr


def test_failover_script_one_trial(tmp_path):
    out = tmp_path / "results"
    result = run(["benchmarks/failover.py", "--trials", "1", "--settle", "0.3", "--out", str(out),
                  "--quiet"], timeout=180)
    assert "median" in result.stdout
    doc = json.loads((out / "failover-latest.json").read_text())
    (trial,) = doc["runs"]
    assert trial["killed"] in (1, 2, 3)
    assert doc["recovered"] == 1 and doc["median_ms"] > 0
    assert doc["median_ms"] <= doc["p90_ms"] <= doc["max_ms"]


@pytest.mark.parametrize("tool", ["cprofile"])
def test_profile_tiny(tmp_path, tool):
    from kvpaxos.bench.profile import format_profile, run_profile

    doc = run_profile(3, tool, concurrency=4, duration_s=1.0, warmup_s=0.3, top=5,
                      out_dir=tmp_path, show_progress=False)
    leader = doc["leader"]
    assert isinstance(leader, dict) and "error" not in leader, doc
    assert 0 < len(leader["by_own_time"]) <= 5
    assert {"function", "where", "ncalls", "tottime_s", "cumtime_s"} <= set(leader["by_own_time"][0])
    assert "top by own" in format_profile(doc)
    assert (tmp_path / "profile-leader.prof").exists()


def test_profile_of_one_node_with_clients_on_the_leader(tmp_path):
    from kvpaxos.bench.profile import format_profile, run_profile

    doc = run_profile(1, "cprofile", concurrency=2, duration_s=0.6, warmup_s=0.2, top=3,
                      show_progress=False, target="leader")
    assert doc["target"] == "leader" and doc["follower"] is None
    assert doc["load"]["total_ops_s"] > 0
    assert "error" not in doc["leader"], doc
    text = format_profile(doc)
    assert "clients -> leader" in text and "follower" not in text


def test_raw_http_client_keeps_alive_parses_split_responses_and_expires():
    import asyncio

    from kvpaxos.bench import rawhttp

    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while head := await reader.readuntil(b"\r\n\r\n"):
                if b"/slow" in head:
                    await asyncio.sleep(5)
                body = b'{"ok": true}'
                reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                    len(body), body)
                for i in range(0, len(reply), 7):  # in pieces: the parser must wait for the whole
                    writer.write(reply[i:i + 7])
                    await writer.drain()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = rawhttp.Pool([("127.0.0.1", port)], limit=1)
        conn = await pool.acquire(0)
        for _ in range(3):  # one connection, several requests
            assert await conn.request(rawhttp.request_bytes("GET", "/x", f"127.0.0.1:{port}")) == (
                200, b'{"ok": true}')
        pool.release(0, conn)
        assert await pool.acquire(0) is conn and len(pool.all) == 1
        slow = conn.request(rawhttp.request_bytes("GET", "/slow", "h"))
        await asyncio.sleep(0.05)
        pool.expire(0.01)
        try:
            await slow
            raise AssertionError("the slow request should have timed out")
        except TimeoutError:
            pass
        assert conn.closed
        pool.close()
        server.close()

    asyncio.run(main())


def test_bench_cluster_passes_serve_args_to_every_node(tmp_path):
    from kvpaxos.bench.cluster import BenchCluster

    cluster = BenchCluster(2, root=tmp_path, serve_args=("--partial-in-flight", "0"))
    for node in cluster.nodes.values():
        command = cluster.command(node)
        assert command[command.index("serve"):][-2:] == ["--partial-in-flight", "0"]


@pytest.mark.parametrize("mode,client", [("closed", "raw"), ("rate", "raw"), ("closed", "aiohttp"),
                                         ("rate", "aiohttp")])
def test_load_generator_follows_the_leader_header(mode, client):
    """With follow_leader the clients start on urls[leader] and move where X-Kv-Leader
    points, as kvpaxos.client does; without it they stay spread."""
    import asyncio
    import threading

    from aiohttp import web

    from kvpaxos.bench.loadgen import LoadRunner, Workload

    hits = {"a": 0, "b": 0}
    ready = threading.Event()
    urls: list[str] = []

    def serve() -> None:
        async def main() -> None:
            runners = []
            for name in ("a", "b"):
                async def put(request: web.Request, name: str = name) -> web.Response:
                    hits[name] += 1
                    await request.read()
                    # Node a says b leads; b says so too (with a trailing slash and in upper
                    # case, which must still match).
                    return web.json_response({"version": 1}, headers={"X-Kv-Leader": urls[1].upper() + "/"})
                app = web.Application()
                app.router.add_put("/v1/kv/{key}", put)
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
                runners.append(runner)
            ready.set()
            await asyncio.sleep(30)
        try:
            asyncio.run(main())
        except RuntimeError:
            pass
    threading.Thread(target=serve, daemon=True).start()
    assert ready.wait(10)

    base = dict(urls=urls, mode=mode, concurrency=4, rate=200.0, keys=5, warmup_s=0.0, duration_s=0.6,
                client=client, timeout_s=5.0)
    result, _ = LoadRunner(show_progress=False).run(Workload(**base, follow_leader=True, leader=0))
    assert not result.errors, result.errors
    assert result.leader_moves == 1
    # a: only the requests sent before its first answer (more at a fixed rate on a busy machine)
    assert 1 <= hits["a"] and hits["b"] > 3 * hits["a"], hits
    hits.update(a=0, b=0)
    result, _ = LoadRunner(show_progress=False).run(Workload(**base))
    assert not result.errors and result.leader_moves == 0
    assert hits["a"] > 0 and hits["b"] > 0, hits  # spread: both, whatever the header says
