"""The retry story, in one place: what is retried, how often, how long, and how far apart.

Read it from top to bottom, as a job lives it:

1. **An attempt** is one signed HTTP request (``worker.api.client``). Hooks around it
   (``worker.api.hooks``) log it, count it and record a failed one for the final result.
2. **Within a delivery** (``RetryPolicy.run``, tenacity) a ``TransientError`` is retried with
   exponential backoff and jitter, bounded by attempts and by a deadline that is never later
   than the job's expiry; a server's Retry-After is honoured (never a shorter wait; when it
   would pass the deadline the delivery gives up). A refused timestamp (0002) is re-signed
   once, at once, without using an attempt. Everything else ends the delivery.
3. **After a delivery** (``RetryPolicy.after_delivery``) a transient failure goes back to
   Celery with a countdown while ``celery_max_retries`` allow and the expiry leaves room;
   a throttled job (the cluster rate limit would hold it too long) goes back too, keeping its
   reserved send time and using none of that budget. The counts travel in the job's message
   (``Counts``: fields ``retries`` and ``handbacks``), so no round trip is spent on them.
4. **The final outcome**: ``error`` once the retries are used up, ``expired`` when the expiry
   leaves no room for another delivery ("this close did not happen, and will not happen
   late"); the job runner maps the other endings (success, failure, expired, cancelled).

Countdowns double per retry from ``celery_retry_countdown``; ``Settings._check_timing`` keeps
the longest under the job's expiry (a waiting message's claim is renewed by its worker, so it
need not fit in the visibility timeout: ``worker.consume.renewer``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from tenacity import RetryCallState, Retrying, stop_before_delay

from config.settings import Settings
from worker.errors import (
    ApiBusy,
    ApiError,
    InvalidTarget,
    Throttled,
    TimestampRejected,
    TransientError,
)
from worker.model.results import Outcome

T = TypeVar("T")

#: Below this many seconds before expiry another delivery is not worth scheduling.
MIN_RETRY_WINDOW = 2.0

#: Called when another attempt of the same delivery is scheduled: (attempt number, wait, cause).
OnRetry = Callable[[int, float, ApiError], None]


@dataclass(frozen=True, slots=True)
class Counts:
    """A job's history as its message carries it: optional kwargs, 0 when absent (a message of
    an older producer, another language, Flower)."""

    #: Deliveries handed back to Celery after a transient failure (of ``celery_max_retries``).
    retries: int = 0
    #: Deliveries handed back for the cluster rate limit: they use no retry budget.
    handbacks: int = 0

    FIELDS: ClassVar[tuple[str, str]] = ("retries", "handbacks")

    @classmethod
    def from_fields(cls, kwargs: Mapping[str, Any]) -> Counts:
        """The counts of a message's kwargs; raises InvalidTarget naming a malformed one."""
        values = []
        for name in cls.FIELDS:
            value = kwargs.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidTarget(f"{name} must be a whole number, 0 or more")
            values.append(value)
        return cls(*values)

    def as_fields(self) -> dict[str, int]:
        return dict(zip(self.FIELDS, (self.retries, self.handbacks), strict=True))


@dataclass(frozen=True, slots=True)
class HandBack:
    """Send the job to Celery again after ``countdown`` seconds, with these counts."""

    countdown: float
    reason: str
    counts: Counts


@dataclass(frozen=True, slots=True)
class GiveUp:
    """End the job now with this outcome."""

    outcome: Outcome
    message: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    deadline: float
    backoff_initial: float
    backoff_max: float
    busy_backoff: float
    celery_max_retries: int
    celery_retry_countdown: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            deadline=settings.retry_deadline,
            backoff_initial=settings.backoff_initial,
            backoff_max=settings.backoff_max,
            busy_backoff=settings.busy_backoff,
            celery_max_retries=settings.celery_max_retries,
            celery_retry_countdown=settings.celery_retry_countdown,
        )

    def backoff(self, attempt: int, error: BaseException | None) -> float:
        """Seconds to wait after the ``attempt``-th failed request (1-based)."""
        base = min(self.backoff_max, self.backoff_initial * 2.0 ** (attempt - 1))
        if isinstance(error, ApiBusy):
            base = max(base, self.busy_backoff)
        # "Equal jitter": never less than half the backoff, never in lockstep with other jobs.
        wait = base / 2 + random.uniform(0, base / 2)
        return max(wait, _retry_after(error))

    def countdown(self, retries: int, error: BaseException | None) -> float:
        """Countdown before Celery delivers the job again, after its ``retries``-th retry."""
        base = self.celery_retry_countdown * 2.0**retries
        wait = base * random.uniform(0.8, 1.0)
        if isinstance(error, ApiBusy):
            wait = max(wait, self.busy_backoff)
        return max(wait, _retry_after(error))

    def run(self, send: Callable[[], T], *, deadline: float, on_retry: OnRetry | None = None) -> T:
        """Step 2: call ``send`` until it succeeds, fails for good, or the bounds are reached.

        The last exception is re-raised as it was, so the caller sees the real cause.
        """
        resigns = 0  # refused timestamps (0002) seen in this delivery

        def failure(state: RetryCallState) -> BaseException | None:
            return state.outcome.exception() if state.outcome is not None else None

        def retry(state: RetryCallState) -> bool:
            nonlocal resigns
            error = failure(state)
            if isinstance(error, TimestampRejected):
                # The clock may have been skewed for a moment: a fresh timestamp, once.
                resigns += 1
                return resigns == 1
            return isinstance(error, TransientError)

        def stop(state: RetryCallState) -> bool:
            # A re-sign uses no attempt of the budget.
            return state.attempt_number - resigns >= self.max_attempts or out_of_time(state)

        def wait(state: RetryCallState) -> float:
            error = failure(state)
            if isinstance(error, TimestampRejected):
                return 0.0
            return self.backoff(state.attempt_number - resigns, error)

        def before_sleep(state: RetryCallState) -> None:
            error = failure(state)
            if on_retry is not None and isinstance(error, ApiError):
                pause = state.next_action.sleep if state.next_action is not None else 0.0
                on_retry(state.attempt_number, pause, error)

        # Most deliveries succeed at their first attempt: it is made before tenacity is set
        # up (3% of a worker's CPU went to that set-up, in a profile), and a failure is handed to
        # tenacity as its first attempt's outcome, with the deadline shortened by the time it
        # took, so every decision after a failure is tenacity's as before.
        started = time.monotonic()
        try:
            return send()
        except BaseException as exc:  # as tenacity, which takes any outcome to its predicates
            first: BaseException | None = exc

        def replayed() -> T:
            nonlocal first
            if first is not None:
                failed, first = first, None
                raise failed
            return send()

        out_of_time = stop_before_delay(max(deadline - (time.monotonic() - started), 0.0))
        retrying = Retrying(
            retry=retry,
            stop=stop,
            wait=wait,
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(replayed)

    def after_delivery(
        self, error: TransientError | Throttled, counts: Counts, *, left: float
    ) -> HandBack | GiveUp:
        """Step 3 and 4: what follows a delivery that ended in ``error`` with ``left`` seconds
        before the job's expiry, its message carrying ``counts``."""
        if isinstance(error, Throttled):
            if left <= MIN_RETRY_WINDOW:
                return GiveUp(Outcome.EXPIRED, str(error))
            # Not a failure: its send time stays reserved, and it uses no retry budget.
            return HandBack(
                countdown=min(error.wait, left - 1),
                reason=str(error),
                counts=Counts(counts.retries, counts.handbacks + 1),
            )
        if counts.retries >= self.celery_max_retries:
            return GiveUp(Outcome.ERROR, f"retries exhausted: {error.message}")
        if left <= MIN_RETRY_WINDOW:
            # Retries remain but the expiry leaves no room for one: the job ran out of time.
            return GiveUp(
                Outcome.EXPIRED,
                f"the job expired before it could be retried (last: {error.message})",
            )
        return HandBack(
            countdown=min(self.countdown(counts.retries, error), left - 1),
            reason=error.message,
            counts=Counts(counts.retries + 1, counts.handbacks),
        )


def _retry_after(error: BaseException | None) -> float:
    if isinstance(error, TransientError) and error.retry_after is not None:
        return error.retry_after
    return 0.0
