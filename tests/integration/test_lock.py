"""Locks through keys with a time to live (kvpaxos/lock.py) on real `kv serve`
processes: mutual exclusion with growing fencing tokens, a holder kept past its ttl
by refreshes, a holder killed (the lock expires to the next), a lock taken away
(held turns False), a holder cut off from the cluster (held turns False a ttl after
its last refresh was sent), a paused holder whose release must leave the new holder's
key, a timeout, a cluster too slow for the ttl, and the asyncio twin.

Every wait has a deadline.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from kvpaxos.aioclient import AsyncClient
from kvpaxos.client import Client
from kvpaxos.lock import LockTimeout, LockTooSlow
from support.cluster import Cluster, module_cluster, wait_until
from support.netproxy import NetProxy

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, "lock")


def endpoints(cluster: Cluster) -> list[str]:
    return [cluster.url(i) for i in cluster.ids]


def fresh() -> str:
    return f"locks/{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def frozen(cluster: Cluster) -> Iterator[None]:
    """Every node stopped (SIGSTOP) for the block: the cluster out of reach, its sockets open."""
    for proc in cluster.procs.values():
        os.killpg(proc.pid, signal.SIGSTOP)  # its own process group (start_new_session)
    try:
        yield
    finally:
        for proc in cluster.procs.values():
            os.killpg(proc.pid, signal.SIGCONT)


def test_holders_never_overlap_and_tokens_grow(shared: Cluster) -> None:
    key = fresh()
    held: list[tuple[float, float, int, str]] = []  # (from, to, token, who)
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            with Client(endpoints(shared), timeout_s=10) as kv:
                for _ in range(4):
                    with kv.lock(key, ttl_s=2, timeout_s=30) as lock:
                        start = time.monotonic()
                        time.sleep(0.05)
                        assert lock.held
                        held.append((start, time.monotonic(), lock.token, name))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(held) == 12
    held.sort()
    for (_, end, token, _), (start, _, next_token, _) in zip(held, held[1:]):
        assert end <= start, held  # one holder at a time
        assert next_token > token, held  # fencing tokens grow with each new holder
    assert shared.get(1, key).status == 404  # the last one released it


def test_a_holder_keeps_the_lock_past_its_ttl_by_refreshing(shared: Cluster) -> None:
    key = fresh()
    with Client(endpoints(shared)) as kv, kv.lock(key, ttl_s=1.2) as lock:
        time.sleep(3.0)  # two and a half ttls
        assert lock.held
        got = shared.get(2, key)
        assert got.status == 200 and got.body["version"] == lock.token and got.body["value"] == lock.owner
    assert shared.get(2, key).status == 404


def test_a_second_acquirer_times_out_while_the_lock_is_held(shared: Cluster) -> None:
    key = fresh()
    with Client(endpoints(shared)) as a, Client(endpoints(shared)) as b, a.lock(key, ttl_s=5):
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            b.lock(key, timeout_s=0.5).acquire()
        assert 0.4 < time.monotonic() - started < 5


def test_a_lock_taken_away_is_no_longer_held_and_its_release_leaves_the_next_holder(shared: Cluster) -> None:
    key = fresh()
    with Client(endpoints(shared)) as a, Client(endpoints(shared)) as b:
        lock = a.lock(key, ttl_s=0.9)
        lock.acquire()
        assert shared.delete(3, key).status == 200  # an operator removes it
        wait_until(lambda: not lock.held, 5, "the holder to notice it lost the lock")
        with b.lock(key, ttl_s=5, timeout_s=5) as second:
            assert second.token > lock.token
            lock.release()  # the old holder's release must not delete the new holder's key
            got = shared.get(1, key)
            assert got.status == 200 and got.body["value"] == second.owner


def test_a_paused_holders_release_leaves_the_next_holders_key(shared: Cluster) -> None:
    key = fresh()
    with Client(endpoints(shared)) as a, Client(endpoints(shared)) as b:
        paused = a.lock(key, ttl_s=0.6)
        paused.acquire()
        paused._stop.set()  # its refreshes stop, as in a process paused past its ttl ...
        paused._keeper.join(timeout=5)
        assert paused.held  # ... which has not noticed
        with b.lock(key, timeout_s=10) as second:
            paused.release()  # at the version it acquired: not the new holder's key
            got = shared.get(1, key)
            assert got.status == 200 and got.body["value"] == second.owner, got


def test_held_ends_a_ttl_after_the_last_refresh_sent_while_the_cluster_is_out_of_reach(shared: Cluster) -> None:
    """With every node frozen, refreshes fail. `held` must be False a ttl after the last
    refresh that succeeded was sent, the earliest the key may expire, without waiting
    for a failed refresh to say so."""
    key = fresh()
    ttl = 1.5
    with Client(endpoints(shared), timeout_s=5) as kv:
        lock = kv.lock(key, ttl_s=ttl)
        lock.acquire()
        time.sleep(0.7)  # a refresh or two
        assert lock.held
        frozen_at = time.monotonic()
        with frozen(shared):
            time.sleep(max(0.0, frozen_at + ttl - time.monotonic()))
            assert not lock.held
        lock.release()
    shared.wait_for_leader()


def test_an_acquire_answered_late_refreshes_before_it_returns(shared: Cluster) -> None:
    """The cluster is frozen while the put that takes the lock is on its way, so its answer
    comes back later than the lock could be sure of: acquire() refreshes the key before it
    returns, and returns a lock that is held."""
    key = fresh()
    with Client(endpoints(shared), timeout_s=10) as kv:
        lock = kv.lock(key, ttl_s=0.6)
        taker = threading.Thread(target=lock.acquire)
        with frozen(shared):
            taker.start()
            time.sleep(1.0)
        taker.join(timeout=30)
        assert not taker.is_alive() and lock.token is not None
        assert lock.held
        lock.release()
    shared.wait_for_leader()


def test_an_acquire_answered_after_its_timeout_gives_the_key_back(shared: Cluster) -> None:
    """The put that takes the lock comes back after the acquirer's timeout (the cluster was
    frozen meanwhile): acquire() raises LockTimeout and deletes the key it took, so the
    next acquirer need not wait out the ttl."""
    key = fresh()
    with Client(endpoints(shared), timeout_s=10) as kv:
        lock = kv.lock(key, ttl_s=2.4, timeout_s=0.5)  # an answer after 0.8 s is late
        failed: list[BaseException] = []

        def take() -> None:
            try:
                lock.acquire()
            except BaseException as exc:  # noqa: BLE001 - looked at below
                failed.append(exc)
        taker = threading.Thread(target=take)
        with frozen(shared):
            taker.start()
            time.sleep(1.2)
        taker.join(timeout=30)
        assert len(failed) == 1 and isinstance(failed[0], LockTimeout), failed
        assert not lock.held and shared.get(1, key).status == 404
        with kv.lock(key, timeout_s=1) as second:  # free at once, not a ttl later
            assert second.held
    shared.wait_for_leader()


def test_an_acquire_whose_answers_all_come_late_gives_up_and_gives_the_key_back(shared: Cluster) -> None:
    """Every answer comes back 0.3 s after its request (a proxy in the way) while a third of
    the ttl is 0.2 s: the lock could never be held with certainty, so acquire() stops after
    LATE_ANSWERS_MAX late answers, deletes the key, and says why (it does not refresh for
    ever, keeping everyone else out)."""
    key = fresh()
    node = shared.wait_for_leader()
    with NetProxy({node: shared.ports[node], 0: shared.ports[node]}) as proxy:
        proxy.set([(0, node)], delay_ms=150)  # each way
        slow = f"http://127.0.0.1:{proxy.ports[(0, node)]}"
        with Client([slow], timeout_s=10) as kv:
            failed: list[BaseException] = []

            def take() -> None:
                try:
                    kv.lock(key, ttl_s=0.6).acquire()
                except BaseException as exc:  # noqa: BLE001 - looked at below
                    failed.append(exc)
            taker = threading.Thread(target=take, daemon=True)
            taker.start()
            taker.join(timeout=20)
            assert not taker.is_alive(), "acquire() kept refreshing a lock it could never be sure of"
            assert len(failed) == 1 and isinstance(failed[0], LockTooSlow), failed
            assert "use a longer ttl" in str(failed[0])
    assert shared.get(node, key).status == 404  # given back, not left to expire


HOLDER = """
import sys, time
from kvpaxos.client import Client
kv = Client(sys.argv[1].split(","))
lock = kv.lock(sys.argv[2], ttl_s=1.0)
print(lock.acquire(), flush=True)
time.sleep(120)
"""


def test_a_killed_holders_lock_expires_to_the_next(shared: Cluster) -> None:
    key = fresh()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, ",".join(endpoints(shared)), key],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        token = int(proc.stdout.readline())
        time.sleep(1.5)  # past its ttl: the holder's refreshes keep it
        assert shared.get(1, key).status == 200
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        started = time.monotonic()
        with Client(endpoints(shared)) as kv, kv.lock(key, timeout_s=15) as lock:
            assert lock.token > token
            assert time.monotonic() - started < 10
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_the_asyncio_lock_excludes_a_thread_holder_and_releases(shared: Cluster) -> None:
    key = fresh()

    async def run() -> tuple[int, int]:
        async with AsyncClient(endpoints(shared)) as kv:
            async with kv.lock(key, ttl_s=1.2) as first:
                await asyncio.sleep(3.0)  # kept by refreshes
                assert first.held
                with Client(endpoints(shared)) as other:
                    with pytest.raises(LockTimeout):
                        await asyncio.to_thread(lambda: other.lock(key, timeout_s=0.3).acquire())
            async with kv.lock(key, timeout_s=5) as second:
                return first.token, second.token

    first, second = asyncio.run(asyncio.wait_for(run(), 30))
    assert second > first
    assert shared.get(1, key).status == 404
