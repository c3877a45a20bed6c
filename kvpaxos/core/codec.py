"""The wire and disk encoding: messages and batches to JSON-able data and back.

Decoding validates every field and raises WireError on anything malformed, so a
garbage or forged peer message is dropped by the caller instead of reaching the
protocol. Ballots travel as [round, node]; a command as a compact list.
"""
from __future__ import annotations

import json
import reprlib  # bounded reprs: a peer's garbage may be huge or deeply nested
from dataclasses import fields
from typing import Any, Callable

from kvpaxos.core import messages as m
from kvpaxos.core.ballot import Ballot
from kvpaxos.core.commands import (DELETE_PREFIX, DELETE_PREFIX_MAX, LEASE_GRANT, LEASE_ID_MAX, LEASE_OPS, OPS, PUT,
                                   REFRESH, TTL_MS_MAX, TXN, Batch, Command)
from kvpaxos.core.membership import MEMBER_OPS


class WireError(ValueError):
    """A peer sent bytes that are not a valid message (a remote protocol error)."""


def _int(x: Any, lo: int = 0) -> int:
    if type(x) is not int or x < lo:
        raise WireError(f"expected an integer >= {lo}, got {reprlib.repr(x)}")
    return x


def _opt_str(x: Any) -> str | None:
    if x is not None and type(x) is not str:
        raise WireError(f"expected a string or null, got {type(x).__name__}")
    return x


def _str(x: Any) -> str:
    if type(x) is not str:
        raise WireError(f"expected a string, got {type(x).__name__}")
    return x


def ballot_to_wire(b: Ballot) -> list[int]:
    return [b.round, b.node_id]


def ballot_json(b: Ballot) -> str:
    """compact_json(ballot_to_wire(b)), for text built around it."""
    return f"[{b.round},{b.node_id}]"


def ballot_from_wire(x: Any) -> Ballot:
    if not isinstance(x, list) or len(x) != 2:
        raise WireError(f"bad ballot {reprlib.repr(x)}")
    return Ballot(_int(x[0]), _int(x[1]))


def command_to_wire(c: Command) -> list:
    wire = [c.op, c.key, c.value, c.if_value, c.if_version, c.client_id, c.seq, c.cmd_id, c.part]
    if c.ttl_ms is not None or c.lease is not None:
        wire.append(c.ttl_ms)  # a tenth field only where there is one: logs from before read the same
        if c.lease is not None:
            wire.append(c.lease)  # and an eleventh
    return wire


def command_from_wire(x: Any) -> Command:
    # The common case checked inline (a follower decodes every command of every
    # Accept); anything unusual goes through the full checks below for its error.
    if type(x) is list and len(x) == 9:
        op, key, value, if_value, if_version, client_id, seq, cmd_id, part = x
        if (op == PUT and type(key) is str and type(value) is str and if_value is None and if_version is None
                and (client_id is None or type(client_id) is str) and type(seq) is int and seq >= 0
                and type(cmd_id) is str and type(part) is int and part >= 0):
            return Command(op, key, value, None, None, client_id, seq, cmd_id, part)
    return _checked_command_from_wire(x)


def _checked_command_from_wire(x: Any) -> Command:
    if not isinstance(x, list) or len(x) not in (9, 10, 11):
        raise WireError("bad command")
    op, key, value, if_value, if_version, client_id, seq, cmd_id, part = x[:9]
    if (op not in OPS and op not in MEMBER_OPS) or type(key) is not str or type(cmd_id) is not str:
        raise WireError("bad command")
    if op == PUT and type(value) is not str:
        raise WireError("a put needs a string value")  # the state machine asserts it
    if if_version is not None:
        _int(if_version)
    ttl_ms = lease = None
    if len(x) >= 10 and (x[9] is not None or len(x) == 10):
        ttl_ms = _int(x[9], 1)
        if op not in (PUT, REFRESH, LEASE_GRANT) or ttl_ms > TTL_MS_MAX:
            raise WireError("a time to live is for a put, a refresh or a lease, of at most a year")
    if len(x) == 11:
        lease = _int(x[10], 1)
        if op != PUT or ttl_ms is not None or lease > LEASE_ID_MAX:
            raise WireError("a lease is for a put without a time to live")
    if op in LEASE_OPS and not (key.isascii() and key.isdigit() and len(key) <= 19 and int(key) <= LEASE_ID_MAX
                                and value is None and if_value is None and if_version is None
                                and (ttl_ms is not None) == (op == LEASE_GRANT)):
        raise WireError("a lease command names its lease in decimal, and only a grant has a time to live")
    if op == REFRESH and (ttl_ms is None or value is not None):
        raise WireError("a refresh has a time to live and no value")
    if op == TXN and (type(value) is not str or if_value is not None or if_version is not None):
        raise WireError("a transaction holds its comparisons and writes in its value, and no precondition")
    if op == DELETE_PREFIX and not (type(value) is str and value.isascii() and value.isdigit()
                                    and 0 < int(value) <= DELETE_PREFIX_MAX and client_id is None
                                    and if_value is None and if_version is None):
        raise WireError("a prefix delete holds how many keys it deletes at most, and no client or precondition")
    return Command(op, key, _opt_str(value), _opt_str(if_value), if_version,
                   _opt_str(client_id), _int(seq), cmd_id, _int(part), ttl_ms, lease)


def batch_to_wire(b: Batch) -> dict:
    if b.lead:  # only where it is: the batches of logs written before read the same
        return {"c": [command_to_wire(c) for c in b.commands], "ts": b.ts_ms, "lead": True}
    return {"c": [command_to_wire(c) for c in b.commands], "ts": b.ts_ms}


def batch_from_wire(x: Any) -> Batch:
    if not isinstance(x, dict) or not isinstance(x.get("c"), list):
        raise WireError("bad batch")
    lead = x.get("lead", False)
    if type(lead) is not bool:
        raise WireError("a batch's lead is true or false")
    return Batch(tuple(command_from_wire(c) for c in x["c"]), _int(x.get("ts", 0)), lead)


def _entry_list(x: Any, decode: Callable[[Any], Any]) -> tuple:
    if not isinstance(x, list):
        raise WireError("expected a list of entries")
    return tuple(decode(e) for e in x)


def _accepted_from_wire(x: Any) -> m.AcceptedEntry:
    if not isinstance(x, list) or len(x) != 3:
        raise WireError("bad accepted entry")
    return m.AcceptedEntry(_int(x[0], 1), ballot_from_wire(x[1]), batch_from_wire(x[2]))


def _chosen_from_wire(x: Any) -> m.ChosenEntry:
    if not isinstance(x, list) or len(x) != 2:
        raise WireError("bad chosen entry")
    return m.ChosenEntry(_int(x[0], 1), batch_from_wire(x[1]))


# Per field name: (encode, decode). Fields not listed are non-negative integers.
_FIELD_CODECS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "ballot": (ballot_to_wire, ballot_from_wire),
    "promised": (ballot_to_wire, ballot_from_wire),
    "value": (batch_to_wire, batch_from_wire),
    "accepted": (lambda es: [[e.slot, ballot_to_wire(e.ballot), batch_to_wire(e.value)] for e in es],
                 lambda x: _entry_list(x, _accepted_from_wire)),
    "entries": (lambda es: [[e.slot, batch_to_wire(e.value)] for e in es],
                lambda x: _entry_list(x, _chosen_from_wire)),
    "chosen": (lambda es: [[e.slot, batch_to_wire(e.value)] for e in es],
               lambda x: _entry_list(x, _chosen_from_wire)),
    "index": (lambda i: i, lambda x: None if x is None else _int(x)),
    "commands": (lambda cs: [command_to_wire(c) for c in cs],
                 lambda x: _entry_list(x, command_from_wire)),
    "cmd_id": (lambda s: s, lambda x: _str(x)),
}
_INT_CODEC = (lambda i: i, _int)

_TYPES: dict[str, type] = {cls.__name__: cls for cls in (
    m.Prepare, m.Promise, m.Accept, m.Accepted, m.Reject, m.PreVote, m.PreVoteReply, m.Commit, m.Heartbeat,
    m.HeartbeatAck, m.CatchUpRequest, m.CatchUpReply, m.ReadIndexRequest, m.ReadIndexReply,
    m.Rebuilding, m.Resign, m.Removed, m.ClientRequest, m.ClientReply)}
# Per message type: (name, encode, decode) for each of its fields.
_CODECS: dict[type, tuple[tuple[str, Callable[[Any], Any], Callable[[Any], Any]], ...]] = {
    cls: tuple((f.name, *_FIELD_CODECS.get(f.name, _INT_CODEC)) for f in fields(cls)) for cls in _TYPES.values()}


def message_to_wire(msg: m.Message) -> dict:
    out: dict[str, Any] = {"t": type(msg).__name__}
    for name, encode, _ in _CODECS[type(msg)]:
        out[name] = encode(getattr(msg, name))
    return out


def message_from_wire(x: Any) -> m.Message:
    if not isinstance(x, dict):
        raise WireError("a message must be a JSON object")
    t = x.get("t")
    cls = _TYPES.get(t) if type(t) is str else None
    if cls is None:
        raise WireError(f"unknown message type {reprlib.repr(t)}")
    try:
        kwargs = {name: decode(x[name]) for name, _, decode in _CODECS[cls]}
    except KeyError as e:
        raise WireError(f"{cls.__name__} lacks field {e}") from None
    return cls(**kwargs)


# Compact JSON, non-ASCII text as UTF-8 rather than six-byte \u escapes, through one C
# encoder built once: JSONEncoder.encode builds a new one (and a dict for its cycle
# check) on every call, which costs more than encoding a small message. What goes
# through here is the node's own data, never cyclic; a value JSON cannot hold raises
# TypeError as json.dumps does.
_c_encoder = json.encoder.c_make_encoder
if _c_encoder is not None:
    _compact = _c_encoder(None, json.JSONEncoder().default, json.encoder.encode_basestring,
                          None, ":", ",", False, False, True)

    def compact_json(obj: Any) -> str:
        return "".join(_compact(obj, 0))
else:  # a Python built without the C accelerator
    compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

_scan = json.decoder.JSONDecoder().scan_once


def load_json(data: str | bytes) -> Any:
    """json.loads, without its two whitespace scans where `data` is a str with none
    around its value (what nodes send); anything else goes through json.loads, so
    errors are its own."""
    if type(data) is str and data:
        try:
            obj, end = _scan(data, 0)
        except StopIteration:
            pass
        else:
            if end == len(data):
                return obj
    return json.loads(data)


class _BatchTexts:
    """The JSON text of the batches encoded lately, by identity: a leader sends each
    batch in an Accept and then writes the same batch in its chosen record (and, if
    it votes, in its acceptance record). Entries hold their batch, so an id is not
    reused while its entry lives; the oldest go first past `keep` entries or
    `keep_chars` characters of text (the newest always stays)."""

    def __init__(self, keep: int = 64, keep_chars: int = 16 * 1024 * 1024) -> None:
        self.keep, self.keep_chars = keep, keep_chars
        self.chars = 0
        self._texts: dict[int, tuple[Batch, str]] = {}

    def __call__(self, b: Batch) -> str:
        hit = self._texts.get(id(b))
        if hit is not None and hit[0] is b:
            return hit[1]
        text = compact_json(batch_to_wire(b))
        self.remember(b, text)
        return text

    def remember(self, b: Batch, text: str) -> None:
        """Take `text` as b's JSON text: any JSON text that decodes to b (a follower
        keeps the text its leader sent, and writes it to its acceptance record
        instead of encoding the batch again)."""
        texts = self._texts
        old = texts.pop(id(b), None)
        if old is not None:
            self.chars -= len(old[1])
        texts[id(b)] = (b, text)
        self.chars += len(text)
        while len(texts) > 1 and (len(texts) > self.keep or self.chars > self.keep_chars):
            old = texts.pop(next(iter(texts)), None)
            if old is not None:
                self.chars -= len(old[1])


batch_json = _BatchTexts()  # the event loop's: storage and the peer links run there


# The texts around a frame's and an Accept's fields, as encode_message and frame_of
# write them and _decode_frame_of reads them back.
_FRAME_HEAD = '{"src":'
_MSGS_HEAD = ',"msgs":['
_ACCEPT_HEAD = '{"t":"Accept","ballot":'
_SLOT_HEAD = ',"slot":'
_VALUE_HEAD = ',"value":'


def encode_message(msg: m.Message) -> str:
    if type(msg) is m.Accept:  # the one message whose size grows with the load
        return f'{_ACCEPT_HEAD}{ballot_json(msg.ballot)}{_SLOT_HEAD}{msg.slot}{_VALUE_HEAD}{batch_json(msg.value)}}}'
    return compact_json(message_to_wire(msg))


def frame_of(src: int, encoded: list[str]) -> str:
    """One peer frame from messages already encoded with encode_message."""
    return f'{_FRAME_HEAD}{int(src)}{_MSGS_HEAD}{",".join(encoded)}]}}'


def encode_frame(src: int, msgs: list[m.Message]) -> str:
    """One peer frame: the sender and the messages gathered in one event-loop turn."""
    return frame_of(src, [encode_message(x) for x in msgs])


def _message_or_error(raw: Any) -> m.Message | WireError:
    try:
        return message_from_wire(raw)
    except WireError as e:
        return e


def _accept_at(data: str, start: int) -> tuple[dict, str, int] | None:
    """The Accept at data[start:] if it has exactly the form encode_message gives one:
    its wire form, its value's text as sent, and where it ends; None for any other
    form. A follower's acceptance record takes that text: encoding a batch costs
    more than parsing it."""
    if not data.startswith(_ACCEPT_HEAD, start):
        return None
    ballot, i = _scan(data, start + len(_ACCEPT_HEAD))
    if not data.startswith(_SLOT_HEAD, i):
        return None
    slot, i = _scan(data, i + len(_SLOT_HEAD))
    if not data.startswith(_VALUE_HEAD, i):
        return None
    value_at = i + len(_VALUE_HEAD)
    value, end = _scan(data, value_at)
    if data[end:end + 1] != "}":
        return None
    return {"t": "Accept", "ballot": ballot, "slot": slot, "value": value}, data[value_at:end], end + 1


def _decode_frame_of(data: str) -> tuple[int, list[m.Message | WireError]] | None:
    """A frame in exactly the form frame_of gives it, read one message at a time (so
    an Accept's value keeps its text, left with batch_json); None for any other
    form, which decode_frame then reads as JSON of any layout."""
    if not data.startswith(_FRAME_HEAD):
        return None
    out: list[m.Message | WireError] = []
    try:
        src, i = _scan(data, len(_FRAME_HEAD))
        if not data.startswith(_MSGS_HEAD, i):
            return None
        i += len(_MSGS_HEAD)
        if data[i:i + 1] != "]":
            while True:
                found = _accept_at(data, i)
                if found is not None:
                    raw, text, i = found
                else:
                    text = None
                    raw, i = _scan(data, i)
                msg = _message_or_error(raw)
                if text is not None and type(msg) is m.Accept:
                    batch_json.remember(msg.value, text)
                out.append(msg)
                if data[i:i + 1] != ",":
                    break
                i += 1
        if i + 2 != len(data) or not data.endswith("]}"):
            return None
    except (ValueError, StopIteration, RecursionError):
        return None  # not JSON here: decode_frame's own reading says why
    return _int(src, 1), out


def decode_frame(data: str | bytes) -> tuple[int, list[m.Message | WireError]]:
    """Decode a frame; a malformed message comes back as its WireError, the rest still decode."""
    if type(data) is str:
        decoded = _decode_frame_of(data)
        if decoded is not None:
            return decoded
    try:
        obj = load_json(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        # RecursionError: the C scanner's answer to absurdly deep nesting.
        raise WireError(f"frame is not JSON: {e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("msgs"), list):
        raise WireError("frame must be an object with a msgs list")
    src = _int(obj.get("src"), 1)
    return src, [_message_or_error(raw) for raw in obj["msgs"]]
