"""Pieces the `kv` commands share: one-line errors and finding the cluster to talk to."""
from __future__ import annotations

import json
from pathlib import Path

import click

from kvpaxos.client import Client, KvError, normalize_endpoint, parse_endpoints

DEFAULT_DATA_DIR = "kvdata"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 7001
DEFAULT_NODES = 3
CLUSTER_FILE = "cluster.json"
# `--server N` for a node that is not in cluster.json: how long to ask the cluster for it.
MEMBER_LOOKUP_TIMEOUT_S = 2.0


class CliError(click.ClickException):
    """An error shown as one `error: ...` line on stderr, never a traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def cluster_file(data_dir: str | Path) -> Path:
    return Path(data_dir) / CLUSTER_FILE


def read_cluster_file(data_dir: str | Path) -> dict[int, str] | None:
    """Node id -> "host:port" from DIR/cluster.json, or None if there is no such file."""
    path = cluster_file(data_dir)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    try:
        result = {int(k): str(v) for k, v in nodes.items()}
    except (AttributeError, TypeError, ValueError):
        raise CliError(f"{path} has no valid \"nodes\" map") from None
    if not result:
        raise CliError(f"{path} lists no nodes")
    return dict(sorted(result.items()))


def default_nodes(count: int = DEFAULT_NODES, host: str = DEFAULT_HOST,
                  base_port: int = DEFAULT_BASE_PORT) -> dict[int, str]:
    return {i: f"{host}:{base_port + i - 1}" for i in range(1, count + 1)}


def resolve_endpoints(server: int | None, endpoints: str | None, data_dir: str | Path) -> list[str]:
    """The endpoints a client command talks to.

    --endpoints (or KV_ENDPOINTS) wins, else DIR/cluster.json from `kv cluster up`,
    else the default local cluster on ports 7001-7003. --server N then narrows the
    list to node N alone (the N-th of --endpoints), so a user can watch one
    particular node serve the request; a node that joined later (kv serve --join)
    is found through the cluster's configuration.
    """
    if endpoints:
        try:
            urls = parse_endpoints(endpoints)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--endpoints'") from None
        by_number = {i: url for i, url in enumerate(urls, start=1)}
        source = "--endpoints"
    else:
        nodes = read_cluster_file(data_dir)
        source = str(cluster_file(data_dir))
        if nodes is None:
            nodes = default_nodes()
            source = ""
        try:
            by_number = {i: normalize_endpoint(addr) for i, addr in nodes.items()}
        except ValueError as exc:
            raise CliError(f"{source}: {exc}") from None
    if server is None:
        return list(by_number.values())
    if server in by_number:
        return [by_number[server]]
    port = DEFAULT_BASE_PORT + server - 1
    if not source and port <= 65535:
        # No cluster file: server N is simply the N-th port of the default local cluster.
        return [normalize_endpoint(f"{DEFAULT_HOST}:{port}")]
    if not endpoints and (joined := member_address(list(by_number.values()), server)):
        return [joined]  # a node that joined the cluster after `kv cluster up` wrote the file
    raise click.BadParameter(f"there is no server {server} in {source or 'the local cluster'} "
                             f"(it has {', '.join(map(str, by_number))})", param_hint="'--server'")


def member_address(urls: list[str], node_id: int) -> str | None:
    """The URL of member node_id as the cluster's configuration gives it, or None."""
    try:
        with Client(urls, timeout_s=MEMBER_LOOKUP_TIMEOUT_S) as kv:
            doc = kv.members(stale=True)
    except (KvError, OSError):
        return None
    for m in doc.get("members", []):
        if m.get("id") == node_id and isinstance(m.get("address"), str):
            try:
                scheme = urls[0].split("://", 1)[0]
                return normalize_endpoint(f"{scheme}://{m['address']}")
            except ValueError:
                return None
    return None
