"""`kv shell` end to end: the real command, stdin piped, against a real 3-node cluster."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def kv_shell(cluster, script: str, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    endpoints = ",".join(f"127.0.0.1:{cluster.ports[i]}" for i in cluster.ids)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("KV_ENDPOINTS", None)
    return subprocess.run([sys.executable, "-m", "cli.main", "shell", "--endpoints", endpoints, *args],
                          input=script, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout_s)


def test_pick_a_server_and_use_every_command(cluster):
    leader = cluster.wait_for_leader()
    follower = next(i for i in cluster.ids if i != leader)
    result = kv_shell(cluster, "\n".join([
        f"server {follower}",
        "put a 1",
        "get a",
        "put 'two words' \"hello world\"",
        "get 'two words'",
        "cas a 1 2",
        "cas a 1 3",  # fails: a is 2 now
        "list",
        "delete a",
        "get a",  # fails: deleted
        "server",
        "status",
        "members",
        "help cas",
        "quit",
        "put never run",  # after quit
    ]) + "\n")
    out, err = result.stdout, result.stderr
    assert result.returncode == 1, (out, err)  # two commands failed, on purpose
    assert (f"talking to server {follower} (127.0.0.1:{cluster.ports[follower]}): "
            f"node {follower}, follower, leader is node {leader}") in out
    assert out.count("OK (version") == 3
    assert '"1" (version' in out and '"hello world" (version' in out
    assert "two words\t\"hello world\"" in out and "a\t\"2\"" in out
    assert "OK (deleted)" in out
    assert "error: not changed: the current value of key 'a' is not the one given" in err
    assert "error: key 'a' not found" in err
    assert f"talking to server {follower} (127.0.0.1:{cluster.ports[follower]})" in out.splitlines()
    assert "ROLE" in out and "leader" in out  # the status table
    assert "voter (leader)" in out and "history (oldest first" in out  # members
    assert "cas KEY OLD NEW" in out
    assert "never" not in out + err
    # The values really are in the cluster, whichever node is asked.
    assert cluster.get(leader, "two words").body["value"] == "hello world"


def test_put_with_a_ttl_refresh_and_get_shows_when_it_expires(cluster):
    cluster.wait_for_leader()
    result = kv_shell(cluster, "put lease held 30\nget lease\nput lease x 0\nput lease x soon\nput plain v\n"
                               "get plain\nrefresh lease 60\n")
    out, err = result.stdout, result.stderr
    assert result.returncode == 1, (out, err)  # the two bad TTLs
    assert out.count("OK (version") == 3 and "expires in 60 s)" in out
    assert '"held" (version' in out and (", expires in 29." in out or ", expires in 30.0 s)" in out), out
    assert err.count("error: TTL must be a number of seconds above 0") == 2, err
    plain = next(line for line in out.splitlines() if line.startswith('"v"'))
    assert "expires" not in plain
    assert 55 < cluster.get(1, "lease").body["ttl"] <= 60 and cluster.get(1, "lease").body["value"] == "held"


def test_a_down_server_is_reported_clearly_and_another_can_be_picked(cluster):
    cluster.wait_for_leader()
    cluster.kill(3)
    started = time.monotonic()
    result = kv_shell(cluster, "server 3\nput k v\nservers\nserver any\nput k v\nget k\nserver 1\nget k\n")
    assert time.monotonic() - started < 30
    out, err = result.stdout, result.stderr
    port3 = cluster.ports[3]
    assert f"talking to server 3 (127.0.0.1:{port3}), which is down (connection refused)" in out
    assert (f"error: server 3 (127.0.0.1:{port3}) is down (connection refused); pick another with "
            "`server N` or `server any`") in err
    assert f"3  127.0.0.1:{port3}  down (connection refused)" in out
    assert "talking to any server" in out
    assert out.count('"v" (version') == 2
    assert result.returncode == 1  # the put through server 3 failed


def test_usage_errors(cluster):
    result = kv_shell(cluster, "server 7\nserver x\nput onlykey\nfrobnicate\nput 'unclosed\n")
    err = result.stderr
    assert "error: there is no server 7 in --endpoints (it has 1, 2, 3)" in err
    assert "error: usage: server N (a server number) or server any" in err
    assert "error: usage: put KEY VALUE" in err
    assert "error: unknown command 'frobnicate'; type `help` for the list" in err
    assert "error: cannot parse that line" in err
    assert result.returncode == 1
    bad_start = kv_shell(cluster, "", "--server", "9")
    assert bad_start.returncode == 2 and "no server 9" in bad_start.stderr


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_interactive_prompt_with_history(cluster, tmp_path):
    """With a terminal: a banner, a prompt naming the server, and history saved on exit."""
    import pty
    import select

    cluster.wait_for_leader()
    endpoints = ",".join(f"127.0.0.1:{cluster.ports[i]}" for i in cluster.ids)
    env = dict(os.environ, HOME=str(tmp_path), TERM="dumb", PYTHONUNBUFFERED="1")
    env.pop("KV_ENDPOINTS", None)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the real command on the terminal
        os.chdir(REPO_ROOT)
        os.execvpe(sys.executable, [sys.executable, "-m", "cli.main", "shell", "--endpoints",
                                    endpoints, "--server", "2"], env)
    seen = b""

    def read_until(marker: bytes, timeout_s: float = 20.0) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout_s
        while marker not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} in {seen.decode(errors='replace')!r}"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break

    try:
        read_until(b"kv[2]> ")
        assert b"kvpaxos shell. Servers: 1 = " in seen
        os.write(fd, b"put hello world\n")
        read_until(b"OK (version")
        # Ctrl-C ends a watch and leaves the shell working (the poll cut off is dropped).
        waiting = cluster.status(2)["watch"]["waiting"]
        os.write(fd, b"watch nothing-here/\n")
        deadline = time.monotonic() + 20
        while cluster.status(2)["watch"]["waiting"] <= waiting:
            assert time.monotonic() < deadline, "the watch never waited"
            time.sleep(0.05)
        os.write(fd, b"\x03")
        read_until(b"(stopped after 0 changes)")
        os.write(fd, b"put hello again\nget hello\n")
        read_until(b'"again" (version')
        os.write(fd, b"server any\n")
        read_until(b"kv[any]> ")
        os.write(fd, b"quit\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
    history = (tmp_path / ".kv_history").read_text()
    assert "put hello world" in history and "server any" in history


def test_watch_prints_the_next_changes_as_they_are_applied(cluster):
    cluster.wait_for_leader()
    prefix = f"shell-watch-{time.monotonic_ns()}/"
    waiting = sum(cluster.status(i)["watch"]["waiting"] for i in cluster.ids)
    endpoints = ",".join(f"127.0.0.1:{cluster.ports[i]}" for i in cluster.ids)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("KV_ENDPOINTS", None)
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "shell", "--endpoints", endpoints],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO_ROOT, env=env, text=True)
    try:
        assert proc.stdin is not None
        proc.stdin.write(f"watch {prefix} 2\nwatch {prefix} x\nquit\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 20
        while sum(cluster.status(i)["watch"]["waiting"] for i in cluster.ids) <= waiting:
            assert time.monotonic() < deadline, "the shell's watch never waited"
            time.sleep(0.05)
        put = cluster.put(2, prefix + "a", "one two")
        deleted = cluster.delete(3, prefix + "a")
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert out.splitlines() == [f"{put.body['version']}\tput\t{prefix}a\t\"one two\"",
                                f"{deleted.body['version']}\tdelete\t{prefix}a"], (out, err)
    assert "error: COUNT must be a number from 1 to 10000" in err


def test_a_transaction_and_a_prefix_delete_through_one_server(cluster):
    """`txn` with both outcomes, through a follower; `delete --prefix`; bad txn words."""
    leader = cluster.wait_for_leader()
    follower = next(i for i in cluster.ids if i != leader)
    p = f"shell-txn-{time.monotonic_ns()}/"
    a = cluster.put(leader, p + "a", "10").body["version"]
    result = kv_shell(cluster, "\n".join([
        f"server {follower}",
        f"txn if {p}a version {a} {p}b missing then put {p}a 5 put {p}b 5 else put {p}log lost",
        f"txn if {p}a version {a} then put {p}a 0 else put {p}log 'moved meanwhile' delete {p}nothing",
        f"txn if {p}a value != 4 {p}b version > 0",  # comparisons alone: a read of their versions
        f"txn if {p}a version three",
        f"txn then read {p}a",
        "txn",
        f"txn then put {p}a 6 get {p}a get {p}missing",
        f"delete --prefix {p}",
        f"delete --prefix {p}",
        "delete --prefix",
    ]) + "\n")
    out, err = result.stdout, result.stderr
    assert result.returncode == 1, (out, err)
    lines = out.splitlines()
    first = lines.index(next(line for line in lines if line.startswith("succeeded")))
    assert lines[first + 1] == f"  {p}a\twas at version {a}" and lines[first + 2] == f"  {p}b\twas absent"
    assert lines[first + 3].startswith(f"  put {p}a\tversion ") and lines[first + 4].startswith(f"  put {p}b\tversion ")
    second = lines[first + 5]
    assert second.startswith("did not hold: the else writes ran"), (out, err)
    assert lines[first + 8] == f"  delete {p}nothing\tnot_found"
    assert lines[first + 9].startswith("succeeded: the then writes ran")
    assert err.count("error: the comparisons did not hold: the else writes ran") == 1, err
    assert "error: a version must be a whole number, not 'three'" in err
    assert f"error: cannot read a write at 'read {p}a': put KEY VALUE | delete KEY | get KEY" in err
    assert any(line.startswith(f"  get {p}a\t\"6\" (version ") for line in lines), out
    assert f"  get {p}missing\tnot_found" in lines
    assert "error: usage: txn [if COND...]" in err
    assert "OK (deleted 3 keys)" in out and "OK (deleted 0 keys)" in out  # a, b and log
    assert "error: usage: delete KEY | delete --prefix PREFIX" in err
    assert cluster.get(leader, p + "a").status == 404


def test_leases_grant_keep_revoke_and_put_keys_on_them(cluster):
    """`lease grant/keepalive/revoke/info/list`, `put ... --lease ID`, `get` showing the lease; bad input."""
    cluster.wait_for_leader()
    p = f"shell-lease-{time.monotonic_ns()}/"
    granted = cluster.request(1, "POST", "/v1/leases", {"ttl": 300})
    assert granted.status == 200, granted
    lease = granted.body["id"]
    result = kv_shell(cluster, "\n".join([
        f"put {p}a 1 --lease {lease}",
        f"put {p}b 2 --lease {lease}",
        f"get {p}a",
        f"lease info {lease}",
        "lease list",
        f"lease keepalive {lease}",
        "lease grant 60",
        f"lease grant 60 {lease}",  # taken
        f"put {p}c 3 --lease 99999999999",  # no such lease
        f"put {p}c 3 --lease x",
        f"put {p}c 3 5 --lease",
        f"lease revoke {lease}",
        f"get {p}a",  # gone with its lease
        f"lease info {lease}",
        f"lease keepalive {lease}",
        "lease frob",
        "lease grant 0",
        "help lease",
    ]) + "\n")
    out, err = result.stdout, result.stderr
    assert result.returncode == 1, (out, err)
    lines = out.splitlines()
    assert out.count("OK (version") == 2, out
    assert any(re.fullmatch(rf'"1" \(version \d+, lease {lease}\)', line) for line in lines), out
    assert f"lease {lease}: ttl 300 s, " in out and f"  {p}a" in lines and f"  {p}b" in lines
    assert any(re.fullmatch(rf"{lease}\tttl 300 s\t\d+\.\d s left\t2 keys", line) for line in lines), out
    assert f"OK (lease {lease} kept alive for 300 s)" in lines
    new = int(next(line for line in lines if line.isdigit()))
    info = cluster.request(2, "GET", f"/v1/leases/{new}")
    assert new > lease and info.status == 200 and info.body["ttl"] == 60, info
    assert "lease_exists" in err
    assert "error: lease 99999999999 not found (never granted, revoked, or expired)" in err
    assert "error: a lease ID is a whole number from 1 to 9223372036854775807, not 'x'" in err
    assert "error: usage: put KEY VALUE [TTL | --lease ID]" in err
    assert f"OK (revoked lease {lease}, deleted 2 keys)" in lines
    assert f"error: key '{p}a' not found" in err
    assert err.count(f"error: lease {lease} not found") == 2, err
    assert "error: usage: lease grant TTL [ID] | lease keepalive ID" in err
    assert "error: TTL must be a number of seconds above 0" in err
    assert "lease grant TTL [ID] | lease keepalive ID | lease revoke ID | lease info ID | lease list\n" in out
    assert cluster.get(3, p + "b").status == 404 and cluster.get(3, p + "c").status == 404
