"""Snapshots at run time: take them, compact behind them, fetch and install peers'.

Owns the node's snapshot file and the thread that writes it. The rules:
- a snapshot is taken every `snapshot_every_slots` applied slots or
  `snapshot_every_bytes` of applied commands, whichever comes first; the first
  one after a start waits a share of that longer that depends on the node id
  (`phase`), so that the members of a cluster, which apply the same slots, do
  not all snapshot and compact at once: a node compacting a large log answers
  slowly for a while (its group commits wait behind the deletes), and with the
  others staggered a majority without it answers as fast as ever;
- only once it is durable does the node compact: the log up to
  (snapshot slot - compact_keep_slots) is dropped from SQLite and memory, and
  further if the slots kept would hold more than compact_keep_bytes of
  commands (slots of big batches), so a peer a little behind still catches up
  from the log, and one far behind gets the snapshot;
- a fetched snapshot is streamed to a temporary file in chunks (memory stays
  bounded), checked against its checksum, renamed into place, and only then
  replaces the key-value state.
"""
from __future__ import annotations

import asyncio
import collections
import glob
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, BinaryIO

import aiohttp

from kvpaxos import snapshot
from kvpaxos.core.kvstate import Export, KVState
from storage.base import Pacer

if TYPE_CHECKING:
    from kvpaxos.node import Node

log = logging.getLogger("kvpaxos.snapshot")
CHUNK_BYTES = 256 * 1024
MEMORY_STEP_S = 0.003  # forgetting the log in memory takes steps of about this long
MEMORY_STEP_BYTES = 64 * 1024  # the first such step: this many bytes of commands
MEMORY_REST_RATIO = 3.0  # after each step the loop serves requests for this many times as long


def phase_of(node_id: int) -> float:
    """The share of a snapshot period by which node_id's first snapshot is late."""
    return (node_id % 4) / 4


class Snapshotter:
    def __init__(self, data_dir: str, phase: float = 0.0) -> None:
        self.data_dir = data_dir
        self.phase = phase  # until the first snapshot taken or installed since the start
        self.path = snapshot.path_in(data_dir)
        self.slot = 0
        self.size_bytes = 0
        self.compacted_through = 0
        self.compacting_through = 0  # set when a compaction starts (compacted_through when it ends)
        self.applied_bytes = 0  # command bytes applied since the last snapshot
        self._sizes: collections.deque[tuple[int, int]] = collections.deque()  # (slot, bytes through it)
        self._total_bytes = 0  # command bytes applied since start
        self._forgotten_bytes = 0  # of those, the bytes of slots compacted (in memory) since
        self.busy = False  # a snapshot is being written (or waits to be)
        self._lock = asyncio.Lock()
        self._takers = 0
        self.taken = 0
        self.installed = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot")
        for stale in glob.glob(os.path.join(data_dir, "*.tmp")):
            os.remove(stale)  # left by a crash mid-write or mid-download

    def load(self) -> KVState:
        """The state of the last durable snapshot, or an empty one."""
        if not os.path.exists(self.path):
            return KVState()
        state = snapshot.read(self.path)
        self.slot = state.applied_slot
        self.size_bytes = os.path.getsize(self.path)
        return state

    def applied(self, slot: int, size_bytes: int) -> None:
        """The node applied `slot`, holding `size_bytes` of commands."""
        self.applied_bytes += size_bytes
        self._total_bytes += size_bytes
        self._sizes.append((slot, self._total_bytes))

    def compact_point(self, slot: int, keep_slots: int, keep_bytes: int) -> int:
        """Where to compact behind a snapshot at `slot`: keep at most keep_slots slots
        and at most keep_bytes of commands below it."""
        through = slot - keep_slots
        at_slot = next((total for s, total in reversed(self._sizes) if s <= slot), None)
        first = True
        for s, total in self._sizes if at_slot is not None else ():
            if s < through:
                continue
            if s > slot:
                break
            if at_slot - total <= keep_bytes:  # slots s+1 .. slot fit in keep_bytes
                if not first:  # (of slots before the first size known, nothing is assumed)
                    through = s
                break
            first = False
        return through

    def due(self, node: Node) -> bool:
        c = node.config
        stretch = 1.0 + self.phase
        return not self.busy and (node.kv.applied_slot - self.slot >= c.snapshot_every_slots * stretch
                                  or self.applied_bytes >= c.snapshot_every_bytes * stretch)

    async def take(self, node: Node) -> int:
        """Make sure a durable snapshot holds every slot applied before the call; then
        compact behind it. Returns its slot.

        Snapshot writes and installs hold one lock, so they never overtake each other:
        the file (and self.slot) only moves forward, and a caller that needs the state
        as of now (GET /v1/snapshot?fresh=true) never gets an older write in progress.
        """
        wanted = node.kv.applied_slot
        self._takers += 1
        self.busy = True
        try:
            async with self._lock:
                if self.slot >= wanted and os.path.exists(self.path):
                    return self.slot
                export = Export(node.kv)  # copies no keys: see Export
                slot = export.header["slot"]
                # The writer closes the export itself when it is done, so a cancelled wait
                # here (at shutdown) never ends the export under a writer still at work.
                written = self._pool.submit(snapshot.write_export, self.path, export)
                self.size_bytes = await asyncio.wrap_future(written)
                self.slot, self.applied_bytes, self.phase = slot, 0, 0.0
                self.taken += 1
                await self._compact(node, self.compact_point(slot, node.config.compact_keep_slots,
                                                             node.config.compact_keep_bytes))
                return slot
        finally:
            self._takers -= 1
            self.busy = self._takers > 0

    async def open_latest(self) -> tuple[BinaryIO, int, int]:
        """The latest snapshot opened for reading, its slot and size. A later snapshot may
        replace the file meanwhile; this open file keeps the bytes it had."""
        async with self._lock:
            f = open(self.path, "rb")
            return f, self.slot, os.fstat(f.fileno()).st_size

    async def _compact(self, node: Node, through_slot: int) -> None:
        if through_slot <= self.compacted_through:
            return
        self.compacting_through = through_slot  # chosen records at or below it are not written again
        await node.run_on_disk(node.storage.compact, through_slot)
        # The log in memory goes in steps of about MEMORY_STEP_S, each followed by a rest
        # MEMORY_REST_RATIO times as long in which the loop serves requests: freeing 10,000
        # slots at once, some of them batches of 1,600 commands, held the loop for 50-70 ms,
        # and steps with one turn between them still queued a busy node's requests (both
        # rests: ARCHITECTURE.md, "What is persisted"). Steps are sized in bytes of commands, which
        # is what freeing costs: sized in slots, a step grown on small slots took 30 ms
        # when it reached the batches.
        slot, pacer = self.compacted_through, Pacer(MEMORY_STEP_S, step=MEMORY_STEP_BYTES)
        while slot < through_slot:
            slot = self._step_end(slot, through_slot, pacer.step)
            started = time.perf_counter()
            node.replica.compact(slot)
            took = time.perf_counter() - started
            pacer.took(took)
            if slot < through_slot:
                await asyncio.sleep(took * MEMORY_REST_RATIO)
        self.compacted_through = through_slot

    def _step_end(self, slot: int, through_slot: int, budget: int) -> int:
        """The last slot of a memory step after `slot` whose commands hold at most
        `budget` bytes (at least one slot; 64 slots where no sizes are known, for slots
        applied before a restart)."""
        sizes = self._sizes
        while sizes and sizes[0][0] <= slot:  # compacted already
            self._forgotten_bytes = sizes.popleft()[1]
        end, start = slot, self._forgotten_bytes
        while sizes and sizes[0][0] <= through_slot:
            s, total = sizes[0]
            if end > slot and total - start > budget:
                break
            sizes.popleft()
            end, self._forgotten_bytes = s, total
        return end if end > slot else min(through_slot, slot + 64)

    async def fetch_and_install(self, node: Node, peer: int, session: aiohttp.ClientSession) -> None:
        """Install peer's snapshot if it is ahead of us; tell the replica either way."""
        tmp = self.path + ".recv.tmp"
        loop = asyncio.get_running_loop()
        if peer not in node.config.cluster:  # its address left with a configuration change
            log.warning("snapshot from node %d: no address known for it", peer)
            node.replica.snapshot_failed()
            return
        try:
            async with session.get(node.peer_url(peer, "/v1/snapshot"),
                                   timeout=aiohttp.ClientTimeout(total=300, sock_read=30)) as resp:
                if resp.status != 200:
                    raise snapshot.SnapshotError(f"peer {peer} answered {resp.status}")
                with open(tmp, "wb") as f:
                    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                        await loop.run_in_executor(self._pool, f.write, chunk)
                    await loop.run_in_executor(self._pool, os.fsync, f.fileno())
            state = await loop.run_in_executor(self._pool, snapshot.read, tmp)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, snapshot.SnapshotError) as e:
            log.warning("snapshot from node %d failed: %s", peer, e)
            node.replica.snapshot_failed()
            return
        async with self._lock:
            if state.applied_slot <= node.kv.applied_slot:
                os.remove(tmp)
                node.replica.snapshot_failed()
                return
            await loop.run_in_executor(self._pool, snapshot.install_file, tmp, self.path)
            self.slot, self.size_bytes, self.applied_bytes = state.applied_slot, os.path.getsize(self.path), 0
            self.phase = 0.0
            self.installed += 1
            if state.applied_slot <= node.kv.applied_slot:  # applied past it meanwhile
                node.replica.snapshot_failed()
                return
            log.info("installed snapshot at slot %d from node %d (%d keys)",
                     state.applied_slot, peer, len(state.data))
            node.install_state(state)
            await self._compact(node, state.applied_slot)

    def describe(self) -> dict:
        return {"slot": self.slot, "bytes": self.size_bytes, "compacted_through": self.compacted_through,
                "taken": self.taken, "installed": self.installed}

    def close(self) -> None:
        self._pool.shutdown(wait=True)
