"""`kv snapshot save|restore|info`: back up a running cluster and seed a new one from it.

save    streams GET /v1/snapshot?fresh=true from any node (a snapshot taken at a
        linearizable point, so it holds every write acknowledged before the
        command started) to FILE.tmp, checks its checksum, then renames it to FILE.
restore checks FILE and writes its data to DIR/snapshot.json (through a temporary
        file and an atomic rename) in a directory that holds no node state,
        without the old cluster's configuration: the new cluster's --cluster
        gives that. Restore into every node's directory of a NEW cluster, then
        start them all: each finds that no peer has promised anything and votes
        (restored into one node of a running cluster, it rebuilds first).
"""
from __future__ import annotations

import http.client
import os
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cli.common import CliError
from kvpaxos import snapshot
from kvpaxos.client_support import Attempts, RETRY_STATUSES, decode_body
from storage.sqlite import FILE_NAME as SQLITE_FILE

CHUNK_BYTES = 256 * 1024
SNAPSHOT_PATH = "/v1/snapshot?fresh=true"


def check(path: str | Path) -> dict[str, Any]:
    """Verify a snapshot file; its header plus size. CliError (one line) if it is damaged."""
    try:
        header = snapshot.verify(str(path))
        header["bytes"] = os.path.getsize(path)
    except snapshot.SnapshotError as exc:
        raise CliError(f"{path} is not a usable snapshot: {exc}") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    return header


def save(urls: list[str], path: str | Path, timeout_s: float, token: str | None = None,
         ca_file: str | None = None) -> dict[str, Any]:
    """Download a fresh snapshot from the first node that serves one; verify; rename into place.
    `token` is sent as a bearer token; `ca_file` verifies https:// nodes."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if path.parent and not path.parent.is_dir():
        raise CliError(f"directory {path.parent} does not exist")
    attempts = Attempts(len(urls), 0, timeout_s, write=False)
    headers = {"Accept": "application/x-ndjson"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    try:
        while (step := attempts.next()) is not None:
            index, delay = step
            time.sleep(delay)
            url = urls[index]
            try:
                status, detail = _download(url, tmp, max(attempts.remaining(), 1.0), headers, context)
            except (OSError, http.client.HTTPException) as exc:
                attempts.failed(f"{url}: {exc or type(exc).__name__}", sent=False)
                continue
            if status != 200:
                if status in RETRY_STATUSES:
                    attempts.failed(f"{url}: HTTP {status} {detail}", sent=False, status=status)
                    continue
                if status in (401, 403):
                    raise CliError(f"{url} refused the snapshot: missing or wrong token "
                                   "(pass --token or set KV_TOKEN)")
                raise CliError(f"{url} refused the snapshot: HTTP {status} {detail}")
            try:
                header = snapshot.verify(str(tmp))
            except snapshot.SnapshotError as exc:  # cut off or damaged on the way: try again
                attempts.failed(f"{url}: the download is damaged ({exc})", sent=False)
                continue
            header["bytes"] = tmp.stat().st_size
            snapshot.install_file(str(tmp), str(path))
            header["source"] = url
            return header
    finally:
        if tmp.exists():
            tmp.unlink()
    where = urls[0] if len(urls) == 1 else f"cluster ({', '.join(urls)})"
    raise CliError(f"{where} gave no snapshot (last error: {attempts.last_error})")


def _download(url: str, tmp: Path, timeout_s: float, headers: dict[str, str],
              context: ssl.SSLContext | None) -> tuple[int, str]:
    """GET a fresh snapshot into tmp (fsynced). (status, error text of a non-200 answer)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout_s, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    try:
        conn.request("GET", SNAPSHOT_PATH, headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            doc = decode_body(resp.read())
            return resp.status, str(doc.get("error") or doc.get("message") or "").strip()
        with open(tmp, "wb") as f:
            while chunk := resp.read(CHUNK_BYTES):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        return 200, ""
    finally:
        conn.close()


def restore(source: str | Path, data_dir: str | Path) -> dict[str, Any]:
    """Copy a verified snapshot into a data directory that holds no node state."""
    header = check(source)
    data_dir = Path(data_dir)
    for name in (SQLITE_FILE, snapshot.FILE_NAME):
        if (data_dir / name).exists():
            raise CliError(f"{data_dir} already holds node state ({name}); restore only into a "
                           "new, empty data directory")
    if data_dir.exists() and not data_dir.is_dir():
        raise CliError(f"{data_dir} is not a directory")
    try:
        state = snapshot.read(str(source))
    except snapshot.SnapshotError as exc:
        raise CliError(f"{source} is not a usable snapshot: {exc}") from None
    if state.applied_slot != header["slot"]:
        raise CliError(f"{source} changed while it was being read; try again")
    state.membership = None  # the old cluster's members and addresses do not carry over
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        target = snapshot.path_in(str(data_dir))
        snapshot.write(target, state)  # a temporary file, fsynced, renamed into place
        copied = snapshot.verify(target)
    except OSError as exc:
        raise CliError(f"cannot write into {data_dir}: {exc.strerror or exc}") from None
    except snapshot.SnapshotError as exc:
        raise CliError(f"the copy in {data_dir} is damaged: {exc}") from None
    if copied["slot"] != header["slot"] or copied["keys"] != header["keys"]:
        raise CliError(f"the copy in {data_dir} does not match {source}")
    return header
