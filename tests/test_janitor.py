"""The janitor ends a job whose message the broker lost, once; jobs that ran are left alone.

A private cluster (tests.faults.harness) so that its janitor's lock and quick timing are its
own: the session worker's janitor sweeps the session Redis on the default interval.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import redis

from config.lanes import CONSUMED_QUEUES
from tests.faults.harness import cluster, unique_target
from worker.broker.messages import JOBS_FIELD
from worker.consume.janitor import LOST_MESSAGE, grace_seconds, rescue, sweep
from worker.consume.wiring import build_runner
from worker.dev.embedded_redis import EmbeddedRedis
from worker.model.targets import CloseJob
from worker.produce.batch import BatchSender
from worker.store.jobs import PENDING_DATA_KEY, PENDING_KEY, JobState

#: A sweep every half second, 2.5 s past expiry (connect 1 + read 1.5 + grace 0).
QUICK_JANITOR = {"STREAMCTL_JANITOR_INTERVAL": "0.5", "STREAMCTL_JANITOR_GRACE": "0"}
#: The batch's expiry: its other job must still be live when the worker, started after the
#: enqueue, reaches it; a worker takes up to about 5 s to start on a loaded 2-core machine
#: (2 s was missed with the suite running two test processes beside a benchmark).
LOST_EXPIRES = 5.0
#: ... and the lost job must not be rescued (sent again) instead of ended: a rescue needs one
#: attempt's timeouts (connect 1 + read 5 = 6 s) before the expiry, more than the batch has.
UNRESCUABLE = {**QUICK_JANITOR, "STREAMCTL_READ_TIMEOUT": "5"}


def _message_jobs(raw: bytes) -> list[str]:
    """The job ids a queued message carries: a batch message's entries, else its task id."""
    message = json.loads(raw)
    _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return list(kwargs.get(JOBS_FIELD, {})) or [message["headers"]["id"]]


def _drop_message(fleet: Any, job_id: str) -> None:
    """Take a job's message off the queue, as a worker killed right after BRPOP does."""
    for queue in CONSUMED_QUEUES:  # every lane's queue (a batch's jobs are in the bulk one)
        for raw in fleet.redis.lrange(queue, 0, -1):
            if job_id in _message_jobs(raw):
                # A small batch goes one job per message (worker.broker.messages.chunk_sizes).
                assert _message_jobs(raw) == [job_id]
                assert fleet.redis.lrem(queue, 1, raw) == 1
                return
    raise AssertionError(f"no message for {job_id} on the queue")


def test_lost_message_ends_expired_once_and_finished_jobs_are_left_alone(
    tmp_path: Path, sandbox: Any
) -> None:
    with cluster(tmp_path, tuning=UNRESCUABLE) as fleet:
        # Enqueued with no worker running, so that a message can be taken off the queue.
        single = fleet.producer.close(**unique_target("janitor-ok"))
        assert fleet.redis.zscore(PENDING_KEY, single) is not None
        jobs = [CloseJob.parse(unique_target("janitor-batch")) for _ in range(2)]
        sender = BatchSender(fleet.settings, fleet.app)
        batch = sender.start(jobs, expires=LOST_EXPIRES)
        ran, lost = batch.job_ids
        _drop_message(fleet, lost)
        fleet.start_worker("janitor", concurrency=2)

        results = fleet.wait_for([single, ran, lost], timeout=60)
        pending_after = fleet.redis.zcard(PENDING_KEY) + fleet.redis.hlen(PENDING_DATA_KEY)
        progress = sender.batches.progress(batch.batch_id)
        for worker in fleet.workers:
            worker.stop()
        # Any later sweep, however late, ends nothing more: finished jobs are not pending.
        runner = build_runner(fleet.settings)
        later = time.time() + 3600
        swept = None
        deadline = time.monotonic() + 10
        while swept is None and time.monotonic() < deadline:  # the worker's lock lapses
            swept = sweep(runner.state, runner.end_lost, grace=0, lock_seconds=1, now=later)
            time.sleep(0.1)
        # Read again after that sweep: the lists fill in place as results come.
        results = fleet.wait_for([single, ran, lost], timeout=1)

    assert [len(results[job_id]) for job_id in (single, ran, lost)] == [1, 1, 1]
    assert results[single][0]["outcome"] == "success"
    assert results[ran][0]["outcome"] == "success"
    ended = results[lost][0]
    assert ended["outcome"] == "expired"
    assert ended["message"] == LOST_MESSAGE
    assert ended["batch_id"] == batch.batch_id
    assert ended["target"] == dict(jobs[1].target.as_fields())
    assert ended["attempts"] == []
    assert sandbox.requests_for(jobs[1].target.as_fields()) == []
    assert pending_after == 0
    assert swept == 0
    # The batch ends too: the janitor's result is counted like any other.
    assert progress.finished
    assert (progress.counts["success"], progress.counts["expired"]) == (1, 1)
    assert grace_seconds(fleet.settings) == 1 + 5 + 0  # connect + read + STREAMCTL_JANITOR_GRACE


def test_a_lost_message_that_can_still_run_is_sent_again_and_ends_once(
    tmp_path: Path, sandbox: Any
) -> None:
    """Before: ended ``expired`` by the janitor after its expiry, with nothing sent."""
    with cluster(tmp_path, tuning=QUICK_JANITOR) as fleet:
        jobs = [CloseJob.parse(unique_target("rescue")) for _ in range(3)]
        sender = BatchSender(fleet.settings, fleet.app)
        batch = sender.start(jobs, expires=60)
        lost = batch.job_ids[1]
        _drop_message(fleet, lost)
        started = time.monotonic()
        fleet.start_worker("rescue", concurrency=2)
        results = fleet.wait_for(batch.job_ids, timeout=30)
        took = time.monotonic() - started
        time.sleep(2)  # more sweeps: none may send it a third time
        results = fleet.wait_for(batch.job_ids, timeout=1)
        log = fleet.workers[0].log()
        pending_after = fleet.redis.zcard(PENDING_KEY)
        successes = sender.batches.progress(batch.batch_id).counts["success"]

    assert [len(results[job_id]) for job_id in batch.job_ids] == [1, 1, 1]
    assert [results[job_id][0]["outcome"] for job_id in batch.job_ids] == ["success"] * 3
    assert results[lost][0]["batch_id"] == batch.batch_id
    assert len(sandbox.requests_for(jobs[1].target.as_fields())) == 1
    assert "sent again 1 job(s) whose message the broker lost" in log
    assert took < 30 and pending_after == 0
    assert successes == 3


def test_a_rescue_needs_two_idle_sweeps_in_a_row_and_time_left() -> None:
    """The decision alone, on a Redis of its own: a busy broker forgets the first sighting, a
    job due too soon is left to end ``expired``, a job seen twice is sent once."""
    server = EmbeddedRedis().start()
    try:
        client = redis.Redis.from_url(server.url)
        state = JobState(client, channel="c", log_stream="c:log", log_maxlen=10, ttl_seconds=60)
        now = 1_000_000.0
        state.record_pending(
            [("in-time", {"expires_at": now + 60}), ("too-late", {"expires_at": now + 2})]
        )
        sent: list[str] = []

        def resend(job_id: str, _kwargs: Any) -> None:
            sent.append(job_id)

        def sweep_once(idle: bool | None) -> int:
            return rescue(state, idle, resend, min_left=5, memory_seconds=30, now=now)

        assert sweep_once(True) == 0  # first sighting
        assert sweep_once(False) == 0  # a message appeared: the sighting is forgotten
        assert sweep_once(True) == 0
        assert sweep_once(None) == 0  # not a Redis broker: nothing is ever rescued
        assert sweep_once(True) == 0
        assert sweep_once(True) == 1
        assert sent == ["in-time"]
        assert sweep_once(True) == 0  # sent: a first sighting again, not a second send
        client.close()
    finally:
        server.cleanup()
