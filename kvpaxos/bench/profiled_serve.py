"""`python -m kvpaxos.bench.profiled_serve OUT.prof CLOCK serve ARGS...`: `kv serve` with cProfile on demand.

SIGUSR1 starts profiling the main thread (the event loop), SIGUSR2 stops it
and writes the statistics to OUT.prof, so a profile covers exactly the
measured window, not start-up and election. CLOCK is `wall` (perf_counter:
cheap; time spent descheduled is charged to the running function) or `cpu`
(the main thread's CPU clock: no such charge, but every reading is a system
call, which inflates functions in proportion to their calls).
"""
from __future__ import annotations

import cProfile
import signal
import sys
import time


def main() -> None:
    out, clock = sys.argv[1], sys.argv[2]
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    profiler = cProfile.Profile(timer)

    def start(signum: int, frame: object) -> None:
        profiler.enable()

    def stop(signum: int, frame: object) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from cli.main import main as kv_main
    kv_main(sys.argv[3:])


if __name__ == "__main__":
    main()
