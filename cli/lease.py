"""`kv lease`: grant, keep alive, revoke and look at leases.

  kv lease grant TTL [--id N]          a new lease of TTL seconds; prints its id
  kv lease keepalive ID [--once]       keep it alive (a keepalive every ttl/3) until Ctrl-C
  kv lease revoke ID                   end it now with its keys; prints how many keys went
  kv lease info ID [--keys] [--json]   its ttl, the seconds it has left, its keys
  kv lease list [--json]               every lease

A key goes with a lease when it is put with one (`kv put KEY VALUE --lease ID`):
when the lease ends, revoked or with no keepalive for its ttl, all its keys are
deleted at once.
"""
from __future__ import annotations

import json
import time
from typing import Any

import click

from cli.common import CliError
from cli.target import connect, target_options
from kvpaxos.client import LeaseInfo
from kvpaxos.client_support import LEASE_ID_MAX
from kvpaxos.core.commands import TTL_MS_MAX
from kvpaxos.lease import Lease

LEASE_ID = click.IntRange(1, LEASE_ID_MAX)
LEASE_TTL = click.FloatRange(min=0, min_open=True, max=TTL_MS_MAX / 1000)  # what a node takes as a lease's ttl
POLL_S = 0.2  # how often `kv lease keepalive` looks whether its lease was lost


@click.group(name="lease")
def lease() -> None:
    """Grant, keep alive, revoke and show leases (keys put with a lease go when it ends)."""


@lease.command(name="grant")
@click.argument("ttl", type=LEASE_TTL)
@click.option("--id", "lease_id", type=LEASE_ID, default=None, metavar="N",
              help="Ask for this id (refused if it exists, existed, or is not above every id granted before).")
@target_options(envvar=None)
@click.pass_context
def grant(ctx: click.Context, ttl: float, lease_id: int | None, **target: Any) -> None:
    """Grant a lease of TTL seconds and print its id. It ends, deleting its keys, TTL
    seconds after the grant or the last keepalive."""
    about = f"lease {lease_id}" if lease_id is not None else "lease grant"
    with connect(ctx, target, about=about) as kv:
        click.echo(kv.grant(ttl, lease_id))


@lease.command(name="keepalive")
@click.argument("lease_id", type=LEASE_ID, metavar="ID")
@click.option("--once", is_flag=True, help="Send one keepalive and exit.")
@target_options(envvar=None)
@click.pass_context
def keepalive(ctx: click.Context, lease_id: int, once: bool, **target: Any) -> None:
    """Keep lease ID alive: a keepalive every ttl/3 until Ctrl-C (exit 0), or until the
    lease is lost (exit 1): revoked, run out, or no keepalive answered for its ttl."""
    with connect(ctx, target, about=f"lease {lease_id}") as kv:
        if once:
            ttl = kv.keepalive(lease_id)
            click.echo(f"OK (lease {lease_id} kept alive for {ttl:g} s)")
            return
        holder = Lease(kv, lease_id=lease_id)
        ttl = holder.keep()
        try:  # from the line on: a Ctrl-C right after it is the quiet end it announces
            click.echo(f"keeping lease {lease_id} alive (ttl {ttl:g} s) until Ctrl-C", err=True)
            while holder.alive:
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            return  # Ctrl-C is how a keepalive ends, as a watch does: quietly, status 0
        finally:
            holder.stop()
        kv.lease_info(lease_id)  # NotFound (one line: not found) if it ended, else ...
        raise CliError(f"lease {lease_id}: no keepalive succeeded for its ttl of {ttl:g} s (it may have run out)")


@lease.command(name="revoke")
@click.argument("lease_id", type=LEASE_ID, metavar="ID")
@target_options(envvar=None)
@click.pass_context
def revoke(ctx: click.Context, lease_id: int, **target: Any) -> None:
    """End lease ID now, deleting its keys (in one step: a watch sees one delete each)."""
    with connect(ctx, target, about=f"lease {lease_id}") as kv:
        deleted = kv.revoke(lease_id)
    click.echo(f"OK (revoked lease {lease_id}, deleted {deleted} key{'' if deleted == 1 else 's'})")


def lease_json(info: LeaseInfo) -> str:
    return json.dumps({"id": info.id, "ttl": info.ttl, "ttl_left": info.ttl_left, "keys": info.keys})


@lease.command(name="info")
@click.argument("lease_id", type=LEASE_ID, metavar="ID")
@click.option("--keys", "with_keys", is_flag=True, help="List its keys too (one a line, in key order).")
@click.option("--json", "as_json", is_flag=True, help="Print id, ttl, ttl_left and keys as JSON.")
@target_options(envvar=None)
@click.pass_context
def info(ctx: click.Context, lease_id: int, with_keys: bool, as_json: bool, **target: Any) -> None:
    """Show lease ID: its ttl, the seconds it has left (by the node's clock) and its keys."""
    with connect(ctx, target, about=f"lease {lease_id}") as kv:
        found = kv.lease_info(lease_id, keys=with_keys)
    if as_json:
        click.echo(lease_json(found))
        return
    count = len(found.keys) if isinstance(found.keys, list) else found.keys
    click.echo(f"lease {found.id}: ttl {found.ttl:g} s, {found.ttl_left:.1f} s left, "
               f"{count} key{'' if count == 1 else 's'}")
    if isinstance(found.keys, list):
        for key in found.keys:
            click.echo(key)


@lease.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per lease.")
@target_options(envvar=None)
@click.pass_context
def list_leases(ctx: click.Context, as_json: bool, **target: Any) -> None:
    """List every lease in id order: ID, TTL, seconds LEFT, number of KEYS."""
    with connect(ctx, target) as kv:
        found = kv.leases()
    if as_json:
        for item in found:
            click.echo(lease_json(item))
        return
    if not found:
        click.echo("(no leases)")
        return
    rows = [("ID", "TTL", "LEFT", "KEYS")] + [(str(i.id), f"{i.ttl:g}", f"{i.ttl_left:.1f}", str(i.keys))
                                              for i in found]
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
