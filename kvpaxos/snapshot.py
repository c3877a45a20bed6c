"""Snapshot files: the key-value state at one applied slot, written atomically.

Format (JSON lines, UTF-8):
  line 1   {"kvpaxos_snapshot": 1, "slot": S, "revision": R, "keys": N, ...}
  N lines  [key, value, version]
  1 line   {"sessions": M}
  M lines  [client_id, seq, [ok, error, version], last_ms]
  last     {"sha256": "<hex digest of every byte before this line>"}
A file is used only if its checksum matches. It is written to a temporary
name, fsynced and renamed over DATA_DIR/snapshot.json, and the directory is
fsynced, so a crash at any moment leaves the previous snapshot valid. Peers
stream the same bytes to each other in chunks.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import BinaryIO

from kvpaxos.core.codec import compact_json
from kvpaxos.core.kvstate import Export, KVState, import_rows

FILE_NAME = "snapshot.json"
FORMAT = 1


class SnapshotError(ValueError):
    """A snapshot file is damaged, truncated or not a snapshot."""


def path_in(data_dir: str) -> str:
    return os.path.join(data_dir, FILE_NAME)


def _dumps(obj: object) -> bytes:
    return compact_json(obj).encode() + b"\n"


def write_export(path: str, export: Export) -> int:
    """Write a snapshot of an Export and close it; returns the file's size. Runs off the
    event loop, on any thread."""
    try:
        return _write(path, export)
    finally:
        export.close()


def _write(path: str, export: Export) -> int:
    tmp = path + ".tmp"
    digest = hashlib.sha256()
    with open(tmp, "wb") as f:
        def put(chunk: bytes) -> None:
            digest.update(chunk)
            f.write(chunk)
        put(_dumps({"kvpaxos_snapshot": FORMAT, **export.header}))
        buf: list[bytes] = []
        for k, v, ver in export.rows():
            buf.append(_dumps([k, v, ver]))
            if len(buf) >= 4096:
                put(b"".join(buf))
                buf = []
        put(b"".join(buf))
        put(_dumps({"sessions": export.session_count}))
        written = 0
        for row in export.session_rows():
            put(_dumps(row))
            written += 1
        if written != export.session_count:
            raise ValueError(f"{written} session rows, not the {export.session_count} announced")
        f.write(_dumps({"sha256": digest.hexdigest()}))
        f.flush()
        os.fsync(f.fileno())
    install_file(tmp, path)
    return os.path.getsize(path)


def write(path: str, state: KVState) -> int:
    return write_export(path, Export(state))


def install_file(tmp: str, path: str) -> None:
    """Atomically put a complete, fsynced file in place and make the rename durable."""
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: str) -> KVState:
    """Load and verify a snapshot file; SnapshotError if it is not intact."""
    try:
        with open(path, "rb") as f:
            return _parse(f)
    except OSError as e:
        raise SnapshotError(f"cannot read snapshot {path}: {e}") from e


def verify(path: str) -> dict:
    """Check a snapshot's checksum and records; return its header."""
    with open(path, "rb") as f:
        state = _parse(f)
    return {"slot": state.applied_slot, "keys": len(state.data), "revision": state.revision}


def _parse(f: BinaryIO) -> KVState:
    digest = hashlib.sha256()
    lines = iter(f)

    def take() -> object:
        line = next(lines, None)
        if line is None or not line.endswith(b"\n"):
            raise SnapshotError("snapshot is truncated")
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise SnapshotError(f"snapshot has a malformed line: {e}") from None
        digest.update(line)
        return obj

    header = take()
    if not isinstance(header, dict) or header.get("kvpaxos_snapshot") != FORMAT:
        raise SnapshotError("not a kvpaxos snapshot (or an unknown format)")
    n_keys = header.get("keys")
    if type(n_keys) is not int or n_keys < 0:
        raise SnapshotError("snapshot header lacks its key count")
    keys = [take() for _ in range(n_keys)]
    marker = take()
    if not isinstance(marker, dict) or type(marker.get("sessions")) is not int:
        raise SnapshotError("snapshot session marker is missing")
    sessions = [take() for _ in range(marker["sessions"])]
    expected = digest.hexdigest()
    trailer = take()
    if not isinstance(trailer, dict) or trailer.get("sha256") != expected:
        raise SnapshotError("snapshot checksum does not match its contents")
    if next(lines, None) is not None:
        raise SnapshotError("snapshot has data after its checksum")
    try:
        return import_rows(header, keys, sessions)  # type: ignore[arg-type]
    except (ValueError, TypeError, KeyError) as e:
        raise SnapshotError(f"snapshot holds a malformed record: {e}") from None
