"""`kv`: the command line of kvpaxos.

Client commands (get, put, delete, cas, list, status) talk to a cluster found
through --endpoints / KV_ENDPOINTS, else DIR/cluster.json written by
`kv cluster up`, else 127.0.0.1:7001-7003. The target options work both before
and after the command name (`kv --server 3 get k` and `kv get k --server 3`).

Exit codes: 0 ok; 1 not found, precondition failed, unavailable or any other
runtime error, shown as one `error: ...` line; 2 usage errors.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from cli.cluster import cluster
from cli.common import DEFAULT_DATA_DIR, CliError, resolve_endpoints
from kvpaxos.bench.command import bench
from kvpaxos.client import (
    BadRequest, Client, KvError, NotFound, OutcomeUnknown, PreconditionFailed, Unavailable,
)

# Longer than a node's own request timeout (5 s by default), so that after a
# node answers 504 there is still time to retry the call on another node.
DEFAULT_TIMEOUT_S = 10.0
LOG_LEVELS = ("debug", "info", "warning", "error")


def target_options(envvar: str | None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--server/--endpoints/--data-dir/--timeout, for the group and for each client command.

    Only the group reads KV_ENDPOINTS: on a command the env value would
    otherwise override an explicit `kv --endpoints ... get`.
    """
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        options = [
            click.option("--server", "-s", type=click.IntRange(min=1), default=None, metavar="N",
                         help="Talk to server N only (N-th node of the cluster or of --endpoints)."),
            click.option("--endpoints", "-e", envvar=envvar, default=None, metavar="URL,...",
                         help="Comma-separated node URLs or HOST:PORTs"
                         + (" [env: KV_ENDPOINTS]." if envvar else ".")),
            click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                         help=f"Directory of the local cluster (holds cluster.json) "
                         f"[default: ./{DEFAULT_DATA_DIR}]."),
            click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
                         metavar="SECONDS",
                         help=f"Give up a request after this long [default: {DEFAULT_TIMEOUT_S:g}]."),
        ]
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


def _target(ctx: click.Context, local: dict[str, Any]) -> dict[str, Any]:
    """Merge the command's own target options over the group's."""
    merged = dict(ctx.find_root().params)
    merged.update({k: v for k, v in local.items() if v is not None})
    merged["data_dir"] = merged.get("data_dir") or DEFAULT_DATA_DIR
    merged["timeout"] = merged.get("timeout") or DEFAULT_TIMEOUT_S
    return merged


@contextmanager
def connect(ctx: click.Context, local: dict[str, Any], key: str | None = None) -> Iterator[Client]:
    """A client for the targeted cluster; turns client errors into one-line CLI errors."""
    target = _target(ctx, local)
    urls = resolve_endpoints(target["server"], target["endpoints"], target["data_dir"])
    client = Client(urls, timeout_s=target["timeout"])
    try:
        yield client
    except KvError as exc:
        raise CliError(describe_error(exc, key, urls)) from None
    finally:
        client.close()


def describe_error(exc: KvError, key: str | None, urls: list[str]) -> str:
    about = f"key {key!r}" if key is not None else "request"
    detail = "" if exc.message in ("", exc.code) else f": {exc.message}"
    if isinstance(exc, NotFound):
        return f"{about} not found"
    if isinstance(exc, PreconditionFailed):
        return f"precondition failed on {about}: its current value or version differs"
    if isinstance(exc, OutcomeUnknown):
        return f"{about}: {exc.message}"
    if isinstance(exc, Unavailable):
        where = f"server {urls[0]}" if len(urls) == 1 else f"cluster ({', '.join(urls)})"
        # status 0: no node answered at all, which usually means nothing is running.
        hint = " (is it running? try: kv cluster up)" if exc.status == 0 else ""
        return f"{where} unavailable{detail}{hint}"
    if isinstance(exc, BadRequest):
        return f"bad request for {about}{detail}"
    return f"{about} failed: {exc.code}{detail}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@target_options(envvar="KV_ENDPOINTS")
def cli(**_: Any) -> None:
    """Client and tools for a kvpaxos replicated key-value store."""


@cli.command()
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print key, value and version as JSON.")
@click.option("--stale", is_flag=True, help="Read the node's local copy (may be out of date).")
@target_options(envvar=None)
@click.pass_context
def get(ctx: click.Context, key: str, as_json: bool, stale: bool, **target: Any) -> None:
    """Print the value of KEY."""
    with connect(ctx, target, key) as kv:
        entry = kv.get(key, stale=stale)
    if as_json:
        click.echo(json.dumps({"key": entry.key, "value": entry.value, "version": entry.version}))
    else:
        click.echo(entry.value)


@cli.command()
@click.argument("key")
@click.argument("value")
@click.option("--if-value", default=None, help="Only if the current value is this.")
@click.option("--if-version", type=click.IntRange(min=0), default=None,
              help="Only if the current version is this.")
@target_options(envvar=None)
@click.pass_context
def put(ctx: click.Context, key: str, value: str, if_value: str | None,
        if_version: int | None, **target: Any) -> None:
    """Set KEY to VALUE."""
    with connect(ctx, target, key) as kv:
        version = kv.put(key, value, if_value=if_value, if_version=if_version)
    click.echo(f"OK (version {version})")


@cli.command()
@click.argument("key")
@click.argument("old")
@click.argument("new")
@target_options(envvar=None)
@click.pass_context
def cas(ctx: click.Context, key: str, old: str, new: str, **target: Any) -> None:
    """Set KEY to NEW only if its value is OLD."""
    with connect(ctx, target, key) as kv:
        version = kv.cas(key, old, new)
    click.echo(f"OK (version {version})")


@cli.command()
@click.argument("key")
@click.option("--if-version", type=click.IntRange(min=0), default=None,
              help="Only if the current version is this.")
@target_options(envvar=None)
@click.pass_context
def delete(ctx: click.Context, key: str, if_version: int | None, **target: Any) -> None:
    """Delete KEY."""
    with connect(ctx, target, key) as kv:
        kv.delete(key, if_version=if_version)
    click.echo("OK (deleted)")


@cli.command(name="list")
@click.argument("prefix", default="")
@click.option("--limit", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per key.")
@target_options(envvar=None)
@click.pass_context
def list_keys(ctx: click.Context, prefix: str, limit: int, as_json: bool, **target: Any) -> None:
    """List keys starting with PREFIX, with their values, in key order."""
    with connect(ctx, target) as kv:
        entries, more = kv.list_page(prefix, limit)
    for e in entries:
        if as_json:
            click.echo(json.dumps({"key": e.key, "value": e.value, "version": e.version}))
        else:
            click.echo(f"{e.key}\t{e.value}")
    if more:
        click.echo(f"(more keys match; showing the first {len(entries)}, see --limit)", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status documents as JSON.")
@target_options(envvar=None)
@click.pass_context
def status(ctx: click.Context, as_json: bool, **target: Any) -> None:
    """Show every node of the cluster: role, ballot, log progress, up or down."""
    with connect(ctx, target) as kv:
        nodes = kv.cluster_status()
    if as_json:
        click.echo(json.dumps(nodes, indent=2))
    else:
        click.echo(format_status_table(nodes))
    if not any(n.get("up") for n in nodes):
        raise CliError("no node is reachable")


def format_status_table(nodes: list[dict[str, Any]]) -> str:
    header = ("ID", "ADDRESS", "ROLE", "LEADER", "BALLOT", "CHOSEN", "APPLIED", "STATE")
    rows = [header]
    for n in nodes:
        up = bool(n.get("up"))

        def cell(name: str) -> str:
            value = n.get(name)
            return "-" if value is None or (not up and name != "address") else str(value)
        rows.append((cell("id") if up else str(n.get("id") or "?"), cell("address"), cell("role"),
                     cell("leader"), cell("ballot"), cell("chosen"), cell("applied"),
                     "up" if up else "down"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


@cli.command()
@click.option("--id", "node_id", type=click.IntRange(min=1), required=True, help="This node's id.")
@click.option("--cluster", "cluster_spec", required=True, metavar="1=HOST:PORT,...",
              help="Every node of the cluster, this one included.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help=f"Where this node keeps its state [default: ./{DEFAULT_DATA_DIR}/node-ID].")
@click.option("--tick-ms", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
              default="info", show_default=True)
@click.pass_context
def serve(ctx: click.Context, node_id: int, cluster_spec: str, data_dir: str | None,
          tick_ms: int, log_level: str) -> None:
    """Run one node in the foreground until interrupted."""
    from kvpaxos.config import ConfigError, NodeConfig, parse_cluster

    root_dir = ctx.find_root().params.get("data_dir") or DEFAULT_DATA_DIR
    node_dir = Path(data_dir) if data_dir else Path(root_dir) / f"node-{node_id}"
    try:
        config = NodeConfig(node_id=node_id, cluster=parse_cluster(cluster_spec),
                            data_dir=str(node_dir.resolve()), tick_ms=tick_ms)
    except ConfigError as exc:
        raise CliError(str(exc), exit_code=2) from None
    try:
        from kvpaxos.server import serve as serve_node
        from storage.base import StorageError
    except ImportError as exc:
        raise CliError(f"the node server is not available: {exc}") from None
    node_dir.mkdir(parents=True, exist_ok=True)
    # Until the server installs its own handlers, SIGTERM (how `kv cluster up`
    # stops nodes) unwinds like Ctrl-C rather than killing the process mid-start.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if "log_level" in inspect.signature(serve_node).parameters:
            serve_node(config, log_level=log_level)
        else:
            logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            serve_node(config)
    except KeyboardInterrupt:
        return
    except (OSError, StorageError) as exc:
        raise CliError(f"node {node_id}: {exc}") from None
    except Exception:
        # A bug, not a user error: keep the traceback in the node's log.
        logging.getLogger("kvpaxos").critical("node %d crashed", node_id, exc_info=True)
        raise CliError(f"node {node_id} crashed; see the log above") from None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


cli.add_command(cluster)
cli.add_command(bench)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `kv` script."""
    try:
        cli.main(args=argv, prog_name="kv")
    except Exception as exc:  # anything click did not turn into an exit already
        if os.environ.get("KV_DEBUG"):
            raise
        click.echo(f"error: {type(exc).__name__}: {exc} (set KV_DEBUG=1 for details)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
