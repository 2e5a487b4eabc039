"""Running one close-stream job, start to final result. Plain functions; the task calls them.

Every path through ``JobRunner.run`` ends in exactly one of: a published final result, a
request to be retried later by Celery (``RetryLater``, carrying the next message's kwargs with
the job's counts, see ``worker.api.retry``), or ``AlreadyFinal`` for a redelivered job that had
already ended (it is neither sent nor published again). ``_run`` is the decision table.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from config.lanes import BULK, LANE_FIELD, URGENT, Lane, check_lane
from worker.api.client import ScaleEngineClient
from worker.api.retry import Counts, GiveUp, RetryPolicy
from worker.errors import (
    ApiError,
    InvalidTarget,
    JobCancelled,
    JobExpired,
    PermanentError,
    Throttled,
    TransientError,
)
from worker.model.results import (
    CONFIG_REFUSALS,
    Attempt,
    JobResult,
    Outcome,
    isoformat,
    target_dict,
)
from worker.model.targets import JOB_FIELDS, CloseJob
from worker.store.jobs import JobState, PriorState
from worker.telemetry import metrics

log = logging.getLogger("streamctl.jobs")

#: Fields a producer adds beside the target, and the counts a hand-back adds; never sent.
META_FIELDS = ("expires_at", "enqueued_at", "batch_id", LANE_FIELD, *Counts.FIELDS)


@dataclass(frozen=True, slots=True)
class RetryLater:
    countdown: float
    reason: str
    #: The kwargs of the job's next message: its own, with its counts brought up to date.
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AlreadyFinal:
    result: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of a job as the broker handed it over."""

    job_id: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]


@dataclass(slots=True)
class ChunkRun:
    """What running a batch message's jobs left for the task to do."""

    #: Jobs that ended here or had ended before (each has its one final result).
    ended: int = 0
    #: Those jobs counted per outcome (the task reports the message failed unless all succeeded).
    outcomes: dict[str, int] = field(default_factory=dict)
    #: Jobs to go back to the broker, each as a single-job message with a countdown.
    retry_later: list[tuple[Delivery, RetryLater]] = field(default_factory=list)
    #: Jobs not started because the chunk ran out of time: they go back as a new chunk.
    leftover: list[Delivery] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class JobMeta:
    expires_at: float | None
    enqueued_at: float | None
    batch_id: str | None
    counts: Counts = field(default_factory=Counts)
    lane: Lane | None = None


@dataclass(slots=True)
class JobRunner:
    client: ScaleEngineClient
    state: JobState
    policy: RetryPolicy
    job_expiry: float
    default_origin_url: str | None
    #: Seconds after which a chunk starts no more jobs (see ``run_chunk``).
    chunk_budget: float = 60.0

    def run(self, delivery: Delivery) -> JobResult | RetryLater | AlreadyFinal:
        """Run a single close (urgent unless its ``lane`` field says otherwise)."""
        (prior,) = self.state.prior_states([delivery.job_id])
        return self._run_from(_with_lane(delivery, URGENT), prior)

    def run_chunk(self, deliveries: Sequence[Delivery]) -> ChunkRun:
        """Run a batch message's jobs one after another (see ``worker.broker.messages``).

        The jobs' earlier state is read in one round trip. No job starts once the chunk has
        run ``chunk_budget`` seconds: the rest are handed back (``ChunkRun.leftover``), so that
        the message is acknowledged well within the broker's visibility timeout.
        """
        started = time.monotonic()
        priors = self.state.prior_states([delivery.job_id for delivery in deliveries])
        # A batch's jobs are bulk unless the batch was sent in the urgent lane.
        deliveries = [_with_lane(delivery, BULK) for delivery in deliveries]
        run = ChunkRun()
        # Each job's result goes with the next job's first round trip (worker.store.carry);
        # the last one's when the message ends.
        with self.state.carry.holding():
            for index, (delivery, prior) in enumerate(zip(deliveries, priors, strict=True)):
                if index and time.monotonic() - started > self.chunk_budget:
                    run.leftover.extend(deliveries[index:])
                    break
                outcome = self._run_from(delivery, prior)
                if isinstance(outcome, RetryLater):
                    run.retry_later.append((delivery, outcome))
                    continue
                run.ended += 1
                name = final_outcome(outcome)
                run.outcomes[name] = run.outcomes.get(name, 0) + 1
        return run

    def reject(self, job_id: str, message: str) -> JobResult:
        """End a job whose message entry is unusable (not an object of fields) as ``rejected``."""
        delivery = Delivery(job_id=job_id, args=(), kwargs={})
        meta = JobMeta(None, None, None)
        return self._finish(delivery, None, meta, Outcome.REJECTED, message, attempts=[])

    def _run_from(
        self, delivery: Delivery, prior: PriorState
    ) -> JobResult | RetryLater | AlreadyFinal:
        if prior.result is not None:
            log.info(
                "job %s already ended (%s); not sent again",
                delivery.job_id,
                prior.result.get("outcome"),
            )
            return AlreadyFinal(prior.result)
        try:
            return self._run(delivery, list(prior.attempts))
        except Exception as exc:  # a bug must still end the job with one final result
            log.exception("job %s: internal error", delivery.job_id)
            return self._finish(
                delivery,
                None,
                _meta_or_empty(delivery.kwargs),
                Outcome.ERROR,
                message=f"internal error: {type(exc).__name__}",
                # The failed attempts of every delivery, this one's too: recorded by the hook.
                attempts=self.state.attempts(delivery.job_id),
            )

    def end_lost(self, job_id: str, kwargs: Mapping[str, Any], message: str) -> JobResult:
        """End, as ``expired``, a job whose message the broker lost (``worker.consume.janitor``).

        Built from the task arguments the producer recorded, as a delivery of it would be;
        ``publish_final``'s SET NX makes it lose to any result a delivery already published.
        """
        delivery = Delivery(job_id=job_id, args=(), kwargs=kwargs)
        try:
            job = CloseJob.parse({k: v for k, v in kwargs.items() if k not in META_FIELDS})
        except InvalidTarget:
            job = None
        meta = _meta_or_empty(kwargs)
        attempts = self.state.attempts(job_id)
        return self._finish(delivery, job, meta, Outcome.EXPIRED, message, attempts=attempts)

    def _run(self, delivery: Delivery, attempts: list[Attempt]) -> JobResult | RetryLater:
        try:
            if delivery.args:
                raise InvalidTarget("positional arguments are not accepted; send keyword arguments")
            meta = parse_meta(delivery.kwargs)
            job = CloseJob.parse({k: v for k, v in delivery.kwargs.items() if k not in META_FIELDS})
        except InvalidTarget as exc:
            meta = _meta_or_empty(delivery.kwargs)
            return self._finish(delivery, None, meta, Outcome.REJECTED, str(exc), attempts=attempts)

        now = time.time()
        expires_at = meta.expires_at
        if expires_at is None:
            base = meta.enqueued_at or self.state.first_seen(delivery.job_id, now)
            expires_at = base + self.job_expiry
        if now >= expires_at:
            message = "the job expired before it was sent"
            return self._finish(delivery, job, meta, Outcome.EXPIRED, message, attempts=attempts)

        # The decision table: how this delivery's sending ended, and what follows it.
        report = self.client.close_stream(
            job,
            origin_url=job.origin_url or self.default_origin_url,
            expires_at=expires_at,
            deadline=min(self.policy.deadline, expires_at - now),
            label=f"job={delivery.job_id} target={job.target}",
            job_id=delivery.job_id,
            batch_id=meta.batch_id,
            lane=meta.lane or URGENT,
        )
        attempts.extend(report.attempts)
        error = report.error
        if error is None:
            assert report.success is not None
            return self._finish(
                delivery,
                job,
                meta,
                Outcome.SUCCESS,
                report.success.message,
                handle_time=report.success.handle_time,
                attempts=attempts,
            )
        if isinstance(error, JobExpired):
            return self._finish(delivery, job, meta, Outcome.EXPIRED, str(error), attempts=attempts)
        if isinstance(error, JobCancelled):
            return self._finish(
                delivery, job, meta, Outcome.CANCELLED, str(error), attempts=attempts
            )
        if isinstance(error, PermanentError):
            return self._finish(
                delivery, job, meta, Outcome.FAILURE, error.message, error, attempts=attempts
            )
        assert isinstance(error, TransientError | Throttled), error
        step = self.policy.after_delivery(error, meta.counts, left=expires_at - time.time())
        if isinstance(step, GiveUp):
            api_error = error if isinstance(error, ApiError) else None
            return self._finish(
                delivery, job, meta, step.outcome, step.message, api_error, attempts=attempts
            )
        log.info(
            "job %s handed back to the broker for %.1f s (%s): retries %d, hand-backs %d",
            delivery.job_id,
            step.countdown,
            step.reason,
            step.counts.retries,
            step.counts.handbacks,
            extra={"event": "handback", "job_id": delivery.job_id, **step.counts.as_fields()},
        )
        kwargs = {**delivery.kwargs, **step.counts.as_fields()}
        return RetryLater(countdown=step.countdown, reason=step.reason, kwargs=kwargs)

    def _finish(
        self,
        delivery: Delivery,
        job: CloseJob | None,
        meta: JobMeta,
        outcome: Outcome,
        message: str,
        error: ApiError | None = None,
        handle_time: float | None = None,
        *,
        attempts: list[Attempt],
    ) -> JobResult:
        origin = job.origin_url or self.default_origin_url if job is not None else None
        result = JobResult(
            job_id=delivery.job_id,
            batch_id=meta.batch_id,
            lane=meta.lane,
            outcome=outcome,
            cdn=self.client.cdn,
            target=target_dict(job.target if job else None, dict(delivery.kwargs)),
            origin_url=origin,
            message=message,
            api_code=error.api_code if error is not None else None,
            handle_time=handle_time,
            attempts=attempts,
            enqueued_at=_iso(meta.enqueued_at),
        )
        self.state.end_job(result, functools.partial(_published, result, message))
        return result


def _published(result: JobResult, message: str, new: bool) -> None:
    """Log (and count) a job's final result once Redis answered its publish."""
    if not new:
        log.info(
            "job %s already had a final result; this one was not published",
            result.job_id,
            extra={"event": "duplicate_final", "job_id": result.job_id},
        )
        return
    outcome = result.outcome
    metrics.observe_outcome(str(outcome))
    log.log(
        outcome_level(outcome, result.api_code),
        "outcome [job=%s] %s: %s",
        result.job_id,
        outcome,
        message,
        extra={
            "event": "outcome",
            "job_id": result.job_id,
            "target": result.target,
            "outcome": str(outcome),
            "api_code": result.api_code,
            "attempts": len(result.attempts),
        },
    )


def final_outcome(ended: JobResult | AlreadyFinal) -> str:
    """The outcome of a job that ended now or before (a redelivery of a finished job)."""
    if isinstance(ended, AlreadyFinal):
        return str(ended.result.get("outcome"))
    return str(ended.outcome)


def outcome_level(outcome: Outcome, api_code: str | None) -> int:
    """The log level of a job's outcome line: a refusal naming the configuration is an ERROR
    (every close will fail alike until it is fixed), any other end but success a WARNING."""
    if outcome is Outcome.SUCCESS or outcome is Outcome.CANCELLED:
        return logging.INFO  # cancelled: what the operator asked for
    if api_code in CONFIG_REFUSALS:
        return logging.ERROR
    return logging.WARNING


def parse_meta(kwargs: Mapping[str, Any]) -> JobMeta:
    """The producer's metadata fields; raises InvalidTarget naming a malformed one."""

    def moment(name: str) -> float | None:
        value = kwargs.get(name)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidTarget(f"{name} must be a unix time in seconds (a number)")
        return float(value)

    batch_id = kwargs.get("batch_id")
    if batch_id is not None and (not isinstance(batch_id, str) or not 0 < len(batch_id) <= 64):
        raise InvalidTarget("batch_id must be a string of 1 to 64 characters")
    lane = kwargs.get(LANE_FIELD)
    try:
        checked_lane = None if lane is None else check_lane(lane)
    except ValueError as exc:
        raise InvalidTarget(str(exc)) from None
    return JobMeta(
        expires_at=moment("expires_at"),
        enqueued_at=moment("enqueued_at"),
        batch_id=batch_id,
        counts=Counts.from_fields(kwargs),
        lane=checked_lane,
    )


def _meta_or_empty(kwargs: Mapping[str, Any]) -> JobMeta:
    try:
        return parse_meta(kwargs)
    except InvalidTarget:
        lane = kwargs.get(LANE_FIELD)
        return JobMeta(None, None, None, lane=lane if lane in (URGENT, BULK) else None)


def _with_lane(delivery: Delivery, default: Lane) -> Delivery:
    """The delivery with its lane written in: the task's default lane when it names none.

    Written into the kwargs, so a hand-back's next message (and its result) keeps the lane.
    """
    if delivery.kwargs.get(LANE_FIELD) is not None:
        return delivery
    return Delivery(delivery.job_id, delivery.args, {**delivery.kwargs, LANE_FIELD: default})


def _iso(moment: float | None) -> str | None:
    return None if moment is None else isoformat(datetime.fromtimestamp(moment, UTC))


__all__ = [
    "JOB_FIELDS",
    "META_FIELDS",
    "AlreadyFinal",
    "ChunkRun",
    "Delivery",
    "JobRunner",
    "RetryLater",
    "final_outcome",
]
