"""The `kv` command: talk to a kvpaxos cluster, run one node, or run a local cluster."""
