"""Where a node compacts behind a snapshot: at most compact_keep_slots slots kept, and at
most compact_keep_bytes of commands in them (kvpaxos/snapshotter.py, compact_point)."""
from __future__ import annotations

from kvpaxos.snapshotter import Snapshotter


def applied(tmp_path, first: int, last: int, size: int) -> Snapshotter:
    snaps = Snapshotter(str(tmp_path))
    for slot in range(first, last + 1):
        snaps.applied(slot, size)
    return snaps


def test_small_slots_keep_the_slot_count(tmp_path):
    snaps = applied(tmp_path, 1, 100, 10)
    assert snaps.compact_point(100, keep_slots=30, keep_bytes=10_000) == 70
    snaps.close()


def test_big_slots_keep_what_fits_in_the_bytes(tmp_path):
    snaps = applied(tmp_path, 1, 100, 10)
    assert snaps.compact_point(100, keep_slots=30, keep_bytes=25) == 98  # two slots of 10 fit
    assert snaps.compact_point(100, keep_slots=30, keep_bytes=0) == 100  # nothing fits
    snaps.close()


def test_slots_applied_after_the_snapshot_do_not_count(tmp_path):
    snaps = applied(tmp_path, 1, 100, 10)
    snaps.applied(101, 1_000_000)  # applied while the snapshot at 100 was written
    assert snaps.compact_point(100, keep_slots=30, keep_bytes=25) == 98
    snaps.close()


def test_sizes_unknown_before_a_restart_are_not_guessed(tmp_path):
    # After a restart only the slots applied since are known: if they fit, the slot
    # count decides; if they do not, compaction goes as far as the bytes say.
    snaps = applied(tmp_path, 90, 100, 10)
    assert snaps.compact_point(100, keep_slots=30, keep_bytes=200) == 70
    snaps = applied(tmp_path, 90, 100, 10)
    assert snaps.compact_point(100, keep_slots=30, keep_bytes=25) == 98
    snaps.close()


def test_memory_steps_are_sized_in_bytes_and_forget_the_sizes(tmp_path):
    """Freeing costs by the commands freed: a step holds at most its budget of bytes (or
    one slot), so big slots after small ones do not make one long step."""
    def size(slot: int) -> int:
        return 1000 if 41 <= slot <= 60 else 10

    snaps = Snapshotter(str(tmp_path))
    for slot in range(1, 101):
        snaps.applied(slot, size(slot))
    through = snaps.compact_point(100, keep_slots=30, keep_bytes=25)
    assert through == 98
    steps, slot = [], 0
    while slot < through:
        end = snaps._step_end(slot, through, 2000)
        assert slot < end <= through
        steps.append((slot, end))
        slot = end
    for lo, hi in steps:
        assert sum(size(s) for s in range(lo + 1, hi + 1)) <= 2000 or hi == lo + 1, (lo, hi)
    assert steps[0] == (0, 41) and len(steps) >= 10
    assert [s for s, _ in snaps._sizes] == [99, 100]  # what stays in the log
    snaps.close()


def test_members_take_their_first_snapshot_at_different_slots(tmp_path):
    """The members apply the same slots: with the same thresholds they would all snapshot
    and compact at once (each answers slowly meanwhile); node ids spread the first one."""
    from types import SimpleNamespace

    from kvpaxos.snapshotter import phase_of

    def first_due(node_id: int) -> int:
        snaps = Snapshotter(str(tmp_path / str(node_id)), phase_of(node_id))
        config = SimpleNamespace(snapshot_every_slots=100, snapshot_every_bytes=1 << 40)
        for slot in range(1, 1000):
            if snaps.due(SimpleNamespace(config=config, kv=SimpleNamespace(applied_slot=slot))):
                snaps.close()
                return slot
        raise AssertionError("never due")

    firsts = [first_due(i) for i in (1, 2, 3)]
    assert len(set(firsts)) == 3 and all(100 <= f < 200 for f in firsts), firsts
    snaps = Snapshotter(str(tmp_path / "x"), 0.5)
    snaps.phase = 0.0  # as after its first snapshot: the plain period from then on
    config = SimpleNamespace(snapshot_every_slots=100, snapshot_every_bytes=1 << 40)
    assert snaps.due(SimpleNamespace(config=config, kv=SimpleNamespace(applied_slot=100)))
    snaps.close()


def test_forgetting_the_log_leaves_the_loop_to_requests_between_steps(tmp_path):
    """Each step of freeing the log in memory runs on the event loop; after it the loop
    serves everything else for MEMORY_REST_RATIO times as long, so a node keeps up with
    its load while it compacts instead of queueing requests behind the steps."""
    import asyncio
    import time
    from types import SimpleNamespace

    from kvpaxos.snapshotter import MEMORY_REST_RATIO

    assert MEMORY_REST_RATIO >= 3
    busy: list[float] = []

    def compact_in_memory(slot: int) -> None:  # as if freeing took 2 ms a step
        started = time.perf_counter()
        while time.perf_counter() - started < 0.002:
            pass
        busy.append(time.perf_counter() - started)

    async def on_disk(fn, *args):
        return None

    snaps = Snapshotter(str(tmp_path))
    for slot in range(1, 401):
        snaps.applied(slot, 100_000)  # a step of 64 KiB holds one slot
    node = SimpleNamespace(replica=SimpleNamespace(compact=compact_in_memory), run_on_disk=on_disk,
                           storage=SimpleNamespace(compact=None))

    async def run() -> tuple[float, int]:
        turns = 0
        done = False

        async def other_work() -> None:
            nonlocal turns
            while not done:
                turns += 1
                await asyncio.sleep(0)

        probe = asyncio.create_task(other_work())
        started = time.perf_counter()
        await snaps._compact(node, 20)
        elapsed = time.perf_counter() - started
        done = True
        await probe
        return elapsed, turns

    elapsed, turns = asyncio.run(run())
    snaps.close()
    assert snaps.compacted_through == 20 and len(busy) >= 10
    # asyncio.sleep waits at least what it is asked: the loop was free for the rest.
    assert elapsed >= (1 + MEMORY_REST_RATIO) * sum(busy) * 0.95
    assert turns >= 10 * len(busy)
