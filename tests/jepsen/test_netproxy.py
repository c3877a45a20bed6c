"""The per-link proxies: what block, stall, delay, loss and heal do to a TCP
connection, and that a partition made of them cuts a real cluster where it says."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from support.cluster import wait_until
from support.netproxy import NetProxy


@pytest.fixture
def echo():
    """A TCP echo server; its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue

            def echo_back(conn: socket.socket = conn) -> None:
                with conn:
                    try:
                        while data := conn.recv(65536):
                            conn.sendall(data)
                    except OSError:
                        pass
            threading.Thread(target=echo_back, daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


def round_trip(port: int, payload: bytes = b"ping", timeout: float = 2.0) -> tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        started = time.monotonic()
        s.sendall(payload)
        data = b""
        while len(data) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data, time.monotonic() - started


def test_block_stall_delay_loss_and_heal(echo):
    with NetProxy({1: 1, 2: echo}) as net:
        assert net.spec_for(1) == f"1=127.0.0.1:1,2=127.0.0.1:{net.ports[(1, 2)]}"
        port = net.ports[(1, 2)]
        assert round_trip(port)[0] == b"ping"
        assert round_trip(port, b"x" * 300_000)[0] == b"x" * 300_000

        # block: a connection that is open is cut, new ones are refused
        held = socket.create_connection(("127.0.0.1", port), timeout=2)
        held.sendall(b"a")
        assert held.recv(10) == b"a"
        net.block([(1, 2)])
        try:
            assert held.recv(10) == b""
        except ConnectionResetError:
            pass
        held.close()
        with pytest.raises(OSError):
            round_trip(port)
        net.heal()
        assert round_trip(port)[0] == b"ping"

        # stall: nothing flows, nothing is reset; healing lets the held bytes through
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            net.set([(1, 2)], mode="stall")
            s.sendall(b"held")
            with pytest.raises(socket.timeout):
                s.recv(10)
            net.heal()
            s.settimeout(2)
            assert s.recv(10) == b"held"

        # delay: each direction waits delay_ms, so a round trip takes twice that
        net.set([(1, 2)], delay_ms=150)
        data, took = round_trip(port)
        assert data == b"ping" and took >= 0.29, took
        net.heal()
        assert round_trip(port)[1] < 0.25

        # loss 1.0: every connection is lost
        net.set("all", loss=1.0)
        with pytest.raises(OSError):
            round_trip(port)
        net.heal()
        assert round_trip(port)[0] == b"ping"
        stats = net.stats()["1-2"]
        assert stats["refused"] >= 2 and stats["cut"] >= 1, stats
        assert net.stats()["2-1"]["accepted"] == 0


def test_a_partition_cuts_the_cluster_where_it_says(fault_cluster):
    cluster = fault_cluster(3)
    assert cluster.net is not None
    leader = cluster.wait_for_leader()
    others = [i for i in cluster.ids if i != leader]
    assert cluster.put(leader, "before", "1").status == 200

    cluster.net.partition([leader], others)
    new = cluster.wait_for_leader(ids=others, not_=leader, timeout=20)
    assert cluster.put(new, "during", "2").status == 200
    lonely = cluster.put(leader, "lonely", "3", timeout=15)
    assert lonely.status in (503, 504), lonely  # no majority on its side
    assert not any(p["reachable"] for p in cluster.status(leader)["peers"].values())

    cluster.net.heal()
    wait_until(lambda: cluster.put(leader, "after", "4", timeout=5).status == 200, 20, "a write via the old leader")
    assert cluster.get(leader, "during").body["value"] == "2"
    assert cluster.get(others[0], "after").body["value"] == "4"
