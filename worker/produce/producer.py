"""Enqueueing close-stream jobs by task name: producers need no task code.

A producer validates the target first (a bad job raises ``InvalidTarget`` and nothing is
enqueued) and may pass its own job id as an idempotency key: a job id that is pending or done
is not enqueued again, so the stream is not closed twice; given with another target or
origin_url it is refused (``IdempotencyConflict``), never answered with the other job.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import uuid
from typing import Any

from amqp.exceptions import MessageNacked
from celery import Celery

from config.lanes import LANE_FIELD, URGENT, Lane, check_lane, queue_for
from config.settings import Settings, get_settings
from worker.broker.app import CLOSE_TASK
from worker.broker.app import app as default_app
from worker.errors import EnqueueError, IdempotencyConflict, InvalidTarget
from worker.model.targets import CloseJob, check_origin_url
from worker.store.jobs import CLAIM_TTL, JobState
from worker.store.redis import job_state, redis_client

#: Publishing gives up after about a second: a producer must learn at once that the broker is
#: unreachable rather than hang, and nothing is half-enqueued.
PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0.2,
    "interval_step": 0.4,
    "interval_max": 0.5,
}


def job_kwargs(
    fields: dict[str, Any],
    *,
    origin_url: str | None = None,
    expires: float | None = None,
    batch_id: str | None = None,
    settings: Settings,
    now: float | None = None,
) -> tuple[CloseJob, dict[str, Any]]:
    """Validate a target and build the task's keyword arguments (no secret, no timestamp)."""
    job = CloseJob.parse({**fields, **({"origin_url": origin_url} if origin_url else {})})
    if origin_url is not None:
        check_origin_url(origin_url)
    check_expires(expires)
    enqueued_at = time.time() if now is None else now
    kwargs = close_kwargs(
        job,
        enqueued_at=enqueued_at,
        expires_at=enqueued_at + (expires or settings.job_expiry),
        batch_id=batch_id,
    )
    return job, kwargs


def check_expires(expires: object) -> None:
    """Refuse an expiry that is not a positive, finite number of seconds (None: the default).

    The worker would reject such a job, so it is refused before anything is enqueued.
    """
    if expires is not None and not (
        isinstance(expires, int | float)
        and not isinstance(expires, bool)
        and math.isfinite(expires)
        and expires > 0
    ):
        raise InvalidTarget("expires must be a positive number of seconds")


def close_kwargs(
    job: CloseJob, *, enqueued_at: float, expires_at: float, batch_id: str | None
) -> dict[str, Any]:
    """A validated job's task keyword arguments: its target fields and the producer's meta."""
    kwargs: dict[str, Any] = dict(job.as_fields())
    kwargs["enqueued_at"] = round(enqueued_at, 3)
    kwargs["expires_at"] = round(expires_at, 3)
    if batch_id is not None:
        kwargs["batch_id"] = batch_id
    return kwargs


def cause(exc: BaseException) -> str:
    """Why a connection failed, in the client's words ("Connection refused"); for any other
    error only its type (its text could quote anything)."""
    from kombu.exceptions import OperationalError
    from redis import RedisError

    if isinstance(exc, RedisError | OSError | OperationalError) and str(exc).strip():
        return f"{type(exc).__name__}: {str(exc).strip()}"
    return type(exc).__name__


class Producer:
    """Enqueues close-stream jobs. Thread-safe; keep one per process."""

    def __init__(self, settings: Settings | None = None, app: Celery | None = None) -> None:
        self.settings = settings or get_settings()
        self.app = app or default_app
        self.state: JobState = job_state(self.settings, redis_client(self.settings))
        self._claim_token = uuid.uuid4().hex

    def close(
        self,
        *,
        app: str | None = None,
        inst: str | None = None,
        stream: str | None = None,
        stream_id: int | None = None,
        origin_url: str | None = None,
        expires: float | None = None,
        job_id: str | None = None,
        batch_id: str | None = None,
        lane: Lane = URGENT,
    ) -> str:
        """Validate and enqueue one close; return its job id.

        ``lane``: ``urgent`` (the default: a single close is someone waiting) or ``bulk``.
        """
        try:
            lane = check_lane(lane)
        except ValueError as exc:
            raise InvalidTarget(str(exc)) from None
        fields = {"app": app, "inst": inst, "stream": stream, "stream_id": stream_id}
        job, kwargs = job_kwargs(
            {k: v for k, v in fields.items() if v is not None},
            origin_url=origin_url,
            expires=expires,
            batch_id=batch_id,
            settings=self.settings,
        )
        kwargs[LANE_FIELD] = lane
        job_id = job_id or str(uuid.uuid4())
        # This producer's claims, per thread: a caller that retries a failed enqueue from the
        # same thread finds its own claim (even one whose reply was lost) and goes on at once.
        token = f"{self._claim_token}:{threading.get_ident()}"
        # What makes a repeat the same job: the target and origin_url, not the expiry (a
        # caller retrying a close recomputes it; the first job's expiry stands).
        request = job.as_fields()
        try:
            claimed = self.state.claim_job_id(job_id, token, request)
        except IdempotencyConflict:
            raise
        except Exception as exc:
            raise EnqueueError(f"Redis at REDIS_URL is unreachable: {cause(exc)}") from None
        if claimed is False:
            return job_id  # pending or done already: do not close the stream twice
        if claimed is None:
            raise EnqueueError(
                f"job {job_id}: an earlier enqueue of this job id has not completed; "
                f"try again in {CLAIM_TTL} s"
            )
        try:
            # Recorded before the message exists, so that a message the broker loses still
            # ends with a final result (worker.consume.janitor); a failed enqueue removes it again.
            self.state.record_pending([(job_id, kwargs)])
            self.app.send_task(
                CLOSE_TASK,
                kwargs=kwargs,
                task_id=job_id,
                argsrepr="()",
                # What Flower shows: the target and the lane.
                kwargsrepr=repr({**job.target.as_fields(), LANE_FIELD: lane}),
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
                queue=queue_for(lane),
                routing_key=queue_for(lane),
            )
        except Exception as exc:
            # With Redis unreachable too, the claim cannot be released: it expires instead.
            with contextlib.suppress(Exception):
                self.state.release_job_id(job_id, token, request)
            raise EnqueueError(f"could not enqueue the job: {broker_failure(exc)}") from None
        # Published: a failure to record it only shortens how long the id stays deduplicated.
        with contextlib.suppress(Exception):
            self.state.confirm_job_id(job_id, request)
        return job_id


def broker_failure(exc: BaseException) -> str:
    """Why a publish failed, for an EnqueueError: refused by the broker, or not reached.

    On RabbitMQ every publish waits for the broker's confirm (config.brokers): a nack means
    the broker holds nothing of the message (a full queue, a memory or disk alarm).
    """
    # Kombu raises the nack as the cause of its OperationalError.
    if isinstance(exc, MessageNacked) or isinstance(exc.__cause__, MessageNacked):
        return "the broker refused it (MessageNacked: a full queue or a resource alarm)"
    return f"the broker is unreachable ({cause(exc)})"


def enqueue_close(**target: Any) -> str:
    """Validate and enqueue one close with the process-wide settings; return the job id."""
    return Producer().close(**target)
