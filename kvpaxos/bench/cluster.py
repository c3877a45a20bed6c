"""A fresh local cluster of real `kv serve` processes for benchmarks.

Each node is `sys.executable -m cli.main serve ...`, its data in a temporary
directory on disk (or one given), its output in DIR/node-N.log. Control-plane
requests (status, readiness) use http.client with short timeouts; the load
itself comes from kvpaxos.bench.loadgen.
"""
from __future__ import annotations

import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def project_root() -> Path | None:
    """The directory holding the `cli` package, so children can run `-m cli.main`."""
    spec = importlib.util.find_spec("cli")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).resolve().parent


def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = project_root()
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports that were free a moment ago."""
    socks, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads) from /proc/PID/stat; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = raw[raw.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _over_threads(pid: int, name: str, count: Callable[[bytes], int]) -> int | None:
    """The sum of count(/proc/PID/task/TID/<name>) over a process's threads (a thread that
    ends meanwhile takes its share with it); None if the process is gone or no thread's
    file could be read."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total, seen = 0, False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/{name}", "rb") as f:
                total += count(f.read())
            seen = True
        except (OSError, ValueError, IndexError):
            continue  # the thread ended while we looked
    return total if seen else None


def _switches(status: bytes) -> int:
    return sum(int(line.split()[1]) for line in status.splitlines()
               if line.startswith((b"voluntary_ctxt_switches:", b"nonvoluntary_ctxt_switches:")))


def core_wait_seconds(pid: int) -> float | None:
    """How long all a process's threads have been runnable but waiting for a core, so far
    (the second field of /proc/PID/task/*/schedstat); None if the process is gone or the
    kernel keeps no such count. Beside the CPU time it tells a server that is slow for
    want of work from one that is slow for want of a core (three nodes and a load
    generator share two here)."""
    waited_ns = _over_threads(pid, "schedstat", lambda text: int(text.split()[1]))
    return None if waited_ns is None else waited_ns / 1e9


def context_switches(pid: int) -> int | None:
    """Voluntary and involuntary context switches of all a process's threads so far (from
    /proc/PID/task/*/status); None if the process is gone. On a machine where a wake-up is
    dear, these are much of a write's CPU."""
    return _over_threads(pid, "status", _switches)


def wait_serving(proc: subprocess.Popen, port: int, timeout_s: float = 15.0) -> bool:
    """Wait until GET /v1/status on port answers; False if proc exited or time ran out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            get_json(port, "/v1/status")
            return True
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                return False
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within grace_s."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def get_json(port: int, path: str, timeout: float = 1.0) -> tuple[int, Any]:
    """(status, decoded body) of one GET on a fresh connection; OSError if nothing answers."""
    return request_json(port, "GET", path, None, timeout)


def request_bytes(port: int, method: str, path: str, body: Any = None,
                  timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, raw body) of one request (JSON body unless None) on a fresh connection."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        if body is None:
            conn.request(method, path)
        else:
            conn.request(method, path, body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def request_json(port: int, method: str, path: str, body: Any, timeout: float = 5.0) -> tuple[int, Any]:
    """(status, decoded body) of one request (JSON body unless None) on a fresh connection."""
    status, data = request_bytes(port, method, path, body, timeout)
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, None


@dataclass
class BenchNode:
    node_id: int
    port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    profile_path: Path | None = None  # run under cProfile, writing here at exit

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class BenchCluster:
    """`with BenchCluster(3) as c:` starts n nodes and waits for a leader; stops and cleans up at exit."""
    n: int = 3
    root: Path | None = None        # None: a new temporary directory, removed at stop
    keep_data: bool = False
    log_level: str = "warning"
    profile_nodes: tuple[int, ...] = ()  # node ids to run under kvpaxos.bench.profiled_serve
    profile_clock: str = "wall"          # wall | cpu (see profiled_serve)
    ready_timeout_s: float = 30.0
    serve_args: tuple[str, ...] = ()     # added to every node's `kv serve` command line
    nodes: dict[int, BenchNode] = field(default_factory=dict)
    _temp: bool = False

    def __post_init__(self) -> None:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="kvbench-"))
            self._temp = True
        self.root = Path(self.root)
        ports = free_ports(self.n)
        for i, port in enumerate(ports, start=1):
            d = self.root / f"node-{i}"
            self.nodes[i] = BenchNode(i, port, d, self.root / f"node-{i}.log",
                                      profile_path=(self.root / f"node-{i}.prof"
                                                    if i in self.profile_nodes else None))

    # -- lifecycle --

    def __enter__(self) -> BenchCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def spec(self) -> str:
        return ",".join(f"{i}={HOST}:{n.port}" for i, n in self.nodes.items())

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes.values()]

    def client_targets(self, target: str, leader: int) -> dict:
        """Workload fields for where clients send: "all" spreads them over every node;
        "leader" starts them on `leader` and lets them follow X-Kv-Leader from there,
        as kvpaxos.client does."""
        if target == "leader":
            return {"urls": self.urls, "follow_leader": True, "leader": list(self.nodes).index(leader)}
        return {"urls": self.urls}

    def command(self, node: BenchNode) -> list[str]:
        prefix = [sys.executable, "-m", "cli.main"]
        if node.profile_path is not None:  # SIGUSR1/SIGUSR2 start/stop cProfile
            prefix = [sys.executable, "-m", "kvpaxos.bench.profiled_serve", str(node.profile_path),
                      self.profile_clock]
        return prefix + ["serve", "--id", str(node.node_id), "--cluster", self.spec,
                         "--data-dir", str(node.data_dir), "--log-level", self.log_level,
                         *self.serve_args]

    def start(self) -> None:
        try:
            for node in self.nodes.values():
                self.start_node(node.node_id)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def start_node(self, node_id: int) -> None:
        node = self.nodes[node_id]
        node.data_dir.mkdir(parents=True, exist_ok=True)
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen(self.command(node), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=child_env(),
                                         start_new_session=True)

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[node_id]
        if node.alive():
            node.proc.send_signal(sig)
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()

    def stop(self) -> None:
        """SIGTERM every node (so profiles get written), SIGKILL after a grace period."""
        running = [n for n in self.nodes.values() if n.alive()]
        for node in running:
            try:
                node.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        for node in running:
            try:
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        if self._temp and not self.keep_data and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- views --

    def status(self, node_id: int, timeout: float = 1.0) -> dict | None:
        try:
            code, body = get_json(self.nodes[node_id].port, "/v1/status", timeout)
        except OSError:
            return None
        return body if code == 200 and isinstance(body, dict) else None

    def leader(self, timeout_s: float = 15.0, among: list[int] | None = None) -> int:
        """The id of the node every live node (or every one of `among`) agrees leads."""
        deadline = time.monotonic() + timeout_s
        ids = among or [i for i, n in self.nodes.items() if n.alive()]
        while time.monotonic() < deadline:
            statuses = {i: self.status(i) for i in ids}
            leaders = {s.get("leader") for s in statuses.values() if s is not None}
            if None not in statuses.values() and len(leaders) == 1:
                leader = leaders.pop()
                if leader is not None and leader in self.nodes and \
                        (statuses.get(leader) or self.status(leader) or {}).get("role") == "leader":
                    return leader
            time.sleep(0.05)
        raise TimeoutError(f"no agreed leader within {timeout_s:g} s; logs in {self.root}")

    def wait_ready(self) -> int:
        """Every node answers and agrees on a leader, and a write goes through; the leader id."""
        deadline = time.monotonic() + self.ready_timeout_s
        for node in self.nodes.values():
            while self.status(node.node_id) is None:
                if not node.alive():
                    raise RuntimeError(f"node {node.node_id} exited: {self.tail(node.node_id)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node {node.node_id} did not answer; see {node.log_path}")
                time.sleep(0.05)
        leader = self.leader(max(1.0, deadline - time.monotonic()))
        while True:
            try:
                code, _ = request_json(self.nodes[leader].port, "PUT", "/v1/kv/bench-ready",
                                       {"value": "ok"}, timeout=5)
                if code == 200:
                    return leader
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster does not accept writes")
            time.sleep(0.1)

    def wait_caught_up(self, node_id: int, timeout_s: float = 30.0) -> None:
        """Until node_id answers and has applied as far as the leader had chosen when we asked."""
        deadline = time.monotonic() + timeout_s
        target = None
        while time.monotonic() < deadline:
            if target is None:
                lead = self.leader(max(0.5, deadline - time.monotonic()))
                target = (self.status(lead) or {}).get("chosen")
            mine = self.status(node_id)
            if target is not None and mine is not None and mine.get("applied", 0) >= target:
                return
            time.sleep(0.05)
        raise TimeoutError(f"node {node_id} did not catch up within {timeout_s:g} s")

    def signal_all(self, sig: int) -> None:
        for node in self.nodes.values():
            if node.alive():
                node.proc.send_signal(sig)

    def cpu_seconds(self) -> dict[int, float | None]:
        return {i: cpu_seconds(n.pid) if n.alive() else None for i, n in self.nodes.items()}

    def tail(self, node_id: int, lines: int = 5) -> str:
        try:
            text = self.nodes[node_id].log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])
