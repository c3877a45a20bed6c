"""`kv cluster up`: run a whole cluster of local node processes in the foreground.

Each node is a separate `python -m cli.main serve` process, so killing one is a
real crash of one replica. The layout (DIR/cluster.json, DIR/node-N/) is stable,
so running `kv cluster up` again brings back the same nodes with their data.
The nodes share a cluster secret, DIR/secret (mode 0600), made on the first run:
only processes that hold it can join the cluster's peer links.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cli.common import (
    DEFAULT_BASE_PORT, DEFAULT_DATA_DIR, DEFAULT_HOST, DEFAULT_NODES, CliError, cluster_file,
    default_nodes, read_cluster_file,
)
from kvpaxos.client import Client, KvError
from kvpaxos.security import write_new_secret

SECRET_FILE = "secret"
READY_TIMEOUT_S = 15.0
STOP_GRACE_S = 5.0
POLL_S = 0.25
# The directory that holds the `cli` package, so children can run `-m cli.main`
# even when the project is not installed.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Node:
    node_id: int
    address: str
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    reported: bool = False  # its exit has been announced

    @property
    def log_path(self) -> Path:
        return self.directory / "node.log"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


@click.group()
def cluster() -> None:
    """Run a local cluster for development and demos."""


@cluster.command()
@click.option("--nodes", "count", type=click.IntRange(1, 9), default=None,
              help=f"Number of nodes (3 or 5 make sense) [default: {DEFAULT_NODES}].")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help=f"Where the nodes keep their data [default: ./{DEFAULT_DATA_DIR}].")
@click.option("--base-port", type=click.IntRange(1, 65535), default=None,
              help=f"Port of node 1; node N listens on base+N-1 [default: {DEFAULT_BASE_PORT}].")
@click.option("--host", default=None, help=f"Address to listen on [default: {DEFAULT_HOST}].")
@click.pass_context
def up(ctx: click.Context, count: int | None, data_dir: str | None, base_port: int | None,
       host: str | None) -> None:
    """Start the nodes, wait until they answer, and keep them running until Ctrl-C."""
    root = Path(data_dir or ctx.find_root().params.get("data_dir") or DEFAULT_DATA_DIR)
    addresses = plan_cluster(root, count, base_port, host)
    check_ports_free(addresses)
    nodes = [Node(i, addr, root / f"node-{i}") for i, addr in addresses.items()]
    for node in nodes:
        node.directory.mkdir(parents=True, exist_ok=True)
    write_cluster_file(root, addresses)
    if write_new_secret(str(root / SECRET_FILE)):
        click.echo(f"made a new cluster secret in {root / SECRET_FILE}")

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    try:
        for node in nodes:
            start_node(node, addresses)
            click.echo(f"node {node.node_id}: {node.url}  pid {node.proc.pid}  log {node.log_path}\n"
                       f"        to start it by hand: {' '.join(serve_args(node, addresses, True))}")
        wait_ready(nodes, stop)
        if not stop.is_set() and not all(n.reported for n in nodes):
            click.echo(usage_hint(root, len(nodes), f"{nodes[0].url}/", join_hint(root, nodes)))
            supervise(nodes, stop)
    finally:
        stop_nodes(nodes)
    if all(n.reported for n in nodes):
        raise CliError("every node has exited; see the logs above")
    click.echo("cluster stopped")


def plan_cluster(root: Path, count: int | None, base_port: int | None,
                 host: str | None) -> dict[int, str]:
    """The cluster map: the one in DIR/cluster.json if any (same ports, same data), else new."""
    existing = read_cluster_file(root)
    wanted = default_nodes(count or DEFAULT_NODES, host or DEFAULT_HOST,
                           base_port or DEFAULT_BASE_PORT)
    last_port = (base_port or DEFAULT_BASE_PORT) + (count or DEFAULT_NODES) - 1
    if existing is None:
        if last_port > 65535:
            raise CliError(f"ports {base_port}..{last_port} go past 65535", exit_code=2)
        return wanted
    # An explicit option that contradicts the existing cluster would silently be
    # ignored or would strand the data; refuse instead.
    conflicts = []
    if count is not None and count != len(existing):
        conflicts.append(f"{len(existing)} nodes")
    if base_port is not None and existing.get(1, "").rpartition(":")[2] != str(base_port):
        conflicts.append(f"node 1 at {existing.get(1)}")
    if host is not None and any(a.rpartition(":")[0] != host for a in existing.values()):
        conflicts.append(f"host {next(iter(existing.values())).rpartition(':')[0]}")
    if conflicts:
        raise CliError(f"{cluster_file(root)} already describes a cluster with "
                       f"{', '.join(conflicts)}; drop the option or use another --data-dir",
                       exit_code=2)
    return existing


def check_ports_free(addresses: dict[int, str]) -> None:
    for node_id, addr in addresses.items():
        host, _, port = addr.rpartition(":")
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            # Same option the server sets, so leftover TIME_WAIT connections of a
            # previous run do not count as "in use".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host.strip("[]"), int(port)))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise CliError(f"port {port} on {host} (node {node_id}) is already in use; "
                                   "is this cluster already running? stop it first") from None
                raise CliError(f"cannot listen on {addr} (node {node_id}): {exc.strerror or exc}") from None


def write_cluster_file(root: Path, addresses: dict[int, str]) -> None:
    path = cluster_file(root)
    tmp = path.with_suffix(".json.tmp")
    doc = {"nodes": {str(i): a for i, a in addresses.items()}}
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # never leave a half-written map for the client commands


def serve_args(node: Node, addresses: dict[int, str], for_humans: bool = False) -> list[str]:
    """The `kv serve` command of a node; for humans, with the `kv` script if it is on PATH."""
    spec = ",".join(f"{i}={a}" for i, a in addresses.items())
    secret = node.directory.parent / SECRET_FILE
    if for_humans:
        prog = ["kv"] if shutil.which("kv") else [Path(sys.executable).name, "-m", "cli.main"]
        data_dir = str(node.directory)
    else:
        prog, data_dir = [sys.executable, "-m", "cli.main"], str(node.directory.resolve())
        secret = secret.resolve()
    return prog + ["serve", "--id", str(node.node_id), "--cluster", spec, "--data-dir", data_dir,
                   "--secret-file", str(secret)]


def start_node(node: Node, addresses: dict[int, str]) -> None:
    cmd = serve_args(node, addresses)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    with open(node.log_path, "ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"=== {stamp} kv cluster up: starting node {node.node_id} ===\n".encode())
        log.flush()
        # Children ignore SIGINT: Ctrl-C reaches the whole process group, and the
        # nodes should stop in order through stop_nodes rather than all at once.
        node.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=_ignore_sigint)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def wait_ready(nodes: list[Node], stop: threading.Event) -> None:
    """Wait until every live node answers /v1/status, or READY_TIMEOUT_S passed."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = {n.node_id: n for n in nodes}
    while pending and not stop.is_set() and time.monotonic() < deadline:
        for node in list(pending.values()):
            if report_exit(node, nodes):
                del pending[node.node_id]
            elif answers(node):
                del pending[node.node_id]
        stop.wait(POLL_S)
    if stop.is_set():
        return
    alive = [n for n in nodes if not n.reported]
    for node in pending.values():
        click.echo(f"node {node.node_id} did not answer within {READY_TIMEOUT_S:g} s; "
                   f"leaving it running, see {node.log_path}", err=True)
    if alive and not pending:
        click.echo(f"{len(alive)} of {len(nodes)} nodes are up")


def answers(node: Node) -> bool:
    try:
        with Client([node.url], timeout_s=0.5) as kv:
            kv.status(node.url)
        return True
    except KvError:
        return False


def report_exit(node: Node, nodes: list[Node]) -> bool:
    """Announce, once, that a node's process has exited. True if it is not running."""
    if node.proc is None or node.proc.poll() is None:
        return False
    if not node.reported:
        node.reported = True
        alive = sum(1 for n in nodes if n.proc is not None and n.proc.poll() is None)
        code = node.proc.returncode
        if code < 0:
            how = f"was killed by {_signal_name(-code)}"
        elif code == 0 and was_removed(node):
            how = "left: it was removed from the cluster (kv member remove)"
        else:
            # Its last words, typically the one-line error of `kv serve`.
            how = f"exited with code {code}" + (last_log_line(node) if code else "")
        click.echo(f"node {node.node_id} (pid {node.proc.pid}) {how}; "
                   f"{alive} node(s) still running", err=True)
    return True


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def last_log_line(node: Node) -> str:
    try:
        with open(node.log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            lines = [ln for ln in log.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f" ({lines[-1].strip()[:200]})" if lines else ""


def was_removed(node: Node) -> bool:
    """Whether the node's log ends with it stopping because it was removed from the cluster."""
    try:
        with open(node.log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            return b"removed from the cluster" in log.read()
    except OSError:
        return False


def supervise(nodes: list[Node], stop: threading.Event) -> None:
    """Watch the nodes until asked to stop; never restart one (a crash may be the demo)."""
    while not stop.wait(POLL_S):
        for node in nodes:
            report_exit(node, nodes)
        if all(n.reported for n in nodes):
            return


def stop_nodes(nodes: list[Node]) -> None:
    """SIGTERM every running node, then SIGKILL whatever is left after STOP_GRACE_S."""
    running = [n for n in nodes if n.proc is not None and n.proc.poll() is None]
    if not running:
        return
    click.echo(f"stopping {len(running)} node(s)...")
    for node in running:
        _signal(node.proc, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for node in running:
        try:
            node.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            click.echo(f"node {node.node_id} did not stop in {STOP_GRACE_S:g} s; killing it", err=True)
            _signal(node.proc, signal.SIGKILL)
            node.proc.wait()


def _signal(proc: subprocess.Popen[Any], signum: int) -> None:
    try:
        proc.send_signal(signum)
    except ProcessLookupError:
        pass


def usage_hint(root: Path, count: int, dashboard_url: str | None = None,
               grow: str | None = None) -> str:
    default = Path(DEFAULT_DATA_DIR).resolve() == root.resolve()
    dir_opt = "" if default else f" --data-dir {root}"
    watch = f"\nwatch: {dashboard_url}  (the live dashboard; any node serves it)" if dashboard_url else ""
    grow_line = f"\ngrow: {grow}" if grow else ""
    return (f"cluster of {count} node(s) running; data in {root}. Press Ctrl-C to stop.\n"
            f"try: kv put hello world --server {min(3, count)}{dir_opt}\n"
            f"     kv get hello --server 1{dir_opt}\n"
            f"     kv status{dir_opt}{watch}{grow_line}")


def join_hint(root: Path, nodes: list[Node]) -> str | None:
    """The `kv serve --join` line that would add one more node: the next unused id, on the
    port after the highest one in use. None if the configuration cannot be read."""
    live = [n for n in nodes if n.proc is not None and n.proc.poll() is None]
    if not live:
        return None
    try:
        with Client([n.url for n in live], timeout_s=2.0) as kv:
            doc = kv.members(stale=True)
        ids = [m["id"] for m in doc["members"]] + list(doc.get("removed", []))
        addresses = [m["address"] for m in doc["members"] if m.get("address")]
        ports = [int(a.rpartition(":")[2]) for a in addresses + [n.address for n in nodes]]
    except (KvError, KeyError, TypeError, ValueError):
        return None
    new_id, port = max(ids + [n.node_id for n in nodes]) + 1, max(ports) + 1
    host = live[0].address.rpartition(":")[0]
    by_id = {m["id"]: m.get("address") for m in doc["members"]}
    via = by_id.get(doc.get("leader")) or next((a for a in by_id.values() if a), live[0].address)
    prog = "kv" if shutil.which("kv") else f"{Path(sys.executable).name} -m cli.main"
    return (f"{prog} serve --id {new_id} --join http://{via} --address {host}:{port} "
            f"--data-dir {root / f'node-{new_id}'} --secret-file {root / SECRET_FILE}")
