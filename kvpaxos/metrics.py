"""Prometheus text exposition (format 0.0.4) of one node, without a client library.

The node keeps plain counters (Node.counters, PeerTransport.counters) and a few
histograms (NodeMetrics); nothing here runs per message. A scrape of
GET /metrics reads those, plus gauges from the replica and the snapshotter, and
renders them as text. The format is small enough that a dependency
(prometheus-client) would buy little: no registry, no multiprocess mode, one
process per node.
"""
from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "kvpaxos_"

# Seconds. A commit spans a round trip and an fsync on a majority; an fsync alone
# takes from tens of microseconds (tmpfs, cached) to tens of milliseconds (disk).
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FSYNC_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Commands per slot; the leader's batch_count_max defaults to 1024.
BATCH_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Histogram:
    """Fixed buckets; observe() is one bisect and three additions."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        # bisect_left: the first bound >= value, which is Prometheus' "le" (<=).
        self.counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times
        self.count += times

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, n in zip((*map(_num, self.bounds), "+Inf"), self.counts):
            total += n
            out.append((bound, total))
        return out


class NodeMetrics:
    """The histograms a node updates as it works (counters stay in Node.counters)."""

    def __init__(self) -> None:
        self.commit_latency = Histogram(LATENCY_BUCKETS_S)  # submit -> applied, seconds
        self.fsync_latency = Histogram(FSYNC_BUCKETS_S)  # one group commit, seconds
        self.batch_size = Histogram(BATCH_BUCKETS)  # commands per applied slot
        self.gc_pause = Histogram(LATENCY_BUCKETS_S)  # one full garbage collection, seconds


class Exposition:
    """Collects metric families and renders them; each family is declared once."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._seen: set[str] = set()

    def _head(self, name: str, kind: str, help_text: str) -> str:
        full = PREFIX + name
        if full not in self._seen:
            self._seen.add(full)
            self._lines.append(f"# HELP {full} {_escape_help(help_text)}")
            self._lines.append(f"# TYPE {full} {kind}")
        return full

    def counter(self, name: str, help_text: str, value: float, labels: Mapping[str, Any] | None = None) -> None:
        full = self._head(name + "_total", "counter", help_text)
        self._lines.append(f"{full}{_labels(labels)} {_num(value)}")

    def counters(self, name: str, help_text: str, values: Mapping[Mapping[str, Any] | tuple, float]) -> None:
        """A counter family with several label sets; `values` maps label tuples to values."""
        full = self._head(name + "_total", "counter", help_text)
        for labels, value in values.items():
            self._lines.append(f"{full}{_labels(dict(labels))} {_num(value)}")

    def gauge(self, name: str, help_text: str, value: float, labels: Mapping[str, Any] | None = None) -> None:
        full = self._head(name, "gauge", help_text)
        self._lines.append(f"{full}{_labels(labels)} {_num(value)}")

    def histogram(self, name: str, help_text: str, hist: Histogram) -> None:
        full = self._head(name, "histogram", help_text)
        for bound, total in hist.cumulative():
            self._lines.append(f'{full}_bucket{{le="{bound}"}} {total}')
        self._lines.append(f"{full}_sum {_num(hist.sum)}")
        self._lines.append(f"{full}_count {hist.count}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


# snapshotter.describe() keys that only ever grow; any other numeric key is a gauge.
SNAPSHOT_COUNTERS = frozenset({"taken", "installed", "failed", "fetched", "fetch_failed", "fetches"})


def render(node: Any, transport: Any) -> str:
    """The exposition of one node; `node` is a kvpaxos.node.Node, `transport` its PeerTransport."""
    x = Exposition()
    c, r, t = node.counters, node.replica, transport.counters
    info = {"node": node.id, "boot_id": node.boot_id}
    x.gauge("node_info", "Constant 1, labelled with this node's id and boot id.", 1, info)

    x.gauge("is_leader", "1 if this node leads (it has a majority of promises), else 0.",
            1 if r.role.value == "leader" else 0)
    x.gauge("leader_id", "The node this one believes leads; 0 when it knows none.", r.leader_id or 0)
    x.gauge("ballot_round", "Round of this node's current ballot.", r.ballot.round)
    x.gauge("promised_round", "Round of the highest ballot this node's acceptor promised.",
            r.acceptor.promised.round)
    x.gauge("voting", "1 if this node's acceptor votes, 0 while it rebuilds lost state.", 1 if r.voting else 0)
    x.gauge("chosen_slot", "Highest slot such that it and every slot before it are known chosen.",
            r.learner.chosen_through)
    x.gauge("applied_slot", "Highest slot applied to the key-value state.", node.kv.applied_slot)
    ms = node.kv.membership
    if ms is not None:
        x.gauge("member_voters", "Voters in the latest configuration this node applied.", len(ms.latest.voters))
        x.gauge("member_learners", "Learners in the latest configuration this node applied.",
                len(ms.latest.learners))
        x.gauge("member_change_pending", "1 while a configuration change is chosen but not yet in effect.",
                0 if ms.settled(node.kv.applied_slot + 1) else 1)
        x.gauge("member_is_voter", "1 if this node votes in the latest configuration.",
                1 if node.id in ms.latest.voters else 0)

    x.counter("elections", "Elections this node started (phase 1 with a new ballot).", r.elections)
    x.counter("pre_votes", "Times this node asked the voters whether it may run for leader "
              "(an election follows only a majority of yeses).", r.pre_votes)
    x.counter("leader_changes", "Times the leader this node knows of changed to another node.",
              c.get("leader_changes", 0))
    x.counter("commands_proposed", "Client commands this node, as leader, placed into a slot.",
              c.get("commands_proposed", 0))
    x.counter("requests_forwarded", "Client commands this node sent to the leader over a peer link.",
              c.get("requests_forwarded", 0))
    x.counter("requests_overloaded", "Requests refused (503 overloaded) while this node held as many bytes "
              "of commands waiting for their outcome as --max-pending-bytes allows.",
              c.get("requests_overloaded", 0))
    x.gauge("pending_bytes", "Bytes of the commands submitted through this node that wait for their outcome.",
            node.pending_bytes)
    x.counter("slots_chosen", "Slots this node learned were chosen.", c.get("slots_chosen", 0))
    x.counter("slots_applied", "Slots this node applied to its key-value state.", c.get("slots_applied", 0))
    x.counter("fsyncs", "Group commits (one SQLite transaction and fsync each).", c.get("fsyncs", 0))

    m = node.metrics
    x.histogram("batch_size_commands", "Client commands per applied slot (0: a no-op).", m.batch_size)
    x.histogram("commit_latency_seconds", "From a client command's submission on this node to its "
                "application here.", m.commit_latency)
    x.histogram("fsync_latency_seconds", "Duration of one group commit (transaction and fsync).",
                m.fsync_latency)
    x.histogram("gc_full_pause_seconds", "Duration of each full garbage collection, during which the "
                "event loop waits (kvpaxos/gcpause.py keeps them short).", m.gc_pause)

    sent = {(("type", k[5:]),): v for k, v in sorted(c.items()) if k.startswith("sent_")}
    recv = {(("type", k[5:]),): v for k, v in sorted(c.items()) if k.startswith("recv_")}
    x.counters("messages_sent", "Paxos messages sent to peers, by type.", sent)
    x.counters("messages_received", "Paxos messages received (including this node's own), by type.", recv)
    x.counters("malformed", "Peer input dropped as malformed, by kind.", {
        (("kind", "frame"),): t.get("malformed_frames", 0),
        (("kind", "message"),): t.get("malformed_messages", 0),
        (("kind", "protocol"),): r.malformed,
    })
    x.counters("peer_auth_failures", "Peer links refused or abandoned at authentication, by side "
               "(inbound: a dialer was refused; outbound: a peer we dialed failed to prove itself).", {
                   (("side", "inbound"), ("reason", "unknown_peer")): t.get("peer_refused", 0),
                   (("side", "inbound"), ("reason", "bad_proof")): t.get("auth_refused", 0),
                   (("side", "inbound"), ("reason", "other_cluster")): t.get("cluster_refused", 0),
                   (("side", "outbound"), ("reason", "bad_proof")): t.get("auth_failed_outbound", 0),
               })
    x.counters("peer_links_established", "Peer links that came up (after the handshake, with a secret), "
               "by direction.", {
                   (("direction", "outbound"),): t.get("links_up_outbound", 0),
                   (("direction", "inbound"),): t.get("links_up_inbound", 0),
               })
    x.counter("http_unauthorized", "Client requests refused for a missing or wrong bearer token.",
              c.get("http_unauthorized", 0))

    links = getattr(transport, "links", {})
    for peer, link in sorted(links.items()):
        x.gauge("peer_up", "1 if this node's outbound link to the peer is up.", 1 if link.connected else 0,
                {"peer": peer})
    for peer, link in sorted(links.items()):
        x.counter("peer_dropped_messages", "Messages dropped because the link to the peer was down "
                  "or its queue full.", link.dropped, {"peer": peer})

    for raw_key, value in sorted(node.snapshots.describe().items()):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        key = _NAME_JUNK.sub("_", str(raw_key))
        if key in SNAPSHOT_COUNTERS:
            x.counter(f"snapshots_{key}", f"Snapshots {key.replace('_', ' ')} (snapshotter).", value)
        else:
            x.gauge(f"snapshot_{key}", f"Snapshot {key.replace('_', ' ')} (snapshotter).", value)
    x.gauge("keys_with_ttl", "Keys put with a time to live, not yet expired.", len(node.kv.expiry))
    x.counter("keys_expired", "Keys deleted here because their time to live (or their lease's) ran out.",
              c.get("keys_expired", 0))
    x.gauge("leases", "Leases granted and not yet ended.", len(node.kv.leases))
    x.gauge("keys_with_lease", "Keys attached to a lease.", len(node.kv.key_lease))
    x.counter("leases_expired", "Leases ended here because their time to live ran out.",
              c.get("leases_expired", 0))
    for outcome in ("succeeded", "failed"):
        x.counter("transactions", "Transactions (POST /v1/txn) this node answered, by whether their "
                  "comparisons held.", c.get(f"txn_{outcome}", 0), {"outcome": outcome})
    x.counter("prefix_deletes", "Prefix deletes (DELETE /v1/kv?prefix=) this node answered.",
              c.get("prefix_deletes", 0))
    x.counter("prefix_deleted_keys", "Keys deleted by the prefix deletes this node answered.",
              c.get("prefix_deleted_keys", 0))
    watch = node.history.describe()
    x.gauge("watch_waiting", "Watch requests (GET /v1/watch) waiting for a change.", watch["waiting"])
    x.gauge("watch_history_changes", "Changes held for watches.", watch["changes"])
    x.gauge("watch_history_first", "The oldest revision a watch can start from here.", watch["first"])
    return x.text()


_NAME_JUNK = re.compile(r"[^a-zA-Z0-9_]")


def _num(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _labels(labels: Mapping[str, Any] | None) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items()) + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
