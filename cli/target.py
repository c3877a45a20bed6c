"""The target options of the client commands (--server, --endpoints, ...) and the client
they give, with client errors turned into one-line CLI errors."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from cli.common import DEFAULT_DATA_DIR, CliError, resolve_endpoints
from cli.secure import client_security
from kvpaxos.client import (
    BadRequest, Client, Compacted, KvError, NotFound, OutcomeUnknown, PreconditionFailed, Unauthorized,
    Unavailable,
)

# Longer than a node's own request timeout (5 s by default), so that after a
# node answers 504 there is still time to retry the call on another node.
DEFAULT_TIMEOUT_S = 10.0


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
            click.option("--token", envvar=envvar and "KV_TOKEN", default=None, metavar="TOKEN",
                         help="Bearer token for nodes that require one"
                         + (" [env: KV_TOKEN]." if envvar else ".")),
            click.option("--ca-file", envvar=envvar and "KV_CA_FILE", default=None,
                         type=click.Path(dir_okay=False), metavar="FILE",
                         help="CA certificate(s) to verify https:// nodes with"
                         + (" [env: KV_CA_FILE]." if envvar else ".")),
        ]
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


def merge_target(ctx: click.Context, local: dict[str, Any]) -> dict[str, Any]:
    """Merge the command's own target options over the group's."""
    merged = dict(ctx.find_root().params)
    merged.update({k: v for k, v in local.items() if v is not None})
    merged["data_dir"] = merged.get("data_dir") or DEFAULT_DATA_DIR
    merged["timeout"] = merged.get("timeout") or DEFAULT_TIMEOUT_S
    return merged


@contextmanager
def connect(ctx: click.Context, local: dict[str, Any], key: str | None = None,
            about: str | None = None) -> Iterator[Client]:
    """A client for the targeted cluster; turns client errors into one-line CLI errors
    about `key`, or about what `about` names ("lease 7")."""
    target = merge_target(ctx, local)
    urls = resolve_endpoints(target["server"], target["endpoints"], target["data_dir"])
    client = Client(urls, timeout_s=target["timeout"], **client_security(target))
    try:
        yield client
    except KvError as exc:
        raise CliError(describe_error(exc, key, urls, about)) from None
    finally:
        client.close()


def describe_error(exc: KvError, key: str | None, urls: list[str], about: str | None = None) -> str:
    about = about or (f"key {key!r}" if key is not None else "request")
    detail = "" if exc.message in ("", exc.code) else f": {exc.message}"
    if isinstance(exc, NotFound) and exc.code == "lease_not_found":
        return exc.message  # the node's own words name the lease: "lease 7 not found (... or expired)"
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
    if isinstance(exc, Compacted):
        return (f"the changes asked for are no longer kept: the oldest revision a node holds is {exc.oldest} "
                f"(the latest {exc.revision}); read the keys again (kv list), or watch --from {exc.oldest} "
                "or later")
    if isinstance(exc, Unauthorized):
        return f"{about} refused: missing or wrong token (pass --token or set KV_TOKEN)"
    return f"{about} failed: {exc.code}{detail}"
