"""The two lanes on a real worker: an urgent job never waits behind bulk work.

Each test runs its own Redis and worker (tests.faults.harness), so that nothing else consumes
the lanes' queues while it measures who went first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from config.lanes import BULK, BULK_QUEUE, LEGACY_QUEUE, URGENT, URGENT_QUEUE
from tests.faults.harness import cluster, unique_target
from worker.broker.app import CLOSE_MANY_TASK, CLOSE_TASK
from worker.broker.messages import chunk_kwargs
from worker.model.targets import CloseJob
from worker.produce.batch import BatchSender
from worker.produce.producer import job_kwargs

pytestmark = pytest.mark.e2e

BULK_THREADS = 2
SLOW = 1.0  # seconds each bulk request takes at the sandbox


def test_an_urgent_job_starts_before_bulk_jobs_queued_before_it(
    tmp_path: Path, sandbox: Any
) -> None:
    with cluster(tmp_path, tuning={"STREAMCTL_URGENT_THREADS": "1"}) as fleet:
        fleet.start_worker("lanes", concurrency=BULK_THREADS)
        bulk = [CloseJob.parse(unique_target("bulk")) for _ in range(8)]
        for job in bulk:
            sandbox.inject(job.target.as_fields(), "slow", delay=SLOW)
        batch = BatchSender(fleet.settings, fleet.app).start(bulk)
        # Both bulk threads busy, more bulk messages prefetched and queued behind them.
        deadline = time.monotonic() + 10
        while sum(len(sandbox.requests_for(j.target.as_fields())) for j in bulk) < BULK_THREADS:
            assert time.monotonic() < deadline, "the bulk jobs never started"
            time.sleep(0.02)
        urgent_target = unique_target("urgent")
        sent = time.monotonic()
        urgent_id = fleet.producer.close(**urgent_target)
        urgent = fleet.wait_for([urgent_id], timeout=10)[urgent_id]
        urgent_took = time.monotonic() - sent
        bulk_done_then = len(fleet.read_results()) - 1
        results = fleet.wait_for(batch.job_ids, timeout=30)

    assert [r["outcome"] for r in urgent] == ["success"]
    assert urgent[0]["lane"] == URGENT
    # Sent while both bulk threads were inside their first one-second requests: it ended
    # before any of the six bulk jobs queued before it did more than begin.
    assert urgent_took < SLOW, urgent_took
    assert bulk_done_then <= BULK_THREADS, bulk_done_then
    assert sorted({r[0]["lane"] for r in results.values()}) == [BULK]
    assert all(len(found) == 1 and found[0]["outcome"] == "success" for found in results.values())


def test_a_burst_of_urgent_closes_also_takes_the_idle_bulk_threads(
    tmp_path: Path, sandbox: Any
) -> None:
    """The reserved threads are a floor for urgent work, not a ceiling: with the bulk lane idle,
    a burst of single closes runs on every thread the worker has, not one at a time."""
    threads = 4
    with cluster(tmp_path, tuning={"STREAMCTL_URGENT_THREADS": "1"}) as fleet:
        fleet.start_worker("lanes", concurrency=threads)
        burst = [unique_target("burst") for _ in range(threads + 1)]
        for target in burst:
            sandbox.inject(target, "slow", delay=SLOW)
        sent = time.monotonic()
        job_ids = [fleet.producer.close(**target) for target in burst]
        results = fleet.wait_for(job_ids, timeout=20)
        took = time.monotonic() - sent

    assert all([r["outcome"] for r in found] == ["success"] for found in results.values())
    assert {found[0]["lane"] for found in results.values()} == {URGENT}
    # One reserved thread and four idle bulk threads: five one-second closes end in about one
    # second, not five (each on the reserved thread in turn).
    assert took < 2 * SLOW + 1, took


def test_each_queue_runs_its_tasks_default_lane_unless_a_lane_is_named(
    tmp_path: Path, sandbox: Any
) -> None:
    """The pre-lane queue still works (raw producers); a message names its lane or gets its
    task's default; routing by task name (``celery call``, Flower) picks the lane's queue."""
    with cluster(tmp_path) as fleet:
        fleet.start_worker("lanes", concurrency=2)
        settings = fleet.settings

        def kwargs(**extra: Any) -> dict[str, Any]:
            return {**job_kwargs(unique_target("q"), settings=settings)[1], **extra}

        sends = {
            "legacy-close": (CLOSE_TASK, kwargs(), LEGACY_QUEUE, URGENT),
            "legacy-bulk-close": (CLOSE_TASK, kwargs(lane=BULK), LEGACY_QUEUE, BULK),
            "routed-close": (CLOSE_TASK, kwargs(), None, URGENT),
            "bulk-queue-close": (CLOSE_TASK, kwargs(lane=BULK), BULK_QUEUE, BULK),
        }
        for job_id, (task, task_kwargs, queue, _lane) in sends.items():
            fleet.app.send_task(task, kwargs=task_kwargs, task_id=job_id, queue=queue)
        chunk = [("legacy-chunk-1", kwargs()), ("legacy-chunk-2", kwargs(lane=URGENT))]
        fleet.app.send_task(
            CLOSE_MANY_TASK, kwargs=chunk_kwargs(chunk), task_id="c1", queue=LEGACY_QUEUE
        )
        urgent_id = fleet.producer.close(**unique_target("p"))
        bulk_id = fleet.producer.close(**unique_target("p"), lane=BULK)
        expected = {
            **{job_id: lane for job_id, (_t, _k, _q, lane) in sends.items()},
            "legacy-chunk-1": BULK,
            "legacy-chunk-2": URGENT,
            urgent_id: URGENT,
            bulk_id: BULK,
        }
        results = fleet.wait_for(expected, timeout=20)
        left = {q: fleet.redis.llen(q) for q in (URGENT_QUEUE, BULK_QUEUE, LEGACY_QUEUE)}

    assert {job_id: [r["lane"] for r in found] for job_id, found in results.items()} == {
        job_id: [lane] for job_id, lane in expected.items()
    }
    assert all(found[0]["outcome"] == "success" for found in results.values())
    assert left == {URGENT_QUEUE: 0, BULK_QUEUE: 0, LEGACY_QUEUE: 0}


def test_a_bad_lane_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    from worker.errors import InvalidTarget, StreamctlError

    with cluster(tmp_path) as fleet:
        with pytest.raises(InvalidTarget, match="lane must be one of urgent, bulk"):
            fleet.producer.close(**unique_target("x"), lane="fast")  # type: ignore[arg-type]
        with pytest.raises(StreamctlError, match="lane must be one of urgent, bulk"):
            BatchSender(fleet.settings, fleet.app).start(
                [CloseJob.parse(unique_target("x"))],
                lane="fast",  # type: ignore[arg-type]
            )
        assert fleet.redis.llen(URGENT_QUEUE) == fleet.redis.llen(BULK_QUEUE) == 0


def test_messages_go_to_their_lanes_queue_and_flower_shows_the_lane(tmp_path: Path) -> None:
    """What Flower shows of a task is its kwargsrepr: the target (or job ids) and the lane."""
    with cluster(tmp_path) as fleet:
        fleet.producer.close(**unique_target("shown"))
        fleet.producer.close(**unique_target("shown"), lane=BULK)
        BatchSender(fleet.settings, fleet.app).start([CloseJob.parse(unique_target("shown"))])
        queued = {
            queue: [json.loads(raw) for raw in fleet.redis.lrange(queue, 0, -1)]
            for queue in (URGENT_QUEUE, BULK_QUEUE, LEGACY_QUEUE)
        }

    shown = {q: [m["headers"]["kwargsrepr"] for m in found] for q, found in queued.items()}
    assert [("'lane': 'urgent'" in s) for s in shown[URGENT_QUEUE]] == [True]
    assert sorted(("'jobs'" in s, "'lane': 'bulk'" in s) for s in shown[BULK_QUEUE]) == [
        (False, True),
        (True, True),
    ]
    assert shown[LEGACY_QUEUE] == []


def test_a_warm_shutdown_lets_a_running_urgent_job_end_and_acknowledge(
    tmp_path: Path, sandbox: Any
) -> None:
    with cluster(tmp_path) as fleet:
        worker = fleet.start_worker("lanes", concurrency=2)
        target = unique_target("shutdown")
        sandbox.inject(target, "slow", delay=1.0)  # under the read timeout (1.5 s)
        job_id = fleet.producer.close(**target)
        deadline = time.monotonic() + 10
        while not sandbox.requests_for(target):
            assert time.monotonic() < deadline, "the urgent job never started"
            time.sleep(0.02)
        worker.stop()  # SIGTERM: Celery's warm shutdown
        exit_code = worker.process.returncode if worker.process else None
        results = fleet.wait_for([job_id], timeout=5)[job_id]
        left = fleet.redis.llen(URGENT_QUEUE) + fleet.redis.hlen("unacked")

    assert exit_code == 0
    assert [r["outcome"] for r in results] == ["success"]
    assert left == 0  # acknowledged: no other worker would run it again
    assert len(sandbox.requests_for(target)) == 1
