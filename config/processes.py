"""How ``streamctl worker -c N`` spreads its N calls in flight over processes.

A worker process is bound by its one GIL: its threads take turns for it, and past a few
hundred of them the turns cost more than the calls (benchmarks/run.py, 300 ms replies, 1,000
in flight on two cores: one process of 1,000 threads 810 jobs/s, two of 500 each well over
that; README, Performance). So by default (``STREAMCTL_WORKER_PROCESSES=auto``) a worker runs
one process per ``THREADS_PER_PROCESS`` calls in flight, and no more processes than CPUs it
may run on; the default 32 calls stay one process. ``-c`` is always the whole command's calls
in flight, split as evenly as they go over its processes (``thread_shares``).
"""

from __future__ import annotations

import os
from typing import Literal

AUTO: Literal["auto"] = "auto"
#: Calls in flight one process takes before ``auto`` adds another (see the module docstring).
THREADS_PER_PROCESS = 250


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's cpuset counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def process_count(concurrency: int, processes: int | Literal["auto"]) -> int:
    """How many processes a worker of ``concurrency`` calls in flight runs."""
    if processes == AUTO:
        wanted = -(-concurrency // THREADS_PER_PROCESS)
        return max(1, min(usable_cpus(), wanted))
    return processes


def thread_shares(concurrency: int, processes: int) -> list[int]:
    """Each process's threads: ``concurrency`` split as evenly as it goes (the first take one
    more). ValueError when there are more processes than calls in flight."""
    if processes > concurrency:
        raise ValueError(
            f"{processes} worker processes need at least {processes} calls in flight "
            f"(each process one thread), not {concurrency}"
        )
    base, extra = divmod(concurrency, processes)
    return [base + 1 if index < extra else base for index in range(processes)]
