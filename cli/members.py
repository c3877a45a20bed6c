"""`kv member`: show and change who belongs to the cluster.

  kv member list [--json]               members with their roles, the change in flight, history
  kv member add ID=HOST:PORT [--wait]   add a learner (--wait: until it has caught up and votes)
  kv member remove ID [--force]         remove a node for good (its id is never used again)

The configuration is replicated state, changed by commands chosen in the log (see
kvpaxos/core/membership.py); these commands call /v1/members on any node. A new
node then starts with `kv serve --id ID --join URL --address HOST:PORT`.
"""
from __future__ import annotations

import json
import re
from typing import Any

import click

from cli.common import CliError
from cli.target import connect, merge_target, target_options
from kvpaxos.client import Conflict, KvError, NotFound, OutcomeUnknown

ID_MAX = (1 << 31) - 1
ADDRESS_CHARS_MAX = 255
HISTORY_SHOWN = 5
# `kv member add --wait`: how long to wait for the new node to become a voter, unless
# --timeout says otherwise.
WAIT_TIMEOUT_S = 60.0
HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/,=@\\\[\]]+):(?P<port>\d{1,5})")

# What to tell people when the cluster refuses a change (the error code of a 409 or 404).
REFUSALS = {
    "change_in_progress": "another membership change is still taking effect; try again in a moment",
    "id_reused": "that id belonged to a removed node and ids are never reused; pick a new id",
    "already_member": "that id is already a member with another address",
    "address_in_use": "another member already has that address",
    "last_voter": "it is the last voter",
    "not_a_member": "no member has that id",
    "not_a_learner": "that node is not a learner",
    "would_lose_quorum": None,  # the node's own message says how many voters answer
}


def parse_member_id(text: str) -> int:
    """A member id from the command line; a one-line usage error otherwise."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= ID_MAX:
        raise CliError(f"a member id is a positive integer, not {text!r}", exit_code=2)
    return int(text)


def parse_member(spec: str) -> tuple[int, str]:
    """ID=HOST:PORT -> (id, "host:port")."""
    node_id, eq, address = spec.partition("=")
    if not eq:
        raise CliError(f"expected ID=HOST:PORT (like 4=127.0.0.1:7004), not {spec!r}", exit_code=2)
    number = parse_member_id(node_id.strip())
    address = address.strip()
    match = HOST_PORT.fullmatch(address)
    if match is None or not 0 < int(match["port"]) < 65536 or len(address) > ADDRESS_CHARS_MAX:
        raise CliError(f"the address of node {number} must be HOST:PORT (like 127.0.0.1:7004), "
                       f"not {address!r}", exit_code=2)
    return number, address


@click.group(name="member")
def member() -> None:
    """Show and change the cluster's members (voters and learners)."""


@member.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the /v1/members document as JSON.")
@click.option("--history", "history", type=click.IntRange(min=0), default=HISTORY_SHOWN,
              show_default=True, metavar="N", help="How many of the latest changes to show.")
@click.option("--stale", is_flag=True, help="The node's own view, without asking the leader.")
@target_options(envvar=None)
@click.pass_context
def list_members(ctx: click.Context, as_json: bool, history: int, stale: bool, **target: Any) -> None:
    """List the members, the pending change and the history."""
    with connect(ctx, target) as kv:
        doc = kv.members(stale=stale)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(format_members(doc, history))


# ignore_unknown_options: "-3" is a bad ID (one line), not an unknown option.
@member.command(name="add", context_settings={"ignore_unknown_options": True})
@click.argument("spec", metavar="ID=HOST:PORT")
@click.option("--wait", is_flag=True,
              help="Return only once the node is a voter: it must be started (kv serve --join) "
                   f"and catch up first [waits up to --timeout, default {WAIT_TIMEOUT_S:g} s].")
@target_options(envvar=None)
@click.pass_context
def add_member(ctx: click.Context, spec: str, wait: bool, **target: Any) -> None:
    """Add node ID, reachable at HOST:PORT, as a learner.

    A learner follows the log but does not vote; the leader makes it a voter once it
    has caught up. Start the node itself with
    `kv serve --id ID --join URL --address HOST:PORT` (before or after this command).
    """
    node_id, address = parse_member(spec)
    merged = merge_target(ctx, target)
    explicit_timeout = target.get("timeout") or ctx.find_root().params.get("timeout")
    wait_s = explicit_timeout or WAIT_TIMEOUT_S
    with connect(ctx, target) as kv, refusal(f"cannot add node {node_id}"):
        doc = kv.add_member(node_id, address, wait=wait, wait_timeout_s=wait_s)
    role = role_of(doc, node_id)
    click.echo(f"node {node_id} ({address}) is a {role}; {describe_voters(doc)}")
    if role == "learner":
        join_url = leader_url(doc, merged)
        click.echo(f"start it, if it is not running yet: kv serve --id {node_id} --join {join_url} "
                   f"--address {address}")


@member.command(name="remove", context_settings={"ignore_unknown_options": True})
@click.argument("node_id", metavar="ID")
@click.option("--force", is_flag=True,
              help="Remove it even if a majority of the voters left does not answer now.")
@target_options(envvar=None)
@click.pass_context
def remove_member(ctx: click.Context, node_id: str, force: bool, **target: Any) -> None:
    """Remove node ID from the cluster for good; the node stops itself.

    Refused if a majority of the voters that would be left does not answer now
    (it would stop the cluster), unless --force. The id is never accepted again:
    to replace a node, remove it and add a new one under a new id.
    """
    number = parse_member_id(node_id)
    with connect(ctx, target) as kv, refusal(f"cannot remove node {number}"):
        leader_before = leader_id(kv)
        doc = kv.remove_member(number, force=force)
    note = " (it led the cluster; a new leader takes over)" if leader_before == number else ""
    click.echo(f"removed node {number}{note}; {describe_voters(doc)}")


class refusal:
    """Turns the cluster's refusals of a change into one-line errors that say why."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, (Conflict, NotFound)) and exc.code in REFUSALS:
            reason = REFUSALS[exc.code] or exc.message
            if exc.code == "would_lose_quorum":
                reason = reason.replace("(or force it)", "(or pass --force)")
            raise CliError(f"{self.what}: {reason}") from None
        if isinstance(exc, OutcomeUnknown):
            raise CliError(f"{self.what}: {exc.message}") from None
        if isinstance(exc, ValueError):
            raise CliError(f"{self.what}: {exc}", exit_code=2) from None
        return False


def leader_id(kv: Any) -> int | None:
    """The leader's id as the node asked sees it, or None (not worth failing a removal for)."""
    try:
        doc = kv.members(stale=True)
    except (KvError, OSError):
        return None
    leader = doc.get("leader")
    return leader if isinstance(leader, int) else None


def role_of(doc: dict[str, Any], node_id: int) -> str:
    for m in doc.get("members", []):
        if m.get("id") == node_id:
            return str(m.get("role"))
    return "removed" if node_id in doc.get("removed", []) else "non-member"


def describe_voters(doc: dict[str, Any]) -> str:
    voters = _ids(doc.get("voters"))
    learners = _ids(doc.get("learners"))
    return f"voters {voters}" + (f", learners {learners}" if learners != "-" else "")


def leader_url(doc: dict[str, Any], target: dict[str, Any]) -> str:
    """A URL of a member to join through: the leader's, else any member's."""
    by_id = {m.get("id"): m.get("address") for m in doc.get("members", []) if m.get("address")}
    address = by_id.get(doc.get("leader")) or next(iter(by_id.values()), "HOST:PORT")
    endpoints = str(target.get("endpoints") or "")
    scheme = "https" if endpoints.startswith("https://") else "http"
    return f"{scheme}://{address}"


def format_members(doc: dict[str, Any], history: int = HISTORY_SHOWN) -> str:
    """The members table, then the change in flight, then the latest changes."""
    leader = doc.get("leader")
    rows = [("ID", "ADDRESS", "ROLE")]
    for m in doc.get("members", []):
        role = str(m.get("role", "?")) + (" (leader)" if m.get("id") == leader else "")
        rows.append((str(m.get("id")), str(m.get("address") or "-"), role))
    return "\n".join(_table(rows) + format_changes(doc, history))


def format_changes(doc: dict[str, Any], history: int = HISTORY_SHOWN) -> list[str]:
    """The change in flight, the removed ids and the latest changes of a /v1/members document."""
    lines: list[str] = []
    pending = doc.get("pending")
    if isinstance(pending, dict):
        lines.append(f"pending: {pending.get('what')} (chosen in slot {pending.get('slot')}; "
                     f"in effect from slot {pending.get('effective')}: voters "
                     f"{_ids(pending.get('voters'))}, learners {_ids(pending.get('learners'))})")
    removed = doc.get("removed") or []
    if removed:
        lines.append(f"removed (ids never reused): {_ids(removed)}")
    changes = doc.get("history") or []
    if history and changes:
        shown = changes[-history:]
        more = f", {len(changes) - len(shown)} older not shown" if len(shown) < len(changes) else ""
        lines.append(f"history (oldest first{more}):")
        table = [("SLOT", "EFFECTIVE", "CHANGE", "VOTERS", "LEARNERS")]
        table += [(str(c.get("slot")), str(c.get("effective")), str(c.get("what")),
                   _ids(c.get("voters")), _ids(c.get("learners"))) for c in shown]
        lines += ["  " + line for line in _table(table)]
    return lines


def _ids(ids: Any) -> str:
    return ",".join(str(i) for i in ids) if ids else "-"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
