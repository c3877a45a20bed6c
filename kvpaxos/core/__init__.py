"""The Multi-Paxos core: pure, deterministic, no I/O.

Nothing in this package touches a socket, a clock, a disk or global randomness;
the node runtime (kvpaxos.node) and the simulator (tests/sim) drive it with
ticks and messages and carry out what each Ready asks.
"""
