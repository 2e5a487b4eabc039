"""One final result per job however its deliveries race: the publish script's ``SET NX``.

Deliveries of one job that both found no result before either published (a redelivery while
the first is still sending, a late delivery after the janitor ended the job) must still leave
one result in Redis, one message on the results channel and one entry in the results log.
A private cluster (tests.faults.harness) so that the channel, the log and the janitor's lock
are the test's own; no worker process runs: the deliveries run here, in threads.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from tests.faults.harness import Cluster, cluster, unique_target
from worker.consume.janitor import LOST_MESSAGE, sweep
from worker.consume.runner import AlreadyFinal, Delivery, JobRunner, RetryLater
from worker.consume.wiring import build_runner
from worker.model.results import JobResult


@contextmanager
def published(fleet: Cluster, job_id: str) -> Iterator[list[dict[str, Any]]]:
    """The results ``job_id`` publishes on the channel while the block runs (read after it)."""
    channel: redis.client.PubSub = fleet.redis.pubsub()
    channel.subscribe(fleet.settings.results_channel)
    assert channel.get_message(timeout=5) is not None  # subscribed before anything publishes
    messages: list[dict[str, Any]] = []
    try:
        yield messages
        while (message := channel.get_message(timeout=0.5)) is not None:
            result = json.loads(message["data"])
            if result.get("job_id") == job_id:
                messages.append(result)
    finally:
        channel.close()


def logged(fleet: Cluster, job_id: str) -> list[dict[str, Any]]:
    """The entries of ``job_id`` in the results log stream."""
    entries = fleet.redis.xrange(fleet.settings.results_log)
    found = [json.loads(fields[b"result"]) for _entry_id, fields in entries]
    return [result for result in found if result.get("job_id") == job_id]


def deliver_in_thread(
    runner: JobRunner, job_id: str, kwargs: dict[str, Any], outcomes: list[object]
) -> threading.Thread:
    def run() -> None:
        outcomes.append(runner.run(Delivery(job_id=job_id, args=(), kwargs=kwargs)))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_two_live_deliveries_racing_publish_one_final_result(tmp_path: Path, sandbox: Any) -> None:
    target = unique_target("race")
    job_id = f"race-{uuid.uuid4().hex}"
    kwargs = {**target, "expires_at": time.time() + 30}
    # The API holds both requests 0.5 s: each delivery reads the job's state (no result yet)
    # well before the other publishes, so both reach the publish script.
    sandbox.inject(target, "slow", times=2, delay=0.5)
    with cluster(tmp_path) as fleet:
        runner = build_runner(fleet.settings)
        outcomes: list[object] = []
        with published(fleet, job_id) as messages:
            threads = [deliver_in_thread(runner, job_id, kwargs, outcomes) for _ in range(2)]
            for thread in threads:
                thread.join(timeout=15)
        stored = runner.state.final_result(job_id)
        log = logged(fleet, job_id)

    # Both deliveries ran to the end and sent (neither saw the other's result first).
    assert len(outcomes) == 2
    assert not any(isinstance(o, AlreadyFinal | RetryLater) for o in outcomes)
    assert [record["reply"] for record in sandbox.requests_for(target)] == ["slow", "slow"]
    assert len(messages) == 1 and len(log) == 1
    assert stored == messages[0] == log[0]
    assert stored["outcome"] == "success"


def test_a_late_delivery_loses_to_the_janitors_result(tmp_path: Path, sandbox: Any) -> None:
    """The janitor ends a pending job ``expired`` while a delivery's request is still out;
    that delivery's success comes back afterwards and is not published."""
    target = unique_target("late")
    job_id = f"late-{uuid.uuid4().hex}"
    kwargs = {**target, "expires_at": time.time() + 30}
    sandbox.inject(target, "slow", times=1, delay=1.0)
    with cluster(tmp_path) as fleet:
        runner = build_runner(fleet.settings)
        runner.state.record_pending([(job_id, kwargs)])
        outcomes: list[object] = []
        with published(fleet, job_id) as messages:
            delivery = deliver_in_thread(runner, job_id, kwargs, outcomes)
            time.sleep(0.4)  # its request is out: the API holds it 1 s
            # A sweep whose clock says the job is long past its expiry.
            ended = sweep(
                runner.state, runner.end_lost, grace=0, lock_seconds=1, now=time.time() + 3600
            )
            assert ended == 1 and delivery.is_alive()
            delivery.join(timeout=15)
        stored = runner.state.final_result(job_id)
        log = logged(fleet, job_id)

    (late,) = outcomes
    assert isinstance(late, JobResult) and late.outcome == "success"  # it tried to publish
    assert len(messages) == 1 and len(log) == 1
    assert stored == messages[0] == log[0]
    assert (stored["outcome"], stored["message"]) == ("expired", LOST_MESSAGE)
