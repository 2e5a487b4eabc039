"""Batch messages: a batch's jobs travel several to a task message.

Celery's own work per message (the consumer's delivery, task events, tracing, the
acknowledgement) cost a worker about 2 ms of CPU on the 2-core benchmark machine, as much as
the job itself. Batches therefore publish ``CLOSE_MANY_TASK`` messages whose keyword argument
``jobs`` maps each job id to exactly the keyword arguments a single ``CLOSE_TASK`` message
carries. Each job still has its own id, pending record, attempts and one final result; a
worker runs a message's jobs one after another in one thread (``JobRunner.run_chunk``), so
the number of calls in flight is still the number of worker threads.

A job that must wait for a Celery retry goes back as a single ``CLOSE_TASK`` message with a
countdown, its retry count carried along; jobs a message had no time left for go back as a
new batch message. Single closes (``streamctl close``, Flower, ``celery call``) stay one job
per message.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from celery import Celery

from worker.app import CLOSE_MANY_TASK, CLOSE_TASK
from worker.errors import StreamctlError

#: The keyword argument of a batch message: {job id: that job's close kwargs}.
JOBS_FIELD = "jobs"
#: A batch is split into at least this many messages when it has that many jobs, so that
#: every thread of a cluster gets work at once: 256 covers 8 workers of 32 threads.
MIN_MESSAGES = 256
#: Longest job id accepted in a batch message (ours are about 30 characters).
MAX_JOB_ID = 200


class InvalidChunk(StreamctlError):
    """A batch message whose shape is wrong: no job in it can be identified."""


def chunk_size(total: int, largest: int) -> int:
    """Jobs per message for a batch of ``total``: at most ``largest``, and small enough that
    the batch makes ``MIN_MESSAGES`` messages when it can."""
    return max(1, min(largest, total // MIN_MESSAGES))


def split(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def chunk_kwargs(jobs: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The keyword arguments of one batch message."""
    return {JOBS_FIELD: {job_id: dict(kwargs) for job_id, kwargs in jobs}}


def chunk_repr(jobs: Iterable[tuple[str, Mapping[str, Any]]]) -> str:
    """What Flower shows of a batch message: its job ids (the kwargs hold no secret either)."""
    return repr({JOBS_FIELD: [job_id for job_id, _kwargs in jobs]})


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


def send_retry(
    app: Celery, job_id: str, kwargs: Mapping[str, Any], *, countdown: float, retries: int
) -> None:
    """Hand one job of a batch message back to the broker as a single close, to run later."""
    app.send_task(
        CLOSE_TASK,
        kwargs=dict(kwargs),
        task_id=job_id,
        countdown=countdown,
        retries=retries,
        ignore_result=True,
    )


def send_chunk(app: Celery, jobs: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Publish jobs as one new batch message (a message's leftovers)."""
    app.send_task(
        CLOSE_MANY_TASK,
        kwargs=chunk_kwargs(jobs),
        task_id=f"chunk-{uuid.uuid4().hex}",
        kwargsrepr=chunk_repr(jobs),
        ignore_result=True,
    )
