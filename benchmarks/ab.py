"""Two versions of kvpaxos, timed in alternating runs, compared pair by pair.

On a shared machine one run against another says little: the same code moved
the fixed-rate p50 from 2.3 to 4.4 ms within minutes here. This runs `kv bench`
(a fresh cluster each time, the same options) for version A, then B, then B,
then A, and so on: each pair ran close together in time, so a change that helps
wins most pairs whatever the machine did meanwhile. For each measure it prints
both medians, their ratio, how many pairs B won and the two-sided sign test's p
(the chance of a split at least that lopsided if A and B were the same).

A version is a git revision of this repository (exported with `git archive`,
so the working tree is left alone) or a directory holding a kvpaxos checkout
(`.` is the working tree as it is, uncommitted changes included). The same
version twice with different node flags compares the flags:

    python benchmarks/ab.py HEAD~1 HEAD                       # 20 pairs, 1,000 writes/s
    python benchmarks/ab.py main . --pairs 30 --modes rate,sweep
    python benchmarks/ab.py HEAD HEAD --b-serve-arg=--partial-in-flight=2

Writes DIR/ab.json (every run's measures, the summary, the exact revisions).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Run inside each version's own tree: its kvpaxos, its cli, its load generator. The
# check catches an installed kvpaxos shadowing the tree.
_RUNNER = """
import sys
root = sys.argv[1]
sys.path.insert(0, root)
import kvpaxos
if not kvpaxos.__file__.startswith(root):
    sys.exit(f"kvpaxos came from {kvpaxos.__file__}, not from {root}")
from cli.main import main
sys.argv = ["kv", *sys.argv[2:]]
main()
"""


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided sign test (ties left out): the chance of a split at least this uneven
    if either version were as likely to win each pair."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def resolve(version: str, workdir: Path, name: str) -> tuple[Path, str]:
    """(the tree to run, what it is): a directory as it is, or a revision exported."""
    as_dir = Path(version)
    if as_dir.is_dir() and (as_dir / "kvpaxos" / "__init__.py").is_file():
        return as_dir.resolve(), f"directory {as_dir.resolve()}"
    found = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{version}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise SystemExit(f"ab.py: {version!r} is neither a kvpaxos directory nor a revision of {REPO}")
    sha = found.stdout.strip()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], capture_output=True, check=True)
    tree = workdir / name
    tree.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 on
            tar.extractall(tree, filter="data")
        else:
            tar.extractall(tree)  # our own repository's archive
    return tree, f"revision {sha}"


def bench_args(opts: argparse.Namespace, serve_args: list[str], out: Path) -> list[str]:
    args = ["bench", "--target", opts.target, "--nodes", str(opts.nodes), "--modes", opts.modes,
            "--rate", f"{opts.rate:g}", "--rate-duration", f"{opts.rate_duration:g}",
            "-c", str(opts.concurrency), "--read-ratio", "0", "--duration", f"{opts.duration:g}",
            "--warmup", f"{opts.warmup:g}", "--json", "-q", "--out", str(out)]
    return args + [f"--serve-arg={a}" for a in serve_args]


def measures(doc: dict) -> dict[str, float]:
    """The numbers compared, from one `kv bench --json` document."""
    kv, out = doc["kvpaxos"], {}
    for level in kv.get("rate") or []:
        put = level["ops"].get("put", {})
        rate = f"{level['rate']:g}/s"
        if put:
            out[f"{rate} p50 ms"], out[f"{rate} p99 ms"] = put["p50_ms"], put["p99_ms"]
        out[f"{rate} server CPU us/write"] = level["server_cpu_us_per_op"]
    for level in kv.get("sweep") or []:
        c = f"c={level['concurrency']}"
        put = level["ops"].get("put", {})
        if put:
            out[f"{c} PUTs/s"], out[f"{c} p50 ms"] = put["ops_s"], put["p50_ms"]
        out[f"{c} server CPU us/write"] = level["server_cpu_us_per_op"]
    return out


def higher_is_better(measure: str) -> bool:
    return measure.endswith("/s")


def run_once(tree: Path, args: list[str], timeout: float) -> tuple[dict[str, float], list[str]]:
    """One `kv bench` run in `tree`: its measures, and the node flags it reports."""
    with tempfile.TemporaryDirectory(prefix="kvab-cwd-") as cwd:  # nothing on the path but the tree
        proc = subprocess.run([sys.executable, "-c", _RUNNER, str(tree), *args], cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"kv bench failed in {tree}: {proc.stderr.strip()[-1500:]}")
    doc = json.loads(proc.stdout)
    return measures(doc), doc["kvpaxos"].get("serve_args", [])


def summarize(runs: dict[str, list[dict[str, float]]]) -> list[dict]:
    rows = []
    for measure in runs["A"][0]:
        pairs = [(a[measure], b[measure]) for a, b in zip(runs["A"], runs["B"])
                 if measure in a and measure in b]
        if not pairs:
            continue
        up = higher_is_better(measure)
        wins = sum((b > a) if up else (b < a) for a, b in pairs)
        losses = sum((b < a) if up else (b > a) for a, b in pairs)
        med_a, med_b = statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs)
        rows.append({"measure": measure, "better": "higher" if up else "lower", "pairs": len(pairs),
                     "median_a": round(med_a, 3), "median_b": round(med_b, 3),
                     "b_over_a": round(med_b / med_a, 3) if med_a else None,
                     "median_of_b_minus_a": round(statistics.median(b - a for a, b in pairs), 3),
                     "b_won": wins, "a_won": losses, "sign_test_p": round(sign_test_p(wins, losses), 4)})
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'measure':<28} {'A median':>10} {'B median':>10} {'B/A':>6} {'B won':>7} {'p':>7}"]
    for r in rows:
        ratio = "-" if r["b_over_a"] is None else f"{r['b_over_a']:.3f}"
        lines.append(f"{r['measure']:<28} {r['median_a']:>10,.3f} {r['median_b']:>10,.3f} {ratio:>6} "
                     f"{r['b_won']:>3}/{r['pairs']:<3} {r['sign_test_p']:>7.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", metavar="A", help="a revision, or a directory holding kvpaxos ('.': the working tree)")
    ap.add_argument("b", metavar="B")
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--modes", default="rate", help="rate, sweep or rate,sweep (kv bench --modes)")
    ap.add_argument("--target", choices=["leader", "all"], default="leader")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1000.0, help="writes per second of the fixed-rate run")
    ap.add_argument("--rate-duration", type=float, default=3.0)
    ap.add_argument("-c", "--concurrency", type=int, default=64, help="clients of the closed-loop run")
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--a-serve-arg", action="append", default=[], metavar="ARG", help="a flag for A's nodes")
    ap.add_argument("--b-serve-arg", action="append", default=[], metavar="ARG", help="a flag for B's nodes")
    ap.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    opts = ap.parse_args(argv)
    if opts.pairs < 1:
        ap.error("--pairs must be at least 1")
    if not set(opts.modes.split(",")) <= {"rate", "sweep"} or not opts.modes:
        ap.error("--modes takes rate, sweep or both")
    if opts.rate <= 0 or opts.rate_duration <= 0 or opts.duration <= 0 or opts.warmup < 0 or opts.concurrency < 1:
        ap.error("rates, durations and --concurrency must be positive (--warmup may be 0)")
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A run takes its warm-up and measured seconds per mode, plus a cluster's start and stop.
    timeout = 120 + 4 * (opts.rate_duration + opts.duration + 2 * opts.warmup)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="kvab-") as work:
        trees = {name: resolve(version, Path(work), name) for name, version in (("A", opts.a), ("B", opts.b))}
        serve = {"A": opts.a_serve_arg, "B": opts.b_serve_arg}
        runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        flags: dict[str, list[str]] = {}
        for i in range(opts.pairs):
            for name in ("A", "B") if i % 2 == 0 else ("B", "A"):  # A B B A A B ...
                got, flags[name] = run_once(trees[name][0], bench_args(opts, serve[name], Path(work) / "results"),
                                            timeout)
                runs[name].append(got)
                shown = ", ".join(f"{k} {v:,.2f}" for k, v in got.items())
                print(f"pair {i + 1}/{opts.pairs} {name}: {shown}", file=sys.stderr, flush=True)
    rows = summarize(runs)
    doc = {"benchmark": "ab", "started": started, "elapsed_s": round(time.time() - started, 1),
           "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                       "load_average": os.getloadavg()},
           "options": {k: v for k, v in vars(opts).items() if k != "out_dir"},
           "versions": {name: what for name, (_, what) in trees.items()},
           "node_flags": flags,  # as each version's kv bench reported them
           "runs": runs, "summary": rows}
    (out_dir / "ab.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"A: {trees['A'][1]} {' '.join(opts.a_serve_arg)}".rstrip())
    print(f"B: {trees['B'][1]} {' '.join(opts.b_serve_arg)}".rstrip())
    print(f"{opts.pairs} pair{'s' if opts.pairs != 1 else ''}, run A B B A ...; "
          "B won: pairs where B was better (ties in neither)")
    print(table(rows))
    print(f"results: {out_dir / 'ab.json'}")


if __name__ == "__main__":
    main()
