"""Batch messages: a batch's jobs travel several to a task message.

Celery's own work per message (the consumer's delivery, task events, tracing, the
acknowledgement) cost a worker about 2 ms of CPU on the 2-core benchmark machine, as much as
the job itself. Batches therefore publish ``CLOSE_MANY_TASK`` messages whose keyword argument
``jobs`` maps each job id to exactly the keyword arguments a single ``CLOSE_TASK`` message
carries. Each job still has its own id, pending record, attempts and one final result; a
worker runs a message's jobs one after another in one thread (``JobRunner.run_chunk``), so
the number of calls in flight is still the number of worker threads.

A job that must wait for a Celery retry goes back as a single ``CLOSE_TASK`` message with a
countdown, its counts (``retries``, ``handbacks``: ``worker.api.retry.Counts``) in its kwargs
as in any handed-back message; jobs a message had no time left for go back as a
new batch message. Single closes (``streamctl close``, Flower, ``celery call``) stay one job
per message.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from celery import Celery

from config.brokers import delayed_delivery_seconds
from config.lanes import BULK, LANE_FIELD, LANES, Lane, queue_for
from worker.broker.app import CLOSE_MANY_TASK, CLOSE_TASK
from worker.errors import InvalidChunk

#: The keyword argument of a batch message: {job id: that job's close kwargs}.
JOBS_FIELD = "jobs"
#: The threads a batch's message sizes are shaped for (``chunk_sizes``): 256 covers 8 workers
#: of 32 threads, or 2 of 100 with room to spare; a bigger cluster is still kept busy, with a
#: ramp and a tail shorter than its thread count.
SPREAD = 256
#: Longest job id accepted in a batch message (ours are about 30 characters).
MAX_JOB_ID = 200


def chunk_sizes(total: int, largest: int) -> list[int]:
    """How many jobs each message of a ``total``-job batch carries, in publishing order.

    A thread runs a message's jobs one after another, so message sizes decide how evenly the
    threads stay busy. Three rules, each bounding the size, shape the sequence:

    * at most ``largest``, to share Celery's cost per message (STREAMCTL_BATCH_CHUNK);
    * a ramp: message i of the first ``SPREAD`` carries about ``largest * (1 + i / SPREAD) / 2``
      so that threads, which all start at once, finish their first messages at different
      times and never all ask the consumer for their next one together (measured: a dip to
      a third of the throughput at the first round's end with equal sizes); from half the
      size, not one job, as the consumer is busiest handing out the first messages;
    * a guided tail (as OpenMP's ``schedule(guided)``): at most ``remaining / SPREAD``, so the
      last messages are single jobs and no thread is left with a long one while others idle.

    A batch of fewer than ``SPREAD`` jobs goes one job per message.
    """
    sizes: list[int] = []
    remaining = total
    while remaining > 0:
        ramp = -(-largest * (SPREAD + len(sizes) + 1) // (2 * SPREAD))
        guided = -(-remaining // SPREAD)
        size = max(1, min(largest, ramp, guided))
        sizes.append(size)
        remaining -= size
    return sizes


def split(items: Sequence[Any], sizes: Iterable[int]) -> list[Sequence[Any]]:
    """``items`` cut into consecutive pieces of the given sizes."""
    pieces: list[Sequence[Any]] = []
    start = 0
    for size in sizes:
        pieces.append(items[start : start + size])
        start += size
    return pieces


def chunk_kwargs(jobs: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The keyword arguments of one batch message."""
    return {JOBS_FIELD: {job_id: dict(kwargs) for job_id, kwargs in jobs}}


def chunk_repr(jobs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """What Flower shows of a batch message: its job ids and lane (the kwargs hold no secret
    either)."""
    lane = lane_of(jobs[0][1]) if jobs else BULK
    return repr({JOBS_FIELD: [job_id for job_id, _kwargs in jobs], LANE_FIELD: lane})


def parse_chunk(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The (job id, kwargs) entries of a batch message; raises InvalidChunk naming the fault.

    An entry's kwargs are returned as they came: the job runner rejects a malformed one as
    that job's outcome, since its job id is known.
    """
    if args or set(kwargs) != {JOBS_FIELD}:
        raise InvalidChunk(f"a batch message carries one keyword argument, {JOBS_FIELD!r}")
    jobs = kwargs[JOBS_FIELD]
    if not isinstance(jobs, Mapping) or not jobs:
        raise InvalidChunk(f"{JOBS_FIELD!r} must be a non-empty object of job id -> fields")
    for job_id in jobs:
        if not isinstance(job_id, str) or not 0 < len(job_id) <= MAX_JOB_ID:
            raise InvalidChunk(f"job ids must be strings of 1 to {MAX_JOB_ID} characters")
    return list(jobs.items())


def send_retry(app: Celery, job_id: str, kwargs: Mapping[str, Any], *, countdown: float) -> None:
    """Hand one job of a batch message back to the broker as a single close, to run later.

    ``kwargs`` carry the job's counts, as the runner brought them up to date, and its lane:
    the message goes to that lane's queue (a batch job's retry stays bulk).
    """
    queue = queue_for(lane_of(kwargs))
    app.send_task(
        CLOSE_TASK,
        kwargs=dict(kwargs),
        task_id=job_id,
        countdown=delayed_delivery_seconds(countdown),  # RabbitMQ counts whole seconds
        ignore_result=True,
        queue=queue,
        routing_key=queue,
    )


def send_chunk(app: Celery, jobs: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Publish jobs as one new batch message (a message's leftovers), in their lane's queue."""
    queue = queue_for(lane_of(jobs[0][1]))
    app.send_task(
        CLOSE_MANY_TASK,
        kwargs=chunk_kwargs(jobs),
        task_id=f"chunk-{uuid.uuid4().hex}",
        kwargsrepr=chunk_repr(jobs),
        ignore_result=True,
        queue=queue,
        routing_key=queue,
    )


def lane_of(kwargs: Mapping[str, Any]) -> Lane:
    """A batch job's lane, as its kwargs name it (the runner writes it in): bulk otherwise."""
    lane = kwargs.get(LANE_FIELD)
    return lane if lane in LANES else BULK
