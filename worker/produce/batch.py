"""Mass reconnects as a Python API: read a target file, validate it all, enqueue one batch.

Every line is validated before anything is enqueued (``worker.produce.targetfile``); bad lines
are reported by line number and stop the batch unless the caller skips them. A target named
twice is closed once. The jobs of a batch are published through one
kombu producer inside ``Producer.batch()``, several jobs to a message
(``worker.broker.messages``): on Redis that is one pipelined round trip per thousand
messages, on RabbitMQ plain publishes on one channel, which never wait for a reply.

    from worker.produce.batch import reconnect, wait_for_batch
    started = reconnect("targets.csv", rate=50)
    summary = wait_for_batch(started)
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import redis
from celery import Celery

from config.lanes import BULK, LANE_FIELD, Lane, check_lane, queue_for
from config.settings import Settings, get_settings
from worker.broker.app import CLOSE_MANY_TASK
from worker.broker.app import app as default_app
from worker.broker.messages import chunk_kwargs, chunk_repr, chunk_sizes, split
from worker.errors import EnqueueError, IdempotencyConflict, InvalidLines, StreamctlError
from worker.model.results import Outcome
from worker.model.targets import CloseJob
from worker.produce.producer import (
    PUBLISH_RETRY_POLICY,
    cause,
    check_expires,
    close_kwargs,
)
from worker.produce.targetfile import TargetList, read_targets
from worker.store.batches import BatchState, check_batch_id
from worker.store.decode import text
from worker.store.jobs import JobState
from worker.store.redis import job_state, redis_client
from worker.store.results_log import follow

#: Batch messages per pipelined round trip to a Redis broker.
PUBLISH_CHUNK = 1000
#: Messages in the first round trip: enough for the workers to start on.
FIRST_PUBLISH = 50
#: Batches send no "task-sent" events (see BatchSender._publish).
SENT_EVENTS = False


@dataclass(frozen=True, slots=True)
class StartedBatch:
    batch_id: str
    job_ids: list[str]
    #: Results-log position taken before the first job was enqueued: following from here
    #: misses none of the batch's results.
    since: str
    expires: float
    enqueue_seconds: float
    targets: TargetList | None = None
    dry_run: bool = False

    @property
    def total(self) -> int:
        return len(self.job_ids)


# --- enqueueing --------------------------------------------------------------------------


def new_batch_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


class BatchSender:
    """Starts batches: validation done, it writes the batch's state and publishes its jobs."""

    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        self.settings = settings or get_settings()
        self.app = app or default_app
        self.redis: redis.Redis = redis_client(self.settings)
        self.jobs: JobState = job_state(self.settings, self.redis)
        self.batches = BatchState(self.redis, ttl_seconds=self.settings.result_ttl)

    def start(
        self,
        jobs: Sequence[CloseJob],
        *,
        rate: float | None = None,
        expires: float | None = None,
        batch_id: str | None = None,
        dry_run: bool = False,
        lane: Lane = BULK,
    ) -> StartedBatch:
        """Publish a batch; ``lane`` is bulk by default (urgent: ahead of other batches)."""
        batch_id = check_batch_id(batch_id or new_batch_id())
        try:
            lane = check_lane(lane)
        except ValueError as exc:
            raise StreamctlError(str(exc)) from None
        if rate is not None and not rate > 0:
            raise StreamctlError("rate must be positive")
        if not jobs:
            raise StreamctlError("no targets to close")
        check_expires(expires)
        started = time.monotonic()
        now = time.time()
        expires_at = now + (expires or self.settings.job_expiry)
        # The jobs were validated when they were parsed (CloseJob.parse).
        messages = [
            (
                f"{batch_id}-{index:05d}",
                job,
                {
                    **close_kwargs(job, enqueued_at=now, expires_at=expires_at, batch_id=batch_id),
                    LANE_FIELD: lane,
                },
            )
            for index, job in enumerate(jobs)
        ]
        job_ids = [job_id for job_id, _job, _kwargs in messages]
        expiry = expires or self.settings.job_expiry
        if dry_run:
            return StartedBatch(batch_id, job_ids, "0-0", expiry, 0.0, dry_run=True)
        since = log_position(self.redis, self.settings.results_log)
        # What a batch keeps of each job, for --retry-failed: its request fields.
        records = {job_id: job.as_fields() for job_id, job, _ in messages}
        try:
            # A batch's job ids are derived (a scheduled batch's predictably): one that a close
            # holds as its idempotency key names that close's job, so the batch is refused.
            if held := self.jobs.claimed_job_ids(job_ids):
                raise IdempotencyConflict(
                    f"batch {batch_id}: job id {held[0]} is held by another job ({len(held)} "
                    f"of the batch's {len(job_ids)} job ids are); nothing was enqueued: give "
                    "the batch another id"
                )
            self.batches.create(batch_id, len(records), rate=rate)
        except redis.RedisError as exc:
            raise EnqueueError(f"Redis at REDIS_URL is unreachable: {cause(exc)}") from None
        try:
            # The targets are kept once the first messages are out: they are read only after
            # the batch has ended (--retry-failed).
            self._publish(
                messages, lane, then=lambda: self.batches.record_jobs(batch_id, records)
            )
        except Exception as exc:
            # Part of the batch may be queued: cancel it so none of it is sent, and say so.
            self.batches.cancel(batch_id)
            raise EnqueueError(
                f"could not enqueue batch {batch_id} ({type(exc).__name__}); it was cancelled, "
                "any of its jobs already queued end as cancelled, the rest as expired"
            ) from None
        return StartedBatch(batch_id, job_ids, since, expiry, time.monotonic() - started)

    def _publish(
        self,
        messages: Sequence[tuple[str, CloseJob, dict[str, Any]]],
        lane: Lane,
        *,
        then: Callable[[], None],
    ) -> None:
        """Publish the batch's messages; call ``then`` after the first round trip."""
        jobs = [(job_id, kwargs) for job_id, _job, kwargs in messages]
        chunks = split(jobs, chunk_sizes(len(jobs), self.settings.batch_chunk))
        # The first round trip is short, so that workers start while the rest is published.
        groups = split(
            chunks, [FIRST_PUBLISH, *[PUBLISH_CHUNK] * (len(chunks) // PUBLISH_CHUNK + 1)]
        )
        published = 0
        try:
            with self.app.producer_or_acquire() as producer:
                for group in groups:
                    group_jobs = [job for chunk in group for job in chunk]
                    # Before publishing: a job whose message the broker loses still ends
                    # (worker.consume.janitor); group by group, so the first messages go out at
                    # once.
                    self.jobs.record_pending(group_jobs)
                    self._publish_group(producer, group, queue_for(lane))
                    if not published:
                        then()
                    published += len(group_jobs)
        except Exception:
            # The unpublished jobs are recorded too, so that the janitor ends them (expired).
            with contextlib.suppress(redis.RedisError):
                self.jobs.record_pending(jobs[published:])
            raise

    def _publish_group(
        self, producer: Any, group: Sequence[Sequence[Any]], queue_name: str
    ) -> None:
        """Publish a group of batch messages in one pipelined round trip."""
        amqp = self.app.amqp
        queue = amqp.queues[queue_name]
        # Declared once per group (kombu remembers it), not per message as send_task would.
        producer.maybe_declare(queue, retry=True, **PUBLISH_RETRY_POLICY)
        with producer.batch(max_size=PUBLISH_CHUNK * 2):
            for chunk in group:
                message = amqp.create_task_message(
                    f"{chunk[0][0]}+{len(chunk)}",  # the first job's id and the job count
                    CLOSE_MANY_TASK,
                    (),
                    chunk_kwargs(chunk),
                    argsrepr="()",
                    kwargsrepr=chunk_repr(chunk),
                    # Results go to our own channel; Celery's backend need not keep them.
                    ignore_result=True,
                    # A "task-sent" event per message would double the publishing work;
                    # Flower still sees each message received, started and finished.
                    create_sent_event=SENT_EVENTS,
                )
                amqp.send_task_message(
                    producer,
                    CLOSE_MANY_TASK,
                    message,
                    queue=queue,
                    declare=[],
                    retry=True,
                    retry_policy=PUBLISH_RETRY_POLICY,
                )

    def failed_jobs(self, batch_id: str) -> list[CloseJob]:
        """The jobs of an ended batch that did not succeed, to send again as a new batch."""
        records = self.batches.jobs(batch_id)
        results = self.jobs.final_results(list(records))
        pending = [job_id for job_id, result in results.items() if result is None]
        if pending:
            raise StreamctlError(
                f"batch {batch_id} is still running ({len(pending)} job(s) without a result); "
                "wait for it to end, or cancel it first"
            )
        return [
            CloseJob.parse(records[job_id])
            for job_id, result in results.items()
            if result is not None and result.get("outcome") != Outcome.SUCCESS
        ]


def log_position(client: redis.Redis, log_stream: str) -> str:
    """The results log's last entry id: following from it misses nothing published later."""
    if not client.exists(log_stream):
        return "0-0"
    info: Any = client.xinfo_stream(log_stream)
    last = info["last-generated-id"]
    return text(last)


def follow_batch(
    client: redis.Redis,
    log_stream: str,
    batch: StartedBatch,
    *,
    timeout: float,
    notify: Callable[[str], None] | None = None,
    on_idle: Callable[[], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the batch's job results, then its summary (the last item), from the results log.

    Stops early, without a summary, when ``timeout`` seconds pass. ``notify`` and ``on_idle``:
    as for ``follow``.
    """
    for _entry, message in follow(
        client, log_stream, since=batch.since, stop_after=timeout, notify=notify, on_idle=on_idle
    ):
        if message.get("batch_id") != batch.batch_id:
            continue
        yield message
        if message.get("type") == "batch":
            return


def reconnect(
    source: str | Path | TextIO,
    *,
    rate: float | None = None,
    expires: float | None = None,
    skip_invalid: bool = False,
    dry_run: bool = False,
    fmt: str = "auto",
    sender: BatchSender | None = None,
    lane: Lane = BULK,
) -> StartedBatch:
    """Validate a target file and enqueue it as one batch; raises InvalidLines on bad lines."""
    targets = read_targets(source, fmt=fmt)
    if targets.errors and not skip_invalid:
        raise InvalidLines(targets.errors)
    started = (sender or BatchSender()).start(
        targets.jobs, rate=rate, expires=expires, dry_run=dry_run, lane=lane
    )
    return StartedBatch(
        started.batch_id,
        started.job_ids,
        started.since,
        started.expires,
        started.enqueue_seconds,
        targets=targets,
        dry_run=dry_run,
    )


def wait_for_batch(
    started: StartedBatch,
    *,
    timeout: float | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    sender: BatchSender | None = None,
    notify: Callable[[str], None] | None = None,
    on_idle: Callable[[], None] | None = None,
) -> dict[str, Any] | None:
    """Follow a batch to its summary (returned); None when ``timeout`` passes first."""
    sender = sender or BatchSender()
    limit = timeout if timeout is not None else started.expires + 60
    for message in follow_batch(
        sender.redis,
        sender.settings.results_log,
        started,
        timeout=limit,
        notify=notify,
        on_idle=on_idle,
    ):
        if message.get("type") == "batch":
            return message
        if on_result is not None:
            on_result(message)
    return None
