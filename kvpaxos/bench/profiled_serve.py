"""`python -m kvpaxos.bench.profiled_serve OUT.prof serve ARGS...`: `kv serve` with cProfile on demand.

SIGUSR1 starts profiling the main thread (the event loop), SIGUSR2 stops it
and writes the statistics to OUT.prof, so a profile covers exactly the
measured window, not start-up and election.
"""
from __future__ import annotations

import cProfile
import signal
import sys


def main() -> None:
    out = sys.argv[1]
    profiler = cProfile.Profile()

    def start(signum: int, frame: object) -> None:
        profiler.enable()

    def stop(signum: int, frame: object) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from cli.main import main as kv_main
    kv_main(sys.argv[2:])


if __name__ == "__main__":
    main()
