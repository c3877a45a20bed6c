"""`kv serve`: one node process, from the data directory to a listening socket."""
from __future__ import annotations

import asyncio
import logging
import os
import signal

from aiohttp import web

from kvpaxos.config import NodeConfig
from kvpaxos.http import init_app
from kvpaxos.node import Node
from kvpaxos.transport import PeerTransport
from storage.sqlite import FILE_NAME as SQLITE_FILE
from storage.sqlite import SqliteStorage

log = logging.getLogger("kvpaxos.server")


async def run_node(config: NodeConfig, stop: asyncio.Event) -> None:
    """Run a node until `stop` is set; the storage is opened and closed here."""
    fresh = not os.path.exists(os.path.join(config.data_dir, SQLITE_FILE))
    storage = SqliteStorage(config.data_dir, config.node_id)
    node = Node(config, storage, fresh=fresh)
    transport = PeerTransport(config.node_id, config.cluster, node.deliver)
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
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        await node.start()
        await transport.start()
        log.info("node %d serving on %s:%d, data in %s", config.node_id, host, port, config.data_dir)
        await stop.wait()
    finally:
        await transport.stop()
        await runner.cleanup()
        await node.stop()
    if failure:
        raise failure[0]


def serve(config: NodeConfig, log_level: str = "info") -> None:
    logging.basicConfig(level=log_level.upper(),
                        format=f"%(asctime)s node{config.node_id} %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_node(config, stop)

    asyncio.run(main())
