#!/usr/bin/env python3
"""`python benchmarks/failover.py [--trials 10] [--nodes 3]`: the same as `kv bench failover`.

Kills the leader with SIGKILL TRIALS times and reports the time from each kill
to the first acknowledged write through a surviving node (median/p90/max),
restarting the killed node between trials. See benchmarks/README.md.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvpaxos.bench.command import failover  # noqa: E402

if __name__ == "__main__":
    failover.main(args=sys.argv[1:], prog_name="benchmarks/failover.py")
