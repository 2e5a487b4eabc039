"""A worker SIGKILLed mid-batch: its jobs come back after the visibility timeout, none is lost.

A message killed inside kombu's BRPOP window never comes back; the janitor ends it ``expired``
after the batch's expiry plus its grace, so this test waits that long only when that happened.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from config.lanes import BULK_QUEUE, LEGACY_QUEUE, URGENT, URGENT_QUEUE
from tests.faults.harness import cluster, lost_and_doubled, outcomes, report, unique_target
from worker.broker.messages import chunk_sizes, split
from worker.consume.janitor import LOST_MESSAGE, grace_seconds
from worker.model.targets import CloseJob
from worker.produce.batch import BatchSender

pytestmark = pytest.mark.faults

JOBS = 1000
CONCURRENCY = 8
#: The batch's expiry: room for the whole batch and the killed worker's redelivered jobs (about
#: 20 s), short so that the janitor ends a message lost in the broker window soon after.
EXPIRES = 40.0
#: Urgent closes sent just before the kill, each held 1 s by the sandbox so that the killed
#: worker's reserved threads are busy with some, and more wait in its urgent prefetch.
URGENT_CLOSES = 12
#: A sweep every second, 1 s of grace past connect + read timeouts.
QUICK_JANITOR = {"STREAMCTL_JANITOR_INTERVAL": "1", "STREAMCTL_JANITOR_GRACE": "1"}


def test_worker_killed_mid_batch_every_job_ends_once(tmp_path: Path, sandbox: Any) -> None:
    with cluster(tmp_path, tuning=QUICK_JANITOR) as fleet:
        doomed = fleet.start_worker("doomed", concurrency=CONCURRENCY)
        fleet.start_worker("survivor", concurrency=CONCURRENCY)
        replays_before = sandbox.stats()["replays"]
        jobs = [CloseJob.parse(unique_target("kill")) for _ in range(JOBS)]
        batch = BatchSender(fleet.settings, fleet.app).start(jobs, expires=EXPIRES)
        targets = dict(zip(batch.job_ids, jobs, strict=True))

        done_at_kill = fleet.wait_until_done(JOBS // 4, timeout=120)
        assert done_at_kill < JOBS, "the batch ended before the kill: nothing was tested"
        urgent_targets = [unique_target("kill-urgent") for _ in range(URGENT_CLOSES)]
        for target in urgent_targets:
            sandbox.inject(target, "slow", delay=1.0)
        urgent_ids = [fleet.producer.close(**t, expires=EXPIRES) for t in urgent_targets]
        targets.update(zip(urgent_ids, map(CloseJob.parse, urgent_targets), strict=True))
        time.sleep(0.3)  # received and started by both workers' reserved threads
        doomed_name = f":{doomed.process.pid}" if doomed.process else "?"
        doomed.kill()
        killed_at = time.time()
        fleet.start_worker("replacement", concurrency=CONCURRENCY)
        # The killed worker's jobs come back once the 10 s visibility timeout has passed; a
        # message lost with it ends by the janitor after the expiry and its grace.
        results = fleet.wait_for(
            [*batch.job_ids, *urgent_ids], timeout=EXPIRES + grace_seconds(fleet.settings) + 30
        )
        recovered_in = time.time() - killed_at
        logs = "".join(worker.log() for worker in fleet.workers)
        left_on_broker = sum(
            fleet.redis.llen(queue) for queue in (URGENT_QUEUE, BULK_QUEUE, LEGACY_QUEUE)
        ) + fleet.redis.hlen("unacked")

    lost, doubled = lost_and_doubled(results)
    urgent_results = {job_id: results[job_id] for job_id in urgent_ids}
    urgent_lost, urgent_doubled = lost_and_doubled(urgent_results)
    # Kombu's Redis transport moves a message off the queue (BRPOP) and only then into its
    # unacknowledged set: one killed in between, or still in the socket, is gone. At most one
    # message per consumer can be in that window; the janitor ends it.
    by_janitor = [
        job_id for job_id, found in results.items() if found and found[0]["message"] == LOST_MESSAGE
    ]
    # A batch travels several jobs to a message (worker.broker.messages):
    # the messages, as published; an urgent close is a message of its own.
    messages = [
        *split(batch.job_ids, chunk_sizes(JOBS, fleet.settings.batch_chunk)),
        *([job_id] for job_id in urgent_ids),
    ]
    lost_messages = [list(jobs) for jobs in messages if set(jobs) & set(by_janitor)]
    never_received = [
        jobs
        for jobs in lost_messages
        if f"[{jobs[0]}+{len(jobs)}] received" not in logs and f"[{jobs[0]}] received" not in logs
    ]
    requests = {
        job_id: sandbox.requests_for(targets[job_id].target.as_fields()) for job_id in results
    }
    sent_twice = [job_id for job_id, seen in requests.items() if len(seen) > 1]
    by_doomed = sum(
        1 for found in results.values() if found and found[0]["worker"].endswith(doomed_name)
    )
    figures = report(
        "worker-kill",
        jobs=JOBS,
        urgent_closes=URGENT_CLOSES,
        urgent_lost=urgent_lost,
        urgent_duplicate_results=urgent_doubled,
        urgent_outcomes=dict(outcomes(urgent_results)),
        workers=2,
        concurrency=CONCURRENCY,
        done_at_kill=done_at_kill,
        finished_by_killed_worker=by_doomed,
        lost=lost,
        lost_in_broker_window=len(by_janitor),
        messages_lost_in_broker_window=len(lost_messages),
        left_on_broker=left_on_broker,
        duplicate_results=doubled,
        duplicates_sent=len(sent_twice),
        replays=sandbox.stats()["replays"] - replays_before,
        outcomes=dict(outcomes(results)),
        recovered_in_s=round(recovered_in, 1),
    )
    # Every job ends with exactly one final result, the killed worker's too; the jobs of a
    # message lost in the broker window (one at most: the killed worker's one consumer) end
    # expired by the janitor, all of them, and no worker ever received that message.
    assert figures["lost"] == 0
    assert figures["duplicate_results"] == 0
    # The urgent closes in flight at the kill: none lost, each ended once, in its lane.
    assert (urgent_lost, urgent_doubled) == (0, 0)
    assert {found[0]["lane"] for found in urgent_results.values()} == {URGENT}
    # A worker has two consumers (the bulk lane's, the urgent lanes'): one message each at most.
    assert len(lost_messages) <= 2, lost_messages
    assert never_received == lost_messages
    assert sorted(job for jobs in lost_messages for job in jobs) == sorted(by_janitor)
    assert figures["outcomes"].get("success") == JOBS + URGENT_CLOSES - len(by_janitor)
    assert figures["replays"] == 0
    # Only jobs the killed worker held (one per thread, its reserved urgent threads too) may
    # have been sent twice, and each of them had its first request signed before the kill: its
    # timestamp, claimed right before sending. (Not when the sandbox read it: on a loaded
    # machine a request the killed worker wrote is read from the socket after its death.)
    assert len(sent_twice) <= CONCURRENCY + fleet.settings.urgent_threads
    for job_id in sent_twice:
        assert requests[job_id][0]["timestamp"] <= killed_at
        assert len(requests[job_id]) == 2
