"""Redis (broker, state and results in one, persistence on) restarted while jobs flow."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import (
    TricklingProducer,
    cluster,
    lost_and_doubled,
    outcomes,
    report,
)

pytestmark = pytest.mark.faults

JOBS = 400
DOWN_FOR = 2.0


def test_redis_restart_mid_run_loses_nothing(tmp_path: Path, sandbox: Any) -> None:
    with cluster(tmp_path, persistence=True) as fleet:
        fleet.start_worker("a")
        fleet.start_worker("b")
        trickle = TricklingProducer(fleet.producer, "restart", JOBS, pause=0.01)
        enqueued_before = trickle.start_and_wait_for(JOBS // 3)
        accepted, failed_enqueues, unexpected = (
            trickle.accepted,
            trickle.failed_enqueues,
            trickle.unexpected,
        )
        fleet.redis_server.restart(down_for=DOWN_FOR)
        trickle.thread.join(timeout=180)
        assert not trickle.thread.is_alive(), "the producer hung"
        results = fleet.wait_for(accepted, timeout=120)
        # Each worker's consumer reconnected on its own: Celery logs a second "Connected to".
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
            worker.log().count("Connected to redis") >= 2 for worker in fleet.workers
        ):
            time.sleep(0.2)
        reconnected = sum(worker.log().count("Connected to redis") >= 2 for worker in fleet.workers)
        workers_alive = all(worker.alive() for worker in fleet.workers)

    lost, doubled = lost_and_doubled(results)
    # A message Redis handed to a consumer just as it shut down never arrives: the job never
    # runs, and the janitor ends it `expired` (no request sent) once its expiry has passed.
    in_transit = [
        found[0]
        for found in results.values()
        if found and found[0]["outcome"] == "expired" and "broker lost" in found[0]["message"]
    ]
    figures = report(
        "redis-restart",
        jobs=JOBS,
        enqueued_before_restart=enqueued_before,
        redis_down_s=DOWN_FOR,
        enqueue_errors_retried=len(failed_enqueues),
        lost=lost,
        duplicate_results=doubled,
        outcomes=dict(outcomes(results)),
        workers_reconnected=reconnected,
        lost_in_transit_ended_by_janitor=len(in_transit),
    )
    assert not unexpected, f"the producer raised {unexpected[0]!r}"
    clear = ("unreachable", "has not completed")
    assert all(any(why in text for why in clear) for text in failed_enqueues), failed_enqueues[:3]
    assert len(results) == JOBS
    assert figures["lost"] == 0, [job_id for job_id, found in results.items() if not found]
    assert figures["duplicate_results"] == 0
    assert all(result["attempts"] == [] for result in in_transit)
    assert len(in_transit) <= len(fleet.workers)  # at most one BRPOP in flight per consumer
    assert figures["outcomes"] == {"success": JOBS - len(in_transit)} | (
        {"expired": len(in_transit)} if in_transit else {}
    )
    assert workers_alive
    assert reconnected == 2
