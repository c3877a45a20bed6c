"""The security options of the `kv` command: for `kv serve` and for the client commands."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from cli.common import CliError

_FILE = click.Path(dir_okay=False)


def serve_security_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--secret-file, --token-file, --tls-cert, --tls-key, --tls-ca of `kv serve`."""
    options = [
        click.option("--secret-file", type=_FILE, default=None, metavar="FILE",
                     help="Cluster secret (16+ bytes of text, same file on every node): peers must "
                     "prove they hold it before their links carry Paxos messages."),
        click.option("--token-file", type=_FILE, default=None, metavar="FILE",
                     help="Client token: requests other than /v1/status and /metrics must send "
                     "'Authorization: Bearer TOKEN' (give every node the same file)."),
        click.option("--tls-cert", type=_FILE, default=None, metavar="FILE",
                     help="Serve HTTPS with this certificate (chain) and dial peers with wss://; "
                     "every node of the cluster must use TLS."),
        click.option("--tls-key", type=_FILE, default=None, metavar="FILE",
                     help="Private key of --tls-cert."),
        click.option("--tls-ca", type=_FILE, default=None, metavar="FILE",
                     help="CA certificate(s) to verify peers' certificates with "
                     "[default: the system's CAs]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def client_security(target: dict[str, Any]) -> dict[str, Any]:
    """Client keyword arguments (token, ca_file) from the merged target options."""
    token = target.get("token") or None
    if token is not None and (not token.isascii() or not token.isprintable() or " " in token):
        raise CliError("--token / KV_TOKEN must be printable ASCII without spaces", exit_code=2)
    return {"token": token, "ca_file": target.get("ca_file") or None}
