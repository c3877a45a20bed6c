"""`kv member` and `kv serve --join` against a real cluster.

Three `kv serve` processes from tests/support/cluster.py; nodes that join later are
started here as `python -m cli.main serve --join ...`; every `kv` command is its
own process. Each test bounds its own time.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cluster import HOST, REPO_ROOT, Cluster, free_ports, wait_until
from support.timing import time_limit

pytestmark = pytest.mark.skipif(importlib.util.find_spec("kvpaxos.server") is None,
                                reason="the node server (kvpaxos.server) is not available")

COMMAND_TIMEOUT_S = 60.0


class Joiners:
    """Nodes started with `kv serve --join`, each in its own process group, killed at teardown."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.procs: dict[int, subprocess.Popen] = {}
        self.ports: dict[int, int] = {}

    def address(self, i: int) -> str:
        if i not in self.ports:
            self.ports[i] = free_ports(1)[0]
        return f"{HOST}:{self.ports[i]}"

    def log_path(self, i: int) -> Path:
        return self.dir / f"joiner-{i}.log"

    def start(self, i: int, via: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "cli.main", "serve", "--id", str(i), "--join", via,
               "--address", self.address(i), "--data-dir", str(self.dir / f"joiner-{i}"),
               "--log-level", "info"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("KV_ENDPOINTS", None)
        with open(self.log_path(i), "ab") as log:
            self.procs[i] = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        return self.procs[i]

    def log(self, i: int) -> str:
        try:
            return self.log_path(i).read_text(errors="replace")
        except OSError:
            return ""

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)


@pytest.fixture
def joiners(tmp_path: Path) -> Iterator[Joiners]:
    nodes = Joiners(tmp_path)
    try:
        yield nodes
    finally:
        nodes.stop_all()


def endpoints(cluster: Cluster, joiners: Joiners | None = None) -> str:
    urls = [cluster.url(i) for i in range(1, cluster.n + 1)]
    urls += [f"http://{joiners.address(i)}" for i in (joiners.procs if joiners else ())]
    return ",".join(urls)


def kv(eps: str, *args: str, timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run `kv --endpoints EPS --timeout T ARGS...` as its own process."""
    env = dict(os.environ)
    env.pop("KV_ENDPOINTS", None)
    cmd = [sys.executable, "-m", "cli.main", "--endpoints", eps, "--timeout", str(timeout_s), *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *phrases: str) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    return result.stderr


def members(cluster: Cluster, i: int = 1) -> dict:
    resp = cluster.request(i, "GET", "/v1/members?consistency=stale", timeout=3)
    assert resp.status == 200, resp
    return resp.body


def voter(cluster: Cluster, node_id: int, via: int = 1) -> bool:
    doc = members(cluster, via)
    return node_id in doc["voters"] and not (doc["pending"] or {}).get("what") == f"promote {node_id}"


def table(text: str) -> dict[str, list[str]]:
    """The member rows of `kv member list`: id -> [address, role...]."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines()[1:]:
        cells = line.split()
        if not cells or not cells[0].isdigit():
            break
        rows[cells[0]] = cells[1:]
    return rows


def test_grow_with_join_and_with_member_add(cluster: Cluster, joiners: Joiners) -> None:
    with time_limit(90, "growing the cluster from 3 to 5 voters"):
        leader = cluster.wait_for_leader()
        eps = endpoints(cluster)
        listing = ok(kv(eps, "member", "list"))
        rows = table(listing)
        assert {i: r[1] for i, r in rows.items()} == {"1": "voter", "2": "voter", "3": "voter"}
        assert rows[str(leader)][2:] == ["(leader)"]
        assert rows["2"][0] == f"{HOST}:{cluster.ports[2]}"
        assert "initial" in listing and "pending" not in listing

        # Node 4 adds itself: kv serve --join, then the leader promotes it once caught up.
        ok(kv(eps, "put", "before-4", "yes"))
        joiners.start(4, cluster.url(2))
        wait_until(lambda: voter(cluster, 4), 30, "node 4 to become a voter")
        assert "asking to join" in joiners.log(4)

        # Node 5 is added first (a learner that is not running yet), then started: it
        # finds itself in the configuration and does not ask again.
        added = ok(kv(eps, "member", "add", f"5={joiners.address(5)}"))
        assert added.startswith(f"node 5 ({joiners.address(5)}) is a learner; voters 1,2,3,4"), added
        assert "kv serve --id 5 --join http://" in added and f"--address {joiners.address(5)}" in added
        assert ok(kv(eps, "member", "list", "--history", "0")).count("learner") == 1
        joiners.start(5, cluster.url(3))
        waited = ok(kv(eps, "member", "add", f"5={joiners.address(5)}", "--wait"))
        assert waited.startswith(f"node 5 ({joiners.address(5)}) is a voter; voters 1,2,3,4,5"), waited
        assert "asking to join" not in joiners.log(5)
        whats = [c["what"] for c in members(cluster)["history"]]
        assert whats.count("add 4") == whats.count("add 5") == 1, whats
        assert whats.index("add 4") < whats.index("promote 4") and "promote 5" in whats

        # The new nodes serve the data, and `kv status` lists them as voters.
        eps5 = endpoints(cluster, joiners)
        assert ok(kv(eps5, "get", "before-4", "--server", "5")) == "yes\n"
        doc = json.loads(ok(kv(eps5, "member", "list", "--json", "--server", "4")))
        assert doc["voters"] == [1, 2, 3, 4, 5] and doc["learners"] == [] and doc["pending"] is None
        output = ok(kv(eps, "status"))
        assert "configuration at slot" in output and "voters 1,2,3,4,5, learners -" in output, output
        status = output.split("\n\n")[0].splitlines()
        assert status[0].split()[3] == "MEMBER"
        assert sorted((r.split()[0], r.split()[3]) for r in status[1:]) == [
            (str(i), "voter") for i in range(1, 6)], status

        # Bad input: one line on stderr, and nothing changes.
        one_line_error(kv(eps, "member", "add", "6=127.0.0.1"), 2, "HOST:PORT")
        one_line_error(kv(eps, "member", "add", "six=127.0.0.1:1"), 2, "positive integer")
        one_line_error(kv(eps, "member", "add", f"4={HOST}:1"), 1, "already a member")
        one_line_error(kv(eps, "member", "remove", "9"), 1, "cannot remove node 9", "no member")
        one_line_error(kv(eps, "member", "remove", "x"), 2, "positive integer")
        assert members(cluster)["voters"] == [1, 2, 3, 4, 5]


def test_replace_a_dead_node_and_remove_the_leader(cluster: Cluster, joiners: Joiners) -> None:
    with time_limit(90, "replacing a dead node and removing the leader"):
        leader = cluster.wait_for_leader()
        eps = endpoints(cluster)
        ok(kv(eps, "put", "k", "v1"))
        dead, alive = [i for i in (1, 2, 3) if i != leader]
        cluster.kill(dead)

        # Removing the other follower would leave {leader, dead}: no majority answers.
        one_line_error(kv(eps, "member", "remove", str(alive)), 1,
                       f"cannot remove node {alive}", "--force")
        assert members(cluster, leader)["voters"] == [1, 2, 3]

        # Replace the dead node: remove it, then a new node with a new id joins.
        removed = ok(kv(eps, "member", "remove", str(dead)))
        assert removed.startswith(f"removed node {dead}; voters ") and "led" not in removed
        one_line_error(kv(eps, "member", "add", f"{dead}={HOST}:{cluster.ports[dead]}"), 1,
                       "never reused")
        joiners.start(4, cluster.url(alive))
        wait_until(lambda: voter(cluster, 4, leader), 30, "node 4 to become a voter")
        listing = ok(kv(eps, "member", "list"))
        assert sorted(table(listing)) == sorted([str(leader), str(alive), "4"])
        assert f"removed (ids never reused): {dead}" in listing

        # Remove the leader: it hands over, leaves, and the others carry on. (Ask who leads
        # now: on a loaded machine an election may have moved the leadership since.)
        leader = wait_until(lambda: members(cluster, alive)["leader"], 15, "a leader")
        urls = {leader0: cluster.url(leader0) for leader0 in (1, 2, 3) if leader0 not in (dead,)}
        urls[4] = f"http://{joiners.address(4)}"
        gone = ok(kv(eps, "member", "remove", str(leader)))
        assert gone.startswith(f"removed node {leader} (it led the cluster"), gone
        proc = joiners.procs[4] if leader == 4 else cluster.procs[leader]
        assert proc is not None
        assert proc.wait(timeout=15) == 0
        log = joiners.log(4) if leader == 4 else cluster.log_tail(leader, 10)
        assert "removed from the cluster" in log
        rest = sorted(i for i in urls if i != leader)
        eps_rest = ",".join(urls[i] for i in rest)
        ok(kv(eps_rest, "put", "k", "v2"))
        assert ok(kv(eps_rest, "get", "k", "--server", "2")) == "v2\n"
        doc = json.loads(ok(kv(eps_rest, "member", "list", "--json")))
        assert doc["voters"] == rest and doc["leader"] in rest
        assert sorted(doc["removed"]) == sorted([dead, leader])


def test_a_removed_follower_stops_by_itself(cluster: Cluster) -> None:
    with time_limit(30, "a removed follower stopping"):
        leader = cluster.wait_for_leader()
        follower = next(i for i in (1, 2, 3) if i != leader)
        ok(kv(endpoints(cluster), "member", "remove", str(follower)))
        proc = cluster.procs[follower]
        assert proc is not None
        deadline = time.monotonic() + 8
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() == 0, cluster.log_tail(follower, 5)
