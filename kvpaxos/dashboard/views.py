"""What one node knows, as plain JSON for the dashboard: its log window, counters, configuration.

Everything here reads the node's in-memory state on the event loop and copies
a bounded part of it: the last `LOG_SLOTS` slots, at most `BATCH_COMMANDS`
commands per slot, keys and values cut to a few dozen characters. Internals are
read defensively (getattr with defaults) so that a change elsewhere in the
node degrades the dashboard instead of breaking the page.
"""
from __future__ import annotations

from typing import Any

LOG_SLOTS = 40
BATCH_COMMANDS = 6
KEY_CHARS = 40
VALUE_CHARS = 24
PROBE_SLOTS = 512  # how far past the chosen index to look for accepted or proposed slots
FIND_SLOTS = 5000  # how far back /v1/dashboard/find searches the log


def clip(text: Any, limit: int) -> Any:
    if not isinstance(text, str) or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def describe_command(cmd: Any) -> dict[str, Any]:
    op = getattr(cmd, "op", "?")
    out: dict[str, Any] = {"op": "del" if op == "delete" else op,
                           "key": clip(getattr(cmd, "key", ""), KEY_CHARS)}
    value = getattr(cmd, "value", None)
    if value is not None:
        out["value"] = clip(value, VALUE_CHARS)
    if_value = getattr(cmd, "if_value", None)
    if if_value is not None:
        out["if_value"] = clip(if_value, VALUE_CHARS)
    if_version = getattr(cmd, "if_version", None)
    if if_version is not None:
        out["if_version"] = if_version
    ttl_ms = getattr(cmd, "ttl_ms", None)
    if ttl_ms is not None:
        out["ttl_ms"] = ttl_ms
    lease = getattr(cmd, "lease", None)
    if lease is not None:
        out["lease"] = lease
    client_id = getattr(cmd, "client_id", None)
    if client_id:
        out["client"] = clip(client_id, 64)
        out["seq"] = getattr(cmd, "seq", 0)
    return out


def describe_batch(batch: Any) -> dict[str, Any] | None:
    if batch is None:
        return None
    commands = tuple(getattr(batch, "commands", ()) or ())
    out = {"n": len(commands), "ts_ms": getattr(batch, "ts_ms", 0),
           "cmds": [describe_command(c) for c in commands[:BATCH_COMMANDS]]}
    if getattr(batch, "lead", False):
        out["lead"] = True  # a new leader's first fresh slot (Batch.lead)
    return out


def log_window(node: Any, slots: int = LOG_SLOTS) -> dict[str, Any]:
    """The node's view of its newest `slots` slots, oldest first.

    state per slot: "applied" (applied to this node's map), "chosen" (known
    chosen, not yet applied), "accepted" (this node's acceptor holds a value
    for it, not known chosen), "proposed" (this node leads and has it in
    flight; `votes` are the nodes whose Accepted it has counted) or "unknown"
    (a hole: a later slot is known here, this one not yet).
    """
    replica = node.replica
    learner = replica.learner
    accepted = getattr(replica.acceptor, "accepted", {}) or {}
    chosen = getattr(learner, "chosen", {}) or {}
    lead = getattr(replica, "lead", None)
    proposals = getattr(lead, "proposals", {}) if lead is not None else {}
    chosen_through = int(getattr(learner, "chosen_through", 0))
    compacted = int(getattr(learner, "compacted_through", 0))
    applied = int(getattr(node.kv, "applied_slot", 0))
    top = max(chosen_through, applied)
    for slot in range(top + 1, top + PROBE_SLOTS + 1):
        if slot in accepted or slot in chosen or slot in proposals:
            top = slot
    if lead is not None:
        top = max(top, int(getattr(lead, "next_slot", 1)) - 1)
    out = []
    for slot in range(max(1, top - slots + 1), top + 1):
        record = accepted.get(slot)
        proposal = proposals.get(slot)
        value = chosen.get(slot)
        if slot <= applied:
            state = "applied"
        elif value is not None or slot <= chosen_through:
            state = "chosen"
        elif record is not None:
            state = "accepted"
        elif proposal is not None:
            state = "proposed"
        else:
            state = "unknown"
        if value is None and record is not None:
            value = record[1]
        if value is None and proposal is not None:
            value = getattr(proposal, "value", None)
        entry: dict[str, Any] = {"slot": slot, "state": state,
                                 "ballot": str(record[0]) if record is not None else None,
                                 "batch": describe_batch(value)}
        if proposal is not None:
            entry["votes"] = sorted(getattr(proposal, "votes", ()))
        if value is None and slot <= compacted:
            entry["compacted"] = True
        out.append(entry)
    return {"slots": out, "applied": applied, "chosen": chosen_through, "compacted": compacted}


def leader_view(node: Any) -> dict[str, Any] | None:
    lead = getattr(node.replica, "lead", None)
    if lead is None or getattr(node.replica.role, "value", "") != "leader":
        return None
    return {"next_slot": getattr(lead, "next_slot", None),
            "in_flight": len(getattr(lead, "proposals", {}) or {}),
            "queued": len(getattr(lead, "pending", ()) or ())}


def members_view(node: Any) -> dict[str, Any] | None:
    """The configuration as this node has applied it (as GET /v1/members answers, but local:
    no read-index round, so a page can ask several times a second). None if unknown.

    Every node applies the same changes in the same slots, so the view of the node
    that applied the most slots is the newest; the page picks that one.
    """
    members = getattr(node, "members", None)
    if members is None:
        return None
    try:
        doc = members()
    except Exception:  # noqa: BLE001 - degrade the page, never break the snapshot
        return None
    return doc if isinstance(doc, dict) else None


def find_command(node: Any, client_id: str, seq: int) -> int | None:
    """The slot of the command this client sent with `seq`, if still in this node's log.

    A resent command can sit in more than one slot; only the first was applied,
    so the search goes oldest first."""
    learner = node.replica.learner
    chosen = getattr(learner, "chosen", {}) or {}
    top = int(getattr(learner, "chosen_through", 0))
    low = max(int(getattr(learner, "compacted_through", 0)), top - FIND_SLOTS)
    for slot in range(low + 1, top + 1):
        batch = chosen.get(slot)
        for cmd in getattr(batch, "commands", ()) or ():
            if getattr(cmd, "client_id", None) == client_id and getattr(cmd, "seq", None) == seq:
                return slot
    return None
