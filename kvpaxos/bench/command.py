"""`kv bench`, `kv bench failover`, `kv bench profile`: the click commands.

Heavy imports happen inside the commands, so the rest of `kv` starts as fast
as before.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

DEFAULT_OUT = "benchmarks/results"
TARGET_OPTION = click.option("--target", type=click.Choice(["all", "leader"]), default="all",
                             show_default=True,
                             help="Spread the clients over all nodes, or send everything to the leader "
                                  "(and follow X-Kv-Leader when it changes, as kvpaxos.client does).")


def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        levels = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 1,4,16,64") from None
    if not levels or any(v < 1 for v in levels):
        raise click.BadParameter("every level must be at least 1")
    return levels


def _float_list(ctx: click.Context, param: click.Parameter, value: str) -> list[float]:
    try:
        values = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("expected comma-separated numbers, e.g. 1000 or 200,1000") from None
    if not values or any(v <= 0 for v in values):
        raise click.BadParameter("every rate must be positive")
    return values


def _modes(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    from kvpaxos.bench.suite import ALL_MODES
    modes = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in modes if m not in ALL_MODES]
    if bad or not modes:
        raise click.BadParameter(f"choose from {','.join(ALL_MODES)}")
    return modes


@click.group(invoke_without_command=True)
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True,
              help="Cluster size (3 or 5).")
@click.option("--concurrency", "-c", default="1,4,16,64,256", show_default=True, callback=_int_list,
              help="Closed-loop clients per sweep level, comma-separated.")
@click.option("--read-ratio", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of GETs (linearizable) in the sweep; the rest are PUTs.")
@click.option("--value-bytes", type=click.IntRange(1, 1 << 20), default=100, show_default=True)
@click.option("--keys", type=click.IntRange(1), default=1000, show_default=True,
              help="Key space (written once before the load).")
@click.option("--duration", type=click.FloatRange(0.1), default=5.0, show_default=True,
              help="Measured seconds per level.")
@click.option("--warmup", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Unmeasured seconds before each level.")
@click.option("--client-procs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Load generator processes.")
@click.option("--client", type=click.Choice(["raw", "aiohttp"]), default="raw", show_default=True,
              help="Load generator's HTTP client: a minimal keep-alive client on asyncio (cheap), "
                   "or aiohttp's client session.")
@TARGET_OPTION
@click.option("--serve-arg", "serve_args", multiple=True, metavar="ARG",
              help="Add ARG to every node's `kv serve` command line (repeat for several), "
                   "e.g. --serve-arg=--partial-in-flight=0.")
@click.option("--exactly-once/--no-exactly-once", default=True, show_default=True,
              help="Send client_id and seq with writes, as the kvpaxos clients do.")
@click.option("--modes", default="sweep,batch,rate,reads,aiohttp,pysyncobj", show_default=True,
              callback=_modes, help="Which parts to run.")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=100, show_default=True,
              help="Operations per POST /v1/batch in the batched mode.")
@click.option("--batch-concurrency", type=click.IntRange(1), default=16, show_default=True)
@click.option("--rate", "rates", default="1000", show_default=True, callback=_float_list,
              help="Writes per second of the open-loop fixed-rate mode (comma-separated for several).")
@click.option("--rate-duration", type=click.FloatRange(0.1), default=10.0, show_default=True)
@click.option("--reads-concurrency", type=click.IntRange(1), default=64, show_default=True,
              help="Clients of the reads-vs-writes mode.")
@click.option("--syncobj-outstanding", type=click.IntRange(1), default=1000, show_default=True,
              help="Operations PySyncObj keeps in flight.")
@click.option("--rounds", type=click.IntRange(1, 99), default=1, show_default=True,
              help="With the aiohttp mode, run each sweep level this many times, alternating with the "
                   "baseline, and report the round with the median throughput ratio.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=DEFAULT_OUT,
              show_default=True, help="Where to write the JSON and SVG results.")
@click.option("--tag", default="", help="Added to the result file names.")
@click.option("--json", "as_json", is_flag=True, help="Print the result document instead of tables.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@click.pass_context
def bench(ctx: click.Context, nodes: int, concurrency: list[int], read_ratio: float, value_bytes: int,
          keys: int, duration: float, warmup: float, client_procs: int, client: str, target: str,
          serve_args: tuple[str, ...], exactly_once: bool, modes: list[str], batch_size: int,
          batch_concurrency: int, rates: list[float], rate_duration: float, reads_concurrency: int,
          syncobj_outstanding: int, rounds: int, out_dir: str, tag: str, as_json: bool, quiet: bool) -> None:
    """Benchmark a fresh local cluster against baselines; write JSON and SVG results.

    Starts NODES real `kv serve` processes with their data in a temporary
    directory, sweeps closed-loop clients over --concurrency, then runs the
    batched, fixed-rate and reads-vs-writes modes, the bare aiohttp baseline
    and (if installed) PySyncObj, and tears everything down.
    """
    if ctx.invoked_subcommand is not None:
        return
    if rounds > 1 and not ("sweep" in modes and "aiohttp" in modes):
        raise click.UsageError("--rounds alternates the sweep with the aiohttp baseline: "
                               "--modes must include sweep and aiohttp")
    from kvpaxos.bench.suite import SuiteOptions, format_report, run_suite

    opts = SuiteOptions(
        nodes=nodes, concurrency=concurrency, read_ratio=read_ratio, value_bytes=value_bytes, keys=keys,
        duration_s=duration, warmup_s=warmup, client_procs=client_procs, client=client, target=target,
        serve_args=tuple(serve_args), exactly_once=exactly_once, modes=modes, batch_size=batch_size,
        batch_concurrency=batch_concurrency, rates=rates, rate_duration_s=rate_duration,
        reads_concurrency=reads_concurrency, syncobj_outstanding=syncobj_outstanding, rounds=rounds,
        out_dir=Path(out_dir), tag=tag, show_progress=not quiet)
    doc = run_suite(opts)
    click.echo(json.dumps(doc, indent=2) if as_json else format_report(doc))


@bench.command()
@click.option("--nodes", type=click.IntRange(3, 9), default=3, show_default=True)
@click.option("--trials", type=click.IntRange(1), default=10, show_default=True,
              help="How many times to kill the leader.")
@click.option("--rate", type=click.FloatRange(1), default=200.0, show_default=True,
              help="Writes per second sent to the surviving nodes throughout.")
@click.option("--request-timeout", type=click.FloatRange(0.05), default=1.0, show_default=True,
              help="Client timeout of each write.")
@click.option("--settle", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Seconds of steady writes before each kill.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=DEFAULT_OUT, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
def failover(nodes: int, trials: int, rate: float, request_timeout: float, settle: float, out_dir: str,
             as_json: bool, quiet: bool) -> None:
    """Kill -9 the leader TRIALS times; time until a write is acknowledged again."""
    from kvpaxos.bench.failover import run_failover
    from kvpaxos.bench.suite import machine_info, write_json

    doc = {"benchmark": "kv bench failover", "machine": machine_info(),
           **run_failover(nodes, trials, rate, request_timeout, settle, show_progress=not quiet)}
    doc["files"] = write_json(doc, Path(out_dir), "failover")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(format_failover(doc))


def format_failover(doc: dict) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f} ms"
    return (f"failover, {doc['nodes']} nodes, {doc['trials']} leader kills (kill -9), writes at "
            f"{doc['write_rate']:g}/s with {doc['request_timeout_s']:g} s timeouts:\n"
            f"  time from the kill to the first acknowledged write sent after it: median "
            f"{ms(doc['median_ms'])}, p90 {ms(doc['p90_ms'])}, max {ms(doc['max_ms'])}, "
            f"min {ms(doc['min_ms'])} ({doc['recovered']}/{doc['trials']} recovered)\n"
            f"  per trial: {', '.join(ms(r['recovery_ms']) for r in doc['runs'])}\n"
            f"results: {doc['files']['json']}")


@bench.command()
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option("--tool", type=click.Choice(["cprofile", "py-spy"]), default="cprofile", show_default=True)
@click.option("--concurrency", "-c", type=click.IntRange(1), default=64, show_default=True)
@click.option("--read-ratio", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--rate", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Open-loop requests per second instead of closed-loop clients (0: closed loop).")
@click.option("--duration", type=click.FloatRange(0.5), default=10.0, show_default=True)
@TARGET_OPTION
@click.option("--top", type=click.IntRange(1), default=15, show_default=True)
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="cprofile timer: perf_counter, or the thread's CPU clock (costlier per call).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=DEFAULT_OUT, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
def profile(nodes: int, tool: str, concurrency: int, read_ratio: float, rate: float, duration: float,
            target: str, top: int, clock: str, out_dir: str, as_json: bool, quiet: bool) -> None:
    """Profile the leader and a follower while they serve closed-loop (or fixed-rate) load."""
    from kvpaxos.bench.profile import format_profile, run_profile
    from kvpaxos.bench.suite import machine_info, write_json

    doc = {"benchmark": f"kv bench profile --tool {tool}", "machine": machine_info(),
           **run_profile(nodes, tool, concurrency, read_ratio, duration, top=top,
                         out_dir=Path(out_dir), show_progress=not quiet, clock=clock, rate=rate,
                         target=target)}
    doc["files"] = write_json(doc, Path(out_dir), f"profile-{tool}")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(format_profile(doc) + f"\nresults: {doc['files']['json']}")


def main() -> None:
    """`python -m kvpaxos.bench.command ...` (same as `kv bench ...`)."""
    bench.main(args=sys.argv[1:], prog_name="kv bench")


if __name__ == "__main__":
    main()
