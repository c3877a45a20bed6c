"""End-to-end tests of the `kv` command against a real cluster from `kv cluster up`.

Everything runs as real processes: `python -m cli.main cluster up` in its own
process group (killed as a group at teardown) and one `python -m cli.main ...`
per client command. Every wait has a deadline.
"""
from __future__ import annotations

import importlib.util
import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cluster import Cluster, port_range, request

pytestmark = pytest.mark.skipif(importlib.util.find_spec("kvpaxos.server") is None,
                                reason="the node server (kvpaxos.server) is not available")

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMAND_TIMEOUT_S = 60.0
START_TIMEOUT_S = 60.0


def free_base_port(count: int = 3) -> int:
    """A port P with P..P+count-1 all free, from this worker's own range (port_range:
    below the ephemeral ports, apart from other workers' tests)."""
    ports = port_range()
    for _ in range(200):
        base = random.randrange(ports.start, ports.stop - count)
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range found")


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("KV_ENDPOINTS", None)
    return env


class LocalCluster:
    """`kv cluster up` in the background, and a runner for `kv` commands against it."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        self.base_port = free_base_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.out_path = data_dir.parent / f"{data_dir.name}-up.out"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "cli.main", "cluster", "up", "--data-dir", str(self.dir),
               "--base-port", str(self.base_port)]
        with open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Press Ctrl-C to stop" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"kv cluster up did not come up:\n{self.output()}\n{self.logs()}")
            time.sleep(0.1)

    def stop(self) -> int | None:
        """Ctrl-C, as a user would; returns the exit code of `kv cluster up`."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"kv cluster up did not stop on SIGINT:\n{self.output()}")

    def kill(self) -> None:
        """Robust teardown: SIGKILL the whole process group (cluster up and its nodes)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def output(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except OSError:
            return ""

    def logs(self) -> str:
        return "\n".join(f"== {p} ==\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.dir.glob("node-*/node.log")))

    def pid_of(self, node_id: int) -> int:
        found = re.findall(rf"^node {node_id}: \S+\s+pid (\d+)", self.output(), re.M)
        assert found, self.output()
        return int(found[-1])

    def kv(self, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run `kv --data-dir DIR --timeout T ARGS...`; a generous timeout covers elections."""
        cmd = [sys.executable, "-m", "cli.main", "--data-dir", str(self.dir),
               "--timeout", str(timeout_s), *args]
        return subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path / "kvdata")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def wait_for(predicate, timeout_s: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_put_and_get_through_every_server(local: LocalCluster) -> None:
    assert "version" in ok(local.kv("put", "hello", "world", "--server", "3"))
    for server in ("1", "2", "3"):
        assert ok(local.kv("get", "hello", "--server", server)) == "world\n"
    doc = json.loads(ok(local.kv("--server", "2", "get", "hello", "--json")))
    assert doc["key"] == "hello" and doc["value"] == "world" and doc["version"] >= 1


def test_put_with_a_ttl_shows_it_and_the_key_expires(local: LocalCluster) -> None:
    # Long enough for three `kv` processes on a busy machine; then a short one to expire.
    assert "version" in ok(local.kv("put", "lease", "held", "--ttl", "60", "--server", "2"))
    doc = json.loads(ok(local.kv("get", "lease", "--json", "--server", "3")))
    assert doc["value"] == "held" and 30 < doc["ttl"] <= 60
    listed = json.loads(ok(local.kv("list", "lease", "--json")))
    assert listed["key"] == "lease" and 30 < listed["ttl"] <= 60
    assert "expires in 1.5 s" in ok(local.kv("refresh", "lease", "--ttl", "1.5", "--if-value", "held"))
    assert local.kv("refresh", "no-such-key", "--ttl", "5").returncode == 1
    deadline = time.monotonic() + 15
    while local.kv("get", "lease", "--server", "1").returncode != 1:
        assert time.monotonic() < deadline, "the key never expired"
        time.sleep(0.3)
    for bad in ("0", "-2", "soon", "1e12"):
        result = local.kv("put", "lease", "x", "--ttl", bad)
        assert result.returncode == 2 and "--ttl" in result.stderr, result


def test_lock_runs_a_command_holding_the_lock(local: LocalCluster) -> None:
    show = "import os; print(os.environ['KV_LOCK_KEY'], os.environ['KV_LOCK_TOKEN'])"
    result = local.kv("lock", "locks/job", "--ttl", "5", "--", sys.executable, "-c", show)
    key, token = ok(result).split()
    assert key == "locks/job" and int(token) >= 1 and f"locked locks/job (token {token})" in result.stderr
    assert local.kv("get", "locks/job").returncode == 1  # released
    failing = local.kv("lock", "locks/job", "--", sys.executable, "-c", "import sys; sys.exit(3)")
    assert failing.returncode == 3  # the command's status
    missing = local.kv("lock", "locks/job", "--", "no-such-program-here")
    assert missing.returncode == 1 and "cannot run 'no-such-program-here'" in missing.stderr
    assert local.kv("get", "locks/job").returncode == 1  # released after that too


def test_lock_waits_for_the_holder_and_stops_a_command_whose_lock_is_lost(local: LocalCluster) -> None:
    cmd = [sys.executable, "-m", "cli.main", "--data-dir", str(local.dir), "lock", "locks/db", "--ttl", "1",
           "--", sys.executable, "-c", "import time; time.sleep(60)"]
    holder = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        assert "locked locks/db" in holder.stderr.readline()
        busy = local.kv("lock", "locks/db", "--wait", "0.5", "--", "true")
        assert busy.returncode == 1 and busy.stderr == "error: lock 'locks/db' not acquired within 0.5 s\n"
        ok(local.kv("delete", "locks/db"))  # taken away: the holder stops its command
        assert holder.wait(timeout=30) == 1
        assert "error: lost the lock 'locks/db'; the command was stopped" in holder.stderr.read()
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_txn_reads_json_and_exits_1_when_the_comparisons_fail(local: LocalCluster, tmp_path: Path) -> None:
    ok(local.kv("put", "acct/a", "10"))
    spec = tmp_path / "move.json"
    spec.write_text(json.dumps({"if": [{"key": "acct/a", "value": "10"}, {"key": "acct/b", "exists": False}],
                                "then": [{"op": "put", "key": "acct/a", "value": "0"},
                                         {"op": "put", "key": "acct/b", "value": "10"}]}))
    done = json.loads(ok(local.kv("txn", str(spec))))
    assert done["succeeded"] is True and done["versions"] == {"acct/a": 1, "acct/b": 0}
    assert [r["ok"] for r in done["results"]] == [True, True]
    assert ok(local.kv("get", "acct/b")) == "10\n"
    again = local.kv("txn", str(spec))  # acct/a is 0 now: nothing runs
    assert again.returncode == 1 and json.loads(again.stdout)["succeeded"] is False
    assert again.stderr == 'error: the comparisons did not hold: the "else" writes ran\n'
    cmd = [sys.executable, "-m", "cli.main", "--data-dir", str(local.dir), "txn"]
    piped = subprocess.run(cmd, input='{"then": [{"op": "delete", "key": "acct/b"}]}', cwd=REPO_ROOT, env=_env(),
                           capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert json.loads(ok(piped))["results"][0]["ok"] is True
    for text, message in (("{", "is not valid JSON"), ('{"when": 1}', 'with "if", "then" and "else"')):
        bad = subprocess.run(cmd, input=text, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                             timeout=COMMAND_TIMEOUT_S)
        assert bad.returncode == 2 and message in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr
    refused = subprocess.run(cmd, input='{"if": [{"key": "a"}]}', cwd=REPO_ROOT, env=_env(), capture_output=True,
                             text=True, timeout=COMMAND_TIMEOUT_S)
    assert refused.returncode == 1 and refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1


def test_delete_prefix_deletes_every_key_under_it(local: LocalCluster) -> None:
    for key in ("logs/1", "logs/2", "logs/3", "logsX"):
        ok(local.kv("put", key, "v"))
    assert ok(local.kv("delete", "--prefix", "logs/")) == "OK (deleted 3 keys)\n"
    assert ok(local.kv("list")) == "logsX\tv\n"
    assert ok(local.kv("delete", "--prefix", "logs/")) == "OK (deleted 0 keys)\n"
    for args in (("delete",), ("delete", "k", "--prefix", "p"), ("delete", "--prefix", "p", "--if-version", "1")):
        bad = local.kv(*args)
        assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1, bad


def test_missing_key_exits_1_with_one_line(local: LocalCluster) -> None:
    result = local.kv("get", "no-such-key", "--server", "1")
    assert result.returncode == 1
    assert result.stderr == "error: key 'no-such-key' not found\n"
    result = local.kv("delete", "no-such-key")
    assert result.returncode == 1 and result.stderr.startswith("error: ")


def test_cas_delete_and_list(local: LocalCluster) -> None:
    ok(local.kv("put", "fruit/apple", "red", "--server", "1"))
    ok(local.kv("put", "fruit/banana", "yellow", "--server", "2"))
    ok(local.kv("put", "veg/leek", "green", "--server", "3"))
    bad = local.kv("cas", "fruit/apple", "green", "blue")
    assert bad.returncode == 1 and "precondition failed" in bad.stderr
    assert bad.stderr.count("\n") == 1
    ok(local.kv("cas", "fruit/apple", "red", "crimson", "--server", "2"))
    assert ok(local.kv("list", "fruit/")) == "fruit/apple\tcrimson\nfruit/banana\tyellow\n"
    first = local.kv("list", "--limit", "1")
    assert ok(first) == "fruit/apple\tcrimson\n"
    assert "--after fruit/apple for the next page" in first.stderr, first.stderr
    assert ok(local.kv("list", "--limit", "1", "--after", "fruit/apple")) == "fruit/banana\tyellow\n"
    every = local.kv("list", "--limit", "1", "--all")  # a page at a time, to the end
    assert ok(every) == "fruit/apple\tcrimson\nfruit/banana\tyellow\nveg/leek\tgreen\n"
    assert every.stderr == ""
    assert ok(local.kv("list", "fruit/", "--keys-only")) == "fruit/apple\nfruit/banana\n"
    assert [sorted(json.loads(line)) for line in ok(local.kv("list", "--keys-only", "--json")).splitlines()] == \
        [["key", "version"]] * 3
    assert ok(local.kv("list", "fruit/", "--count")) == "2\n" and ok(local.kv("list", "--count")) == "3\n"
    both = local.kv("list", "--count", "--all")
    assert both.returncode == 2 and "--count prints one number" in both.stderr
    ok(local.kv("delete", "fruit/apple", "--server", "3"))
    assert local.kv("get", "fruit/apple", "--server", "1").returncode == 1
    assert ok(local.kv("list")) == "fruit/banana\tyellow\nveg/leek\tgreen\n"


def test_status_shows_every_node_and_one_leader(local: LocalCluster) -> None:
    def table() -> list[str] | None:
        lines = ok(local.kv("status")).splitlines()
        lines = lines[:lines.index("")] if "" in lines else lines  # the table, then the configuration
        rows = lines[1:]
        if len(rows) == 3 and all(r.split()[-1] == "up" for r in rows) \
                and sum(" leader " in f" {r} " for r in rows) == 1:
            return lines
        return None

    lines = wait_for(table, 30, "three nodes up with one leader")
    assert lines[0].split() == ["ID", "ADDRESS", "ROLE", "MEMBER", "LEADER", "BALLOT", "CHOSEN",
                                "APPLIED", "SNAPSHOT", "BEHIND", "STATE"]
    assert all(r.split()[3] == "voter" for r in lines[1:]), lines
    # Nothing is written meanwhile, so every node is 0 slots behind the leader (or about to be).
    assert all(r.split()[-2].isdigit() for r in lines[1:]), lines
    assert [r.split()[0] for r in lines[1:]] == ["1", "2", "3"]
    assert f"127.0.0.1:{local.base_port + 2}" in lines[3]
    shown = ok(local.kv("status"))
    cluster_id = json.loads(ok(local.kv("status", "--json")))[0]["cluster_id"]
    assert f"cluster {cluster_id}, configuration at slot" in shown, shown


def test_a_killed_node_is_reported_and_the_others_carry_on(local: LocalCluster) -> None:
    ok(local.kv("put", "k", "before"))
    os.kill(local.pid_of(2), signal.SIGKILL)
    wait_for(lambda: "node 2" in local.output() and "SIGKILL" in local.output(), 15,
             "cluster up to report the killed node")
    ok(local.kv("put", "k", "after", "--server", "1"))
    assert ok(local.kv("get", "k", "--server", "3")) == "after\n"
    rows = wait_for(lambda: [r for r in ok(local.kv("status")).splitlines() if r.startswith("2 ")
                             and r.split()[-1] == "down"], 15, "node 2 shown as down")
    assert rows
    assert local.kv("get", "k", "--server", "2", timeout_s=1).returncode == 1


def test_cluster_up_again_keeps_the_data_and_ports(local: LocalCluster) -> None:
    ok(local.kv("put", "durable", "yes", "--server", "2"))
    layout = (local.dir / "cluster.json").read_text()
    assert local.stop() == 0
    assert "cluster stopped" in local.output()
    local.start()
    assert (local.dir / "cluster.json").read_text() == layout
    assert ok(local.kv("get", "durable", "--server", "3")) == "yes\n"


def test_second_cluster_up_on_busy_ports_is_refused(local: LocalCluster) -> None:
    cmd = [sys.executable, "-m", "cli.main", "cluster", "up", "--data-dir", str(local.dir)]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT_S)
    assert result.returncode == 1
    assert "already in use" in result.stderr and result.stderr.count("\n") == 1


# -- kv watch ----------------------------------------------------------------------------


def kv_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def start_watch(*args: str) -> tuple[subprocess.Popen[str], "queue.Queue[str]"]:
    """`kv ARGS...` in the background, and a queue of the lines it prints as they come.
    SIGINT is set back to its default in the child, where a test runner may ignore it."""
    proc = subprocess.Popen(kv_command(*args), cwd=REPO_ROOT, env=_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def watches_waiting(local: LocalCluster) -> int:
    """How many watch polls the cluster's nodes hold now."""
    total = 0
    for port in range(local.base_port, local.base_port + 3):
        resp = request(port, "GET", "/v1/status", timeout=5)
        total += resp.body["watch"]["waiting"] if resp.status == 200 else 0
    return total


def test_watch_prints_each_change_as_it_happens(local: LocalCluster) -> None:
    proc, lines = start_watch("--data-dir", str(local.dir), "watch", "--prefix", "w/", "--count", "2")
    stopper, _ = start_watch("--data-dir", str(local.dir), "watch", "--prefix", "")  # until Ctrl-C
    try:
        wait_for(lambda: watches_waiting(local) >= 2, 30, "both watches to wait on a node")
        version = int(re.search(r"version (\d+)", ok(local.kv("put", "w/a", "one two", "--server", "2")))[1])
        ok(local.kv("put", "elsewhere", "x", "--server", "1"))  # not under w/
        # Printed (and flushed into the pipe) at once, before the next change exists.
        assert lines.get(timeout=20) == f"{version}\tput\tw/a\tone two\n"
        ok(local.kv("delete", "w/a", "--server", "3"))
        assert lines.get(timeout=20) == f"{version + 2}\tdelete\tw/a\n"
        assert proc.wait(timeout=20) == 0  # --count 2: done
        assert proc.stderr is not None and proc.stderr.read() == ""
        ok(local.kv("put", "w/b", "after", "--server", "1"))
        time.sleep(0.5)
        assert lines.empty()

        replay = ok(local.kv("watch", "w/a", "--from", str(version), "--count", "2", "--json"))
        assert [json.loads(line) for line in replay.splitlines()] == [
            {"revision": version, "type": "put", "key": "w/a", "value": "one two"},
            {"revision": version + 2, "type": "delete", "key": "w/a", "value": None}]

        assert stopper.poll() is None  # the watch without --count carries on ...
        stopper.send_signal(signal.SIGINT)
        assert stopper.wait(timeout=20) == 0  # ... until Ctrl-C, which ends it quietly
        assert stopper.stderr is not None and stopper.stderr.read() == ""
    finally:
        for p in (proc, stopper):
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def test_watch_needs_exactly_one_of_key_and_prefix() -> None:
    for args in (["watch"], ["watch", "k", "--prefix", "k"], ["watch", "--from", "3"]):
        # Nothing listens on port 9: a usage error must come before any request.
        result = subprocess.run(kv_command("--endpoints", "127.0.0.1:9", *args), cwd=REPO_ROOT, env=_env(),
                                capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        assert result.returncode == 2, (args, result)
        assert result.stdout == "" and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result
        assert "--prefix" in result.stderr, result


def test_watch_from_a_revision_no_longer_kept_is_one_line_error(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "small", n=1, serve_args=["--watch-history", "5"])
    try:
        cluster.start()
        cluster.wait_for_leader()
        for n in range(8):
            assert cluster.put(1, f"k{n}", str(n)).body["version"] == n + 1
        endpoint = ["--endpoints", cluster.url(1), "watch", "--prefix", ""]
        result = subprocess.run(kv_command(*endpoint, "--from", "2"), cwd=REPO_ROOT, env=_env(),
                                capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        assert result.returncode == 1, result
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result
        assert "oldest revision a node holds is 4" in result.stderr, result
        kept = subprocess.run(kv_command(*endpoint, "--from", "4", "--count", "5"), cwd=REPO_ROOT, env=_env(),
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        assert ok(kept) == "".join(f"{n + 1}\tput\tk{n}\t{n}\n" for n in range(3, 8))
    finally:
        cluster.stop_all()


# -- kv lease ----------------------------------------------------------------------------


def stderr_lines(proc: subprocess.Popen[str]) -> "queue.Queue[str]":
    """The lines a background `kv` prints on stderr, as they come."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_lease_grant_put_info_list_keepalive_and_revoke(local: LocalCluster) -> None:
    lease = int(ok(local.kv("lease", "grant", "300")))
    assert "version" in ok(local.kv("put", "svc/a", "1", "--lease", str(lease), "--server", "2"))
    ok(local.kv("put", "svc/b", "2", "--lease", str(lease)))
    ok(local.kv("put", "plain", "p"))
    doc = json.loads(ok(local.kv("get", "svc/a", "--json", "--server", "3")))
    assert doc == {"key": "svc/a", "value": "1", "version": doc["version"], "lease": lease}, doc
    assert [json.loads(line).get("lease") for line in ok(local.kv("list", "--json")).splitlines()] == \
        [None, lease, lease]  # plain, svc/a, svc/b
    info = json.loads(ok(local.kv("lease", "info", str(lease), "--json")))
    assert info["id"] == lease and info["ttl"] == 300 and info["keys"] == 2 and 250 < info["ttl_left"] <= 300, info
    shown = ok(local.kv("lease", "info", str(lease), "--keys")).splitlines()
    assert re.fullmatch(rf"lease {lease}: ttl 300 s, \d+\.\d s left, 2 keys", shown[0]), shown
    assert shown[1:] == ["svc/a", "svc/b"]
    asked = lease + 100
    assert ok(local.kv("lease", "grant", "60", "--id", str(asked))) == f"{asked}\n"
    taken = local.kv("lease", "grant", "60", "--id", str(asked))
    assert taken.returncode == 1 and taken.stderr.startswith(f"error: lease {asked} failed: lease_exists: "), taken
    assert taken.stderr.count("\n") == 1
    table = ok(local.kv("lease", "list")).splitlines()
    assert table[0].split() == ["ID", "TTL", "LEFT", "KEYS"]
    assert [(r.split()[0], r.split()[1], r.split()[3]) for r in table[1:]] == [(str(lease), "300", "2"),
                                                                               (str(asked), "60", "0")], table
    assert [json.loads(line)["id"] for line in ok(local.kv("lease", "list", "--json")).splitlines()] == [lease, asked]
    assert ok(local.kv("lease", "keepalive", str(lease), "--once")) == f"OK (lease {lease} kept alive for 300 s)\n"
    assert ok(local.kv("lease", "revoke", str(lease))) == f"OK (revoked lease {lease}, deleted 2 keys)\n"
    assert local.kv("get", "svc/a").returncode == 1 and local.kv("get", "svc/b").returncode == 1
    assert ok(local.kv("get", "plain")) == "p\n"
    gone = f"error: lease {lease} not found (never granted, revoked, or expired)\n"
    for args in (("lease", "info", str(lease)), ("lease", "keepalive", str(lease), "--once"),
                 ("lease", "keepalive", str(lease)), ("lease", "revoke", str(lease)),
                 ("put", "svc/c", "3", "--lease", str(lease))):
        result = local.kv(*args)
        assert result.returncode == 1 and result.stderr == gone, (args, result)
    assert [json.loads(line)["id"] for line in ok(local.kv("lease", "list", "--json")).splitlines()] == [asked]
    for args in (("put", "k", "v", "--ttl", "5", "--lease", str(asked)), ("put", "k", "v", "--lease", "-1"),
                 ("lease", "grant", "0"), ("lease", "grant", "soon"), ("lease", "info", "abc"),
                 ("lease", "revoke", "0")):
        result = local.kv(*args)
        assert result.returncode == 2 and result.stdout == "", (args, result)
    assert local.kv("get", "k").returncode == 1


def test_lease_keepalive_keeps_the_keys_until_the_lease_is_revoked_or_ctrl_c(local: LocalCluster) -> None:
    kept = int(ok(local.kv("lease", "grant", "3")))
    keeper, _ = start_watch("--data-dir", str(local.dir), "lease", "keepalive", str(kept))
    stopper: subprocess.Popen[str] | None = None
    try:
        errors = stderr_lines(keeper)
        assert errors.get(timeout=20) == f"keeping lease {kept} alive (ttl 3 s) until Ctrl-C\n"
        ok(local.kv("put", "kept", "v", "--lease", str(kept)))
        time.sleep(7)  # more than twice its ttl
        assert ok(local.kv("get", "kept")) == "v\n" and keeper.poll() is None
        # Revoked elsewhere: the keepalive finds it gone, says so in one line and exits 1.
        ok(local.kv("lease", "revoke", str(kept)))
        assert keeper.wait(timeout=20) == 1
        assert errors.get(timeout=5) == f"error: lease {kept} not found (never granted, revoked, or expired)\n"

        # Ctrl-C ends a keepalive quietly; the lease then runs out on its own.
        second = int(ok(local.kv("lease", "grant", "3")))
        stopper, _ = start_watch("--data-dir", str(local.dir), "lease", "keepalive", str(second))
        stopped = stderr_lines(stopper)
        assert stopped.get(timeout=20).startswith(f"keeping lease {second} alive")
        stopper.send_signal(signal.SIGINT)
        assert stopper.wait(timeout=20) == 0
        time.sleep(0.2)
        assert stopped.empty()
        wait_for(lambda: local.kv("lease", "info", str(second)).returncode == 1, 20, "the lease to run out")
    finally:
        for p in (keeper, stopper):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(timeout=10)
