#!/usr/bin/env python3
"""`python benchmarks/bench.py [OPTIONS]`: the same as `kv bench [OPTIONS]`.

Fresh local cluster, concurrency sweep, batched / fixed-rate / reads modes,
aiohttp and PySyncObj baselines; results in benchmarks/results/. The engine is
kvpaxos/bench/ (so `kv bench` works after `pip install .`); see
benchmarks/README.md.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvpaxos.bench.command import bench  # noqa: E402

if __name__ == "__main__":
    bench.main(args=sys.argv[1:], prog_name="benchmarks/bench.py")
