"""Batch messages carrying several jobs (worker.broker.messages, task
scaleengine.stream.close_many).

Real workers, real Redis, the sandbox over HTTP. The session worker runs hand-built batch
messages; tests that need tuning of their own (a quick in-task deadline, a chunk budget of 0,
a chunk size) use a private cluster (tests.faults.harness).
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from config.lanes import BULK_QUEUE
from config.settings import Settings
from tests.conftest import WorkerProcess, wait_for_result
from tests.faults.harness import cluster, unique_target
from worker.broker.app import CLOSE_MANY_TASK
from worker.broker.messages import JOBS_FIELD, MAX_JOB_ID, SPREAD, chunk_kwargs, chunk_sizes
from worker.consume.wiring import chunk_budget
from worker.model.targets import CloseJob
from worker.produce.batch import BatchSender, log_position, wait_for_batch
from worker.produce.producer import job_kwargs

pytestmark = pytest.mark.e2e

#: A private cluster whose chunks have time for several jobs (budget 30 - 2 - 1.5 - 5 = 21.5 s)
#: and whose in-task retries give up after two quick attempts. Settings' invariants hold: the
#: longest countdown (2 s) and the visibility timeout are under the expiry.
HAND_BACK_TUNING = {
    "STREAMCTL_VISIBILITY_TIMEOUT": "30",
    "STREAMCTL_JOB_EXPIRY": "60",
    "STREAMCTL_RETRY_DEADLINE": "2",
    "STREAMCTL_MAX_ATTEMPTS": "2",
}
REJECTED_ENTRY = "a batch entry must be an object of the job's fields"


def new_jobs(settings: Settings, prefix: str, count: int) -> list[tuple[str, dict[str, Any]]]:
    """``count`` (job id, close kwargs) entries, each for a target of its own."""
    entries = []
    for _ in range(count):
        _job, kwargs = job_kwargs(unique_target(prefix), settings=settings)
        entries.append((f"{prefix}-{uuid.uuid4().hex[:12]}", kwargs))
    return entries


def send_chunk(
    app: Celery, entries: Sequence[tuple[str, Mapping[str, Any]]], *, task_id: str | None = None
) -> str:
    """Publish one batch message carrying ``entries``; returns its task id."""
    task_id = task_id or f"chunk-{uuid.uuid4().hex}"
    app.send_task(CLOSE_MANY_TASK, kwargs=chunk_kwargs(entries), task_id=task_id)
    return task_id


def target_of(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in ("app", "inst", "stream", "stream_id") if k in kwargs}


def logged_results(
    client: redis.Redis, log_stream: str, since: str, job_ids: Sequence[str]
) -> list[dict[str, Any]]:
    """The job results for ``job_ids`` in the results log after ``since``, in log order."""
    wanted = set(job_ids)
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(  # type: ignore[assignment]
        log_stream, min=f"({since}"
    )
    return [
        result
        for _id, fields in entries
        if (result := json.loads(fields[b"result"])).get("job_id") in wanted
    ]


def wait_for_log(worker: WorkerProcess, pattern: str, count: int = 1, timeout: float = 15) -> str:
    """The worker's log once ``pattern`` (a regex) occurs ``count`` times in it."""
    deadline = time.monotonic() + timeout
    while True:
        text = worker.log()
        if len(re.findall(pattern, text)) >= count or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def queued_messages(client: redis.Redis, queue: str) -> list[tuple[str, dict[str, Any]]]:
    """The (task name, kwargs) of each message on a Redis queue, oldest first."""
    found = []
    for raw in reversed(client.lrange(queue, 0, -1)):  # LPUSH in, BRPOP out
        message = json.loads(raw)
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        found.append((message["headers"]["task"], kwargs))
    return found


# --- the session worker --------------------------------------------------------------------


def test_every_job_of_a_message_ends_with_its_own_result(
    producer: Any, worker: WorkerProcess, sandbox: Any, redis_client: redis.Redis, settings: Any
) -> None:
    since = log_position(redis_client, settings.results_log)
    entries = new_jobs(settings, "chunk", 4)
    # A stream_id target and an origin_url too: each entry is a job's own kwargs.
    _job, by_id = job_kwargs(
        {"stream_id": 800_000 + uuid.uuid4().int % 100_000},
        origin_url="jb-origin.secdn.net",
        settings=settings,
    )
    entries.insert(2, (f"chunk-{uuid.uuid4().hex[:12]}", by_id))
    send_chunk(producer.app, entries)

    results = {job_id: wait_for_result(producer, job_id) for job_id, _kwargs in entries}
    for job_id, kwargs in entries:
        result = results[job_id]
        assert result["outcome"] == "success", result
        assert result["job_id"] == job_id
        assert result["target"] == target_of(kwargs)
        assert len(result["attempts"]) == 1 and result["attempts"][0]["http_status"] == 200
        assert len(sandbox.requests_for(target_of(kwargs))) == 1
    assert results[entries[2][0]]["origin_url"] == "jb-origin.secdn.net"
    logged = logged_results(redis_client, settings.results_log, since, [j for j, _ in entries])
    assert sorted(r["job_id"] for r in logged) == sorted(j for j, _ in entries)  # one each
    # One thread runs a message's jobs in order: the API saw them in the message's order.
    sent_at = [sandbox.requests_for(target_of(kwargs))[0]["received_at"] for _, kwargs in entries]
    assert sent_at == sorted(sent_at)


def test_bad_entries_end_rejected_and_malformed_messages_are_dropped(
    producer: Any, worker: WorkerProcess, sandbox: Any, redis_client: redis.Redis, settings: Any
) -> None:
    good = new_jobs(settings, "entry-ok", 2)
    bad_ids = [f"entry-bad-{uuid.uuid4().hex[:12]}" for _ in range(3)]
    mixed = [
        (bad_ids[0], 5),
        good[0],
        (bad_ids[1], ["app", "inst"]),
        (bad_ids[2], None),
        good[1],
    ]
    producer.app.send_task(CLOSE_MANY_TASK, kwargs={JOBS_FIELD: dict(mixed)})
    for job_id in bad_ids:
        result = wait_for_result(producer, job_id)
        assert result["outcome"] == "rejected"
        assert result["message"] == REJECTED_ENTRY
        assert result["attempts"] == []
    for job_id, kwargs in good:
        assert wait_for_result(producer, job_id)["outcome"] == "success"
        assert len(sandbox.requests_for(target_of(kwargs))) == 1

    # Messages no job of which can be identified: rejected whole, nothing sent.
    inside = new_jobs(settings, "malformed", 6)
    (a, ka), (b, kb), (c, kc), (d, kd), (e, ke), (f, kf) = inside
    malformed: list[tuple[tuple[Any, ...], dict[str, Any], str]] = [
        ((), {JOBS_FIELD: [[a, ka]]}, "must be a non-empty object"),  # pairs
        ((), {JOBS_FIELD: {b: kb}, "priority": 1}, "carries one keyword argument"),
        (({c: kc},), {JOBS_FIELD: {c: kc}}, "carries one keyword argument"),
        ((), {JOBS_FIELD: {d: kd}, **kd}, "carries one keyword argument"),
        ((), {JOBS_FIELD: json.dumps({e: ke})}, "must be a non-empty object"),
        ((), {JOBS_FIELD: {}}, "must be a non-empty object"),
        ((), {JOBS_FIELD: {"x" * (MAX_JOB_ID + 1): kf, f: kf}}, "job ids must be strings"),
        ((), {JOBS_FIELD: {"": kf, f: kf}}, "job ids must be strings"),
    ]
    task_ids = []
    for args, kwargs, _why in malformed:
        task_id = f"malformed-{uuid.uuid4().hex}"
        producer.app.send_task(CLOSE_MANY_TASK, args=args, kwargs=kwargs, task_id=task_id)
        task_ids.append(task_id)
    # The worker goes on serving: a message published after them runs.
    (after,) = new_jobs(settings, "after-malformed", 1)
    send_chunk(producer.app, [after])
    assert wait_for_result(producer, after[0])["outcome"] == "success"

    for task_id, (_args, _kwargs, why) in zip(task_ids, malformed, strict=True):
        pattern = (
            rf"close_many\[{task_id}\] reject requeue=False: "
            rf"malformed batch message: .*{re.escape(why)}"
        )
        log = wait_for_log(worker, pattern)
        assert len(re.findall(pattern, log)) == 1, task_id
        # Rejected without requeueing: it was not delivered again.
        assert len(re.findall(rf"close_many\[{task_id}\] received", log)) == 1, task_id
    assert worker.alive()
    for job_id, kwargs in inside:
        assert sandbox.requests_for(target_of(kwargs)) == []
        assert producer.state.final_result(job_id) is None


def test_a_redelivered_message_sends_no_job_twice(
    producer: Any, worker: WorkerProcess, sandbox: Any, redis_client: redis.Redis, settings: Any
) -> None:
    since = log_position(redis_client, settings.results_log)
    entries = new_jobs(settings, "again", 3)
    task_id = send_chunk(producer.app, entries)
    first = {job_id: wait_for_result(producer, job_id) for job_id, _ in entries}
    assert {r["outcome"] for r in first.values()} == {"success"}

    # The same message again (as the broker redelivers it), then one with a new job besides.
    send_chunk(producer.app, entries, task_id=task_id)
    (new,) = new_jobs(settings, "again-new", 1)
    send_chunk(producer.app, [*entries, new])
    assert wait_for_result(producer, new[0])["outcome"] == "success"
    log = wait_for_log(worker, rf"close_many\[{task_id}\] succeeded", count=2)
    assert len(re.findall(rf"close_many\[{task_id}\] succeeded", log)) == 2
    for job_id, _kwargs in entries:
        pattern = rf"job {job_id} already ended \(success\); not sent again"
        assert len(re.findall(pattern, wait_for_log(worker, pattern, count=2))) == 2

    for job_id, kwargs in [*entries, new]:
        assert len(sandbox.requests_for(target_of(kwargs))) == 1
    for job_id, _kwargs in entries:
        assert producer.state.final_result(job_id) == first[job_id]
    job_ids = [job_id for job_id, _ in [*entries, new]]
    logged = logged_results(redis_client, settings.results_log, since, job_ids)
    assert sorted(r["job_id"] for r in logged) == sorted(job_ids)  # one result each


# --- private clusters ----------------------------------------------------------------------


def test_a_job_handed_back_for_a_celery_retry_does_not_hold_back_the_others(
    tmp_path: Path, sandbox: Any
) -> None:
    with cluster(tmp_path, tuning=HAND_BACK_TUNING) as fleet:
        policy = fleet.settings
        assert policy.max_attempts == 2 and chunk_budget(policy) > 0
        entries = new_jobs(policy, "handback", 5)
        (flaky_id, flaky), (down_id, down) = entries[1], entries[3]
        # Every in-task attempt of the first delivery fails; the Celery retry succeeds.
        sandbox.inject(target_of(flaky), "http_error", times=policy.max_attempts, status=503)
        # Never succeeds: it ends once its Celery retries, counted from the chunk's, run out.
        sandbox.inject(target_of(down), "http_error", times=1000, status=502)
        fleet.start_worker("handback", concurrency=2)
        send_chunk(fleet.app, entries)
        results = fleet.wait_for([job_id for job_id, _ in entries], timeout=30)
        order = list(fleet.read_results())
        log = fleet.workers[0].log()

    assert {job_id: len(found) for job_id, found in results.items()} == {
        job_id: 1 for job_id, _ in entries
    }
    assert "'retried': 2, 'leftover': 0}" in log  # the chunk handed back two jobs
    ended = results[flaky_id][0]
    assert ended["outcome"] == "success", ended
    assert [a["http_status"] for a in ended["attempts"]] == [503, 503, 200]
    assert len(sandbox.requests_for(target_of(flaky))) == 3
    # Handed back as single closes with the jobs' own ids; the others ended before them.
    assert f"scaleengine.stream.close[{flaky_id}]" in log
    assert f"scaleengine.stream.close[{down_id}]" in log
    others = [job_id for job_id, _ in entries if job_id not in (flaky_id, down_id)]
    assert order.index(flaky_id) > max(order.index(job_id) for job_id in others)
    assert order.index(down_id) > max(order.index(job_id) for job_id in others)
    for job_id in others:
        assert results[job_id][0]["outcome"] == "success"
        assert len(sandbox.requests_for(target_of(dict(entries)[job_id]))) == 1
    # The chunk's delivery counts as the first: one chunk run plus CELERY_MAX_RETRIES more.
    failed = results[down_id][0]
    assert failed["outcome"] == "error" and "retries exhausted" in failed["message"]
    deliveries = policy.celery_max_retries + 1
    assert [a["http_status"] for a in failed["attempts"]] == [502] * (
        deliveries * policy.max_attempts
    )
    assert len(sandbox.requests_for(target_of(down))) == deliveries * policy.max_attempts


def test_jobs_left_over_by_a_spent_budget_still_end_once(tmp_path: Path, sandbox: Any) -> None:
    # A 14 s expiry leaves a chunk no time (7 s - 5 - 1.5 - 5 < 0): it runs its first job only.
    with cluster(tmp_path, tuning={"STREAMCTL_JOB_EXPIRY": "14"}) as fleet:
        assert chunk_budget(fleet.settings) == 0
        entries = new_jobs(fleet.settings, "leftover", 5)
        fleet.start_worker("leftover", concurrency=2)
        send_chunk(fleet.app, entries)
        results = fleet.wait_for([job_id for job_id, _ in entries], timeout=30)
        log = fleet.workers[0].log()

    assert {job_id: [r["outcome"] for r in found] for job_id, found in results.items()} == {
        job_id: ["success"] for job_id, _ in entries
    }
    for _job_id, kwargs in entries:
        assert len(sandbox.requests_for(target_of(kwargs))) == 1
    # Each message ran one job and handed the rest back as a new message.
    for left in range(4, -1, -1):
        assert f"'leftover': {left}}}" in log, left


def test_message_sizes_ramp_up_stay_bounded_and_end_in_single_jobs() -> None:
    for total in (1, SPREAD - 1, SPREAD, 2_000, 10_000, 100_000):
        for largest in (1, 3, 10, 50):
            sizes = chunk_sizes(total, largest)
            assert sum(sizes) == total and min(sizes) >= 1 and max(sizes) <= largest
            assert sizes[-1] == 1
            peak = sizes.index(max(sizes))
            assert sizes[:peak] == sorted(sizes[:peak])  # the ramp only grows
            assert sizes[peak:] == sorted(sizes[peak:], reverse=True)  # the tail only shrinks
    assert chunk_sizes(SPREAD - 1, 10) == [1] * (SPREAD - 1)  # a small batch: one job a message
    sizes = chunk_sizes(10_000, 10)
    assert sizes[0] == 6 and max(sizes) == 10  # from about half the size, up to the largest
    assert sizes[-SPREAD:] == [1] * SPREAD  # the last messages are single jobs


def test_batch_start_makes_messages_of_the_configured_size(tmp_path: Path, sandbox: Any) -> None:
    size, total = 2, 3 * SPREAD + 3  # the default size (10) would give up to 3 jobs a message
    tuning = {**HAND_BACK_TUNING, "STREAMCTL_BATCH_CHUNK": str(size)}
    with cluster(tmp_path, tuning=tuning) as fleet:
        sizes = chunk_sizes(total, fleet.settings.batch_chunk)
        assert max(sizes) == size
        jobs = [CloseJob.parse(unique_target("sized")) for _ in range(total)]
        sender = BatchSender(fleet.settings, fleet.app)
        started = sender.start(jobs)
        # Counted before any worker runs.
        queued = queued_messages(fleet.redis, BULK_QUEUE)  # a batch is bulk by default
        fleet.start_worker("sized", concurrency=8)
        summary = wait_for_batch(started, timeout=60, sender=sender)

    assert {task for task, _kwargs in queued} == {CLOSE_MANY_TASK}
    assert [len(kwargs[JOBS_FIELD]) for _task, kwargs in queued] == sizes
    carried = [job_id for _task, kwargs in queued for job_id in kwargs[JOBS_FIELD]]
    assert carried == started.job_ids
    assert summary is not None
    assert summary["total"] == total
    assert summary["counts"]["success"] == total
    assert sum(summary["counts"].values()) == total
    assert all(len(sandbox.requests_for(job.target.as_fields())) == 1 for job in jobs)
