"""A cluster of real `kv serve` processes on loopback ports, for integration tests.

Each node runs as `python -m cli.main serve ...` in its own process group, with
its data under DIR/node-N and its output in DIR/node-N.log. Requests go over
plain HTTP (http.client). Nothing here waits without a deadline.

The membership can change while the cluster runs: join() starts a node with a
new id through `kv serve --join`, remove() asks the cluster to drop a member,
and wait_exit() waits for a removed node's process to stop by itself. `ids`
lists every node ever started here (removed ones included), in id order.
"""
from __future__ import annotations

import atexit
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

# Every Cluster not yet stopped, so a failing test can show the node logs.
LIVE: "weakref.WeakSet[Cluster]" = weakref.WeakSet()


@dataclass
class Response:
    status: int
    body: Any  # the decoded JSON, or None if the body is not JSON
    text: str
    headers: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def error(self) -> str | None:
        return self.body.get("error") if isinstance(self.body, dict) else None

    def __repr__(self) -> str:
        return f"<{self.status} {self.text[:300]!r} in {self.elapsed_s:.2f}s>"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def port_range() -> range:
    """The ports this test process draws from: below the kernel's ephemeral range
    (bind(0) and outgoing connections, the nodes' own peer links among them, take
    ports from inside it), and under pytest-xdist a slice of its own per worker.
    Tests on other workers then never pick a port of ours, even one of a node a
    test has not started (a node of another test's cluster answering there was
    taken for a peer started with another --cluster list)."""
    low, _ = _ephemeral_range()
    ports = range(20000, low) if low - 20000 >= 1000 else range(10000, 20000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and workers.isdigit() and int(workers) > 1:
        span = len(ports) // int(workers)
        index = int(worker[2:]) % int(workers)
        ports = ports[index * span:(index + 1) * span]
    return ports


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports that were free a moment ago, from port_range()."""
    candidates = port_range()
    rng = random.SystemRandom()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.choice(candidates)
        if port in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        ports.append(port)
    return ports


class PortInUse(AssertionError):
    """A node could not bind its port: another process took it first."""


def request(port: int, method: str, path: str, body: Any = None, raw: bytes | None = None,
            timeout: float = 10.0) -> Response:
    """One HTTP request on a fresh connection; connection errors propagate (OSError)."""
    payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    started = time.monotonic()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        resp_headers = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    text = data.decode("utf-8", "replace")
    try:
        decoded = json.loads(text) if text else None
    except ValueError:
        decoded = None
    return Response(resp.status, decoded, text, resp_headers, time.monotonic() - started)


def key_path(key: str) -> str:
    return "/v1/kv/" + urllib.parse.quote(key, safe="")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll predicate until it returns something truthy; AssertionError naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, http.client.HTTPException, KeyError, TypeError, ValueError) as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


class Cluster:
    def __init__(self, tmp_path: str | os.PathLike, n: int = 3, tick_ms: int | None = None,
                 request_timeout: float = 10.0, serve_args: Sequence[str] = ()) -> None:
        self.dir = Path(tmp_path)
        self.serve_args = list(serve_args)  # more `kv serve` options for every node
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n = n
        self.ids = list(range(1, n + 1))
        self.tick_ms = tick_ms
        self.request_timeout = request_timeout
        self._pick_ports()
        self._started = False
        self.procs: dict[int, subprocess.Popen | None] = {i: None for i in self.ids}
        self.join_urls: dict[int, str] = {}  # nodes started with --join: the URL they joined through
        self.exit_codes: dict[int, int] = {}  # nodes whose process ended on its own (wait_exit)
        LIVE.add(self)
        atexit.register(_stop_quietly, weakref.ref(self))

    def _pick_ports(self) -> None:
        self.ports = dict(zip(self.ids, free_ports(self.n)))
        self.spec = ",".join(f"{i}={HOST}:{self.ports[i]}" for i in self.ids)

    # -- processes --------------------------------------------------------------

    def data_dir(self, i: int) -> Path:
        return self.dir / f"node-{i}"

    def log_path(self, i: int) -> Path:
        return self.dir / f"node-{i}.log"

    def command(self, i: int) -> list[str]:
        if i in self.join_urls:
            where = ["--join", self.join_urls[i], "--address", f"{HOST}:{self.ports[i]}"]
        else:
            where = ["--cluster", self.spec]
        cmd = [sys.executable, "-m", "cli.main", "serve", "--id", str(i), *where,
               "--data-dir", str(self.data_dir(i)), "--log-level", "info"]
        if self.tick_ms is not None:
            cmd += ["--tick-ms", str(self.tick_ms)]
        return cmd + self.serve_args

    def spawn(self, i: int) -> subprocess.Popen:
        assert self.procs[i] is None or self.procs[i].poll() is not None, f"node {i} is running"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("KV_ENDPOINTS", None)
        with open(self.log_path(i), "ab") as log:
            log.write(f"--- start node {i}: {' '.join(self.command(i))}\n".encode())
            log.flush()
            proc = subprocess.Popen(self.command(i), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                                    start_new_session=True)
        self.procs[i] = proc
        return proc

    def wait_ready(self, i: int, timeout: float = 20.0) -> None:
        """Wait until node i answers /v1/status; fail early if its process exits."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self.procs[i]
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                error = PortInUse if "address already in use" in self.log_tail(i, 3) else AssertionError
                raise error(f"node {i} exited with {code} before serving:\n{self.log_tail(i)}")
            try:
                if self.request(i, "GET", "/v1/status", timeout=2).status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() >= deadline:
                raise AssertionError(f"node {i} not serving after {timeout:g}s:\n{self.log_tail(i)}")
            time.sleep(0.05)

    def start(self, ids: list[int] | None = None) -> "Cluster":
        """Start nodes (default: all) and wait until each serves HTTP.

        On the very first start, a port taken by someone else between picking
        and binding is not a test failure: start over on fresh ports.
        """
        first = ids is None and not self._started
        self._started = True
        for attempt in range(3 if first else 1):
            try:
                for i in self.ids if ids is None else ids:
                    self.spawn(i)
                for i in self.ids if ids is None else ids:
                    self.wait_ready(i)
                return self
            except PortInUse:
                if not first or attempt == 2:
                    raise
                self.kill_many(self.ids)
                for i in self.ids:
                    shutil.rmtree(self.data_dir(i), ignore_errors=True)
                self._pick_ports()
        return self

    def restart(self, i: int) -> None:
        if self.is_alive(i):
            self.kill(i)
        self.spawn(i)
        self.wait_ready(i)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Signal node i's process group and wait for it to exit."""
        proc = self.procs[i]
        if proc is None:
            return
        _killpg(proc, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _killpg(proc, signal.SIGKILL)
            proc.wait(timeout=5)
        self.procs[i] = None

    def join(self, via: int, node_id: int | None = None, port: int | None = None, wait: bool = True,
             timeout: float = 40.0) -> int:
        """Start a node with a new id (default: one above every id started here) on `port`
        (default: a free one) that joins the running cluster through node `via` (`kv serve
        --join`); wait until it serves HTTP, which it does only once it is a member and has
        a snapshot. Its id."""
        i = max(self.ids) + 1 if node_id is None else node_id
        assert not (i in self.procs and self.is_alive(i)), f"node {i} is running"
        if i not in self.ids:
            self.ids.append(i)
            self.ids.sort()
        self.ports[i] = free_ports(1)[0] if port is None else port
        self.join_urls[i] = self.url(via)
        self.procs[i] = None
        self.spawn(i)
        if wait:
            self.wait_ready(i, timeout)
        return i

    def members(self, i: int, stale: bool = False, timeout: float | None = None) -> Response:
        """GET /v1/members from node i."""
        return self.request(i, "GET", "/v1/members" + ("?consistency=stale" if stale else ""),
                            timeout=timeout)

    def add_member(self, via: int, node_id: int, address: str, wait_voter: bool = False,
                   timeout: float | None = None) -> Response:
        """POST /v1/members through node `via` (only the request: no process is started)."""
        query = "?wait=voter" if wait_voter else ""
        return self.request(via, "POST", "/v1/members" + query, {"id": node_id, "address": address},
                            timeout=timeout)

    def remove(self, via: int, node_id: int, force: bool = False, timeout: float | None = None) -> Response:
        """DELETE /v1/members/ID through node `via`."""
        return self.request(via, "DELETE", f"/v1/members/{node_id}" + ("?force=true" if force else ""),
                            timeout=timeout)

    def wait_exit(self, i: int, timeout: float = 15.0) -> int:
        """Wait for node i's process to end by itself (as a removed node does); its exit status."""
        proc = self.procs[i]
        assert proc is not None, f"node {i} was not started"
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node {i} still running after {timeout:g}s:\n{self.log_tail(i)}") from None
        self.exit_codes[i] = code
        return code

    def kill_many(self, ids: list[int], sig: int = signal.SIGKILL) -> None:
        """Signal all of `ids` first, then reap: as close to "at once" as processes allow."""
        procs = [(i, self.procs[i]) for i in ids if self.procs[i] is not None]
        for _, proc in procs:
            _killpg(proc, sig)
        for i, _ in procs:
            self.kill(i, sig)

    def stop_all(self) -> None:
        self.kill_many(self.ids, signal.SIGKILL)
        LIVE.discard(self)

    def is_alive(self, i: int) -> bool:
        proc = self.procs[i]
        return proc is not None and proc.poll() is None

    def alive(self) -> list[int]:
        return [i for i in self.ids if self.is_alive(i)]

    # -- HTTP -------------------------------------------------------------------

    def url(self, i: int) -> str:
        return f"http://{HOST}:{self.ports[i]}"

    def request(self, i: int, method: str, path: str, body: Any = None, raw: bytes | None = None,
                timeout: float | None = None) -> Response:
        return request(self.ports[i], method, path, body, raw,
                       self.request_timeout if timeout is None else timeout)

    def status(self, i: int, timeout: float = 5.0) -> dict:
        resp = self.request(i, "GET", "/v1/status", timeout=timeout)
        assert resp.status == 200, resp
        return resp.body

    def put(self, i: int, key: str, value: Any, timeout: float | None = None, **fields: Any) -> Response:
        return self.request(i, "PUT", key_path(key), {"value": value, **fields}, timeout=timeout)

    def get(self, i: int, key: str, stale: bool = False, timeout: float | None = None) -> Response:
        return self.request(i, "GET", key_path(key) + ("?consistency=stale" if stale else ""),
                            timeout=timeout)

    def delete(self, i: int, key: str, timeout: float | None = None, **fields: Any) -> Response:
        return self.request(i, "DELETE", key_path(key), fields or None, timeout=timeout)

    def wait_gone(self, *keys: str, ids: list[int] | None = None, timeout: float = 10.0) -> None:
        """Wait until every node (default: every live one) says each key is not found, to
        linearizable and stale reads alike: deleted (expired, its lease ended) everywhere."""
        def gone() -> bool:
            return all(self.get(i, key, stale=stale).status == 404
                       for i in (ids or self.alive()) for key in keys for stale in (False, True))
        wait_until(gone, timeout, f"{', '.join(map(repr, keys))} to be gone on every node")

    def list(self, i: int, prefix: str = "", limit: int | None = None, stale: bool = False) -> Response:
        query = {"prefix": prefix}
        if limit is not None:
            query["limit"] = str(limit)
        if stale:
            query["consistency"] = "stale"
        return self.request(i, "GET", "/v1/kv?" + urllib.parse.urlencode(query))

    # -- waiting ------------------------------------------------------------------

    def statuses(self, ids: list[int] | None = None) -> dict[int, dict]:
        out = {}
        for i in self.alive() if ids is None else ids:
            try:
                out[i] = self.status(i, timeout=2)
            except (OSError, http.client.HTTPException, AssertionError):
                pass
        return out

    def current_leader(self, ids: list[int] | None = None) -> int | None:
        """A node that says it leads, which a majority of the cluster (counting it) follows.

        The cluster is the voters the leader names in its status (the configuration it
        applied last), or the n initial nodes if its status names none.
        """
        statuses = self.statuses(ids)
        for i, st in statuses.items():
            if st["role"] == "leader" and st["leader"] == i:
                voters = st.get("voters") or list(range(1, self.n + 1))
                followers = sum(1 for j, s in statuses.items() if s["leader"] == i and j in voters)
                if followers > len(voters) // 2:
                    return i
        return None

    def wait_for_leader(self, timeout: float = 15.0, ids: list[int] | None = None,
                        not_: int | None = None) -> int:
        """The id of a leader a majority follows (among `ids`, default the live nodes)."""
        def found() -> int | None:
            leader = self.current_leader(ids)
            return leader if leader is not None and leader != not_ else None
        try:
            return wait_until(found, timeout, "a leader")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; statuses: {self.statuses()}") from None

    def wait_caught_up(self, i: int, timeout: float = 20.0) -> int:
        """Wait until node i has applied as far as every other live node; that slot."""
        def caught_up() -> int | None:
            statuses = self.statuses()
            target = max(s["applied"] for s in statuses.values())
            return target if statuses[i]["applied"] >= target and target > 0 else None
        return wait_until(caught_up, timeout, f"node {i} to catch up")

    # -- logs -----------------------------------------------------------------------

    def logged_errors(self, i: int, limit: int = 40) -> list[str]:
        """The lines of node i's log that say something went wrong: each line logged at
        error or critical level, and each bare traceback (its lines up to the exception's);
        at most `limit` of them."""
        try:
            lines = self.log_path(i).read_text(errors="replace").splitlines()
        except OSError:
            return []
        picked: list[str] = []
        for n, line in enumerate(lines):
            if re.search(r"level=(critical|error)", line):
                picked.append(line)
            elif line.startswith("Traceback"):
                end = n + 1
                while end < len(lines) and lines[end].startswith((" ", "\t")):
                    end += 1
                picked += lines[n:end + 1]
        return picked[:limit]

    def log_tail(self, i: int, lines: int = 30) -> str:
        try:
            text = self.log_path(i).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def logs(self, lines: int = 30) -> str:
        return "\n".join(f"===== node {i} ({'up' if self.is_alive(i) else 'down'}) "
                         f"{self.log_path(i)} =====\n{self.log_tail(i, lines)}" for i in self.ids)


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the child's pid
    except ProcessLookupError:
        pass


def _stop_quietly(ref: "weakref.ref[Cluster]") -> None:
    cluster = ref()
    if cluster is not None:
        try:
            cluster.stop_all()
        except Exception:
            pass


def module_cluster(tmp_path_factory: Any, name: str, n: int = 3) -> Iterator[Cluster]:
    """Body of a module-scoped pytest fixture: a started cluster with a leader, stopped at
    teardown (`yield from module_cluster(tmp_path_factory, "api")`)."""
    cluster = Cluster(tmp_path_factory.mktemp(name), n=n)
    try:
        cluster.start()
        cluster.wait_for_leader()
        yield cluster
    finally:
        cluster.stop_all()


def cluster_factory(tmp_path: Path, cls: type[Cluster] = Cluster) -> Iterator[Callable[..., Cluster]]:
    """Body of a pytest fixture: yields make(n=3, start=True, **kwargs) building `cls`
    clusters under tmp_path, and stops every one of them at teardown."""
    made: list[Cluster] = []

    def make(n: int = 3, start: bool = True, **kwargs: Any) -> Cluster:
        cluster = cls(tmp_path / f"cluster{len(made)}", n=n, **kwargs)
        made.append(cluster)
        if start:
            cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.stop_all()
