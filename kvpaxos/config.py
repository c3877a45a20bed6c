"""Node configuration: the cluster map and the knobs of one `kv serve` process."""
from __future__ import annotations

from dataclasses import dataclass, field

from kvpaxos.core.commands import VALUE_BYTES_MAX


class ConfigError(ValueError):
    """A malformed cluster map or option; the CLI prints it as one line."""


def parse_cluster(spec: str) -> dict[int, tuple[str, int]]:
    """Parse "1=127.0.0.1:7001,2=127.0.0.1:7002" into {1: ("127.0.0.1", 7001), ...}."""
    cluster: dict[int, tuple[str, int]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        node, sep, addr = part.partition("=")
        host, colon, port = addr.rpartition(":")
        if not sep or not colon or not node.strip().isdigit() or not port.isdigit() or not host:
            raise ConfigError(f"bad cluster entry {part!r}: expected ID=HOST:PORT")
        node_id = int(node)
        if node_id < 1 or node_id in cluster:
            raise ConfigError(f"bad or repeated node id {node_id} in cluster map")
        if not 0 < int(port) < 65536:
            raise ConfigError(f"bad port in {part!r}")
        cluster[node_id] = (host.strip("[]"), int(port))
    if not cluster:
        raise ConfigError("the cluster map is empty")
    return cluster


def address_text(address: tuple[str, int]) -> str:
    """"HOST:PORT", with an IPv6 host in brackets: how addresses travel and are stored."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> tuple[str, int] | None:
    """The (host, port) of "HOST:PORT" (an IPv6 host may be in brackets), or None."""
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536 or len(text) > 255:
        return None
    return host, int(port)


def format_cluster(cluster: dict[int, tuple[str, int]]) -> str:
    return ",".join(f"{i}={h}:{p}" for i, (h, p) in sorted(cluster.items()))


@dataclass(frozen=True)
class NodeConfig:
    node_id: int
    cluster: dict[int, tuple[str, int]]
    data_dir: str
    tick_ms: int = 20
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    window_slots: int = 64
    batch_count_max: int = 1024
    batch_bytes_max: int = 4 * 1024 * 1024
    partial_in_flight: int = 1  # kvpaxos/core/replica.py CoreConfig.partial_in_flight
    # As leader, accept its own proposal only when its followers, short of a majority by
    # its vote, have not made one within two timer periods of this (asyncio rounds each
    # up to whole milliseconds; 0: at once). CoreConfig.defer_self_vote.
    self_vote_delay_ms: float = 0.5
    value_bytes_max: int = VALUE_BYTES_MAX
    request_timeout_s: float = 5.0
    # Commands submitted through this node and waiting for their outcome, in bytes
    # (Command.size_bytes): past it a request is refused, 503 overloaded (Node.submit_group).
    pending_bytes_max: int = 256 * 1024 * 1024
    snapshot_every_slots: int = 10_000
    snapshot_every_bytes: int = 64 * 1024 * 1024
    compact_keep_slots: int = 1_000
    compact_keep_bytes: int = 8 * 1024 * 1024  # ... and at most this many bytes of applied commands
    # The latest changes kept for watches (kvpaxos/watch.py): at most this many, and this
    # many characters of keys and values.
    watch_history_changes: int = 100_000
    watch_history_bytes: int = 64 * 1024 * 1024
    # Security (kvpaxos/security.py): peers prove they hold `secret`; clients send `token`;
    # with a certificate the node serves HTTPS and dials its peers over TLS.
    secret: bytes | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    join_url: str | None = None  # `kv serve --join`: become a member through this node first

    def __post_init__(self) -> None:
        if self.node_id not in self.cluster:
            raise ConfigError(f"node id {self.node_id} is not in the cluster map")
        if not 0 < self.value_bytes_max <= VALUE_BYTES_MAX:
            raise ConfigError(f"value size limit must be between 1 and {VALUE_BYTES_MAX} bytes")
        for name, low in (("tick_ms", 1), ("snapshot_every_slots", 1), ("snapshot_every_bytes", 1),
                          ("compact_keep_slots", 0), ("compact_keep_bytes", 0), ("partial_in_flight", 0),
                          ("watch_history_changes", 1), ("watch_history_bytes", 1), ("pending_bytes_max", 1)):
            value = getattr(self, name)
            if type(value) is not int or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, not {value!r}")
        if not 0 <= self.self_vote_delay_ms <= 1000:
            raise ConfigError(f"self_vote_delay_ms must be from 0 to 1000, not {self.self_vote_delay_ms!r}")
        if not 0 < self.request_timeout_s < float("inf"):
            raise ConfigError(f"request_timeout_s must be a positive number of seconds, "
                              f"not {self.request_timeout_s!r}")

    @property
    def address(self) -> tuple[str, int]:
        return self.cluster[self.node_id]

    @property
    def scheme(self) -> str:
        """The scheme of every node's HTTP API: TLS is all or nothing in a cluster."""
        return "https" if self.tls_cert else "http"
