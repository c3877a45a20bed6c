"""Client and AsyncClient leases against real `kv serve` processes: grant, keepalive,
revoke, lease_info and leases; a put with a lease and Entry.lease; lease errors as
typed exceptions; and `kv.lease(ttl)`, which keeps its lease alive from a thread (a
task) well past its ttl, revokes it at the end, and says alive False once the lease
was revoked elsewhere or no keepalive got through for a ttl.

Every wait has a deadline: the clients' own timeouts, wait_until, time_limit around
the blocks that wait on a keeper thread, asyncio.wait_for around the async ones.
"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from kvpaxos import AsyncClient, Client, Conflict, LeaseInfo, NotFound
from support.cluster import Cluster, module_cluster, wait_until
from support.timing import time_limit

TEST_S = 60.0  # the bound of any one test's body


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, "lease-client")


def fresh() -> str:
    return f"lc-{uuid.uuid4().hex[:10]}"


def urls(cluster: Cluster) -> list[str]:
    return [cluster.url(i) for i in cluster.ids]


def keepers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("kvpaxos-lease-")]


def test_grant_put_info_keepalive_and_revoke(shared: Cluster) -> None:
    prefix = fresh()
    with time_limit(TEST_S), Client(urls(shared), timeout_s=10) as kv:
        lease = kv.grant(300)
        keys = [f"{prefix}/{n}" for n in range(3)]
        for key in keys:
            kv.put(key, "v", lease=lease)
        kv.put(f"{prefix}/plain", "p")
        assert kv.get(keys[0]).lease == lease and kv.get(f"{prefix}/plain").lease is None
        assert {e.key: e.lease for e in kv.list(prefix)} == {**dict.fromkeys(keys, lease), f"{prefix}/plain": None}
        info = kv.lease_info(lease)
        assert isinstance(info, LeaseInfo) and info.id == lease and info.ttl == 300 and info.keys == 3, info
        assert 290 < info.ttl_left <= 300, info
        assert kv.lease_info(lease, keys=True).keys == keys
        assert kv.lease_info(lease, stale=True).keys == 3
        assert kv.keepalive(lease) == 300.0
        # A put without the lease takes its key off it.
        kv.put(keys[2], "w")
        assert kv.get(keys[2]).lease is None and kv.lease_info(lease).keys == 2
        assert kv.revoke(lease) == 2
        for key in keys[:2]:
            with pytest.raises(NotFound):
                kv.get(key)
        assert kv.get(keys[2]).value == "w" and kv.get(f"{prefix}/plain").value == "p"
        assert all(found.id != lease for found in kv.leases())


def test_lease_errors_raise_the_typed_errors(shared: Cluster) -> None:
    key = fresh()
    with time_limit(TEST_S), Client(urls(shared), timeout_s=10) as kv:
        lease = kv.grant(300)
        kv.revoke(lease)
        calls = [lambda: kv.keepalive(lease), lambda: kv.revoke(lease), lambda: kv.lease_info(lease),
                 lambda: kv.put(key, "v", lease=lease)]
        for call in calls:
            with pytest.raises(NotFound) as caught:
                call()
            assert caught.value.code == "lease_not_found" and caught.value.status == 404, caught.value
        with pytest.raises(NotFound):
            kv.get(key)  # the put on the ended lease did nothing
        with pytest.raises(Conflict) as caught:
            kv.grant(60, lease_id=lease)  # an id that existed is never granted again
        assert caught.value.code == "lease_exists" and caught.value.status == 409
        held = kv.grant(300)
        kv.put(key, "v", lease=held)
        with pytest.raises(Conflict) as caught:
            kv.refresh(key, 60)
        assert caught.value.code == "key_has_lease"
        # Caught before any request: an id that cannot be one, and a lease beside a ttl.
        for bad in (0, -1, True, "7", 2**63):
            with pytest.raises(ValueError):
                kv.keepalive(bad)
        with pytest.raises(ValueError):
            kv.put(key, "v", ttl=5, lease=held)
        assert kv.get(key).lease == held
        kv.revoke(held)


def test_a_grant_takes_the_id_asked_for_and_leases_pages_through_all(shared: Cluster) -> None:
    with time_limit(TEST_S), Client(urls(shared), timeout_s=10) as kv:
        granted = [kv.grant(300) for _ in range(4)]
        asked = granted[-1] + 1000
        assert kv.grant(120, lease_id=asked) == asked
        assert kv.grant(300) > asked  # later grants go on above it
        kv.put(fresh(), "v", lease=granted[1])
        every = kv.leases()
        paged = kv.leases(page=2)  # a page at a time: several pages for these
        assert [x.id for x in paged] == [x.id for x in every] == sorted(x.id for x in every)
        by_id = {x.id: x for x in paged}
        assert set(granted) | {asked} <= set(by_id)
        assert [by_id[i].keys for i in granted] == [0, 1, 0, 0] and by_id[asked].ttl == 120
        for lease_id in granted + [asked]:
            kv.revoke(lease_id)


def test_a_lease_kept_from_a_thread_lives_past_its_ttl_and_is_revoked_at_the_end(shared: Cluster) -> None:
    key = fresh()
    with time_limit(TEST_S), Client(urls(shared), timeout_s=10) as kv:
        started = time.monotonic()
        with kv.lease(1.0) as lease:
            assert lease.alive and len(keepers()) == 1
            kv.put(key, "kept", lease=lease.id)
            while time.monotonic() - started < 4.0:  # four times its ttl
                time.sleep(0.25)
                assert lease.alive
            assert kv.get(key).lease == lease.id
            assert 0 < kv.lease_info(lease.id).ttl_left <= 1.0
        assert not lease.alive and keepers() == []
        with pytest.raises(NotFound):
            kv.get(key)  # revoked with the lease at once, not left to run out
        with pytest.raises(NotFound):
            kv.lease_info(lease.id)


def test_alive_turns_false_when_the_lease_is_revoked_elsewhere(shared: Cluster) -> None:
    key = fresh()
    with time_limit(TEST_S), Client(urls(shared), timeout_s=10) as kv, Client(urls(shared)) as other:
        lease = kv.lease(3.0)
        lease_id = lease.grant()
        kv.put(key, "v", lease=lease_id)
        assert other.revoke(lease_id) == 1
        # The next keepalive, a third of a ttl after the grant, finds it gone: well before
        # the ttl itself would have made alive False.
        revoked = time.monotonic()
        wait_until(lambda: not lease.alive, 20, "the keeper to find its lease revoked")
        assert time.monotonic() - revoked < 2.5
        wait_until(lambda: keepers() == [], 5, "the keeper thread to end")
        assert lease.close() == 0  # nothing left to revoke
        with pytest.raises(NotFound):
            kv.get(key)


def test_alive_turns_false_when_no_keepalive_gets_through_for_a_ttl(make_cluster) -> None:
    cluster = make_cluster(1)
    cluster.wait_for_leader()
    with time_limit(TEST_S), Client([cluster.url(1)], timeout_s=2) as kv:
        lease = kv.lease(1.5)
        lease.grant()
        assert lease.alive
        killed = time.monotonic()
        cluster.kill(1)
        wait_until(lambda: not lease.alive, 10, "alive to turn False with the cluster gone")
        # By the ttl from the last keepalive that got through (sent before the kill).
        assert time.monotonic() - killed <= 1.5 + 0.5
        wait_until(lambda: keepers() == [], 5, "the keeper thread to give up")
        lease.stop()


def test_the_async_client_grants_keeps_and_revokes(shared: Cluster) -> None:
    key = fresh()

    async def scenario() -> None:
        async with AsyncClient(urls(shared), timeout_s=10) as kv:
            lease = await kv.grant(300)
            await kv.put(key, "v", lease=lease)
            assert (await kv.get(key)).lease == lease
            assert [e.lease for e in await kv.list(key)] == [lease]
            assert await kv.keepalive(lease) == 300.0
            info = await kv.lease_info(lease, keys=True)
            assert info.id == lease and info.ttl == 300 and info.keys == [key], info
            assert lease in [x.id for x in await kv.leases(page=1)]
            assert await kv.revoke(lease) == 1
            with pytest.raises(NotFound):
                await kv.get(key)
            for call in (kv.keepalive(lease), kv.revoke(lease), kv.lease_info(lease), kv.put(key, "v", lease=lease)):
                with pytest.raises(NotFound) as caught:
                    await call
                assert caught.value.code == "lease_not_found", caught.value
            with pytest.raises(Conflict) as caught:
                await kv.grant(5, lease_id=lease)
            assert caught.value.code == "lease_exists"

    asyncio.run(asyncio.wait_for(scenario(), TEST_S))


def test_async_with_a_lease_keeps_it_past_its_ttl_and_notices_a_revoke(shared: Cluster) -> None:
    kept, lost = fresh(), fresh()

    async def scenario() -> None:
        async with AsyncClient(urls(shared), timeout_s=10) as kv:
            started, tasks = time.monotonic(), asyncio.all_tasks()
            async with kv.lease(1.0) as lease:
                assert len(asyncio.all_tasks() - tasks) == 1  # its keeper
                await kv.put(kept, "v", lease=lease.id)
                while time.monotonic() - started < 4.0:
                    await asyncio.sleep(0.25)
                    assert lease.alive
                assert (await kv.get(kept)).lease == lease.id
            assert not lease.alive and asyncio.all_tasks() == tasks  # the keeper ended
            with pytest.raises(NotFound):
                await kv.get(kept)
            async with kv.lease(3.0) as lease:
                await kv.put(lost, "v", lease=lease.id)
                assert await kv.revoke(lease.id) == 1
                deadline = time.monotonic() + 2.5  # the next keepalive, not the ttl, finds it gone
                while lease.alive:
                    assert time.monotonic() < deadline, "alive never turned False"
                    await asyncio.sleep(0.1)
            # Leaving found nothing to revoke and did not fail.

    asyncio.run(asyncio.wait_for(scenario(), TEST_S))
