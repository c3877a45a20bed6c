"""Run `kv` with a deliberately broken kvpaxos, to prove the fault-injection suite
catches the bug:

    python tests/support/planted.py BUG serve --id 1 --cluster ... --data-dir ...

The bug is monkeypatched in before cli.main runs; the production code holds no
switch for it. Bugs:

  stale_reads      linearizable reads are served from the node's local copy, with
                   no read-index round (Node.linearizable_point returns at once).
  no_fsync         storage acknowledges before its writes are durable: save()
                   hands them to a write-behind buffer that a thread commits every
                   WRITE_BEHIND_S, on a connection with synchronous=OFF (a disk
                   whose cache lies about fsync). A kill -9 loses what the buffer
                   held, as a power cut loses what was never fsynced.
  follower_reads   a node that is not the leader and cannot reach one (a partition)
                   answers linearizable reads from its local copy instead of failing.
"""
from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WRITE_BEHIND_S = 0.5


def stale_reads() -> None:
    from kvpaxos.node import Node

    async def linearizable_point(self) -> None:  # noqa: ANN001
        return None

    Node.linearizable_point = linearizable_point


def no_fsync() -> None:
    from storage.sqlite import SqliteStorage

    durable_save = SqliteStorage.save
    durable_submit = getattr(SqliteStorage, "submit", None)  # queue + callback once durable
    original_init = SqliteStorage.__init__

    def write_durably(self, writes) -> None:  # noqa: ANN001
        if durable_submit is not None:
            done = threading.Event()
            durable_submit(self, writes, done.set)
            done.wait()
        else:
            durable_save(self, writes)

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        original_init(self, *args, **kwargs)
        self.db.conn.execute("PRAGMA synchronous=OFF")
        self.db.commit(blocking=True)
        self._behind = []
        self._behind_lock = threading.Lock()

        def flush_forever() -> None:
            while True:
                time.sleep(WRITE_BEHIND_S)
                with self._behind_lock:
                    pending, self._behind = self._behind, []
                for writes in pending:
                    write_durably(self, writes)

        threading.Thread(target=flush_forever, name="write-behind", daemon=True).start()

    def save(self, writes) -> None:  # noqa: ANN001
        with self._behind_lock:
            self._behind.append(writes)  # "done": the node now sends its acknowledgements

    def submit(self, writes, on_durable) -> None:  # noqa: ANN001
        save(self, writes)
        on_durable()

    SqliteStorage.__init__ = __init__
    SqliteStorage.save = save
    if durable_submit is not None:
        SqliteStorage.submit = submit
    SqliteStorage.synchronous = lambda self: "FULL"  # pass the start-up check, like a lying disk


def follower_reads() -> None:
    from kvpaxos.core.replica import Role
    from kvpaxos.errors import NoQuorum, OutcomeUnknown
    from kvpaxos.node import Node

    read_index = Node.linearizable_point

    async def linearizable_point(self) -> None:  # noqa: ANN001
        replica = self.replica
        if replica.role is not Role.LEADER and not replica._leader_alive():
            return None  # no leader in sight: "answer from what we have"
        try:
            await asyncio.wait_for(read_index(self), 1.0)
        except (NoQuorum, OutcomeUnknown, TimeoutError):
            if replica.role is Role.LEADER:
                raise
            return None

    Node.linearizable_point = linearizable_point


BUGS = {"stale_reads": stale_reads, "no_fsync": no_fsync, "follower_reads": follower_reads}


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in BUGS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(BUGS)}}} KV-ARGS...")
    sys.path[0] = REPO_ROOT  # not tests/support: import kvpaxos and cli from the checkout
    BUGS[sys.argv[1]]()
    from cli.main import main as kv_main
    kv_main(sys.argv[2:])


if __name__ == "__main__":
    main()
