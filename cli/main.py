"""`kv`: the command line of kvpaxos.

Client commands (get, put, refresh, delete, cas, txn, list, watch, lock, lease, status) talk to a cluster found
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
import math
import os
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Iterable

import click

from kvpaxos.client import KvError
from kvpaxos.core.commands import TTL_MS_MAX, VALUE_BYTES_MAX

from cli.cluster import cluster
from cli.common import DEFAULT_DATA_DIR, CliError, resolve_endpoints
from cli.lease import LEASE_ID, lease
from cli.lock import lock
from cli.txn import txn
from cli.members import format_changes, member
from cli.secure import client_security, serve_security_options
from cli.shell import shell
from cli.target import connect, merge_target, target_options
from kvpaxos.bench.command import bench

# `kv snapshot save` waits for a node to write a fresh snapshot and then streams it.
SNAPSHOT_TIMEOUT_S = 120.0
LOG_LEVELS = ("debug", "info", "warning", "error")
TTL_SECONDS = click.FloatRange(min=0, min_open=True, max=TTL_MS_MAX / 1000)  # what a node takes as a "ttl"


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
    click.echo(entry_json(entry) if as_json else entry.value)


def entry_json(entry: Any) -> str:
    """An entry as `kv get --json` and `kv list --json` print it (ttl: for a key that
    expires; lease: for a key that goes with a lease)."""
    doc = {"key": entry.key, "value": entry.value, "version": entry.version}
    if entry.ttl is not None:
        doc["ttl"] = entry.ttl
    if entry.lease is not None:
        doc["lease"] = entry.lease
    return json.dumps(doc)


@cli.command()
@click.argument("key")
@click.argument("value")
@click.option("--if-value", default=None, help="Only if the current value is this.")
@click.option("--if-version", type=click.IntRange(min=0), default=None,
              help="Only if the current version is this.")
@click.option("--ttl", type=TTL_SECONDS, default=None, metavar="SECONDS",
              help="Delete the key this many seconds later, unless it is put or refreshed again.")
@click.option("--lease", "lease_id", type=LEASE_ID, default=None, metavar="ID",
              help="Attach the key to lease ID (kv lease grant): it is deleted when the lease ends.")
@target_options(envvar=None)
@click.pass_context
def put(ctx: click.Context, key: str, value: str, if_value: str | None,
        if_version: int | None, ttl: float | None, lease_id: int | None, **target: Any) -> None:
    """Set KEY to VALUE (a put without --lease takes the key off the lease it had)."""
    if ttl is not None and lease_id is not None:
        raise CliError("give --ttl or --lease, not both: a key on a lease goes when its lease does", exit_code=2)
    with connect(ctx, target, key) as kv:
        version = kv.put(key, value, if_value=if_value, if_version=if_version, ttl=ttl, lease=lease_id)
    click.echo(f"OK (version {version})")


@cli.command()
@click.argument("key")
@click.option("--ttl", type=TTL_SECONDS, required=True, metavar="SECONDS", help="The key's new time to live.")
@click.option("--if-value", default=None, help="Only if the current value is this.")
@click.option("--if-version", type=click.IntRange(min=0), default=None,
              help="Only if the current version is this.")
@target_options(envvar=None)
@click.pass_context
def refresh(ctx: click.Context, key: str, ttl: float, if_value: str | None, if_version: int | None,
            **target: Any) -> None:
    """Delete KEY TTL seconds from now unless put or refreshed again; its value and
    version stay (watches see no change)."""
    with connect(ctx, target, key) as kv:
        version = kv.refresh(key, ttl, if_value=if_value, if_version=if_version)
    click.echo(f"OK (version {version}, expires in {ttl:g} s)")


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
@click.argument("key", required=False)
@click.option("--if-version", type=click.IntRange(min=0), default=None,
              help="Only if the current version is this.")
@click.option("--prefix", default=None, metavar="P",
              help="Delete every key that starts with P instead of one KEY (--prefix '' for every key).")
@target_options(envvar=None)
@click.pass_context
def delete(ctx: click.Context, key: str | None, if_version: int | None, prefix: str | None, **target: Any) -> None:
    """Delete KEY, or every key under --prefix (in rounds of up to 250 keys, each all
    or nothing)."""
    if (key is None) == (prefix is None):
        raise CliError("give either KEY or --prefix P (--prefix '' for every key)", exit_code=2)
    if prefix is not None:
        if if_version is not None:
            raise CliError("--if-version is for one KEY, not a --prefix", exit_code=2)
        with connect(ctx, target) as kv:
            deleted = kv.delete_prefix(prefix)
        click.echo(f"OK (deleted {deleted} key{'' if deleted == 1 else 's'})")
        return
    with connect(ctx, target, key) as kv:
        kv.delete(key, if_version=if_version)
    click.echo("OK (deleted)")


@cli.command(name="list")
@click.argument("prefix", default="")
@click.option("--limit", type=click.IntRange(1, 10_000), default=1000, show_default=True,
              help="Keys per page.")
@click.option("--after", metavar="KEY", help="Start after this key (the last one of the page before).")
@click.option("--all", "every", is_flag=True, help="Every matching key, fetched a page at a time.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per key.")
@click.option("--keys-only", is_flag=True, help="The keys (and, with --json, versions) without their values.")
@click.option("--count", "count_only", is_flag=True, help="Print only how many keys start with PREFIX.")
@target_options(envvar=None)
@click.pass_context
def list_keys(ctx: click.Context, prefix: str, limit: int, after: str | None, every: bool, as_json: bool,
              keys_only: bool, count_only: bool, **target: Any) -> None:
    """List keys starting with PREFIX, with their values, in key order."""
    if count_only and (every or after is not None or keys_only or as_json):
        raise CliError("--count prints one number: it takes no --all, --after, --keys-only or --json",
                       exit_code=2)

    def show(entries: Iterable) -> None:
        for e in entries:
            if as_json:
                click.echo(json.dumps({"key": e.key, "version": e.version}) if keys_only else entry_json(e))
            else:
                click.echo(e.key if keys_only else f"{e.key}\t{e.value}")

    with connect(ctx, target) as kv:
        if count_only:
            click.echo(kv.count(prefix))
            return
        if every:
            show(kv.iter_keys(prefix, limit, after, keys_only))
            return
        entries, more = kv.list_page(prefix, limit, after, keys_only)
    show(entries)
    if more:
        click.echo(f"(more keys match; showing {len(entries)}: --after {shlex.quote(entries[-1].key)} for the "
                   "next page, --all for every key)", err=True)


@cli.command()
@click.argument("key", required=False)
@click.option("--prefix", default=None, metavar="P",
              help="Watch every key that starts with P instead of one KEY (--prefix '' for every key).")
@click.option("--from", "from_revision", type=click.IntRange(min=1), default=None, metavar="REV",
              help="Start with the changes at revision REV and after [default: the changes from now on].")
@click.option("--count", type=click.IntRange(min=1), default=None, metavar="N",
              help="Stop after N changes [default: run until Ctrl-C].")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per change (revision, type, key, value).")
@target_options(envvar=None)
@click.pass_context
def watch(ctx: click.Context, key: str | None, prefix: str | None, from_revision: int | None,
          count: int | None, as_json: bool, **target: Any) -> None:
    """Print the changes to KEY, or to the keys under --prefix, as they happen.

    One line per change, in revision order: REV, put, KEY, VALUE or REV, delete, KEY,
    separated by tabs. It carries on through another node when one goes down.
    """
    if key is not None and prefix is not None:
        raise CliError("give either KEY or --prefix, not both", exit_code=2)
    if key is None and prefix is None:
        raise CliError("give a KEY to watch, or --prefix P (--prefix '' for every key)", exit_code=2)
    seen = 0
    try:
        with connect(ctx, target, key) as kv:
            for event in kv.watch(key, prefix, from_revision):
                if as_json:
                    line = json.dumps({"revision": event.revision, "type": event.type, "key": event.key,
                                       "value": event.value})
                elif event.type == "put":
                    line = f"{event.revision}\tput\t{event.key}\t{event.value}"
                else:
                    line = f"{event.revision}\tdelete\t{event.key}"
                # Flushed per change: the output is often piped into another program.
                click.echo(line)
                sys.stdout.flush()
                seen += 1
                if count is not None and seen >= count:
                    return
    except KeyboardInterrupt:
        return  # Ctrl-C is how a watch ends, as `kv cluster up` and `kv serve` end: quietly, status 0
    except BrokenPipeError:
        # The reader went away (`kv watch ... | head -1`): stop quietly, and keep Python's
        # final flush of stdout from failing again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status documents as JSON.")
@target_options(envvar=None)
@click.pass_context
def status(ctx: click.Context, as_json: bool, **target: Any) -> None:
    """Show every node of the cluster: role, ballot, log progress, up or down."""
    with connect(ctx, target) as kv:
        nodes = kv.cluster_status()
        members = None
        if not as_json and any(n.get("up") for n in nodes):
            try:
                members = kv.members(stale=True)
            except KvError:
                pass  # the table alone still says who is up
    if as_json:
        click.echo(json.dumps(nodes, indent=2))
    else:
        click.echo(format_status_table(nodes))
        if members is not None:
            click.echo("")  # then the configuration, as `kv member list` shows it
            cluster = f"cluster {members['cluster_id']}, " if isinstance(members.get("cluster_id"), str) else ""
            click.echo(f"{cluster}configuration at slot {members.get('applied')}: voters "
                       f"{','.join(map(str, members.get('voters') or [])) or '-'}, learners "
                       f"{','.join(map(str, members.get('learners') or [])) or '-'}")
            for line in format_changes(members, history=3):
                click.echo(line)
        for note in (format_deciding(nodes), format_config_mismatch(nodes)):
            if note:
                click.echo("")
                click.echo(note)
    if not any(n.get("up") for n in nodes):
        raise CliError("no node is reachable")


def format_status_table(nodes: list[dict[str, Any]]) -> str:
    """One row per node. ROLE says "rebuilding" for a node that lost its data and does
    not vote yet; MEMBER is "voter", "learner" (follows the log without voting),
    "joining" or "removed" (for a down node: "voter" if the live nodes count it as
    one); SNAPSHOT is its last snapshot's slot; BEHIND is the leader's chosen slot
    minus the node's applied slot ("-" if unknown)."""
    header = ("ID", "ADDRESS", "ROLE", "MEMBER", "LEADER", "BALLOT", "CHOSEN", "APPLIED",
              "SNAPSHOT", "BEHIND", "STATE")
    leader_chosen = _leader_chosen(nodes)
    voters = _voters(nodes)
    rows = [header]
    for n in nodes:
        up = bool(n.get("up"))

        def cell(name: str) -> str:
            value = n.get(name)
            return "-" if value is None or (not up and name != "address") else str(value)
        role = cell("role")
        if up and n.get("deciding"):
            role = "deciding"  # new data directory: asking peers whether the cluster is new
        elif up and n.get("voting") is False:
            role = "rebuilding"
        member = cell("member")
        if not up and n.get("id") in voters:
            member = "voter"
        snap = n.get("snapshot")
        snap_slot = str(snap["slot"]) if up and isinstance(snap, dict) and "slot" in snap else "-"
        applied = n.get("applied")
        behind = (str(max(0, leader_chosen - applied))
                  if up and leader_chosen is not None and isinstance(applied, int) else "-")
        rows.append((cell("id") if up else str(n.get("id") or "?"), cell("address"), role, member,
                     cell("leader"), cell("ballot"), cell("chosen"), cell("applied"), snap_slot,
                     behind, "up" if up else "down"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def format_deciding(nodes: list[dict[str, Any]]) -> str | None:
    """A line on the nodes still deciding whether the cluster is new (a node with a new data
    directory votes only once enough of its peers have answered), or None if none is."""
    waiting = [n for n in nodes if n.get("up") and n.get("deciding")]
    if not waiting:
        return None
    heard = ", ".join(f"node {n.get('id')}: {h[0]} of {h[1]}" for n in waiting
                      if isinstance(h := n.get("deciding_heard"), list) and len(h) == 2)
    problems = "".join(f"\nnode {n.get('id')} does not vote: {n['deciding_problem']}" for n in waiting
                       if isinstance(n.get("deciding_problem"), str))
    return (f"deciding: {len(waiting)} node(s) with a new data directory wait for peers to answer "
            f"whether the cluster is new before they vote{f' ({heard})' if heard else ''}; "
            "a new cluster of n nodes starts once ceil(n/2) + 1 of them are up" + problems)


def format_config_mismatch(nodes: list[dict[str, Any]]) -> str | None:
    """A warning if two live nodes that applied the same slot name different voters. The
    configuration is a function of the log, so that happens only when their --cluster
    specs differed at their first start: such nodes count different majorities, which
    Paxos does not allow. Also a warning if live nodes name different cluster ids (their
    logs began from different configurations). None if every group agrees."""
    clusters: dict[str, list[Any]] = {}
    for n in nodes:
        if n.get("up") and not n.get("deciding") and isinstance(c := n.get("cluster_id"), str):
            clusters.setdefault(c, []).append(n.get("id"))
    if len(clusters) > 1:
        told = "; ".join(f"node(s) {','.join(map(str, ids))}: cluster {c}" for c, ids in clusters.items())
        return (f"WARNING: these nodes belong to different clusters ({told}); each refuses the others' "
                "peer links: check the endpoints and the --cluster lists they were first started with")
    by_slot: dict[int, dict[tuple, list[Any]]] = {}
    for n in nodes:
        applied, voters = n.get("applied"), n.get("voters")
        if n.get("up") and isinstance(applied, int) and applied > 0 and isinstance(voters, list):
            by_slot.setdefault(applied, {}).setdefault(tuple(sorted(voters)), []).append(n.get("id"))
    for slot, views in sorted(by_slot.items()):
        if len(views) > 1:
            told = "; ".join(f"node(s) {','.join(map(str, ids))}: voters {','.join(map(str, v))}"
                             for v, ids in views.items())
            return (f"WARNING: at applied slot {slot} the nodes disagree on the voters ({told}): they were "
                    "started with different --cluster lists and must not run as one cluster; stop them "
                    "and start every node with the same list")
    return None


def _voters(nodes: list[dict[str, Any]]) -> set[int]:
    """The voters as the live node with the highest applied slot knows them."""
    live = [n for n in nodes if n.get("up") and isinstance(n.get("voters"), list)]
    if not live:
        return set()
    best = max(live, key=lambda n: n.get("applied") if isinstance(n.get("applied"), int) else -1)
    return {i for i in best["voters"] if isinstance(i, int)}


def _leader_chosen(nodes: list[dict[str, Any]]) -> int | None:
    """The chosen slot of the node that leads (the highest ballot, if two think they do)."""
    leaders = [n for n in nodes if n.get("up") and n.get("role") == "leader"
               and n.get("leader") == n.get("id") and isinstance(n.get("chosen"), int)]
    if not leaders:
        return None
    return max(leaders, key=lambda n: _ballot_key(n.get("ballot")))["chosen"]


def _ballot_key(ballot: Any) -> tuple[int, int]:
    head, _, tail = str(ballot).partition(".")
    return (int(head), int(tail)) if head.isdigit() and tail.isdigit() else (0, 0)


SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
SIZE_PATTERN = re.compile(r"\s*(\d+)\s*(?:([kmg])(?:i?b)?|b)?\s*", re.IGNORECASE)


class Number(click.ParamType):
    """An int or float option with a lower bound, whose errors are one `error: ...` line."""

    name = "number"

    def __init__(self, kind: type, low: float, open_low: bool = False, sizes: bool = False) -> None:
        self.kind, self.low, self.open_low, self.sizes = kind, low, open_low, sizes

    def parse(self, value: Any) -> int | float | None:
        if isinstance(value, self.kind) and not isinstance(value, bool):
            return value
        text = str(value)
        if self.sizes and (match := SIZE_PATTERN.fullmatch(text)):
            return int(match[1]) * SIZE_UNITS[(match[2] or "").lower()]
        try:
            number = self.kind(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = self.parse(value)
        if number is None or not (number > self.low if self.open_low else number >= self.low):
            name = param.opts[0] if param is not None and param.opts else "value"
            what = "an integer" if self.kind is int else "a number"
            rule = f"> {self.low:g}" if self.open_low else f">= {self.low:g}"
            unit = " (a size like 65536, 512KiB or 64MiB)" if self.sizes else ""
            raise CliError(f"{name} must be {what} {rule}{unit}, not {value!r}", exit_code=2)
        return number


@cli.command()
@click.option("--id", "node_id", type=click.IntRange(min=1), required=True, help="This node's id.")
@click.option("--cluster", "cluster_spec", default=None, metavar="1=HOST:PORT,...",
              help="Every node of a new cluster, this one included (its initial configuration).")
@click.option("--join", "join_url", default=None, metavar="URL",
              help="Join the running cluster that the node at URL belongs to (as a learner; it "
                   "becomes a voter once caught up). Needs --address.")
@click.option("--address", default=None, metavar="HOST:PORT",
              help="Where this node listens and its peers reach it (with --join).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help=f"Where this node keeps its state [default: ./{DEFAULT_DATA_DIR}/node-ID].")
@click.option("--tick-ms", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--snapshot-every", "snapshot_every", type=Number(int, 1), default=10_000,
              show_default=True, metavar="SLOTS",
              help="Write a snapshot after this many applied slots.")
@click.option("--snapshot-every-bytes", type=Number(int, 1, sizes=True), default="64MiB",
              show_default=True, metavar="BYTES",
              help="... or after this many bytes of applied commands (suffixes KiB, MiB, GiB).")
@click.option("--compact-keep", type=Number(int, 0), default=1_000, show_default=True,
              metavar="SLOTS",
              help="Slots of log kept behind a snapshot, for peers that are a little behind.")
@click.option("--compact-keep-bytes", type=Number(int, 0, sizes=True), default="8MiB",
              show_default=True, metavar="BYTES",
              help="... and at most this many bytes of applied commands (big batches keep fewer slots).")
@click.option("--request-timeout", type=Number(float, 0, open_low=True), default=5.0,
              show_default=True, metavar="SECONDS",
              help="Answer 504 (outcome unknown) if a request is not done after this long.")
@click.option("--max-pending-bytes", type=Number(int, 1, sizes=True), default="256MiB", show_default=True,
              metavar="BYTES",
              help="Refuse a write (503 overloaded, Retry-After) while the writes this node took in and "
                   "still waits for hold this many bytes: overload turns into refusals, not timeouts.")
@click.option("--max-value-bytes", type=click.IntRange(1, VALUE_BYTES_MAX), default=VALUE_BYTES_MAX,
              show_default=True, metavar="BYTES",
              help="Largest value (UTF-8 bytes) this node accepts; larger ones get 413.")
@click.option("--partial-in-flight", type=Number(int, 0), default=1, show_default=True, metavar="SLOTS",
              help="As leader, open a slot whose batch is not full only while fewer than this many "
                   "slots are in flight; commands arriving meanwhile share the next (0: no limit).")
@click.option("--self-vote-delay-ms", type=Number(float, 0), default=0.5, show_default=True,
              metavar="MS",
              help="As leader, accept its own proposal only when the followers, one vote short "
                   "of a majority, have not made one within two timer periods of this (each "
                   "rounded up to whole milliseconds); saves a group commit per slot "
                   "(0: accept at once).")
@click.option("--watch-history", type=Number(int, 1), default=100_000, show_default=True,
              metavar="CHANGES",
              help="Keep this many of the latest changes in memory for watches (kv watch, GET /v1/watch); "
                   "a watch from an older revision answers 410 compacted.")
@click.option("--watch-history-bytes", type=Number(int, 1, sizes=True), default="64MiB",
              show_default=True, metavar="BYTES",
              help="... and at most about this many characters of their keys and values.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
              default="info", show_default=True)
@click.option("--log-format", type=click.Choice(("text", "json")), default="text", show_default=True,
              help="text: key=value pairs; json: one JSON object per line.")
@serve_security_options
@click.pass_context
def serve(ctx: click.Context, node_id: int, cluster_spec: str | None, join_url: str | None,
          address: str | None, data_dir: str | None,
          tick_ms: int, snapshot_every: int, snapshot_every_bytes: int, compact_keep: int,
          compact_keep_bytes: int, request_timeout: float, max_pending_bytes: int, max_value_bytes: int,
          partial_in_flight: int,
          self_vote_delay_ms: float, watch_history: int, watch_history_bytes: int, log_level: str,
          log_format: str = "text", **security: Any) -> None:
    """Run one node in the foreground until interrupted."""
    from kvpaxos.config import ConfigError, NodeConfig, parse_cluster

    root_dir = ctx.find_root().params.get("data_dir") or DEFAULT_DATA_DIR
    node_dir = Path(data_dir) if data_dir else Path(root_dir) / f"node-{node_id}"
    if (cluster_spec is None) == (join_url is None):
        raise CliError("give either --cluster (a new cluster) or --join URL with --address "
                       "(a running one)", exit_code=2)
    if join_url is not None:
        if address is None:
            raise CliError("--join needs --address HOST:PORT (where this node listens)", exit_code=2)
        if not join_url.startswith(("http://", "https://")):
            raise CliError(f"--join must be a node's URL (http://HOST:PORT), not {join_url!r}", exit_code=2)
        cluster_spec = f"{node_id}={address}"
    elif address is not None:
        raise CliError("--address goes with --join; with --cluster, this node's entry gives it",
                       exit_code=2)
    assert cluster_spec is not None
    try:
        config = NodeConfig(node_id=node_id, cluster=parse_cluster(cluster_spec), join_url=join_url,
                            data_dir=str(node_dir.resolve()), tick_ms=tick_ms,
                            snapshot_every_slots=snapshot_every,
                            snapshot_every_bytes=snapshot_every_bytes,
                            compact_keep_slots=compact_keep, compact_keep_bytes=compact_keep_bytes,
                            request_timeout_s=request_timeout, pending_bytes_max=max_pending_bytes,
                            value_bytes_max=max_value_bytes, partial_in_flight=partial_in_flight,
                            self_vote_delay_ms=self_vote_delay_ms, watch_history_changes=watch_history,
                            watch_history_bytes=watch_history_bytes)
    except ConfigError as exc:
        raise CliError(str(exc), exit_code=2) from None
    config = _with_security(config, security)
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
            serve_node(config, log_level=log_level, log_format=log_format)
        else:
            logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            serve_node(config)
    except KeyboardInterrupt:
        return
    except (OSError, StorageError, ConfigError) as exc:
        raise CliError(f"node {node_id}: {exc}") from None
    except Exception:
        # A bug, not a user error: keep the traceback in the node's log.
        logging.getLogger("kvpaxos").critical("node %d crashed", node_id, exc_info=True)
        raise CliError(f"node {node_id} crashed; see the log above") from None


def _with_security(config: Any, options: dict[str, Any]) -> Any:
    """The config with the cluster secret, client token and TLS files of `kv serve`."""
    import dataclasses

    from kvpaxos.config import ConfigError
    from kvpaxos.security import serve_options
    try:
        return dataclasses.replace(config, **serve_options(**options))
    except ConfigError as exc:
        raise CliError(str(exc), exit_code=2) from None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@cli.group()
def snapshot() -> None:
    """Back up a running cluster and seed a new cluster from a backup."""


@snapshot.command(name="save")
@click.argument("file", type=click.Path(dir_okay=False))
@target_options(envvar=None)
@click.pass_context
def snapshot_save(ctx: click.Context, file: str, **target: Any) -> None:
    """Save a fresh snapshot of the cluster's state to FILE (checked, then renamed into place)."""
    merged = merge_target(ctx, target)
    if not (target.get("timeout") or ctx.find_root().params.get("timeout")):
        merged["timeout"] = SNAPSHOT_TIMEOUT_S  # a large state takes a while to write and send
    urls = resolve_endpoints(merged["server"], merged["endpoints"], merged["data_dir"])
    from cli import backup  # imported here: the other commands need none of it
    header = backup.save(urls, file, merged["timeout"], **client_security(merged))
    click.echo(f"saved snapshot of slot {header['slot']} ({header['keys']} keys, "
               f"{header['bytes']} bytes) from {header['source']} to {file}")


@snapshot.command(name="restore")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--data-dir", "node_dir", type=click.Path(file_okay=False), required=True,
              help="A new node's data directory (must hold no node state).")
def snapshot_restore(file: str, node_dir: str) -> None:
    """Put the snapshot FILE into the new data directory of a node of a NEW cluster.

    Restore the same file into every node's directory, then start the nodes: they
    vote from the start and carry on from the snapshot's slot.
    """
    from cli import backup  # imported here: the other commands need none of it
    header = backup.restore(file, node_dir)
    click.echo(f"restored snapshot of slot {header['slot']} ({header['keys']} keys) into {node_dir}")


@snapshot.command(name="info")
@click.argument("file", type=click.Path(dir_okay=False))
def snapshot_info(file: str) -> None:
    """Check FILE's checksum and print what it holds."""
    from cli import backup  # imported here: the other commands need none of it
    header = backup.check(file)
    click.echo(f"{file}: snapshot of slot {header['slot']}, {header['keys']} keys, revision "
               f"{header['revision']}, {header['bytes']} bytes; checksum ok")


cli.add_command(cluster)
cli.add_command(lock)
cli.add_command(lease)
cli.add_command(txn)
cli.add_command(member)
cli.add_command(shell)
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
