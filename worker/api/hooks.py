"""Instrumentation around each HTTP attempt, as stamina's retry hooks: logs, metrics, records.

The client calls, for every attempt of a delivery, each hook's ``on_attempt_start`` right before
the request is sent (its timestamp claimed), ``on_attempt_end`` when it ended (the ``Attempt``
as the final result lists it, and the ApiError it ended with), and ``on_retry`` when the retry
policy schedules another attempt in the same delivery (the wait, and what caused it). The hooks
are given to the client once, when the worker is wired (``worker.consume.wiring``): attempt
bookkeeping never calls back into the job runner, which gets the delivery's attempts from what
``close_stream`` returns. A hook that raises ends the delivery as a bug would (an internal
error), so hooks do their own bookkeeping and nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from worker.errors import ApiError, TimestampRejected
from worker.model.results import Attempt
from worker.telemetry import metrics

log = logging.getLogger("streamctl.client")


@dataclass(frozen=True, slots=True)
class AttemptContext:
    """The job an attempt belongs to: no secret, no request body."""

    job_id: str | None
    batch_id: str | None
    label: str
    target: dict[str, str | int]


@dataclass(frozen=True, slots=True)
class AttemptStart:
    context: AttemptContext
    #: 1-based within this delivery.
    number: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    context: AttemptContext
    number: int
    attempt: Attempt
    #: None: a success (or a bug ended the attempt before its reply was classified).
    error: ApiError | None


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    """Another attempt of the same delivery follows after ``wait`` seconds."""

    context: AttemptContext
    #: The number of the attempt that failed.
    number: int
    wait: float
    caused_by: ApiError


class AttemptHook:
    """A hook around attempts: override the methods you need (they do nothing here)."""

    def on_attempt_start(self, start: AttemptStart) -> None:
        pass

    def on_attempt_end(self, end: AttemptEnd) -> None:
        pass

    def on_retry(self, retry: RetryScheduled) -> None:
        pass


class LogAttempts(AttemptHook):
    """A log line per failed attempt (INFO; a successful one at DEBUG: the job's outcome line
    follows it at once and its result holds every attempt); a warning when a refused
    timestamp (0002) is re-signed."""

    def on_attempt_end(self, end: AttemptEnd) -> None:
        attempt, context = end.attempt, end.context
        # Half the lines at the default level: a job whose first attempt succeeds logs only its
        # outcome. At 1,000 calls in flight every line costs every thread (README, Performance).
        level = logging.INFO if attempt.error else logging.DEBUG
        if not log.isEnabledFor(level):
            return
        log.log(
            level,
            "attempt [%s] timestamp=%d http_status=%s duration=%.3fs%s",
            context.label,
            attempt.timestamp,
            attempt.http_status,
            attempt.duration,
            f" error={attempt.error}" if attempt.error else "",
            extra={
                "event": "attempt",
                "job_id": context.job_id,
                "target": context.target,
                "timestamp": attempt.timestamp,
                "http_status": attempt.http_status,
                "duration": attempt.duration,
                "error": attempt.error,
            },
        )

    def on_retry(self, retry: RetryScheduled) -> None:
        if isinstance(retry.caused_by, TimestampRejected):
            log.warning(
                "API refused the timestamp as out of range (code 0002): re-signing once; "
                "check this machine's clock (NTP), it may be skewed [%s]",
                retry.context.label,
                extra={"event": "clock_skew", "job_id": retry.context.job_id},
            )
            return
        log.debug(
            "retry [%s] attempt %d in %.2fs after %s",
            retry.context.label,
            retry.number + 1,
            retry.wait,
            type(retry.caused_by).__name__,
            extra={"event": "retry", "job_id": retry.context.job_id},
        )


class CountAttempts(AttemptHook):
    """The Prometheus counters and histogram of attempts."""

    def on_attempt_end(self, end: AttemptEnd) -> None:
        error_class = type(end.error).__name__ if end.error is not None else None
        metrics.observe_attempt(end.attempt.http_status, error_class, end.attempt.duration)


#: What every client logs and counts unless told otherwise.
DEFAULT_HOOKS: tuple[AttemptHook, ...] = (LogAttempts(), CountAttempts())
