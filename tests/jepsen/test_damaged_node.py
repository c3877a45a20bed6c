"""A node of a live cluster whose SQLite file is damaged refuses to start, with one
clear line; the others carry on; wiped, it rebuilds from its peers.

The refusal itself, for every kind of damage, is tested on a single data
directory in tests/storage/test_sqlite.py; this is the same refusal in a running
cluster.
"""
from __future__ import annotations

import shutil
import signal

from support.cluster import wait_until

FILE = "acceptor.sqlite"


def test_damaged_node_refuses_to_start_and_rebuilds_once_wiped(make_cluster):
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    victim = next(i for i in cluster.ids if i != leader)
    for n in range(30):
        assert cluster.put(cluster.ids[n % 3], f"d{n}", f"v{n}").status == 200
    # Stopped cleanly, so the WAL is folded back into the file: garbage written over the
    # file's first pages is then not covered up by newer copies of them in the WAL.
    cluster.kill(victim, signal.SIGTERM)
    path = cluster.data_dir(victim) / FILE
    assert not (cluster.data_dir(victim) / (FILE + "-wal")).exists()
    with open(path, "r+b") as f:
        f.write(b"\x00not sqlite\xff" * 512)

    proc = cluster.spawn(victim)
    code = proc.wait(timeout=30)
    cluster.procs[victim] = None
    tail = cluster.log_tail(victim, 5)
    errors = [line for line in tail.splitlines() if line.startswith("error:")]
    assert code == 1, tail
    assert len(errors) == 1 and str(path) in errors[0] and "Traceback" not in tail, tail

    # The other two are a majority: writes go on.
    for n in range(30, 40):
        assert cluster.put(leader, f"d{n}", f"v{n}").status == 200

    # Wiped, the node rejoins as a non-voter, rebuilds, and serves every key.
    shutil.rmtree(cluster.data_dir(victim))
    cluster.spawn(victim)
    cluster.wait_ready(victim)
    wait_until(lambda: cluster.status(victim)["voting"], 30, f"node {victim} to vote again")
    for n in range(40):
        r = cluster.get(victim, f"d{n}")
        assert (r.status, r.body.get("value")) == (200, f"v{n}"), (n, r)
    assert cluster.put(victim, "after", "rebuild").status == 200
