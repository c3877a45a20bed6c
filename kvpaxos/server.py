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
from kvpaxos.http import init_app
from kvpaxos.node import Node
from kvpaxos.security import peer_ssl_context, server_ssl_context
from kvpaxos.transport import PeerTransport
from storage.sqlite import FILE_NAME as SQLITE_FILE
from storage.sqlite import SqliteStorage

log = logging.getLogger("kvpaxos.server")


async def run_node(config: NodeConfig, stop: asyncio.Event) -> None:
    """Run a node until `stop` is set; the storage is opened and closed here."""
    fresh = not os.path.exists(os.path.join(config.data_dir, SQLITE_FILE))
    storage = SqliteStorage(config.data_dir, config.node_id)
    node = Node(config, storage, fresh=fresh)
    transport = PeerTransport(config.node_id, config.cluster, node.deliver, secret=config.secret,
                              ssl_context=peer_ssl_context(config))
    node.send_peer = transport.send
    failure: list[BaseException] = []

    def fatal(exc: BaseException) -> None:
        failure.append(exc)
        stop.set()

    node.on_fatal = fatal
    runner = web.AppRunner(init_app(node, transport), access_log=None, handle_signals=False)
    await runner.setup()
    host, port = config.address
    try:
        tls = server_ssl_context(config.tls_cert, config.tls_key) if config.tls_cert else None
        await web.TCPSite(runner, host, port, reuse_address=True, ssl_context=tls).start()
        await node.start()
        await transport.start()
        log.info("node serving", extra=logs.fields(
            url=f"{config.scheme}://{host}:{port}", data_dir=config.data_dir,
            peer_auth="secret" if config.secret else "none", client_token=config.token is not None))
        await stop.wait()
    finally:
        await transport.stop()
        await runner.cleanup()
        await node.stop()
    if failure:
        raise failure[0]


# The disk thread and sqlitedict's thread each need the GIL for a moment per group
# commit; with CPython's default 5 ms switch interval a busy event loop made every
# fsync'd commit wait several milliseconds for it.
SWITCH_INTERVAL_S = 0.0005


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
