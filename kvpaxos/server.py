"""`kv serve`: one node process, from the data directory to a listening socket."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

from kvpaxos import logs
from kvpaxos.config import NodeConfig
from kvpaxos.gcpause import PausePolicy
from kvpaxos.http import init_app
from kvpaxos.join import has_state, join
from kvpaxos.node import UNDECIDED, Node
from kvpaxos.security import peer_ssl_context, server_ssl_context
from kvpaxos.transport import PeerTransport
from storage.sqlite import FILE_NAME as SQLITE_FILE
from storage.sqlite import SqliteStorage

log = logging.getLogger("kvpaxos.server")


async def run_node(config: NodeConfig, stop: asyncio.Event) -> None:
    """Run a node until `stop` is set; the storage is opened and closed here."""
    fresh = not os.path.exists(os.path.join(config.data_dir, SQLITE_FILE))
    rejoin = joined = False
    genesis = None
    if config.join_url is not None and not has_state(config.data_dir, SQLITE_FILE):
        found = await join(config)
        rejoin, joined, genesis = found.was_voter, not found.was_voter, found.genesis
    storage = SqliteStorage(config.data_dir, config.node_id)
    if genesis is not None and storage.genesis() is None:
        storage.set_genesis(genesis)  # the cluster's, not one made from this node's address
    if rejoin and storage.rebuilding() is None:
        # This id voted before and its data directory is new: it lost its promises.
        # Undecided, the node asks every peer for the round to rebuild under.
        storage.set_rebuilding(UNDECIDED)
    node = Node(config, storage, fresh=fresh, joined=joined)
    pauses = PausePolicy(observe=node.metrics.gc_pause.observe)
    transport = PeerTransport(config.node_id, config.cluster, node.deliver, secret=config.secret,
                              ssl_context=peer_ssl_context(config), cluster_id=lambda: node.cluster_id)
    node.send_peer = transport.send
    node.send_peer_lazy = transport.send_lazy
    node.flush_lazy = transport.flush_lazy
    failure: list[BaseException] = []

    def fatal(exc: BaseException) -> None:
        failure.append(exc)
        stop.set()

    node.on_fatal = fatal
    node.on_peers = transport.set_peers
    # Removed from the cluster: answer what is in flight, then stop (exit status 0).
    node.on_removed = lambda: asyncio.get_running_loop().call_later(REMOVED_GRACE_S, stop.set)
    # Open event streams (the dashboard) must not hold a stopping node for aiohttp's default minute.
    runner = web.AppRunner(init_app(node, transport), access_log=None, handle_signals=False,
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    host, port = config.address
    try:
        tls = server_ssl_context(config.tls_cert, config.tls_key) if config.tls_cert else None
        await web.TCPSite(runner, host, port, reuse_address=True, ssl_context=tls).start()
        await node.start()
        await transport.start()
        pauses.install()  # shorter full collections from now on (kvpaxos/gcpause.py)
        log.info("node serving", extra=logs.fields(
            url=f"{config.scheme}://{host}:{port}", data_dir=config.data_dir,
            peer_auth="secret" if config.secret else "none", client_token=config.token is not None))
        await stop.wait()
    finally:
        await transport.stop()
        await runner.cleanup()
        await node.stop()
        pauses.uninstall()
    if failure:
        raise failure[0]


# The disk thread and sqlitedict's thread each need the GIL for a moment per group
# commit; with CPython's default 5 ms switch interval a busy event loop made every
# fsync'd commit wait several milliseconds for it.
SWITCH_INTERVAL_S = 0.0005
REMOVED_GRACE_S = 1.0
SHUTDOWN_TIMEOUT_S = 3.0


def serve(config: NodeConfig, log_level: str = "info", log_format: str = "text") -> None:
    logs.setup(log_level, log_format, node_id=config.node_id)
    sys.setswitchinterval(SWITCH_INTERVAL_S)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_node(config, stop)

    asyncio.run(main())
