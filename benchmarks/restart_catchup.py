"""Restart and catch-up time of a kvpaxos node against the size of the state.

For each state size N (keys), on a fresh local 3-node cluster of real `kv serve`
processes:

  catch-up  one follower is stopped, N keys are written through the other two
            (concurrent POST /v1/batch requests of small values), then the follower is started
            again; measured from its process start until its applied slot reaches
            the leader's (by log entries, or by streaming and installing a
            snapshot when the others compacted past it).
  restart   a follower writes a fresh snapshot of the whole state (GET
            /v1/snapshot?fresh=true), is stopped with SIGKILL and started again;
            measured from process start until /v1/status answers, and until its
            applied slot is back at the snapshot's slot (snapshot loaded and the
            log after it replayed).

Prints a table and writes DIR/restart_catchup.json and DIR/restart_catchup.svg
(a hand-written SVG plot, no plotting library needed).

    python benchmarks/restart_catchup.py                       # 10k and 100k keys
    python benchmarks/restart_catchup.py --sizes 1000000       # 1M keys (takes a while)
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from support.cluster import Cluster  # noqa: E402  (the real-process cluster of the tests)


class BenchCluster(Cluster):
    def __init__(self, root: Path, serve_args: list[str]) -> None:
        super().__init__(root, n=3, request_timeout=30.0)
        self.serve_args = serve_args

    def command(self, i: int) -> list[str]:
        return super().command(i) + ["--log-level", "warning"] + self.serve_args


def status_or_none(cluster: Cluster, i: int) -> dict | None:
    try:
        resp = cluster.request(i, "GET", "/v1/status", timeout=2)
    except (OSError, http.client.HTTPException):
        return None
    return resp.body if resp.status == 200 else None


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02) -> float:  # noqa: ANN001
    """Poll until predicate() is true; the time.monotonic() it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


async def fill(urls: list[str], count: int, concurrency: int, value_bytes: int, batch: int = 200) -> float:
    """Write keys fill/0000000.. (small values), `batch` per POST /v1/batch with
    `concurrency` requests in flight; seconds taken. Rewriting a key is harmless,
    so a failed request is simply sent again."""
    value = "v" * value_bytes
    starts = iter(range(0, count, batch))
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=30)

    async def worker(w: int, session: aiohttp.ClientSession) -> None:
        for first in starts:
            ops = [{"op": "put", "key": f"fill/{n:07d}", "value": value}
                   for n in range(first, min(first + batch, count))]
            for attempt in range(20):
                url = urls[(first // batch + attempt) % len(urls)]
                try:
                    async with session.post(f"{url}/v1/batch", json={"ops": ops}) as resp:
                        await resp.read()
                        if resp.status == 200:
                            break
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.05 * (attempt + 1))
            else:
                raise RuntimeError(f"could not write keys from {first}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(w, session) for w in range(concurrency)))
    return time.monotonic() - started


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def measure(size: int, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    serve_args = ["--snapshot-every", str(args.snapshot_every), "--compact-keep", str(args.compact_keep)]
    cluster = BenchCluster(root / f"size-{size}", serve_args)
    try:
        cluster.start()
        leader = cluster.wait_for_leader(timeout=30)
        lagging = next(i for i in cluster.ids if i != leader)
        live = [i for i in cluster.ids if i != lagging]
        cluster.kill(lagging)
        fill_s = asyncio.run(fill([cluster.url(i) for i in live], size, args.concurrency,
                                  args.value_bytes, args.batch))
        leader = cluster.wait_for_leader(timeout=30)
        target = cluster.status(leader)["applied"]

        # Catch-up: the stopped follower comes back behind `size` keys of writes.
        t0 = time.monotonic()
        cluster.spawn(lagging)
        t_up = wait_for(lambda: status_or_none(cluster, lagging) is not None, 60, "the lagging node")
        t_done = wait_for(lambda: (status_or_none(cluster, lagging) or {}).get("applied", 0) >= target,
                          args.timeout, "catch-up", interval=0.05)
        caught = cluster.status(lagging)
        catchup = {"seconds": round(t_done - t0, 3), "serving_s": round(t_up - t0, 3),
                   "slots": target, "via": "snapshot" if caught["snapshot"]["installed"] else "log"}

        # Restart: a node whose snapshot holds the whole state.
        node = lagging
        resp = cluster.request(node, "GET", "/v1/snapshot?fresh=true", timeout=args.timeout)
        assert resp.status == 200, resp
        snap_slot = int(resp.headers["x-kvpaxos-snapshot-slot"])
        snap = cluster.status(node)["snapshot"]
        disk = dir_bytes(cluster.data_dir(node))
        cluster.kill(node)
        t0 = time.monotonic()
        cluster.spawn(node)
        t_up = wait_for(lambda: status_or_none(cluster, node) is not None, args.timeout, "the restart")
        t_done = wait_for(lambda: (status_or_none(cluster, node) or {}).get("applied", 0) >= snap_slot,
                          args.timeout, "the restarted node's state")
        restart = {"seconds": round(t_done - t0, 3), "serving_s": round(t_up - t0, 3),
                   "snapshot_slot": snap_slot, "snapshot_bytes": snap["bytes"], "data_dir_bytes": disk}
        keys = cluster.list(node, "fill/", limit=1, stale=True)
        assert keys.status == 200 and keys.body["items"], keys
        return {"keys": size, "fill_s": round(fill_s, 2), "fill_puts_per_s": round(size / fill_s),
                "restart": restart, "catchup": catchup}
    finally:
        cluster.stop_all()


def table(results: list[dict[str, Any]]) -> str:
    header = ("keys", "fill puts/s", "snapshot MB", "restart: serving s", "restart: state loaded s",
              "catch-up s", "catch-up via")
    rows = [header]
    for r in results:
        rows.append((f"{r['keys']:,}", f"{r['fill_puts_per_s']:,}",
                     f"{r['restart']['snapshot_bytes'] / 1e6:.1f}", f"{r['restart']['serving_s']:.2f}",
                     f"{r['restart']['seconds']:.2f}", f"{r['catchup']['seconds']:.2f}",
                     r["catchup"]["via"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(lines)


def svg_plot(results: list[dict[str, Any]], title: str) -> str:
    """Seconds against keys (log scale) for restart and catch-up, as a small SVG."""
    w, h, left, right, top, bottom = 700, 400, 70, 180, 40, 50
    pw, ph = w - left - right, h - top - bottom
    xs = [r["keys"] for r in results]
    series = [("restart (state loaded)", "#1f77b4", [r["restart"]["seconds"] for r in results]),
              ("catch-up", "#d62728", [r["catchup"]["seconds"] for r in results])]
    lo, hi = math.log10(min(xs)), math.log10(max(xs))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    ymax = max(max(v) for _, _, v in series) * 1.15 or 1.0

    def px(x: float) -> float:
        return left + (math.log10(x) - lo) / (hi - lo) * pw

    def py(y: float) -> float:
        return top + ph - y / ymax * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left + pw / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="black"/>',
           f'<text x="{left + pw / 2}" y="{h - 10}" text-anchor="middle">keys in the state (log scale)</text>',
           f'<text x="18" y="{top + ph / 2}" text-anchor="middle" '
           f'transform="rotate(-90 18 {top + ph / 2})">seconds</text>']
    for k in range(5):
        y = ymax * k / 4
        out.append(f'<line x1="{left - 4}" y1="{py(y):.1f}" x2="{left + pw}" y2="{py(y):.1f}" '
                   f'stroke="#ddd"/><text x="{left - 8}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.1f}</text>')
    for x in xs:
        out.append(f'<line x1="{px(x):.1f}" y1="{top + ph}" x2="{px(x):.1f}" y2="{top + ph + 4}" '
                   f'stroke="black"/><text x="{px(x):.1f}" y="{top + ph + 18}" '
                   f'text-anchor="middle">{x:,}</text>')
    for n, (name, color, ys) in enumerate(series):
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
        out.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{color}"/>'
                for x, y in zip(xs, ys)]
        ly = top + 10 + 20 * n
        out.append(f'<line x1="{left + pw + 15}" y1="{ly}" x2="{left + pw + 35}" y2="{ly}" '
                   f'stroke="{color}" stroke-width="2"/><text x="{left + pw + 40}" y="{ly + 4}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated key counts")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight while filling")
    parser.add_argument("--batch", type=int, default=200, help="puts per POST /v1/batch while filling")
    parser.add_argument("--value-bytes", type=int, default=16)
    parser.add_argument("--snapshot-every", type=int, default=1000, help="kv serve --snapshot-every")
    parser.add_argument("--compact-keep", type=int, default=100, help="kv serve --compact-keep")
    parser.add_argument("--timeout", type=float, default=1800, help="give up a wait after this long")
    parser.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--work-dir", default=None, help="where the nodes keep their data (a temp dir)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        parser.error("--sizes needs positive key counts")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="kv-bench-", dir=args.work_dir) as work:
        for size in sizes:
            print(f"measuring {size:,} keys ...", flush=True)
            results.append(measure(size, Path(work), args))
            print(json.dumps(results[-1]), flush=True)
    doc = {"benchmark": "restart_catchup", "machine": machine(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": {
               k: getattr(args, k) for k in ("concurrency", "batch", "value_bytes", "snapshot_every", "compact_keep")},
           "results": results}
    (out / "restart_catchup.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "restart_catchup.svg").write_text(svg_plot(results, "kvpaxos: restart and catch-up time"))
    print(table(results))
    print(f"machine: {doc['machine']}")
    print(f"wrote {out / 'restart_catchup.json'} and {out / 'restart_catchup.svg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
