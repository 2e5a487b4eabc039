"""Enqueueing with the broker (or Redis) unreachable: a clear error at once, nothing dropped."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from config.settings import load_settings
from tests.faults.harness import cluster, report, unique_target
from worker.dev.embedded_redis import EmbeddedRedis, free_port
from worker.errors import EnqueueError
from worker.produce.producer import Producer

pytestmark = pytest.mark.faults


def enqueue_in_thread(producer: Producer, **fields: Any) -> tuple[str, float]:
    """Try one enqueue; its error message (or "") and seconds taken. Fails the test if it hangs."""
    said: list[str] = []

    def attempt() -> None:
        try:
            producer.close(**fields)
            said.append("")
        except EnqueueError as exc:
            said.append(str(exc))

    started = time.monotonic()
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the enqueue hung with the broker unreachable"
    return said[0], time.monotonic() - started


def test_unreachable_broker_fails_fast_and_a_retry_afterwards_is_enqueued(
    tmp_path: Path, sandbox: Any
) -> None:
    broker = EmbeddedRedis(port=free_port())  # its port is free: nothing listens yet
    try:
        with cluster(tmp_path, broker_url=broker.url) as fleet:
            target, job_id = unique_target("unreachable"), f"unreachable-{uuid.uuid4()}"
            broker_error, broker_seconds = enqueue_in_thread(
                fleet.producer, **target, job_id=job_id
            )

            broker.start()
            fleet.start_worker("worker")
            # The same job id again, as a caller retries: it is enqueued, not taken for a duplicate.
            retried, _ = enqueue_in_thread(fleet.producer, **target, job_id=job_id)
            result = fleet.wait_for([job_id], timeout=60)[job_id]

            dead_redis = f"redis://127.0.0.1:{free_port()}/0"
            no_redis = Producer(settings=load_settings(redis_url=dead_redis), app=fleet.app)
            redis_error, redis_seconds = enqueue_in_thread(no_redis, **unique_target("no-redis"))
    finally:
        broker.cleanup()

    report(
        "broker-unreachable",
        broker_error=broker_error,
        broker_fail_s=round(broker_seconds, 2),
        redis_error=redis_error,
        redis_fail_s=round(redis_seconds, 2),
        retry_enqueued=retried == "",
        lost=0 if result else 1,
        requests_sent=len(sandbox.requests_for(target)),
    )
    assert "broker is unreachable" in broker_error
    assert "REDIS_URL is unreachable" in redis_error
    assert retried == ""
    assert result and result[0]["outcome"] == "success"
    assert len(sandbox.requests_for(target)) == 1
