"""Real `kv serve` processes with security options (secret, token, TLS), for the
security and metrics tests. Self-contained: plain http.client requests with an
optional bearer token and CA file; every wait has a deadline.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.cluster import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


@dataclass
class Reply:
    status: int
    text: str
    headers: dict[str, str]

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except ValueError:
            return None

    def __repr__(self) -> str:
        return f"<{self.status} {self.text[:300]!r}>"


def free_ports(count: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return path




def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost; (cert, key) paths."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
                        "-subj", "/CN=kvpaxos-test",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                       check=True, capture_output=True, timeout=30)
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kvpaxos-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(private.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST)),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    os.chmod(key, 0o600)
    return cert, key


class Nodes:
    """n `kv serve` processes; `args` are added to every node's command line."""

    def __init__(self, directory: Path, n: int = 3, args: list[str] | None = None,
                 token: str | None = None, ca_file: Path | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ids = list(range(1, n + 1))
        self.ports = dict(zip(self.ids, free_ports(n)))
        self.spec = ",".join(f"{i}={HOST}:{self.ports[i]}" for i in self.ids)
        self.args = list(args or [])
        self.token = token
        self.ca_file = ca_file
        self.scheme = "https" if ca_file else "http"
        self.procs: dict[int, subprocess.Popen] = {}

    # -- processes

    def log_path(self, i: int | str) -> Path:
        return self.dir / f"node-{i}.log"

    def spawn(self, i: int, args: list[str] | None = None, name: str | None = None,
              data_dir: Path | None = None) -> subprocess.Popen:
        name = name or str(i)
        cmd = [sys.executable, "-m", "cli.main", "serve", "--id", str(i), "--cluster", self.spec,
               "--data-dir", str(data_dir or self.dir / f"node-{name}"), "--log-level", "info",
               *(self.args if args is None else args)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path(name), "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=REPO_ROOT, env=env, start_new_session=True)
        self.procs[i] = proc
        return proc

    def start(self) -> Nodes:
        for i in self.ids:
            self.spawn(i)
        for i in self.ids:
            self.wait_ready(i)
        return self

    def wait_ready(self, i: int, timeout: float = 20.0) -> None:
        def ready() -> bool:
            proc = self.procs[i]
            if proc.poll() is not None:
                raise AssertionError(f"node {i} exited with {proc.returncode}:\n{self.log_tail(i)}")
            return self.request(i, "GET", "/v1/status", timeout=2).status == 200
        wait_until(ready, timeout, f"node {i} to serve")

    def kill(self, i: int) -> None:
        proc = self.procs.pop(i, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=15)

    def stop_all(self) -> None:
        for i in list(self.procs):
            self.kill(i)

    def log_tail(self, i: int | str, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path(i).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n" + "\n".join(p.read_text(errors="replace").splitlines()[-40:])
                         for p in sorted(self.dir.glob("node-*.log")))

    # -- HTTP

    def url(self, i: int) -> str:
        return f"{self.scheme}://{HOST}:{self.ports[i]}"

    def urls(self) -> list[str]:
        return [self.url(i) for i in self.ids]

    def request(self, i: int, method: str, path: str, body: Any = None, token: str | None | bool = True,
                timeout: float = 10.0, headers: dict[str, str] | None = None) -> Reply:
        """token=True: this cluster's token (if any); None/False: no token; a str: that token."""
        token = self.token if token is True else (token or None)
        headers = {**({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self.ca_file:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(HOST, self.ports[i], timeout=timeout,
                                                                          context=ctx)
        else:
            conn = http.client.HTTPConnection(HOST, self.ports[i], timeout=timeout)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body).encode(),
                         headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
            return Reply(resp.status, text, {k.lower(): v for k, v in resp.getheaders()})
        finally:
            conn.close()

    def put(self, i: int, key: str, value: str, **kw: Any) -> Reply:
        return self.request(i, "PUT", "/v1/kv/" + urllib.parse.quote(key, safe=""), {"value": value}, **kw)

    def put_retry(self, i: int, key: str, value: str, deadline_s: float = 30.0) -> Reply:
        """PUT with a client_id and seq, retried on 503/504 as a client would: on a loaded
        machine elections happen, and the test should not depend on there being none."""
        body = {"value": value, "client_id": f"test-{os.getpid()}-{key}-{value}", "seq": 1}
        deadline = time.monotonic() + deadline_s
        while True:
            reply = self.request(i, "PUT", "/v1/kv/" + urllib.parse.quote(key, safe=""), body)
            if reply.status not in (503, 504) or time.monotonic() > deadline:
                return reply
            time.sleep(0.2)

    def get(self, i: int, key: str, **kw: Any) -> Reply:
        return self.request(i, "GET", "/v1/kv/" + urllib.parse.quote(key, safe=""), **kw)

    def status(self, i: int) -> dict:
        reply = self.request(i, "GET", "/v1/status", timeout=3)
        assert reply.status == 200, reply
        return reply.json

    def metrics(self, i: int) -> str:
        reply = self.request(i, "GET", "/metrics", timeout=5)
        assert reply.status == 200, reply
        return reply.text

    def wait_leader(self, ids: list[int] | None = None, timeout: float = 20.0) -> int:
        ids = ids or [i for i, p in self.procs.items() if p.poll() is None]

        def leader() -> int | None:
            statuses = {i: self.status(i) for i in ids}
            for i, st in statuses.items():
                if st["role"] == "leader" and sum(s["leader"] == i for s in statuses.values()) > len(self.ids) // 2:
                    return i
            return None
        return wait_until(leader, timeout, "a leader")


def parse_metrics(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset], float]]:
    """Parse Prometheus text exposition strictly enough to catch format mistakes:
    (family -> type, (sample name, labels) -> value)."""
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    assert text.endswith("\n"), "the exposition must end with a newline"
    for line in text.splitlines():
        assert line.strip(), "no blank lines expected"
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in types, f"family {name} declared twice"
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            types[name] = kind
            continue
        if line.startswith("#"):
            assert line.startswith("# HELP "), line
            continue
        head, _, value = line.rpartition(" ")
        name, labels = head, frozenset()
        if "{" in head:
            name, _, rest = head.partition("{")
            assert rest.endswith("}"), line
            pairs = []
            for part in rest[:-1].split('",'):
                k, _, v = part.partition("=")
                assert v.startswith('"'), line
                pairs.append((k, v.strip('"')))
            labels = frozenset(pairs)
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in types:
                family = name[: -len(suffix)]
        assert family in types, f"sample {name} before its # TYPE line"
        if types[family] == "counter":
            assert name.endswith("_total"), f"counter {name} must end in _total"
        assert (name, labels) not in samples, f"duplicate sample {line}"
        samples[(name, labels)] = float(value)
    return types, samples
