"""`kv txn [FILE]`: compare keys, then one list of writes or the other, atomically."""
from __future__ import annotations

import json
from typing import Any

import click

from cli.common import CliError
from cli.target import connect, target_options

EXAMPLE = '{"if": [{"key": "a", "version": 3}], "then": [{"op": "put", "key": "a", "value": "x"}], "else": []}'


@click.command(name="txn")
@click.argument("source", type=click.File("r"), default="-", metavar="[FILE]")
@target_options(envvar=None)
@click.pass_context
def txn(ctx: click.Context, source: Any, **target: Any) -> None:
    """Run the transaction described as JSON in FILE (default: standard input): the
    comparisons under "if" ({"key" and one of "version" (0: absent), "value" or
    "exists"; equal, or as "cmp" says: "!=", "<", ">"}), the writes under "then"
    if they all hold, else those under "else" ({"op": "put", "key", "value",
    optionally "ttl"} or {"op": "delete", "key"}) and gets ({"op": "get", "key"}:
    the key as the writes before it left it).
    Prints the answer as JSON; exits 1 when the comparisons did not hold (the "else"
    writes ran). For example:

    \b
    echo '{"if": [{"key": "a", "version": 3}], "then": [{"op": "put", "key": "a", "value": "x"}]}' | kv txn
    """
    try:
        doc = json.load(source)
    except ValueError as exc:
        raise CliError(f"the transaction is not valid JSON: {exc}", exit_code=2) from None
    if not isinstance(doc, dict) or set(doc) - {"if", "then", "else"}:
        raise CliError(f'a transaction is a JSON object with "if", "then" and "else", such as {EXAMPLE}',
                       exit_code=2)
    with connect(ctx, target) as kv:
        result = kv.txn(doc.get("if", []), doc.get("then", []), doc.get("else", []))
    click.echo(json.dumps({"succeeded": result.succeeded, "revision": result.revision,
                           "versions": result.versions, "results": result.results}))
    if not result.succeeded:
        raise CliError("the comparisons did not hold: the \"else\" writes ran")
