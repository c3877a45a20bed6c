"""Every message the replicas exchange: frozen, slotted value objects.

Paxos proper: Prepare/Promise (phase 1), Accept/Accepted (phase 2), Reject
(either phase, naming the higher promise). Before a Prepare, PreVote asks
whether peers would promise its ballot, changing nothing anywhere. Learning: Commit (leader's contiguous
chosen index) and CatchUp (fetch chosen values from a peer). Liveness and reads:
Heartbeat/HeartbeatAck (leader presence, commit index, read-index rounds) and
ReadIndex (a follower asking the leader for a linearizable read point).
"""
from __future__ import annotations

from dataclasses import dataclass

from kvpaxos.core.ballot import Ballot
from kvpaxos.core.commands import Batch, Command


@dataclass(frozen=True, slots=True)
class AcceptedEntry:
    slot: int
    ballot: Ballot
    value: Batch


@dataclass(frozen=True, slots=True)
class Prepare:
    ballot: Ballot
    from_slot: int


@dataclass(frozen=True, slots=True)
class Promise:
    """accepted: this acceptor's records at or above from_slot. chosen: the values
    its node knows to be chosen there (after a disk loss, a rebuilt node's only
    memory of them). compacted_through: records up to there are forgotten."""

    ballot: Ballot
    from_slot: int
    accepted: tuple[AcceptedEntry, ...]
    compacted_through: int = 0
    chosen: tuple["ChosenEntry", ...] = ()


@dataclass(frozen=True, slots=True)
class Accept:
    ballot: Ballot
    slot: int
    value: Batch


@dataclass(frozen=True, slots=True)
class Accepted:
    ballot: Ballot
    slot: int


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer to a Prepare, Accept or Heartbeat whose ballot is below the promise."""

    ballot: Ballot
    promised: Ballot


@dataclass(frozen=True, slots=True)
class PreVote:
    """Would you promise `ballot`? Asked before a node raises its ballot to run for
    leader; the answer changes no state, so a node cut off from the others can ask
    again and again without raising anything that would later depose a live leader."""

    ballot: Ballot


@dataclass(frozen=True, slots=True)
class PreVoteReply:
    ballot: Ballot  # the ballot asked about
    granted: int  # 1: no live leader here and the ballot is above my promise; 0: no


@dataclass(frozen=True, slots=True)
class Commit:
    """Every slot up to commit_through is chosen; sent by the leader of `ballot`,
    whose first slot proposed under that ballot is first_slot."""

    ballot: Ballot
    commit_through: int
    first_slot: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    ballot: Ballot
    commit_through: int
    hb_seq: int
    first_slot: int = 0


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    ballot: Ballot
    hb_seq: int
    chosen_through: int


@dataclass(frozen=True, slots=True)
class CatchUpRequest:
    from_slot: int
    to_slot: int


@dataclass(frozen=True, slots=True)
class ChosenEntry:
    slot: int
    value: Batch


@dataclass(frozen=True, slots=True)
class CatchUpReply:
    """Chosen values from the requested range; snapshot_slot > 0 means the range
    was compacted away and the asker must install this peer's snapshot."""

    entries: tuple[ChosenEntry, ...]
    snapshot_slot: int = 0


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    read_id: int


@dataclass(frozen=True, slots=True)
class ReadIndexReply:
    """index is the slot the reader must have applied; None means "I am not the leader"."""

    read_id: int
    index: int | None


@dataclass(frozen=True, slots=True)
class Rebuilding:
    """From a node that lost its acceptor state to the leader: start a ballot above
    `round`, so that the node may vote again once a slot is chosen under it."""

    round: int


@dataclass(frozen=True, slots=True)
class Resign:
    """From a leader that is no longer a member: stop following `ballot`; `successor`
    (a voter of the new configuration) starts an election at once."""

    ballot: Ballot
    successor: int


@dataclass(frozen=True, slots=True)
class Removed:
    """To a node the log has removed from the cluster (once no slot of a configuration
    naming it is still open): stop."""

    slot: int


# -- node-level messages: handled by the node runtime, never by the replica ----


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """A follower hands a client's commands to the leader it knows (one slot for all)."""

    commands: tuple[Command, ...]


@dataclass(frozen=True, slots=True)
class ClientReply:
    """The leader's answer: the slot it proposed the command in, or 0 for "not taken, retry"."""

    cmd_id: str
    slot: int


Message = (
    Prepare
    | Promise
    | Accept
    | Accepted
    | Reject
    | PreVote
    | PreVoteReply
    | Commit
    | Heartbeat
    | HeartbeatAck
    | CatchUpRequest
    | CatchUpReply
    | ReadIndexRequest
    | ReadIndexReply
    | Rebuilding
    | Resign
    | Removed
    | ClientRequest
    | ClientReply
)
