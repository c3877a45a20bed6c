"""Structured logs for `kv serve`: key=value text or JSON lines, one event per line.

Call sites pass fields with `extra=fields(leader=2, ballot="3.2")`; the message
stays short and constant ("leader changed"), so logs are easy to grep and to
parse. Plain %-style calls still work: their formatted text becomes `msg`.

Repeated conditions (a peer that keeps failing, a stranger that keeps knocking)
are logged when their state changes or at most once per interval per key, with
the number of repeats left out; see StateLog and RateLimit.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

FORMATS = ("text", "json")
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def fields(**kv: Any) -> dict[str, Any]:
    """`extra=` for a log call: fields that become key=value pairs / JSON members."""
    return {"kv": kv}


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kv = getattr(record, "kv", None)
    if isinstance(kv, dict):
        out.update(kv)
    for key, value in record.__dict__.items():  # other extra= keys, if any
        if key not in _RESERVED and key != "kv" and not key.startswith("_"):
            out.setdefault(key, value)
    return out


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class _Base(logging.Formatter):
    def __init__(self, node_id: int | None = None) -> None:
        super().__init__()
        self.node_id = node_id

    def event(self, record: logging.LogRecord) -> dict[str, Any]:
        doc: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname.lower()}
        if self.node_id is not None:
            doc["node"] = self.node_id
        doc["logger"] = record.name
        doc["msg"] = record.getMessage()
        for key, value in _record_fields(record).items():
            doc[key if key not in doc else f"field_{key}"] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return doc


class TextFormatter(_Base):
    """ts=... level=info node=1 logger=kvpaxos.node msg="leader changed" leader=2"""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_text_value(v)}" for k, v in self.event(record).items())


class JsonFormatter(_Base):
    """One JSON object per line, with the same members as the text format."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.event(record), default=str, ensure_ascii=False)


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(ch in text for ch in ' "=\\\n\t') and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text", node_id: int | None = None) -> None:
    """Send every log record to stderr in the chosen format (replaces earlier handlers)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node_id) if fmt == "json" else TextFormatter(node_id))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(drop_malformed_http)
    # sqlitedict logs a failed statement on its thread as a dozen error lines of stack;
    # the node reports the failure itself (storage.sqlite.SqliteStorage.check), once,
    # with the file and the cause, and stops.
    logging.getLogger("sqlitedict").setLevel(logging.CRITICAL)


def drop_malformed_http(record: logging.LogRecord) -> bool:
    """aiohttp logs a full traceback for every unparsable request line or header
    (and answers it 400 itself): bad input from a client, not a server error, and
    an easy way to flood the log. Keep everything else it logs."""
    from aiohttp.http_exceptions import HttpProcessingError

    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, HttpProcessingError)


class StateLog:
    """Log a keyed condition only when its state changes (e.g. a link going down once,
    not on every reconnect attempt); counts the repeats in between."""

    def __init__(self) -> None:
        self._state: dict[Any, Any] = {}
        self._repeats: dict[Any, int] = {}

    def changed(self, key: Any, state: Any) -> int | None:
        """None if `state` is the same as last time (do not log); else how many
        times the previous state repeated since it was logged."""
        if key in self._state and self._state[key] == state:
            self._repeats[key] = self._repeats.get(key, 0) + 1
            return None
        self._state[key] = state
        return self._repeats.pop(key, 0)


class RateLimit:
    """Allow one log line per key per interval; the next allowed one reports how many
    were suppressed. Bounded: at most `max_keys` keys are remembered."""

    def __init__(self, interval_s: float = 60.0, max_keys: int = 10_000,
                 clock: Any = time.monotonic) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._clock = clock
        self._last: dict[Any, float] = {}
        self._suppressed: dict[Any, int] = {}

    def allow(self, key: Any) -> int | None:
        """None: stay quiet. Else the number of occurrences suppressed since the last line."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        if last is None and len(self._last) >= self.max_keys:
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        return self._suppressed.pop(key, 0)
