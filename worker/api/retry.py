"""The retry policy: what is retried, how often, how long, and how far apart.

Only ``TransientError`` is retried (an isinstance check on the tree in ``worker.errors``).
Retries inside one delivery are bounded both by attempts and by a deadline; the deadline is
also never later than the job's expiry. Waits grow exponentially with jitter, so that many
jobs failing together do not come back together. A server's Retry-After is honoured: the wait
is never shorter than it asked, and when it would pass the deadline the delivery gives up and
the job goes back to Celery with a countdown at least that long.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
)

from config.settings import Settings
from worker.errors import ApiBusy, TransientError

T = TypeVar("T")


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

    def countdown(self, celery_retries: int, error: BaseException | None) -> float:
        """Countdown before Celery delivers the job again, after its ``celery_retries``-th retry."""
        base = self.celery_retry_countdown * 2.0**celery_retries
        wait = base * random.uniform(0.8, 1.0)
        if isinstance(error, ApiBusy):
            wait = max(wait, self.busy_backoff)
        return max(wait, _retry_after(error))

    def run(self, send: Callable[[], T], *, deadline: float) -> T:
        """Call ``send`` until it succeeds, fails permanently, or the bounds are reached.

        The last exception is re-raised as it was, so the caller sees the real cause.
        """

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome is not None else None
            return self.backoff(state.attempt_number, error)

        retrying = Retrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(self.max_attempts) | stop_before_delay(max(deadline, 0.0)),
            wait=wait,
            reraise=True,
        )
        return retrying(send)


def _retry_after(error: BaseException | None) -> float:
    if isinstance(error, TransientError) and error.retry_after is not None:
        return error.retry_after
    return 0.0
