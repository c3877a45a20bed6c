"""Benchmarks of kvpaxos: `kv bench` and the scripts in benchmarks/.

Modules:
  cluster    a fresh local cluster of real `kv serve` processes, CPU time from /proc
  loadgen    the load generator (keep-alive; a raw asyncio HTTP client or aiohttp): closed loop, fixed rate, batches
  stats      percentiles and summaries
  baselines  the bare aiohttp server, PySyncObj, etcd reference numbers
  failover   kill -9 the leader, time until a write is acknowledged again
  profile    a node under cProfile or py-spy while it serves load
  suite      the whole `kv bench` run: sweep, baselines, batch, fixed rate, reads
  svg        the throughput/latency plot, written by hand
  command    the `kv bench` click commands
"""
