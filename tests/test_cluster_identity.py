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


class _Peers:
    """Canned answers for a node's calls to its peers' HTTP API."""

    def __init__(self, status: dict[int, dict], members: dict) -> None:
        self.status, self.members, self.asked = status, members, []

    async def json(self, peer: int, path: str) -> dict | None:
        self.asked.append((peer, path))
        return self.members if path.startswith("/v1/members") else self.status.get(peer)


def _rebuilding_node(tmp_path, peers: _Peers) -> Node:
    cluster = {i: ("127.0.0.1", 7000 + i) for i in (1, 2, 3)}  # its own list: 1-3
    node = Node(NodeConfig(3, cluster, str(tmp_path)), SqliteStorage(str(tmp_path), 3), fresh=True)
    node._http = object()  # type: ignore[assignment] - every call goes to peers.json
    node._peer_json = peers.json  # type: ignore[method-assign]
    return node


def _close(node: Node) -> None:
    node._disk.shutdown(wait=True)
    node.snapshots.close()
    node.storage.close()


def test_a_rebuilding_node_takes_the_clusters_genesis_and_asks_every_voter(tmp_path) -> None:
    import asyncio
    cluster = Membership.initial([1, 2, 3, 4, 5], 64, {**ADDRESSES, 4: "127.0.0.1:7004", 5: "127.0.0.1:7005"})
    cid = cluster.identity()
    holding = {"promised": "3.1", "voters": [1, 2, 3, 4, 5], "cluster_id": cid}
    members = {"cluster_id": cid, "genesis": cluster.to_json(), "voters": [1, 2, 3, 4, 5],
               "members": [{"id": i, "address": f"127.0.0.1:700{i}"} for i in range(1, 6)]}
    peers = _Peers({i: holding for i in (1, 2, 4, 5)}, members)
    node = _rebuilding_node(tmp_path, peers)
    try:
        answers = asyncio.run(asyncio.wait_for(node._learn_cluster({1: holding, 2: holding}), 10))
        assert sorted(answers) == [1, 2, 4, 5]  # the voters its own list did not name were asked too
        assert node.cluster_id == cid and node.kv.membership is not None
        assert node.kv.membership.latest.voters == (1, 2, 3, 4, 5)
        assert node.replica.membership.latest.voters == (1, 2, 3, 4, 5)
        stored = node.storage.genesis()
        assert stored is not None and Membership.from_json(stored).identity() == cid  # kept across restarts
        assert node.deciding_problem is None
    finally:
        _close(node)


def test_a_rebuilding_node_does_not_vote_while_its_peers_name_different_clusters(tmp_path) -> None:
    import asyncio
    ours = Membership.initial([1, 2, 3], 64, ADDRESSES)
    theirs = Membership.initial([1, 2, 3], 32, ADDRESSES)
    members = {"cluster_id": ours.identity(), "genesis": ours.to_json(), "voters": [1, 2, 3], "members": []}
    status = {1: {"promised": "2.1", "voters": [1, 2, 3], "cluster_id": ours.identity()},
              2: {"promised": "2.1", "voters": [1, 2, 3], "cluster_id": theirs.identity()}}
    node = _rebuilding_node(tmp_path, _Peers(status, members))
    try:
        async def learn() -> None:
            task = asyncio.ensure_future(node._learn_cluster(dict(status)))
            await asyncio.sleep(0.3)
            assert not task.done()
            task.cancel()
        asyncio.run(learn())
        assert node.deciding_problem is not None
        assert f"peer(s) 2 (cluster {theirs.identity()}) belong to another cluster" in node.deciding_problem

        forged = dict(members, cluster_id=theirs.identity())  # a genesis that is not what its id names
        node._peer_json = _Peers(status, forged).json  # type: ignore[method-assign]
        asyncio.run(learn())
        assert "described its cluster's first configuration inconsistently" in (node.deciding_problem or "")
        assert node.cluster_id == ours.identity()  # nothing taken from either
    finally:
        _close(node)
