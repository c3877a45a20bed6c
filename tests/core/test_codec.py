"""The wire codec: every message round-trips; garbage raises WireError and nothing else."""
from __future__ import annotations

import itertools
import json
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvpaxos.core import codec
from kvpaxos.core import messages as m
from kvpaxos.core.ballot import ZERO, Ballot
from kvpaxos.core.codec import WireError
from kvpaxos.core.commands import DELETE, LEASE_GRANT, LEASE_ID_MAX, LEASE_OPS, PUT, TTL_MS_MAX, Batch, Command

MESSAGE_TYPES = sorted(codec._TYPES.values(), key=lambda cls: cls.__name__)

# -- strategies for valid values, chosen by each field's declared type ---------------------

naturals = st.integers(min_value=0, max_value=2**63)
slots = st.integers(min_value=1, max_value=2**40)
ballots = st.builds(Ballot, naturals, naturals)
texts = st.text(max_size=20)
SCALARS: dict[str, st.SearchStrategy] = {
    "int": naturals,
    "int | None": st.none() | naturals,
    "str": texts,
    "str | None": st.none() | texts,
}


def _command_strategy() -> st.SearchStrategy:
    rest = {f.name: SCALARS[f.type] for f in fields(Command)
            if f.name not in ("op", "key", "value", "ttl_ms", "lease", "if_value", "if_version")}
    rest.update(key=texts, if_value=SCALARS["str | None"], if_version=SCALARS["int | None"])
    ttls = st.none() | st.integers(min_value=1, max_value=TTL_MS_MAX)
    leases = st.integers(min_value=1, max_value=LEASE_ID_MAX)
    lease_ids = st.integers(min_value=0, max_value=LEASE_ID_MAX).map(str)
    lease_rest = {k: v for k, v in rest.items() if k not in ("key", "if_value", "if_version")}
    return (st.builds(Command, op=st.just(PUT), value=texts, ttl_ms=ttls, **rest)
            | st.builds(Command, op=st.just(PUT), value=texts, lease=leases, **rest)  # a put's only, without a ttl
            | st.builds(Command, op=st.just(DELETE), value=st.none(), **rest)
            | st.builds(Command, op=st.just(LEASE_GRANT), key=lease_ids, ttl_ms=ttls.filter(bool), **lease_rest)
            | st.builds(Command, op=st.sampled_from(LEASE_OPS[1:]), key=lease_ids, **lease_rest))


commands = _command_strategy()
batches = st.builds(Batch, st.lists(commands, max_size=4).map(tuple), naturals, st.booleans())
TYPED: dict[str, st.SearchStrategy] = {
    **SCALARS,
    "Ballot": ballots,
    "Batch": batches,
    "Command": commands,
    "tuple[Command, ...]": st.lists(commands, max_size=3).map(tuple),
    "tuple[AcceptedEntry, ...]": st.lists(st.builds(m.AcceptedEntry, slots, ballots, batches),
                                          max_size=3).map(tuple),
    "tuple[ChosenEntry, ...]": st.lists(st.builds(m.ChosenEntry, slots, batches), max_size=3).map(tuple),
}


def message_strategy(cls: type) -> st.SearchStrategy:
    kwargs = {}
    for f in fields(cls):
        declared = str(f.type).replace('"', "").replace("'", "")
        assert declared in TYPED, f"add a strategy for {cls.__name__}.{f.name}: {declared}"
        kwargs[f.name] = TYPED[declared]
    return st.builds(cls, **kwargs)


any_message = st.one_of([message_strategy(cls) for cls in MESSAGE_TYPES])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)


def through_json(x: Any) -> Any:
    return json.loads(json.dumps(x))


def decodes_or_wire_error(raw: Any) -> m.Message | None:
    """Decode; None for WireError. Any other exception fails the test. A decoded message
    must encode back to what was decoded (nothing half-validated slips through)."""
    try:
        msg = codec.message_from_wire(raw)
    except WireError:
        return None
    assert type(msg) in MESSAGE_TYPES
    assert codec.message_from_wire(through_json(codec.message_to_wire(msg))) == msg
    return msg


# -- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda cls: cls.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_message_type_round_trips(cls: type, data: st.DataObject) -> None:
    msg = data.draw(message_strategy(cls))
    wire = through_json(codec.message_to_wire(msg))
    assert wire["t"] == cls.__name__
    assert codec.message_from_wire(wire) == msg


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda cls: cls.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_message_encodes_to_the_compact_json_of_its_wire_form(cls: type, data: st.DataObject) -> None:
    """encode_message builds some messages' text by hand (an Accept around its batch's
    cached text); each must be exactly the generic encoding, however often it is sent."""
    msg = data.draw(message_strategy(cls))
    expected = codec.compact_json(codec.message_to_wire(msg))
    assert codec.encode_message(msg) == expected
    assert codec.encode_message(msg) == expected  # again, from the cache where there is one


def test_the_plain_put_shortcut_decodes_as_the_full_checks_do() -> None:
    """command_from_wire takes a shortcut for a plain put; for every command built from
    valid and wrong fields, it must give the command, or the error, of the full checks."""
    choices = [[PUT, DELETE, "bogus", 1], ["k", "", 2], ["v", None, 3], [None, "old", 4],
               [None, 0, -1, True], [None, "c", 5], [0, 3, -1, True, None], ["1.a.1", 7], [0, 1, -1, True]]

    def outcome(decode, x):  # noqa: ANN001, ANN202 - either decoder
        try:
            return decode(x)
        except WireError as e:
            return str(e)

    for fields_ in itertools.product(*choices):
        x = list(fields_)
        assert outcome(codec.command_from_wire, x) == outcome(codec._checked_command_from_wire, x), x
    for x in ([PUT, "k", "v"], "not a list", (PUT, "k", "v", None, None, None, 0, "1", 0)):
        assert outcome(codec.command_from_wire, x) == outcome(codec._checked_command_from_wire, x), x


def test_the_batch_text_cache_forgets_its_oldest_and_never_confuses_batches() -> None:
    texts = codec._BatchTexts(keep=2)
    batches = [Batch((Command(PUT, f"k{i}", "v", cmd_id=str(i)),), i) for i in range(4)]
    for b in batches:
        assert texts(b) == codec.compact_json(codec.batch_to_wire(b))
    assert len(texts._texts) == 2
    assert [v[0] for v in texts._texts.values()] == batches[2:]
    twin = Batch(batches[3].commands, 3)  # equal, but another object: encoded afresh
    assert twin is not batches[3] and texts(twin) == texts(batches[3])
    # Bounded in text too: big batches push the others out, but the newest stays.
    texts = codec._BatchTexts(keep=64, keep_chars=100)
    small, big = batches[0], Batch((Command(PUT, "k", "v" * 200, cmd_id="b"),), 9)
    texts(small)
    assert texts(big) == codec.compact_json(codec.batch_to_wire(big))
    assert [v[0] for v in texts._texts.values()] == [big] and texts.chars == len(texts(big))


@settings(max_examples=100, deadline=None)
@given(src=st.integers(1, 2**31), msgs=st.lists(any_message, max_size=5))
def test_frames_round_trip(src: int, msgs: list) -> None:
    assert codec.decode_frame(codec.encode_frame(src, msgs)) == (src, msgs)
    assert codec.decode_frame(codec.encode_frame(src, msgs).encode()) == (src, msgs)


def test_examples_round_trip_exactly() -> None:
    b = Ballot(3, 2)
    cmd = Command(PUT, "k", "v", if_value="old", if_version=4, client_id="c", seq=9, cmd_id="x")
    value = Batch((cmd, Command(DELETE, "k")), ts_ms=12)
    examples = [
        m.Prepare(b, 1),
        m.Promise(b, 1, (m.AcceptedEntry(2, Ballot(1, 1), value),)),
        m.Accept(b, 7, value),
        m.Accepted(b, 7),
        m.Reject(b, Ballot(4, 1)),
        m.Reject(b, ZERO),
        m.Commit(b, 6),
        m.Heartbeat(b, 6, 3),
        m.HeartbeatAck(b, 3, 6),
        m.CatchUpRequest(1, 5),
        m.CatchUpReply((m.ChosenEntry(1, value), m.ChosenEntry(2, Batch()))),
        m.ReadIndexRequest(8),
        m.ReadIndexReply(8, None),
        m.ReadIndexReply(8, 0),
    ]
    for msg in examples:
        assert codec.message_from_wire(through_json(codec.message_to_wire(msg))) == msg


def test_ballots_travel_as_pairs() -> None:
    assert codec.message_to_wire(m.Prepare(Ballot(5, 2), 3)) == {"t": "Prepare", "ballot": [5, 2], "from_slot": 3}


# -- garbage --------------------------------------------------------------------------------

GOOD_MESSAGE = m.Accept(Ballot(1, 1), 1, Batch((Command(PUT, "k", "v", client_id="c", seq=1, cmd_id="id"),), 5))
GOOD = through_json(codec.message_to_wire(GOOD_MESSAGE))


PROMISE = through_json(codec.message_to_wire(m.Promise(Ballot(1, 1), 1, ())))
CATCH_UP_REPLY = through_json(codec.message_to_wire(m.CatchUpReply(())))


def with_field(**changes: Any) -> dict:
    out = json.loads(json.dumps(GOOD))
    out.update(changes)
    return out


def with_command(i: int, x: Any) -> dict:
    out = json.loads(json.dumps(GOOD))
    out["value"]["c"][0][i] = x
    return out


BAD_MESSAGES = {
    "not an object": ["Accept", [1, 1], 1],
    "no type": {k: v for k, v in GOOD.items() if k != "t"},
    "unknown type": with_field(t="Propose"),
    "type is a list": with_field(t=[]),
    "type is an object": with_field(t={}),
    "type is a number": with_field(t=1),
    "missing field": {k: v for k, v in GOOD.items() if k != "slot"},
    "bool slot": with_field(slot=True),
    "negative slot": with_field(slot=-1),
    "float slot": with_field(slot=1.0),
    "string slot": with_field(slot="1"),
    "null slot": with_field(slot=None),
    "ballot not a pair": with_field(ballot=[1]),
    "ballot triple": with_field(ballot=[1, 1, 1]),
    "ballot object": with_field(ballot={"round": 1, "node_id": 1}),
    "bool in ballot": with_field(ballot=[True, 1]),
    "negative round": with_field(ballot=[-1, 1]),
    "value not a batch": with_field(value=[]),
    "batch without commands": with_field(value={"ts": 1}),
    "bool timestamp": with_field(value={"c": [], "ts": False}),
    "negative timestamp": with_field(value={"c": [], "ts": -5}),
    "unknown op": with_command(0, "incr"),
    "key not a string": with_command(1, 5),
    "put without value": with_command(2, None),
    "put with a number value": with_command(2, 5),
    "bool if_version": with_command(4, True),
    "negative if_version": with_command(4, -1),
    "client id not a string": with_command(5, 7),
    "bool seq": with_command(6, False),
    "cmd id null": with_command(7, None),
    "short command": {**GOOD, "value": {"c": [GOOD["value"]["c"][0][:-1]], "ts": 0}},
    "long command": {**GOOD, "value": {"c": [GOOD["value"]["c"][0] + [0]], "ts": 0}},
    "accepted entry at slot 0": {**PROMISE, "accepted": [[0, [1, 1], {"c": [], "ts": 0}]]},
    "accepted not a list": {**PROMISE, "accepted": {}},
    "chosen entry not a pair": {**CATCH_UP_REPLY, "entries": [[1]]},
    "chosen entry at slot 0": {**CATCH_UP_REPLY, "entries": [[0, {"c": [], "ts": 0}]]},
    "bool index": {"t": "ReadIndexReply", "read_id": 1, "index": True},
    "negative index": {"t": "ReadIndexReply", "read_id": 1, "index": -1},
}


def test_the_garbage_below_is_made_from_messages_that_decode() -> None:
    assert codec.message_from_wire(GOOD) == GOOD_MESSAGE
    assert isinstance(codec.message_from_wire(PROMISE), m.Promise)
    assert isinstance(codec.message_from_wire(CATCH_UP_REPLY), m.CatchUpReply)


@pytest.mark.parametrize("raw", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_malformed_messages_raise_wire_error(raw: Any) -> None:
    with pytest.raises(WireError):
        codec.message_from_wire(raw)
    with pytest.raises(WireError):
        codec.message_from_wire(through_json(raw))


BAD_FRAMES = {
    "empty": "",
    "not json": "{src: 1}",
    "truncated": '{"src": 1, "msgs": [',
    "invalid utf-8": b'{"src": 1, "msgs": []}\xff',
    "a list": "[]",
    "no msgs": '{"src": 1}',
    "msgs not a list": '{"src": 1, "msgs": {}}',
    "no src": '{"msgs": []}',
    "src zero": '{"src": 0, "msgs": []}',
    "bool src": '{"src": true, "msgs": []}',
    "string src": '{"src": "1", "msgs": []}',
    "huge nesting": "[" * 100_000 + "]" * 100_000,
    "huge nesting in a field": '{"src": 1, "msgs": [' + "[" * 100_000 + "]" * 100_000 + "]}",
    "huge integer": '{"src": ' + "9" * 10_000 + ', "msgs": []}',
}


@pytest.mark.parametrize("data", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_malformed_frames_raise_wire_error(data: str | bytes) -> None:
    with pytest.raises(WireError):
        codec.decode_frame(data)


def _as_any_json(frame: str) -> tuple:
    """What decode_frame makes of a frame read as JSON of any layout (bytes take that path)."""
    return codec.decode_frame(frame.encode())


ACCEPT_BATCH = Batch((Command("put", "k", "v\u00e9", None, None, "c1", 4, "1.b.9"),
                      Command("delete", "d", None, None, None, None, 0, "1.b.10")), 7)


def test_an_accept_keeps_the_text_its_sender_wrote_for_its_value() -> None:
    """A follower writes the leader's text of an Accept's batch to its acceptance record
    rather than encoding the batch again: whatever text decodes to the batch will do."""
    sent = ('{ "c" : [["put","k","v\u00e9",null,null,"c1",4,"1.b.9",0], '
            '["delete","d",null,null,null,null,0,"1.b.10",0]], "ts": 7 }')
    commit = codec.encode_message(m.Commit(Ballot(2, 1), 8, 1))
    frame = codec.frame_of(1, [commit, '{"t":"Accept","ballot":[2,1],"slot":9,"value":%s}' % sent])
    src, out = codec.decode_frame(frame)
    expected = (1, [m.Commit(Ballot(2, 1), 8, 1), m.Accept(Ballot(2, 1), 9, ACCEPT_BATCH)])
    assert (src, out) == _as_any_json(frame) == expected
    assert codec.batch_json(out[1].value) == sent  # taken from the frame, not encoded again
    assert codec.batch_from_wire(json.loads(sent)) == out[1].value
    # A batch decoded apart from a frame is encoded as usual.
    again = codec.batch_from_wire(json.loads(sent))
    assert codec.batch_json(again) == codec.compact_json(codec.batch_to_wire(again))


@pytest.mark.parametrize("frame", [
    # an Accept whose fields come in another order, or with spaces: read as any JSON
    '{"src":1,"msgs":[{"t":"Accept","slot":9,"ballot":[2,1],"value":{"c":[],"ts":0}}]}',
    '{"src":1,"msgs":[{"t":"Accept","ballot":[2,1],"slot":9,"value":{"c":[],"ts":0} }]}',
    '{"src":1,"msgs":[{"t":"Accept","ballot":[2,1],"slot":9,"value":{"c":[],"ts":0},"x":1}]}',
    # Accepts of the sender's form that do not decode, beside one that does
    '{"src":1,"msgs":[{"t":"Accept","ballot":[2,1],"slot":-1,"value":{"c":[],"ts":0}},'
    '{"t":"Accept","ballot":[2,1],"slot":9,"value":{"c":[],"ts":0}}]}',
    '{"src":1,"msgs":[{"t":"Accept","ballot":[2],"slot":9,"value":{"c":[],"ts":0}},'
    '{"t":"Prepare","ballot":[1,1],"from_slot":1}]}',
    '{"src":1,"msgs":[{"t":"Accept","ballot":[2,1],"slot":9,"value":{"c":[[1]],"ts":0}},{"t":"Nope"}]}',
    '{"src":1,"msgs":[{"t":"Accept","ballot":[2,1],"slot":9,"value":{"c":[],"ts":0}}] }',
    '{"src":1,"msgs":[{"t":"Accept","ballot":[2,1],"slot":9,"value":{"c":[],"ts":0}}]} ',
    '{"src":1,"msgs":[]}',
    '{"src":1,"msgs":[{"t":"Prepare","ballot":[1,1],"from_slot":1}]}',
])
def test_frames_of_the_senders_form_decode_as_any_json_would(frame: str) -> None:
    src, out = codec.decode_frame(frame)
    any_src, any_out = _as_any_json(frame)
    assert src == any_src and len(out) == len(any_out)
    for ours, theirs in zip(out, any_out):
        assert ours == theirs if not isinstance(theirs, WireError) else isinstance(ours, WireError)


@pytest.mark.parametrize("frame", [
    '{"src":1,"msgs":[{"t":"Accept","ballot":[2,1],"slot":9,"value":{"c":[],"ts":0}}',
    '{"src":1,"msgs":[{"t":"Accept","ballot":[2,1],"slot":9,"value":{"c":[],"ts":0}}]}}',
    '{"src":1,"msgs":[{"t":"Accept","ballot":[2,1],"slot":9,"value":{"c":[],"ts":0}},]}',
    '{"src":0,"msgs":[{"t":"Accept","ballot":[2,1],"slot":9,"value":{"c":[],"ts":0}}]}',
    '{"src":1,"msgs":[{"t":"Accept","ballot":[2,1],"slot":9,"value":{"c":[' + "[" * 100_000 + ']}}]}',
    '{"src":1,"msgs":{}}',
])
def test_frames_of_the_senders_form_that_are_not_frames_raise_wire_error(frame: str) -> None:
    with pytest.raises(WireError):
        codec.decode_frame(frame)
    with pytest.raises(WireError):
        _as_any_json(frame)


def _outcome(decode: Any, data: Any) -> Any:
    """A decode's result with each WireError as the word "error", or "error" for a frame refused."""
    try:
        src, out = decode(data)
    except WireError:
        return "error"
    return src, ["error" if isinstance(x, WireError) else x for x in out]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_message | message_strategy(m.Accept), min_size=1, max_size=4), st.data())
def test_a_corrupted_frame_of_the_senders_form_reads_as_any_json_would(msgs: list, data: Any) -> None:
    """The reader of frames in the form the nodes send agrees with the reader of any JSON
    on every frame one edit away from a real one: the same messages, the same errors."""
    frame = codec.encode_frame(1, msgs)
    at = data.draw(st.integers(0, len(frame)), label="at")
    edit = data.draw(st.sampled_from(["insert", "replace", "delete", "truncate"]), label="edit")
    char = data.draw(st.sampled_from(list('{}[],:" -0123456789.etruflnA\\')), label="char")
    if edit == "insert":
        frame = frame[:at] + char + frame[at:]
    elif edit == "replace":
        frame = frame[:at] + char + frame[at + 1:]
    elif edit == "delete":
        frame = frame[:at] + frame[at + 1:]
    else:
        frame = frame[:at]
    assert _outcome(codec.decode_frame, frame) == _outcome(_as_any_json, frame)


def test_a_bad_message_does_not_spoil_the_rest_of_its_frame() -> None:
    good = codec.message_to_wire(m.Prepare(Ballot(1, 1), 1))
    frame = json.dumps({"src": 1, "msgs": [good, {"t": "Prepare"}, with_field(t=[]), good]})
    src, out = codec.decode_frame(frame)
    assert src == 1
    assert out[0] == out[3] == m.Prepare(Ballot(1, 1), 1)
    assert isinstance(out[1], WireError) and isinstance(out[2], WireError)


def _at_stack_depth(depth: int, fn: Any, *args: Any) -> Any:
    return fn(*args) if depth == 0 else _at_stack_depth(depth - 1, fn, *args)


@pytest.mark.parametrize("extra_frames", [0, 20, 60])
def test_nesting_near_the_recursion_limit_is_handled_at_any_stack_depth(extra_frames: int) -> None:
    # Deep enough that parsing barely succeeds, so the decoder, not json, meets the nesting.
    for depth in range(800, 1000, 9):
        nested = "[" * depth + "]" * depth
        for template in ('{"src": 1, "msgs": [{"t": "Prepare", "ballot": [1, 1], "from_slot": %s}]}',
                         '{"src": 1, "msgs": [{"t": "Prepare", "ballot": %s, "from_slot": 1}]}',
                         '{"src": 1, "msgs": [{"t": %s}]}',
                         '{"src": %s, "msgs": []}'):
            try:
                _, out = _at_stack_depth(extra_frames, codec.decode_frame, template % nested)
            except WireError:
                continue
            assert all(isinstance(x, WireError) for x in out)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_is_a_message_or_wire_error(raw: Any) -> None:
    decodes_or_wire_error(raw)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([c.__name__ for c in MESSAGE_TYPES]),
       st.dictionaries(st.sampled_from(sorted({f.name for c in MESSAGE_TYPES for f in fields(c)})),
                       json_values, max_size=6))
def test_arbitrary_fields_under_a_known_type_are_a_message_or_wire_error(t: str, body: dict) -> None:
    decodes_or_wire_error({"t": t, **body})


def _paths(x: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(x, dict):
        for k, v in x.items():
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            out.extend(_paths(v, prefix + (i,)))
    return out


def _replace(x: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    x = json.loads(json.dumps(x))
    node = x
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = new
    return x


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_message, st.data())
def test_any_single_corruption_of_a_valid_message_is_caught_or_harmless(msg: Any, data: Any) -> None:
    wire = through_json(codec.message_to_wire(msg))
    path = data.draw(st.sampled_from(_paths(wire)), label="path")
    corrupted = _replace(wire, path, data.draw(json_values, label="replacement"))
    decodes_or_wire_error(corrupted)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_bytes_are_a_frame_or_wire_error(data: bytes | str) -> None:
    try:
        src, out = codec.decode_frame(data)
    except WireError:
        return
    assert type(src) is int and src >= 1
    assert all(isinstance(x, (WireError, *MESSAGE_TYPES)) for x in out)
