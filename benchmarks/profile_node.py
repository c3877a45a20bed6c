#!/usr/bin/env python3
"""`python benchmarks/profile_node.py [--tool cprofile|py-spy]`: the same as `kv bench profile`.

Runs a fresh cluster under closed-loop load and prints the leader's and a
follower's top functions (cProfile over the measured window, or py-spy
samples of all threads). See benchmarks/README.md.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvpaxos.bench.command import profile  # noqa: E402

if __name__ == "__main__":
    profile.main(args=sys.argv[1:], prog_name="benchmarks/profile_node.py")
