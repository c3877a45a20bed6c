"""A linearizability checker for histories of independent registers, one per key.

An operation is a read, a write, a compare-and-set (cas: write `value` iff the
current value equals `old`) or a delete, with start and end times on one
monotonic clock and an outcome:

  ok       it took effect at one instant within [start, end], with the result
           recorded: the value a read returned (None: the key was absent; a
           404), whether a cas swapped (True) or failed its precondition
           (False: a 412, which is a read-like observation that the value was
           not `old` at that instant), whether a delete removed the key (True)
           or found it absent (False: a 404).
  failed   it certainly did not take effect; it is dropped.
  unknown  it may have taken effect at any instant after its start, or never;
           its end is +infinity. An unknown read tells nothing and is dropped;
           an unknown cas or delete may have had either result.

Every key starts absent (None). Keys are independent registers, so a history
is split per key and each key is checked on its own (P-compositionality).

The search is Wing & Gong's, with Lowe's memoisation: walk the time-ordered
list of call and return events, linearize any pending call whose effect is
legal in the current state, back up when a return is reached whose operation is
not linearized yet, and never revisit a (set of linearized ops, state) pair.
Two reductions keep histories with many unknown operations tractable, both
exact:
  * values that no read returned and no cas compared against are
    indistinguishable to every observation, so they collapse into one
    `UNOBSERVED` value;
  * unknown operations with the same effect (after collapsing) are
    interchangeable, and any of them can be used at any time after it started,
    so only the earliest-started unused one of each kind is ever tried.

The search is bounded by a step budget; running out gives the verdict
"unknown", never a pass. A violation comes with an explanation: the history is
cut at the earliest completion that makes it fail, then shrunk one operation
(and whatever only it explains) at a time while it still fails, so what
remains is a small set of operations that cannot be linearized together.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Hashable, Iterable, Sequence

READ, WRITE, CAS, DELETE = "read", "write", "cas", "delete"
KINDS = (READ, WRITE, CAS, DELETE)
OK, FAILED, UNKNOWN = "ok", "failed", "unknown"
OUTCOMES = (OK, FAILED, UNKNOWN)
INF = math.inf

# Verdicts, per key and overall.
LINEARIZABLE = "linearizable"
VIOLATION = "violation"
UNDECIDED = "unknown"  # the step budget ran out

DEFAULT_MAX_STEPS = 2_000_000


@dataclass
class Op:
    process: Hashable
    kind: str
    key: str
    start: float
    end: float = INF
    outcome: str = OK
    value: Any = None  # write / cas: the value written. read: the value returned (None = absent)
    old: Any = None  # cas: the value it compares against
    result: bool | None = None  # cas: swapped / precondition failed. delete: deleted / not found
    id: int = -1  # position in the recorded history, for reports
    meta: dict = field(default_factory=dict)  # node, HTTP status, error, version: for reports only

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown op kind {self.kind!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}")
        if self.outcome == UNKNOWN:
            self.end = INF
        elif not self.start <= self.end < INF:
            raise ValueError(f"a finished op needs start <= end < inf: {self}")
        if self.outcome == OK and self.kind in (CAS, DELETE) and self.result not in (True, False):
            raise ValueError(f"an ok {self.kind} needs result True or False: {self}")

    def describe(self, t0: float = 0.0) -> str:
        if self.kind == READ:
            what = f"read -> {self.value!r}" if self.outcome == OK else "read"
        elif self.kind == WRITE:
            what = f"write {self.value!r}"
        elif self.kind == CAS:
            what = f"cas {self.old!r} -> {self.value!r}"
            if self.outcome == OK:
                what += " swapped" if self.result else " precondition failed"
        else:
            what = "delete"
            if self.outcome == OK:
                what += " ok" if self.result else " not found"
        end = "inf" if self.end == INF else f"{self.end - t0:.4f}"
        where = f" @{self.meta['node']}" if "node" in self.meta else ""
        how = " ".join(str(self.meta[k]) for k in ("status", "error") if k in self.meta)
        return (f"#{self.id} p{self.process}{where} {what} [{self.outcome}{': ' + how if how else ''}] "
                f"[{self.start - t0:.4f}, {end}]")


@dataclass
class KeyResult:
    key: str
    verdict: str
    ops: int  # operations that took part in the search
    steps: int
    seconds: float
    explanation: list[Op] = field(default_factory=list)  # for violations: ops that cannot be linearized
    culprit: Op | None = None  # the op whose completion first made the history fail
    message: str = ""

    def describe(self, t0: float = 0.0) -> str:
        head = f"key {self.key!r}: {self.verdict} ({self.ops} ops, {self.steps} steps, {self.seconds:.2f}s)"
        if self.message:
            head += f": {self.message}"
        lines = [head]
        for op in self.explanation:
            mark = "  <-- first failure" if self.culprit is not None and op.id == self.culprit.id else ""
            lines.append(f"    {op.describe(t0)}{mark}")
        return "\n".join(lines)


@dataclass
class CheckResult:
    keys: dict[str, KeyResult]

    @property
    def verdict(self) -> str:
        verdicts = {r.verdict for r in self.keys.values()}
        if VIOLATION in verdicts:
            return VIOLATION
        if UNDECIDED in verdicts:
            return UNDECIDED
        return LINEARIZABLE

    @property
    def ok(self) -> bool:
        return self.verdict == LINEARIZABLE

    @property
    def violations(self) -> list[KeyResult]:
        return [r for r in self.keys.values() if r.verdict == VIOLATION]

    @property
    def undecided(self) -> list[KeyResult]:
        return [r for r in self.keys.values() if r.verdict == UNDECIDED]

    def summary(self, t0: float = 0.0) -> str:
        counts = defaultdict(int)
        for r in self.keys.values():
            counts[r.verdict] += 1
        head = f"{self.verdict}: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
        bad = [r.describe(t0) for r in self.keys.values() if r.verdict != LINEARIZABLE]
        return "\n".join([head, *bad])


def check(ops: Iterable[Op], max_steps: int = DEFAULT_MAX_STEPS, explain: bool = True,
          explain_budget_s: float = 5.0) -> CheckResult:
    """Check every key of a history; max_steps bounds each key's search."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for i, op in enumerate(ops):
        if op.id < 0:
            op.id = i
        by_key[op.key].append(op)
    return CheckResult({key: check_key(key, key_ops, max_steps, explain, explain_budget_s)
                        for key, key_ops in sorted(by_key.items())})


def check_key(key: str, ops: Sequence[Op], max_steps: int = DEFAULT_MAX_STEPS, explain: bool = True,
              explain_budget_s: float = 5.0) -> KeyResult:
    started = time.perf_counter()
    for op in ops:
        if op.key != key:
            raise ValueError(f"op of key {op.key!r} in the history of {key!r}")
    if len({op.id for op in ops}) != len(ops):  # explanations tell ops apart by id
        ops = [replace(op, id=i) for i, op in enumerate(ops)]
    relevant = [op for op in ops if _relevant(op)]
    verdict, steps = _search(relevant, max_steps)
    result = KeyResult(key, verdict, len(relevant), steps, 0.0)
    if verdict == VIOLATION:
        result.message, result.explanation, result.culprit = _explain(
            relevant, max_steps, explain_budget_s if explain else 0.0, ops)
    elif verdict == UNDECIDED:
        result.message = f"step budget of {max_steps} exhausted; not decided"
    result.seconds = time.perf_counter() - started
    return result


def _relevant(op: Op) -> bool:
    """Failed ops had no effect; unknown reads observed nothing."""
    if op.outcome == FAILED:
        return False
    if op.outcome == UNKNOWN and op.kind == READ:
        return False
    return True


# -- the search ----------------------------------------------------------------------

class _Unobserved:
    def __repr__(self) -> str:
        return "<unobserved>"


UNOBSERVED = _Unobserved()
_FAIL = object()
_NO_GUARD = object()

# Compiled op codes: what a linearized op requires of the state and what it leaves.
_R, _W, _CT, _CF, _DT, _DF = range(6)
_PRESERVING = (_R, _CF, _DF)  # ops that leave the state as it was
# Search modes: looking for a forced move, trying ok calls, trying unknown ops, backing up.
_FORCED, _OK_CALLS, _UNKNOWNS, _BACKTRACK = "forced", "ok calls", "unknowns", "backtrack"


class _Entry:
    __slots__ = ("time", "is_call", "index", "match", "prev", "next")

    def __init__(self, t: float, is_call: bool, index: int) -> None:
        self.time, self.is_call, self.index = t, is_call, index
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _compile(ops: Sequence[Op]) -> list[tuple[int, Any, Any]]:
    observed: set[Any] = {None}
    for op in ops:
        if op.kind == READ:
            observed.add(op.value)
        elif op.kind == CAS:
            observed.add(op.old)

    def canon(v: Any) -> Any:
        return v if v in observed else UNOBSERVED

    code = []
    for op in ops:
        unknown = op.outcome == UNKNOWN
        if op.kind == READ:
            code.append((_R, op.value, None))
        elif op.kind == WRITE:
            code.append((_W, canon(op.value), None))
        elif op.kind == CAS:
            # An unknown cas that failed is the same as one that never happened.
            code.append((_CT, op.old, canon(op.value)) if unknown or op.result else (_CF, op.old, None))
        else:
            code.append((_DT, None, None) if unknown or op.result else (_DF, None, None))
    return code


def _step(state: Any, c: tuple[int, Any, Any]) -> Any:
    kind, a, b = c
    if kind == _R:
        return state if state == a else _FAIL
    if kind == _W:
        return a
    if kind == _CT:
        return b if state == a else _FAIL
    if kind == _CF:
        return state if state != a else _FAIL
    if kind == _DT:
        return None if state is not None else _FAIL
    return state if state is None else _FAIL


def _search(ops: Sequence[Op], max_steps: int) -> tuple[str, int]:
    """(verdict, steps) for one key's relevant ops."""
    n = len(ops)
    code = _compile(ops)
    unknown = [op.outcome == UNKNOWN for op in ops]
    must = sum(1 for u in unknown if not u)
    if must == 0:
        return LINEARIZABLE, 0

    # Unknown ops, grouped into classes of interchangeable ones, each in order of start.
    by_effect: dict[tuple, list[int]] = defaultdict(list)
    for i in sorted(range(n), key=lambda i: (ops[i].start, i)):
        if unknown[i]:
            by_effect[code[i]].append(i)
    classes = list(by_effect.values())
    used = [0] * len(classes)  # class c's first used[c] members are linearized
    starts = [op.start for op in ops]
    all_classes = range(len(classes))

    # The event list of the ok ops: calls before returns at equal times (touching
    # intervals overlap). Unknown ops have no return and are not in the list.
    entries: list[_Entry] = []
    for i, op in enumerate(ops):
        if not unknown[i]:
            call, ret = _Entry(op.start, True, i), _Entry(op.end, False, i)
            call.match = ret
            entries += (call, ret)
    entries.sort(key=lambda e: (e.time, not e.is_call, e.index))
    head = _Entry(-INF, True, -1)
    prev = head
    for e in entries:
        prev.next, e.prev = e, prev
        prev = e

    # A configuration: ok ops linearized, state, unknown ops used, guard (below).
    # Having used fewer unknown ops is never worse (they are optional), and a
    # guard only restricts, so a configuration is skipped if one with the same ok
    # ops and state, a subset of its used unknown ops and the same or no guard
    # was reached before: that one failed, or is an ancestor that can do
    # everything this one can without spending the extra unknown ops.
    seen: dict[tuple[int, Any, Any], list[int]] = {}

    def fresh(okmask: int, st: Any, umask: int, grd: Any) -> bool:
        for g in (_NO_GUARD, grd) if grd is not _NO_GUARD else (_NO_GUARD,):
            for u in seen.get((okmask, st, g), ()):
                if u & ~umask == 0:
                    return False
        known = seen.setdefault((okmask, st, grd), [])
        known[:] = [u for u in known if umask & ~u != 0]
        known.append(umask)
        return True

    # The guard: an unknown op is only worth linearizing right before an op that
    # would be illegal without it. (Were the next op legal in the state before
    # the unknown one, the unknown one could move after it, or, before a blind
    # overwrite, vanish; so some linearization, if any, has this form.) While
    # the last op taken is unknown, `guard` is the state before it, and the next
    # op must be illegal in that state.
    #
    # Forced moves: an ok op that leaves the state as it is (a read, a failed
    # cas, a delete that found nothing) and is legal now can be linearized now
    # in any linearization that exists from here (moving it earlier breaks no
    # real-time order, since it is already callable, and changes no state), so
    # it is taken without trying alternatives; undoing it undoes its parent too.
    guard: Any = _NO_GUARD
    state: Any = None
    okmask = umask = 0
    done = 0
    # Frames: (ok call entry taken, or None for an unknown op; state before;
    # guard before; the candidate unknown classes and the position of the one
    # taken; whether the move was forced)
    stack: list[tuple[_Entry | None, Any, Any, list[int], int, bool]] = []
    mode = _FORCED  # which candidates the scan at this configuration is looking at
    entry = head.next
    cands: list[int] = []  # classes whose next unused op was called before the first pending return
    pos = 0
    steps = 0
    while done < must:
        steps += 1
        if steps > max_steps:
            return UNDECIDED, steps
        if mode is _BACKTRACK:
            # Nothing (more) can go next here: undo the last choice and try the one
            # after it; a forced choice has no alternatives, so undo its parent too.
            while True:
                if not stack:
                    return VIOLATION, steps
                last, state, guard, cands, pos, forced = stack.pop()
                if last is not None:
                    okmask &= ~(1 << last.index)
                    done -= 1
                    _unlift(last)
                    entry, mode = last.next, _OK_CALLS
                else:
                    c = cands[pos]
                    used[c] -= 1
                    umask &= ~(1 << classes[c][used[c]])
                    mode, pos = _UNKNOWNS, pos + 1
                if not forced:
                    break
            continue
        if mode is not _UNKNOWNS:
            if entry is not None and entry.is_call:
                i = entry.index
                ci = code[i]
                if mode is _FORCED and ci[0] not in _PRESERVING:
                    entry = entry.next
                    continue
                new_state = _step(state, ci)
                if new_state is not _FAIL and (guard is _NO_GUARD or _step(guard, ci) is _FAIL):
                    forced = mode is _FORCED
                    if fresh(okmask | (1 << i), new_state, umask, _NO_GUARD):
                        stack.append((entry, state, guard, cands, 0, forced))
                        state, guard = new_state, _NO_GUARD
                        okmask |= 1 << i
                        done += 1
                        _lift(entry)
                        entry, mode = head.next, _FORCED
                        continue
                    if forced:
                        mode = _BACKTRACK
                        continue
                entry = entry.next
                continue
            if mode is _FORCED:
                entry, mode = head.next, _OK_CALLS
                continue
            # Every ok call before the first pending return was tried; now the unknown ops.
            frontier = entry.time if entry is not None else INF
            cands = [c for c in all_classes
                     if used[c] < len(classes[c]) and starts[classes[c][used[c]]] <= frontier]
            mode, pos = _UNKNOWNS, 0
            continue
        if pos < len(cands):
            c = cands[pos]
            i = classes[c][used[c]]
            new_state = _step(state, code[i])
            if (new_state is not _FAIL and new_state != state
                    and (guard is _NO_GUARD or _step(guard, code[i]) is _FAIL)
                    and fresh(okmask, new_state, umask | (1 << i), state)):
                stack.append((None, state, guard, cands, pos, False))
                state, guard = new_state, state
                umask |= 1 << i
                used[c] += 1
                entry, mode = head.next, _FORCED
                continue
            pos += 1
            continue
        mode = _BACKTRACK
    return LINEARIZABLE, steps


def _lift(call: _Entry) -> None:
    call.prev.next = call.next
    if call.next is not None:
        call.next.prev = call.prev
    ret = call.match
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Entry) -> None:
    ret = call.match
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    if call.next is not None:
        call.next.prev = call


# -- explanations --------------------------------------------------------------------

def _fails(ops: Sequence[Op], max_steps: int) -> bool:
    return _search(ops, max_steps)[0] == VIOLATION


def _truncate(ops: Sequence[Op], t: float) -> list[Op]:
    """What the history looked like at time t: later calls gone, pending ops unknown.

    Any linearization of the full history restricts to one of this, so a
    history that fails at t fails at every later time too.
    """
    out = []
    for op in ops:
        if op.start > t:
            continue
        if op.end > t and op.outcome == OK:
            if op.kind == READ or (op.kind in (CAS, DELETE) and not op.result):
                continue  # an unknown read or an unknown no-op observes and changes nothing
            op = replace(op, outcome=UNKNOWN, result=None, meta=op.meta)
        out.append(op)
    return out


def _writes_of(op: Op) -> Any:
    """The value op may have written, or a sentinel if it writes none."""
    if op.kind in (WRITE, CAS) and (op.outcome == UNKNOWN or op.result or op.kind == WRITE):
        return op.value
    return _FAIL


def _observes(op: Op) -> Any:
    """The value op needs to have been written (by someone), or a sentinel."""
    if op.outcome != OK:
        return _FAIL
    if op.kind == READ and op.value is not None:
        return op.value
    if op.kind == CAS and op.result:
        return op.old
    return _FAIL


def _explain(ops: Sequence[Op], max_steps: int, budget_s: float,
             everything: Sequence[Op] = ()) -> tuple[str, list[Op], Op | None]:
    deadline = time.monotonic() + budget_s
    written = {_writes_of(op) for op in ops}
    orphans = [op for op in ops if _observes(op) is not _FAIL and _observes(op) not in written]
    if orphans:
        op = min(orphans, key=lambda o: o.end)
        lost = {_observes(o) for o in orphans}
        failed = [o for o in everything if o.outcome == FAILED and o.kind in (WRITE, CAS) and o.value in lost]
        why = (f"; {len(failed)} of them by op(s) reported as failed (certainly not applied)"
               if failed else "")
        return (f"{len(orphans)} op(s) observed {len(lost)} value(s) that no ok or unknown write "
                f"produced{why}", sorted(failed + orphans[:10], key=lambda o: o.start), op)

    # The earliest completion time at which the history already fails.
    ends = sorted({op.end for op in ops if op.outcome == OK})
    lo, hi = 0, len(ends) - 1
    while lo < hi and time.monotonic() < deadline:
        mid = (lo + hi) // 2
        if _fails(_truncate(ops, ends[mid]), max_steps):
            hi = mid
        else:
            lo = mid + 1
    cut = ends[hi] if lo == hi else ends[-1]
    current = _truncate(ops, cut)
    if not _fails(current, max_steps):
        current, cut = list(ops), ends[-1]
    culprit = next((op for op in current if op.outcome == OK and op.end == cut), None)
    # A removal that needs far more search than the history it shrinks is not worth it.
    shrink_steps = min(max_steps, max(20_000, 4 * _search(current, max_steps)[1]))
    keep_reason = culprit is not None and not _fails([o for o in current if o.id != culprit.id], max_steps)

    # Drop ops (with whatever only they explain) while the rest still fails, and
    # still passes without the culprit: in halves, then quarters, ..., then one
    # at a time until nothing more goes.
    size = max(1, len(current) // 2)
    while time.monotonic() < deadline:
        shrunk = False
        i = 0
        while i < len(current) and time.monotonic() < deadline:
            removed: set[int] = set()
            for op in current[i:i + size]:
                removed |= _closure(current, op)
            if culprit is not None and culprit.id in removed:
                if size > 1:
                    removed = set()
                    for op in current[i:i + size]:
                        if op.id != culprit.id:
                            removed |= _closure(current, op)
                    if culprit.id in removed:
                        removed = set()
                else:
                    removed = set()
            rest = [o for o in current if o.id not in removed]
            # Keep the reason: what remains must fail, and only because of the culprit.
            if removed and rest and _fails(rest, shrink_steps) and (
                    not keep_reason or not _fails([o for o in rest if o.id != culprit.id], shrink_steps)):
                current = rest
                shrunk = True
            else:
                i += size
        if size == 1 and not shrunk:
            break
        size = max(1, size // 2)
    complete = time.monotonic() < deadline
    current.sort(key=lambda o: (o.start, o.id))

    msg = (f"no linearization of these {len(current)} ops"
           + ("" if complete else " (shrinking stopped at its time budget)"))
    return msg, current, culprit


def _closure(ops: Sequence[Op], op: Op) -> set[int]:
    """op's id plus those of every op that observes a value only op (or they) wrote."""
    removed = {op.id}
    lost = [_writes_of(op)]
    while lost:
        v = lost.pop()
        if v is _FAIL or v is None:
            continue
        if any(_writes_of(o) == v for o in ops if o.id not in removed):
            continue
        for o in ops:
            if o.id not in removed and _observes(o) == v:
                removed.add(o.id)
                lost.append(_writes_of(o))
    return removed
