"""A worker's per-job path without Celery: CPU per job and Redis round trips per job.

Runs messages of ``STREAMCTL_BATCH_CHUNK`` jobs (as the bulk of a large batch) through the job
runner the worker builds (``worker.consume.wiring.build_runner``), with a private Redis server
and the benchmark's stand-in over real HTTP (benchmarks/standin.py, delay 0), in ``--threads``
threads. Prints this process's CPU per job (``time.process_time``) and the Redis round trips
per job (commands sent on one connection and answered: a pipeline is one). With ``--profile``
the jobs run in one thread under cProfile instead, and the costliest functions are printed.
Celery's own work per message is not in here (``benchmarks.run`` measures the whole worker).

    python -m benchmarks.jobpath --jobs 4000
    python -m benchmarks.jobpath --jobs 2000 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis.connection import AbstractConnection

from benchmarks.asyncio_sender import API_KEY, CDN, SECRET
from benchmarks.run import start_standin, targets
from config.lanes import BULK, LANE_FIELD
from config.settings import load_settings
from worker.broker.messages import split
from worker.consume.runner import Delivery, JobRunner
from worker.consume.wiring import build_runner
from worker.dev.embedded_redis import EmbeddedRedis
from worker.produce.producer import close_kwargs
from worker.store.jobs import JobState

_round_trips = 0
_count_lock = threading.Lock()


def count_round_trips() -> None:
    """Count every packed send on a Redis connection (one per command or pipeline)."""
    original = AbstractConnection.send_packed_command

    def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        global _round_trips
        with _count_lock:
            _round_trips += 1
        original(self, command, check_health)  # type: ignore[no-untyped-call]

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]


def chunks(count: int, batch_chunk: int, state: JobState) -> list[list[Delivery]]:
    now = time.time()
    batch_id = f"jobpath-{int(now)}"
    jobs = [
        (
            f"{batch_id}-{index:05d}",
            {
                **close_kwargs(job, enqueued_at=now, expires_at=now + 600, batch_id=batch_id),
                LANE_FIELD: BULK,
            },
        )
        for index, job in enumerate(targets(count, batch_id))
    ]
    state.record_pending(jobs)
    # Messages of batch_chunk jobs, as the bulk of a large batch (worker.broker.messages).
    pieces: Sequence[Sequence[tuple[str, dict[str, Any]]]] = split(
        jobs, [batch_chunk] * -(-count // batch_chunk)
    )
    return [[Delivery(job_id, (), kwargs) for job_id, kwargs in piece] for piece in pieces]


def run_threads(runner: JobRunner, work: list[list[Delivery]], threads: int) -> None:
    todo: queue.SimpleQueue[list[Delivery]] = queue.SimpleQueue()
    for piece in work:
        todo.put(piece)

    def drain() -> None:
        while True:
            try:
                piece = todo.get_nowait()
            except queue.Empty:
                return
            run = runner.run_chunk(piece)
            assert run.outcomes == {"success": len(piece)}, run

    if threads == 1:  # in this thread: a profiler of it sees the jobs
        drain()
        return
    pool = [threading.Thread(target=drain) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rate", type=float, default=None, help="STREAMCTL_RATE_LIMIT")
    parser.add_argument("--max-in-flight", type=int, default=None)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    standin, url = start_standin(0.0)
    try:
        with EmbeddedRedis() as server:
            settings = load_settings(
                redis_url=server.url,
                api_url=url,
                cdn=CDN,
                api_key=API_KEY,
                api_secret=SECRET,
                rate_limit=args.rate,
                max_in_flight=args.max_in_flight,
                log_level=args.log_level,
            )
            from worker.telemetry.logs import configure_logging

            configure_logging(settings)
            runner = build_runner(settings)
            run_threads(runner, chunks(200, settings.batch_chunk, runner.state), 4)  # warm up
            work = chunks(args.jobs, settings.batch_chunk, runner.state)
            count_round_trips()
            cpu, wall = time.process_time(), time.perf_counter()
            if args.profile:
                profile = cProfile.Profile()
                profile.runcall(run_threads, runner, work, 1)
            else:
                run_threads(runner, work, args.threads)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(
                f"{args.jobs} jobs: CPU {cpu * 1000 / args.jobs:.3f} ms/job, "
                f"{args.jobs / wall:.0f} jobs/s, "
                f"Redis round trips {_round_trips / args.jobs:.2f}/job"
                + (" (under cProfile)" if args.profile else "")
            )
            if args.profile:
                Path("/tmp/cpuprof").mkdir(exist_ok=True)
                profile.dump_stats("/tmp/cpuprof/jobpath.prof")  # for snakeviz and the like
                pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
    finally:
        standin.terminate()
        standin.wait()


if __name__ == "__main__":
    main()
