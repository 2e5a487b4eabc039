"""Where the worker's pool runs each job (worker.consume.lanes.LaneRouter), on real executors.

The e2e side (a real worker, the sandbox) is in test_lanes.py; here the decisions, one by one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from celery.concurrency.thread import TaskPool

from config.lanes import BULK_QUEUE, URGENT_QUEUE
from worker.broker.app import CLOSE_TASK
from worker.consume.lanes import LaneRouter

SHARED_THREADS = 2


@pytest.fixture
def router() -> Iterator[LaneRouter]:
    pool = TaskPool(limit=SHARED_THREADS)
    reserved = ThreadPoolExecutor(max_workers=1, thread_name_prefix="urgent")
    yield LaneRouter(pool.on_apply, SHARED_THREADS, reserved, 1)
    pool.on_stop()
    reserved.shutdown(cancel_futures=True)


def submit(router: LaneRouter, queue: str, release: threading.Event) -> threading.Event:
    """A job of the given queue that holds its thread until ``release``; returns its start."""
    started = threading.Event()

    def job(*_args: Any) -> None:
        started.set()
        release.wait(10)

    request = {"delivery_info": {"routing_key": queue}}
    router(job, (CLOSE_TASK, "id", request, b"{}"))
    return started


def test_bulk_never_runs_on_the_reserved_thread(router: LaneRouter) -> None:
    release = threading.Event()
    starts = [submit(router, BULK_QUEUE, release) for _ in range(SHARED_THREADS + 1)]
    assert all(started.wait(5) for started in starts[:SHARED_THREADS])
    # The third waits for a shared thread although the reserved one is idle.
    assert not starts[-1].wait(0.3)
    assert router.busy() == {"shared": SHARED_THREADS + 1, "reserved": 0}
    release.set()
    assert starts[-1].wait(5)


def test_urgent_takes_the_reserved_thread_then_idle_shared_ones_then_waits_on_reserved(
    router: LaneRouter,
) -> None:
    release = threading.Event()
    first = submit(router, URGENT_QUEUE, release)
    assert first.wait(5)
    assert router.busy() == {"shared": 0, "reserved": 1}
    # The reserved thread is busy: the next urgent jobs take the idle shared threads.
    spill = [submit(router, URGENT_QUEUE, release) for _ in range(SHARED_THREADS)]
    assert all(started.wait(5) for started in spill)
    assert router.busy() == {"shared": SHARED_THREADS, "reserved": 1}
    # Every thread busy: the next urgent job waits for the reserved thread, behind urgent
    # work only, never in the shared FIFO behind bulk jobs.
    waiting = submit(router, URGENT_QUEUE, release)
    assert router.busy() == {"shared": SHARED_THREADS, "reserved": 2}
    assert not waiting.wait(0.3)
    release.set()
    assert waiting.wait(5)


def test_an_urgent_job_behind_busy_bulk_threads_starts_at_once_on_the_reserved_one(
    router: LaneRouter,
) -> None:
    release = threading.Event()
    bulk = [submit(router, BULK_QUEUE, release) for _ in range(SHARED_THREADS + 3)]
    assert all(started.wait(5) for started in bulk[:SHARED_THREADS])
    urgent = submit(router, URGENT_QUEUE, release)
    assert urgent.wait(1)
    assert not any(started.is_set() for started in bulk[SHARED_THREADS:])
    release.set()


def test_the_counts_come_back_when_jobs_end_or_fail(router: LaneRouter) -> None:
    done = threading.Event()

    def failing(*_args: Any) -> None:
        done.set()
        raise RuntimeError("a job's own error")

    for queue in (URGENT_QUEUE, BULK_QUEUE):
        router(failing, (CLOSE_TASK, "id", {"delivery_info": {"routing_key": queue}}, b"{}"))
    assert done.wait(5)
    for _ in range(50):
        if router.busy() == {"shared": 0, "reserved": 0}:
            break
        threading.Event().wait(0.05)
    assert router.busy() == {"shared": 0, "reserved": 0}
