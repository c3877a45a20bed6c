"""The whole `kv bench` run: one fresh cluster, the baselines, one JSON and one SVG.

Parts (--modes): sweep (closed-loop concurrency sweep at --read-ratio), batch
(POST /v1/batch ops/s), rate (open loop at --rate writes/s), reads
(linearizable reads vs writes at one concurrency), aiohttp (the bare aiohttp
server under the same sweep), pysyncobj (PySyncObj, same node count). The etcd
numbers are a reference from the issue, never measured here.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kvpaxos.bench.cluster import (BenchCluster, child_env, context_switches, core_wait_seconds, cpu_seconds,
                                   free_ports, request_bytes, stop_process, wait_serving)
from kvpaxos.bench.loadgen import LoadRunner, Workload, level_summary, populate, probe_batch

ALL_MODES = ("sweep", "batch", "rate", "reads", "aiohttp", "pysyncobj")
ETCD_REFERENCE = {
    "measured": False,
    "source": "reference numbers quoted in the issue, not measured on this machine",
    "system": "etcd 3.4 through its HTTP/JSON gateway",
    "clients": 64,
    "put_ops_s": 1800,
    "put_p50_ms": 35.0,
}
RATE_TARGETS_MS = {"p50": 2.0, "p99": 10.0}
READS_TARGET = 2.0


@dataclass
class SuiteOptions:
    nodes: int = 3
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64, 256])
    read_ratio: float = 0.5
    value_bytes: int = 100
    keys: int = 1000
    duration_s: float = 5.0
    warmup_s: float = 1.0
    client_procs: int = 1
    client: str = "raw"               # raw | aiohttp: the load generator's HTTP client
    target: str = "all"               # all | leader: which nodes the clients talk to
    serve_args: tuple[str, ...] = ()  # added to every node's `kv serve` command line
    exactly_once: bool = True
    modes: list[str] = field(default_factory=lambda: list(ALL_MODES))
    batch_size: int = 100
    batch_concurrency: int = 16
    rates: list[float] = field(default_factory=lambda: [1000.0])
    rate_duration_s: float = 10.0
    reads_concurrency: int = 64
    syncobj_outstanding: int = 1000
    rounds: int = 1                   # sweep levels run against the aiohttp baseline this many times
    out_dir: Path | None = Path("benchmarks/results")
    tag: str = ""
    show_progress: bool = True


def _log(opts: SuiteOptions, msg: str) -> None:
    if opts.show_progress:
        print(msg, file=sys.stderr, flush=True)


def machine_info() -> dict:
    info: dict[str, Any] = {
        "cores": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "hostname": socket.gethostname(),
        "loadavg_before": list(os.getloadavg()),
    }
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent).stdout.strip() or None
        info["git_dirty"] = bool(subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
            timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()) if info["git_commit"] else None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = info["git_dirty"] = None
    return info


class CpuWindow:
    """CPU seconds, context switches and seconds spent waiting for a core (runnable, not
    running) of some processes over a load generator's measured window."""

    def __init__(self, pids: Callable[[], dict[str, int | None]]) -> None:
        self.pids = pids
        self.start: dict[str, tuple] = {}
        self.used: dict[str, float] = {}
        self.switches: dict[str, int] = {}
        self.waited: dict[str, float] = {}

    def __call__(self, edge: str) -> None:
        now = {k: (cpu_seconds(p), context_switches(p), core_wait_seconds(p)) if p else (None, None, None)
               for k, p in self.pids().items()}
        if edge == "start":
            self.start = now
            return
        before = {k: self.start.get(k, (None, None, None)) for k in now}

        def grew(i: int) -> dict:
            return {k: v[i] - before[k][i] for k, v in now.items() if v[i] is not None and before[k][i] is not None}

        self.used = {k: round(v, 3) for k, v in grew(0).items()}
        self.switches = grew(1)
        self.waited = {k: round(v, 3) for k, v in grew(2).items()}


# The counters each node's GET /metrics gives that say what the operations cost in Paxos work.
WORK_METRICS = {"slots": "kvpaxos_slots_chosen_total", "group_commits": "kvpaxos_fsyncs_total",
                "peer_messages": "kvpaxos_messages_sent_total",
                "gc_full_pause_s": "kvpaxos_gc_full_pause_seconds_sum",
                "gc_full_collections": "kvpaxos_gc_full_pause_seconds_count"}


def metric_totals(port: int, timeout: float = 2.0) -> dict[str, float]:
    """Each WORK_METRICS counter of one node, summed over its labels."""
    text = request_bytes(port, "GET", "/metrics", timeout=timeout)[1].decode("utf-8", "replace")
    wanted = {name: key for key, name in WORK_METRICS.items()}
    out = dict.fromkeys(WORK_METRICS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            try:
                out[wanted[name]] += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                pass
    return out


class _WorkWindow:
    """What the nodes did over the measured window, from their /metrics: slots chosen,
    group commits, peer messages sent, full garbage collections."""

    def __init__(self, ports: Callable[[], dict[str, int]]) -> None:
        self.ports = ports
        self.start: dict[str, dict[str, float]] = {}
        self.used: dict[str, dict[str, float]] = {}

    def _scrape(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, port in self.ports().items():
            try:
                out[name] = metric_totals(port)
            except OSError:
                pass  # a node that is down did no work we can count
        return out

    def __call__(self, edge: str) -> None:
        now = self._scrape()
        if edge == "start":
            self.start = now
        else:
            self.used = {n: {k: v - self.start[n][k] for k, v in m.items()}
                         for n, m in now.items() if n in self.start}

    def per_op(self, ops: float) -> dict | None:
        """Per operation, all nodes together (slots: the most any node learned, so that
        1 / slots is the commands per slot); full collections over the window."""
        if not self.used or not ops:
            return None
        total = {k: sum(m[k] for m in self.used.values()) for k in WORK_METRICS}
        return {"slots": round(max(m["slots"] for m in self.used.values()) / ops, 3),
                "group_commits": round(total["group_commits"] / ops, 3),
                "peer_messages": round(total["peer_messages"] / ops, 3),
                "gc_full_collections": int(total["gc_full_collections"]),
                "gc_full_pause_ms": round(1000 * total["gc_full_pause_s"], 1)}


def _measure(runner: LoadRunner, w: Workload, pids: Callable[[], dict[str, int | None]],
             label: str, batch_size: int = 1, ports: Callable[[], dict[str, int]] | None = None) -> dict:
    cpu = CpuWindow(pids)
    work = _WorkWindow(ports) if ports is not None else None

    def on_window(edge: str) -> None:
        cpu(edge)
        if work is not None:
            work(edge)

    result, duration = runner.run(w, on_window=on_window, label=label)
    out = level_summary(result, duration, batch_size)
    out["server_cpu_s"] = cpu.used
    total_cpu = sum(cpu.used.values())
    out["server_cpu_total_s"] = round(total_cpu, 3)
    ops = (out.get("batch_ops_s") or out["total_ops_s"]) * duration
    # Work per operation is much less sensitive than throughput to other load
    # on the machine: a starved server does less work and uses less CPU alike.
    out["server_cpu_us_per_op"] = round(1e6 * total_cpu / ops, 1) if ops else None
    out["client_cpu_us_per_request"] = (round(1e6 * out["client_cpu_s"] / (out["total_ops_s"] * duration), 1)
                                        if out["total_ops_s"] else None)
    if work is not None:
        out["work_per_op"] = work.per_op(ops)
        if out["work_per_op"] is not None and cpu.switches:
            # Each wake-up of a thread is one; what one costs: benchmarks/wakeups.py.
            out["work_per_op"]["context_switches"] = round(sum(cpu.switches.values()) / ops, 2)
    out["server_context_switches"] = cpu.switches
    # Runnable but not running: a server short of a core rather than of work.
    out["server_core_wait_s"] = cpu.waited
    return out


def _level(runner: LoadRunner, base: Workload, c: int, name: str,
           pids: Callable[[], dict[str, int | None]], ports: Callable[[], dict[str, int]] | None = None) -> dict:
    w = Workload(**{**base.__dict__, "concurrency": c, "label": f"{name} c={c}"})
    return {"concurrency": c, "duration_s": w.duration_s, **_measure(runner, w, pids, w.label, ports=ports)}


class EchoServer:
    """The bare aiohttp baseline server (kvpaxos.bench.echo_server) in its own process."""

    def __init__(self) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "kvpaxos.bench.echo_server", str(self.port)],
                                     env=child_env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if not wait_serving(self.proc, self.port):
            self.close()
            raise RuntimeError("the aiohttp baseline server did not start")

    def pids(self) -> dict[str, int | None]:
        return {"server": self.proc.pid}

    def close(self) -> None:
        stop_process(self.proc)


def run_kvpaxos(opts: SuiteOptions, runner: LoadRunner, echo: EchoServer | None = None,
                echo_out: dict | None = None) -> dict:
    """kvpaxos modes; with `echo`, each sweep level is followed at once by the same level
    against the aiohttp baseline (into echo_out["sweep"]), so that both see the same
    background load on the machine."""
    out: dict[str, Any] = {"nodes": opts.nodes, "target": opts.target,
                           "exactly_once": opts.exactly_once, "serve_args": list(opts.serve_args)}
    _log(opts, f"starting a fresh {opts.nodes}-node kvpaxos cluster ...")
    with BenchCluster(opts.nodes, serve_args=opts.serve_args) as cluster:
        leader = cluster.leader()
        out["leader"] = leader
        targets = cluster.client_targets(opts.target, leader)
        base = Workload(**targets, concurrency=1, read_ratio=opts.read_ratio, value_bytes=opts.value_bytes,
                        keys=opts.keys, warmup_s=opts.warmup_s, duration_s=opts.duration_s,
                        exactly_once=opts.exactly_once, client=opts.client)
        written = populate(base)
        _log(opts, f"  wrote {written} keys of {opts.value_bytes} bytes")

        def pids() -> dict[str, int | None]:
            return {str(i): n.pid if n.alive() else None for i, n in cluster.nodes.items()}

        def ports() -> dict[str, int]:
            return {str(i): n.port for i, n in cluster.nodes.items() if n.alive()}

        echo_base = None
        if echo is not None and echo_out is not None:
            echo_base = Workload(**{**base.__dict__, "urls": [echo.url], "follow_leader": False, "leader": 0})
            populate(echo_base)
            echo_out["sweep"] = []
        if "sweep" in opts.modes:
            out["sweep"] = []
            for c in opts.concurrency:
                if echo_base is None:
                    out["sweep"].append(_level(runner, base, c, "kvpaxos", pids, ports))
                    continue
                pairs = []
                for r in range(opts.rounds):
                    if opts.rounds > 1:
                        _log(opts, f"  c={c}: round {r + 1} of {opts.rounds}")
                    pairs.append((_level(runner, base, c, "kvpaxos", pids, ports),
                                  _level(runner, echo_base, c, "aiohttp baseline", echo.pids)))
                kv_level, echo_level = median_round(pairs)
                out["sweep"].append(kv_level)
                echo_out["sweep"].append(echo_level)
        if "batch" in opts.modes:
            ok, why = probe_batch(targets["urls"][base.leader])
            if not ok:
                out["batch"] = {"available": False, "reason": why}
            else:
                w = Workload(**{**base.__dict__, "mode": "batch", "concurrency": opts.batch_concurrency,
                                "batch_size": opts.batch_size,
                                "label": f"kvpaxos batch {opts.batch_concurrency}x{opts.batch_size}"})
                out["batch"] = {"available": True, "concurrency": opts.batch_concurrency,
                                "batch_size": opts.batch_size, "duration_s": w.duration_s,
                                **_measure(runner, w, pids, w.label, opts.batch_size, ports)}
        if "rate" in opts.modes:
            out["rate"] = []
            for rate in opts.rates:
                w = Workload(**{**base.__dict__, "mode": "rate", "rate": rate, "read_ratio": 0.0,
                                "duration_s": opts.rate_duration_s,
                                "label": f"kvpaxos {rate:g} writes/s open loop"})
                level = _measure(runner, w, pids, w.label, ports=ports)
                put = level["ops"].get("put", {})
                level.update({"rate": rate, "duration_s": w.duration_s, "targets_ms": RATE_TARGETS_MS,
                              "achieved_ops_s": put.get("ops_s", 0.0),
                              "meets_targets": bool(put) and put["p50_ms"] < RATE_TARGETS_MS["p50"]
                              and put["p99_ms"] < RATE_TARGETS_MS["p99"]})
                out["rate"].append(level)
        if "reads" in opts.modes:
            c = opts.reads_concurrency
            reads = _measure(runner, Workload(**{**base.__dict__, "concurrency": c, "read_ratio": 1.0}),
                             pids, f"kvpaxos reads only c={c}")
            writes = _measure(runner, Workload(**{**base.__dict__, "concurrency": c, "read_ratio": 0.0}),
                              pids, f"kvpaxos writes only c={c}")
            r = reads["ops"].get("get", {}).get("ops_s", 0.0)
            wr = writes["ops"].get("put", {}).get("ops_s", 0.0)
            out["reads"] = {"concurrency": c, "reads": reads, "writes": writes,
                            "reads_ops_s": r, "writes_ops_s": wr,
                            "reads_per_write": round(r / wr, 2) if wr else None,
                            "target_reads_per_write": READS_TARGET}
        final = cluster.status(leader) or {}
        out["final_status"] = {k: final.get(k) for k in ("leader", "ballot", "chosen", "applied",
                                                          "elections")}
    return out


def median_round(pairs: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """Of several rounds of one sweep level (kvpaxos, then the baseline right after), the
    round whose throughput ratio is the median (the lower one of an even count), with
    every round's numbers under "rounds" in the kvpaxos level.

    The machine's own speed can drift by half within minutes, and a kvpaxos level and
    the baseline's never run at the same moment: alternating them several times and
    taking the median round keeps one slow minute from deciding the ratio."""
    rounds = [{"kvpaxos_ops_s": a["total_ops_s"], "aiohttp_ops_s": b["total_ops_s"],
               "throughput": _ratio(a["total_ops_s"], b["total_ops_s"]),
               "kvpaxos_cpu_us_per_op": a.get("server_cpu_us_per_op"),
               "aiohttp_cpu_us_per_op": b.get("server_cpu_us_per_op")} for a, b in pairs]
    order = sorted(range(len(pairs)), key=lambda i: rounds[i]["throughput"] or 0.0)
    kv_level, echo_level = pairs[order[(len(order) - 1) // 2]]
    if len(pairs) > 1:
        kv_level = {**kv_level, "rounds": rounds}
    return kv_level, echo_level


def run_aiohttp_only(opts: SuiteOptions, runner: LoadRunner, echo: EchoServer) -> dict:
    base = Workload([echo.url], read_ratio=opts.read_ratio, value_bytes=opts.value_bytes, keys=opts.keys,
                    warmup_s=opts.warmup_s, duration_s=opts.duration_s, exactly_once=opts.exactly_once,
                    client=opts.client)
    populate(base)
    return {"sweep": [_level(runner, base, c, "aiohttp baseline", echo.pids) for c in opts.concurrency]}


def _best(levels: list[dict], op: str | None = None) -> dict | None:
    def ops_s(level: dict) -> float:
        return level["ops"].get(op, {}).get("ops_s", 0.0) if op else level.get("total_ops_s", 0.0)
    return max(levels, key=ops_s, default=None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def compute_ratios(doc: dict) -> dict:
    kv = doc.get("kvpaxos", {})
    ratios: dict[str, Any] = {}
    sweep, base = kv.get("sweep"), (doc.get("aiohttp") or {}).get("sweep")
    if sweep and base:
        per_level = []
        for a, b in zip(sweep, base):
            per_level.append({
                "concurrency": a["concurrency"],
                "throughput": _ratio(a["total_ops_s"], b["total_ops_s"]),
                **({"throughput_rounds": [r["throughput"] for r in a["rounds"]]} if "rounds" in a else {}),
                "put_p50": _ratio(a["ops"].get("put", {}).get("p50_ms"), b["ops"].get("put", {}).get("p50_ms")),
                "get_p50": _ratio(a["ops"].get("get", {}).get("p50_ms"), b["ops"].get("get", {}).get("p50_ms")),
                "server_cpu_per_op": _ratio(a.get("server_cpu_us_per_op"), b.get("server_cpu_us_per_op")),
            })
        ratios["kvpaxos_vs_aiohttp"] = {
            "per_level": per_level,
            "best_throughput": _ratio(_best(sweep)["total_ops_s"], _best(base)["total_ops_s"]),
        }
        per_op = [x["server_cpu_per_op"] for x in per_level if x["server_cpu_per_op"]]
        if per_op:
            ratios["kvpaxos_vs_aiohttp"]["server_cpu_per_op_median"] = sorted(per_op)[len(per_op) // 2]
    so = doc.get("pysyncobj") or {}
    if so.get("available") and so.get("ops_s"):
        r: dict[str, Any] = {"pysyncobj_ops_s": so["ops_s"]}
        if sweep:
            best_put = _best(sweep, "put")
            r["best_single_put_ops_s"] = best_put["ops"].get("put", {}).get("ops_s") if best_put else None
            r["single_puts"] = _ratio(r["best_single_put_ops_s"], so["ops_s"])
        if (kv.get("reads") or {}).get("writes_ops_s"):
            r["writes_only_ops_s"] = kv["reads"]["writes_ops_s"]
            r["writes_only"] = _ratio(kv["reads"]["writes_ops_s"], so["ops_s"])
        if (kv.get("batch") or {}).get("batch_ops_s"):
            r["batch_ops_s"] = kv["batch"]["batch_ops_s"]
            r["batched"] = _ratio(kv["batch"]["batch_ops_s"], so["ops_s"])
            r["batched_cpu_per_op"] = _ratio(kv["batch"].get("server_cpu_us_per_op"),
                                             so.get("server_cpu_us_per_op"))
        if (kv.get("reads") or {}).get("writes"):
            r["writes_only_cpu_per_op"] = _ratio(kv["reads"]["writes"].get("server_cpu_us_per_op"),
                                                 so.get("server_cpu_us_per_op"))
        ratios["kvpaxos_vs_pysyncobj"] = r
    reads = kv.get("reads") or {}
    if reads.get("writes_ops_s") and reads.get("concurrency") == ETCD_REFERENCE["clients"]:
        put = reads["writes"]["ops"].get("put", {})
        ratios["kvpaxos_vs_etcd_reference"] = {
            "note": "etcd numbers are a reference from the issue, not measured here",
            "puts": _ratio(reads["writes_ops_s"], ETCD_REFERENCE["put_ops_s"]),
            "put_p50": _ratio(put.get("p50_ms"), ETCD_REFERENCE["put_p50_ms"]),
        }
    return ratios


def run_suite(opts: SuiteOptions) -> dict:
    unknown = set(opts.modes) - set(ALL_MODES)
    if unknown:
        raise ValueError(f"unknown modes: {', '.join(sorted(unknown))}")
    started = time.time()
    doc: dict[str, Any] = {
        "benchmark": "kv bench", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(), "options": {k: (str(v) if isinstance(v, Path) else v)
                                               for k, v in opts.__dict__.items()},
    }
    with LoadRunner(opts.client_procs, opts.show_progress) as runner:
        doc["load_generator"] = {"procs": opts.client_procs, "client": f"{opts.client}, keep-alive"}
        echo = EchoServer() if "aiohttp" in opts.modes else None
        try:
            if echo is not None:
                doc["aiohttp"] = {"what": "bare aiohttp server, one process, same routes, no work "
                                          "behind them; each level measured right after kvpaxos'"}
            if any(m in opts.modes for m in ("sweep", "batch", "rate", "reads")):
                doc["kvpaxos"] = run_kvpaxos(opts, runner, echo if "sweep" in opts.modes else None,
                                             doc.get("aiohttp"))
            if echo is not None and "sweep" not in opts.modes:
                doc["aiohttp"].update(run_aiohttp_only(opts, runner, echo))
        finally:
            if echo is not None:
                echo.close()
    if "pysyncobj" in opts.modes:
        from kvpaxos.bench.syncobj_bench import run_syncobj
        _log(opts, f"PySyncObj baseline ({opts.nodes} nodes) ...")
        try:
            doc["pysyncobj"] = run_syncobj(opts.nodes, opts.duration_s, opts.warmup_s,
                                           opts.syncobj_outstanding, opts.value_bytes, opts.keys,
                                           show_progress=opts.show_progress)
        except (RuntimeError, TimeoutError, OSError) as exc:
            doc["pysyncobj"] = {"available": False, "reason": f"failed: {exc}"}
    doc["etcd_reference"] = ETCD_REFERENCE
    doc["ratios"] = compute_ratios(doc)
    doc["machine"]["loadavg_after"] = list(os.getloadavg())
    doc["elapsed_s"] = round(time.time() - started, 1)
    if opts.out_dir is not None:
        doc["files"] = write_results(doc, opts.out_dir, opts.tag)
    return doc


def write_results(doc: dict, out_dir: Path, tag: str = "", prefix: str = "bench") -> dict:
    """JSON + SVG under out_dir, stamped, plus copies named latest; the paths written."""
    from kvpaxos.bench.svg import throughput_latency_svg

    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{prefix}-{stamp}" + (f"-{tag}" if tag else "")
    files = {"json": str(out_dir / f"{name}.json")}
    series = plot_series(doc)
    if series:
        m = doc.get("machine", {})
        subtitle = (f"{doc.get('kvpaxos', {}).get('nodes', '?')} nodes, read ratio "
                    f"{doc['options'].get('read_ratio')}, {doc['options'].get('value_bytes')}-byte values; "
                    f"{m.get('cores')} cores, load avg {m.get('loadavg_before', [0])[0]:.1f} at start")
        svg = throughput_latency_svg(series, "kvpaxos: throughput vs latency over the concurrency sweep",
                                     subtitle)
        files["svg"] = str(out_dir / f"{name}.svg")
        Path(files["svg"]).write_text(svg)
        (out_dir / f"{prefix}-latest.svg").write_text(svg)
    text = json.dumps(doc | {"files": files}, indent=2) + "\n"
    Path(files["json"]).write_text(text)
    (out_dir / f"{prefix}-latest.json").write_text(text)
    return files


def write_json(doc: dict, out_dir: Path, prefix: str) -> dict:
    """Just the JSON (stamped, and as PREFIX-latest.json); the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    files = {"json": str(path)}
    text = json.dumps(doc | {"files": files}, indent=2) + "\n"
    path.write_text(text)
    (out_dir / f"{prefix}-latest.json").write_text(text)
    return files


def plot_series(doc: dict) -> list[dict]:
    """p50 and p99 of every operation of every swept system, as plot series."""
    series = []
    systems = [("kvpaxos", (doc.get("kvpaxos") or {}).get("sweep"), "#1f77b4"),
               ("aiohttp baseline", (doc.get("aiohttp") or {}).get("sweep"), "#7f7f7f")]
    for name, levels, color in systems:
        if not levels:
            continue
        for op, shade in (("put", color), ("get", "#2ca02c" if name == "kvpaxos" else "#bcbd22")):
            for pct, dashed in (("p50", False), ("p99", True)):
                pts = [(lv["ops"][op]["ops_s"], lv["ops"][op][f"{pct}_ms"], f"c={lv['concurrency']}")
                       for lv in levels if op in lv["ops"]]
                if pts:
                    series.append({"name": f"{name} {op} {pct}", "points": pts, "dashed": dashed,
                                   "color": shade})
    b = (doc.get("kvpaxos") or {}).get("batch") or {}
    if b.get("available") and b.get("ops", {}).get("batch") and b.get("batch_ops_s"):
        series.append({"name": "kvpaxos batch p50", "color": "#9467bd",
                       "points": [(b["batch_ops_s"], b["ops"]["batch"]["p50_ms"],
                                   f"{b['concurrency']}x{b['batch_size']}")]})
    so = doc.get("pysyncobj") or {}
    if so.get("available") and so.get("ops", {}).get("set"):
        s = so["ops"]["set"]
        series.append({"name": "PySyncObj p50", "color": "#d62728",
                       "points": [(s["ops_s"], s["p50_ms"], f"{so['outstanding']} outst.")]})
    return series


# -- the printed report -------------------------------------------------------


def _fmt_ops(level: dict, op: str) -> str:
    s = level["ops"].get(op)
    if not s:
        return f"{'-':>9} {'-':>7} {'-':>7} {'-':>7} {'-':>8}"
    return (f"{s['ops_s']:9,.0f} {s['p50_ms']:7.2f} {s['p90_ms']:7.2f} {s['p99_ms']:7.2f} "
            f"{s['p999_ms']:8.2f}")


def format_sweep(title: str, levels: list[dict]) -> str:
    lines = [title,
             f"{'clients':>7} | {'put/s':>9} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>8} | "
             f"{'get/s':>9} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>8} | {'errors':>6} | "
             f"server CPU s (per process) | server CPU us/op | client CPU s"]
    for lv in levels:
        cpu = " ".join(f"{v:.2f}" for v in lv.get("server_cpu_s", {}).values())
        errors = sum(lv.get("errors", {}).values())
        per_op = lv.get("server_cpu_us_per_op")
        lines.append(f"{lv['concurrency']:7d} | {_fmt_ops(lv, 'put')} | {_fmt_ops(lv, 'get')} | "
                     f"{errors:6d} | {cpu:26} | {per_op if per_op is not None else '-':>16} | "
                     f"{lv.get('client_cpu_s', 0):.2f}")
    lines.append("(latencies in ms; CPU over the measured window; us/op: all server processes' CPU "
                 "per completed operation)")
    waits = [(lv["concurrency"], lv["server_core_wait_s"]) for lv in levels if lv.get("server_core_wait_s")]
    if waits:
        lines.append("runnable but waiting for a core, s per process: " + "; ".join(
            f"c={c}: {format_waits(w)}" for c, w in waits))
    work = [(lv["concurrency"], lv["work_per_op"]) for lv in levels if lv.get("work_per_op")]
    if work:
        lines.append("per operation, all nodes together: " + "; ".join(
            f"c={c}: {format_work(w)}" for c, w in work))
    return "\n".join(lines)


def format_waits(waited: dict[str, float]) -> str:
    return " ".join(f"{v:.2f}" for v in waited.values())


def format_work(w: dict) -> str:
    switches = f", {w['context_switches']:g} context switches" if "context_switches" in w else ""
    return (f"{w['slots']:g} slots, {w['group_commits']:g} group commits, {w['peer_messages']:g} peer "
            f"messages{switches}; {w['gc_full_collections']} full GCs, {w['gc_full_pause_ms']:g} ms in all")


def _rounds_text(per_level: dict) -> str:
    rounds = [r for r in per_level.get("throughput_rounds", []) if r is not None]
    if len(rounds) < 2:
        return ""
    return f", the median of {len(rounds)} rounds, {min(rounds)}-{max(rounds)}"


def format_report(doc: dict) -> str:
    m = doc["machine"]
    out = [f"kv bench: {m['cores']} cores, Python {m['python']}, load average "
           f"{m['loadavg_before'][0]:.2f} at start, {m.get('loadavg_after', [0])[0]:.2f} at end"
           f" (other processes on this machine share the cores)"]
    o = doc["options"]
    kv = doc.get("kvpaxos") or {}
    if kv.get("sweep"):
        where = "the leader (following X-Kv-Leader)" if kv["target"] == "leader" else "all nodes"
        extra = f" (kv serve {' '.join(kv['serve_args'])})" if kv.get("serve_args") else ""
        out += ["", format_sweep(
            f"kvpaxos, {kv['nodes']} nodes{extra}, clients -> {where}, read ratio {o['read_ratio']}, "
            f"{o['value_bytes']}-byte values, {o['keys']} keys, {o['duration_s']:g} s per level:", kv["sweep"])]
    base = doc.get("aiohttp") or {}
    if base.get("sweep"):
        out += ["", format_sweep("bare aiohttp server (baseline, one process):", base["sweep"])]
    b = kv.get("batch")
    if b:
        if b.get("available"):
            s = b["ops"].get("batch", {})
            out += ["", f"batched: {b['concurrency']} clients x {b['batch_size']} puts per POST /v1/batch: "
                    f"{b.get('batch_ops_s', 0):,.0f} ops/s ({s.get('ops_s', 0) / b['batch_size']:,.1f} "
                    f"requests/s, request p50 {s.get('p50_ms', 0):.1f} ms, p99 {s.get('p99_ms', 0):.1f} ms; "
                    f"{b.get('server_cpu_us_per_op')} us server CPU per op)"]
            if b.get("work_per_op"):
                out += [f"  per operation, all nodes together: {format_work(b['work_per_op'])}"]
        else:
            out += ["", f"batched: not measured: {b['reason']}"]
    for r in kv.get("rate") or []:
        put = r["ops"].get("put", {})
        verdict = "meets" if r["meets_targets"] else "misses"
        out += ["", f"fixed rate: {r['rate']:g} writes/s open loop for {r['duration_s']:g} s: achieved "
                f"{r['achieved_ops_s']:,.0f}/s, p50 {put.get('p50_ms', 0):.2f} ms, p99 "
                f"{put.get('p99_ms', 0):.2f} ms (from the planned start; {verdict} the targets p50 < "
                f"{RATE_TARGETS_MS['p50']:g} ms, p99 < {RATE_TARGETS_MS['p99']:g} ms); "
                f"{r.get('late_starts', 0)} late starts, errors {sum(r['errors'].values())}"]
        if r.get("work_per_op"):
            out += [f"  per write, all nodes together: {format_work(r['work_per_op'])}"]
        if r.get("server_core_wait_s"):
            out += [f"  runnable but waiting for a core, s per node: {format_waits(r['server_core_wait_s'])}"]
    rd = kv.get("reads")
    if rd:
        ratio = rd["reads_per_write"]
        out += ["", f"reads vs writes, {rd['concurrency']} clients: linearizable reads "
                f"{rd['reads_ops_s']:,.0f}/s (p50 {rd['reads']['ops'].get('get', {}).get('p50_ms', 0):.2f} ms), "
                f"writes {rd['writes_ops_s']:,.0f}/s (p50 {rd['writes']['ops'].get('put', {}).get('p50_ms', 0):.2f} ms)"
                f": {ratio if ratio is not None else '-'}x (target >= {READS_TARGET:g}x)"]
    so = doc.get("pysyncobj")
    if so:
        if so.get("available"):
            s = so["ops"]["set"]
            out += ["", f"PySyncObj, {so['nodes']} nodes, {so['outstanding']} operations outstanding, "
                    f"journal {so['journal']}: {so['ops_s']:,.0f} ops/s, p50 {s['p50_ms']:.1f} ms, "
                    f"p99 {s['p99_ms']:.1f} ms; node CPU s "
                    f"{' '.join(f'{v:.2f}' for v in so['node_cpu_s'].values())} "
                    f"({so.get('server_cpu_us_per_op')} us per op)"]
        else:
            out += ["", f"PySyncObj: not measured: {so['reason']}"]
    e = doc["etcd_reference"]
    out += ["", f"etcd (REFERENCE from the issue, not measured): {e['system']}, {e['clients']} clients: "
            f"~{e['put_ops_s']:,} puts/s, p50 {e['put_p50_ms']:g} ms"]
    ratios = doc.get("ratios", {})
    if ratios:
        out += ["", "ratios:"]
        a = ratios.get("kvpaxos_vs_aiohttp")
        if a:
            per = ", ".join(f"c={x['concurrency']}: {x['throughput']}" + _rounds_text(x) for x in a["per_level"])
            out.append(f"  kvpaxos / aiohttp baseline throughput: best {a['best_throughput']} ({per})")
            cpu = ", ".join(f"c={x['concurrency']}: {x['server_cpu_per_op']}" for x in a["per_level"])
            out.append(f"  kvpaxos / aiohttp baseline server CPU per operation (all kvpaxos nodes "
                       f"together): median {a.get('server_cpu_per_op_median')} ({cpu})")
        p = ratios.get("kvpaxos_vs_pysyncobj")
        if p:
            parts = [f"{label} {p[key]}" for key, label in (("single_puts", "best single-put level"),
                                                             ("writes_only", "writes only"),
                                                             ("batched", "batched"))
                     if p.get(key) is not None]
            out.append(f"  kvpaxos / PySyncObj ops/s: {', '.join(parts)}")
            parts = [f"{label} {p[key]}" for key, label in (("writes_only_cpu_per_op", "writes only"),
                                                             ("batched_cpu_per_op", "batched"))
                     if p.get(key) is not None]
            if parts:
                out.append(f"  kvpaxos / PySyncObj server CPU per operation: {', '.join(parts)}")
        e2 = ratios.get("kvpaxos_vs_etcd_reference")
        if e2:
            out.append(f"  kvpaxos / etcd reference (not measured here): puts/s {e2['puts']}, "
                       f"put p50 {e2['put_p50']}")
    files = doc.get("files")
    if files:
        out += ["", "results: " + ", ".join(files.values())]
    return "\n".join(out)
