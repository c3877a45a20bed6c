"""A cluster's identity: the configuration its log began with (its genesis), named by a digest
(cluster_id). Nodes of one cluster hold the same genesis, whoever started them and how.
Real processes: tests/integration/test_snapshots.py (a wiped node given a short --cluster
list) and tests/integration/test_membership.py (joined nodes)."""
from __future__ import annotations

from kvpaxos import snapshot
from kvpaxos.config import NodeConfig
from kvpaxos.core.commands import Batch, Command
from kvpaxos.core.kvstate import KVState
from kvpaxos.core.membership import MEMBER_ADD, MEMBER_PROMOTE, Membership
from kvpaxos.node import Node
from storage.sqlite import SqliteStorage

ADDRESSES = {1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}


def test_the_identity_names_exactly_one_configuration() -> None:
    genesis = Membership.initial([1, 2, 3], 64, ADDRESSES)
    assert genesis.identity() == Membership.initial([3, 2, 1], 64, dict(reversed(ADDRESSES.items()))).identity()
    assert genesis.identity() == Membership.from_json(genesis.to_json()).identity()
    others = [Membership.initial([1, 2, 3], 32, ADDRESSES), Membership.initial([1, 2], 64, ADDRESSES),
              Membership.initial([1, 2, 3, 4], 64, ADDRESSES)]
    assert len({genesis.identity(), *(o.identity() for o in others)}) == 4
    # Behind proxies each node may list its peers at other addresses: still one cluster.
    assert Membership.initial([1, 2, 3], 64, {**ADDRESSES, 3: "localhost:9003"}).identity() == genesis.identity()


def test_the_genesis_is_the_first_configuration_while_the_history_holds_it() -> None:
    genesis = Membership.initial([1, 2, 3], 4, ADDRESSES)
    grown, _ = genesis.apply(7, Batch((Command(MEMBER_ADD, "4", "127.0.0.1:7004", cmd_id="a"),)))
    grown, _ = grown.apply(20, Batch((Command(MEMBER_PROMOTE, "4", cmd_id="b"),)))
    assert grown.latest.voters == (1, 2, 3, 4)
    first = grown.genesis()
    assert first is not None and first.identity() == genesis.identity()


def test_a_node_that_joined_before_joins_kept_the_genesis_takes_the_snapshots(tmp_path) -> None:
    """Such a node stored a genesis made from its own address alone; the snapshot it began
    from names the cluster's first configuration, which the node keeps from then on."""
    cluster_genesis = Membership.initial([1, 2, 3], 64, ADDRESSES)
    state = KVState()
    state.membership, _ = cluster_genesis.apply(5, Batch((Command(MEMBER_ADD, "4", "127.0.0.1:7004",
                                                                  cmd_id="a"),)))
    state.applied_slot = 5
    snapshot.write(snapshot.path_in(str(tmp_path)), state)
    storage = SqliteStorage(str(tmp_path), 4)
    storage.set_genesis(Membership.initial([4], 64, {4: "127.0.0.1:7004"}).to_json())
    config = NodeConfig(4, {4: ("127.0.0.1", 7004)}, str(tmp_path))
    node = Node(config, storage)
    try:
        assert node.cluster_id == cluster_genesis.identity()
        assert node.status()["cluster_id"] == cluster_genesis.identity()
        stored = storage.genesis()
        assert stored is not None and Membership.from_json(stored).identity() == cluster_genesis.identity()
    finally:
        node._disk.shutdown(wait=True)
        node.snapshots.close()
        storage.close()


def test_a_new_clusters_node_counts_a_peer_with_another_alpha_as_another_cluster(tmp_path) -> None:
    """The same voters with another alpha count other configurations for the same slots:
    another cluster id, and a node of a new cluster does not vote while a peer names one."""
    cluster = {i: ("127.0.0.1", 7000 + i) for i in (1, 2, 3)}
    storage = SqliteStorage(str(tmp_path), 1)
    node = Node(NodeConfig(1, cluster, str(tmp_path)), storage, fresh=True)
    try:
        other = Membership.initial([1, 2, 3], 32, ADDRESSES).identity()
        assert node._other_lists({2: {"voters": [1, 2, 3], "cluster_id": node.cluster_id},
                                  3: {"voters": [1, 2, 3]}}) == {}  # a peer too old to name one
        assert node._other_lists({2: {"voters": [1, 2, 3], "cluster_id": other}}) == {2: [1, 2, 3]}
        assert node._other_lists({2: {"voters": [1, 2, 3, 4], "cluster_id": other}}) == {2: [1, 2, 3, 4]}
    finally:
        node._disk.shutdown(wait=True)
        node.snapshots.close()
        storage.close()
