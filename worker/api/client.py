"""The ScaleEngine client: sign at send time, send, classify, retry. No Celery in here.

Every HTTP attempt claims a fresh timestamp (strictly greater than any used before for the
same account and target) right before it is signed and sent, after any wait of the rate limiter,
so no request body is ever sent twice, no signature is ever stored, and one target's timestamps
reach the API in the order they were claimed (see ``worker.api.clock``).

``close_stream`` returns a ``CloseReport``: the delivery's attempts and how it ended. What is
retried and when is ``worker.api.retry``'s; logs, metrics and records of attempts are hooks
(``worker.api.hooks``); the HTTP goes through a ``Transport`` (``worker.api.transport``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import SecretStr

from config.lanes import URGENT, Lane
from config.urls import mask_url
from worker.api import transport
from worker.api.clock import TimestampClock
from worker.api.hooks import (
    DEFAULT_HOOKS,
    AttemptContext,
    AttemptEnd,
    AttemptHook,
    AttemptStart,
    RetryScheduled,
)
from worker.api.retry import RetryPolicy
from worker.api.signing import CLOSE_COMMAND, request_fields, signed_body
from worker.errors import ApiError, JobCancelled, JobExpired, Throttled
from worker.model.results import Attempt
from worker.model.targets import CloseJob

#: How a delivery's sending may end, besides success (anything else is a bug and propagates).
Ending = ApiError | JobExpired | JobCancelled | Throttled


@dataclass(frozen=True, slots=True)
class SendContext:
    """What the hook before each attempt knows of the job: no secret, no request body."""

    job_id: str | None
    batch_id: str | None
    expires_at: float
    #: The hook may claim the attempt's timestamp in its own Redis round trip when it lets the
    #: attempt go at once: the clock's key for the target, and the clock's time to claim from,
    #: read at the claim (``TimestampClock.key`` and ``.now``).
    timestamp_key: str | None = None
    timestamp_now: Callable[[], int] | None = None
    #: The job's lane (``config.lanes``): the limiter lets urgent attempts go ahead of bulk ones.
    lane: Lane = URGENT


#: Called after every HTTP attempt with the ApiError it ended with (None: success, or no reply
#: was classified): the rate limiter frees its in-flight slot and notes code 1000 here.
AfterSend = Callable[[ApiError | None], None]


@dataclass(frozen=True, slots=True)
class Permit:
    """A hook's go for one attempt."""

    after: AfterSend | None = None
    #: A timestamp the hook claimed for the attempt (recorded, as ``TimestampClock.claim``
    #: would) right before its go; None (it waited first, say): the client claims one itself.
    timestamp: int | None = None


#: Called before every HTTP attempt (the cluster-wide rate limiter and the batch cancel check
#: hook in here). It may sleep, or raise JobCancelled, Throttled or JobExpired to send nothing.
BeforeSend = Callable[[SendContext], Permit]


@dataclass(frozen=True, slots=True)
class Account:
    cdn: int
    api_key: SecretStr
    api_secret: SecretStr


@dataclass(slots=True)
class CloseReport:
    """What one delivery's sending did: its attempts, in order, and how it ended."""

    attempts: list[Attempt] = field(default_factory=list)
    success: transport.ApiSuccess | None = None
    #: None on success: the last ApiError, or JobExpired, JobCancelled, Throttled.
    error: Ending | None = None

    def unwrap(self) -> transport.ApiSuccess:
        """The success, or raise what the sending ended with."""
        if self.error is not None:
            raise self.error
        assert self.success is not None
        return self.success


class ScaleEngineClient:
    def __init__(
        self,
        *,
        api_url: str,
        account: Account,
        clock: TimestampClock,
        transport: transport.Transport,
        policy: RetryPolicy,
        timeout: tuple[float, float],
        before_send: BeforeSend | None = None,
        hooks: Sequence[AttemptHook] = DEFAULT_HOOKS,
    ) -> None:
        self._url = api_url
        self._account = account
        self._clock = clock
        self._transport = transport
        self._policy = policy
        self._timeout = timeout
        self._before_send = before_send
        self._hooks = tuple(hooks)

    def __repr__(self) -> str:
        return f"ScaleEngineClient(url={mask_url(self._url)!r}, cdn={self._account.cdn})"

    @property
    def cdn(self) -> int:
        return self._account.cdn

    def close_stream(
        self,
        job: CloseJob,
        *,
        origin_url: str | None,
        expires_at: float,
        deadline: float,
        label: str = "",
        job_id: str | None = None,
        batch_id: str | None = None,
        lane: Lane = URGENT,
    ) -> CloseReport:
        """Close ``job``'s stream, retrying transient failures within ``deadline`` seconds.

        The report ends in the last ApiError when the API refused or the retries ran out, and
        in JobExpired when ``expires_at`` (unix time) passes before a request could be sent,
        or at once when the target's next timestamp lies beyond it.
        """
        report = CloseReport()
        context = AttemptContext(
            job_id=job_id, batch_id=batch_id, label=label, target=job.target.as_fields()
        )
        timestamp_key = self._clock.key(job.target.key)

        def attempt() -> transport.ApiSuccess:
            permit = Permit()
            if self._before_send is not None:
                permit = self._before_send(
                    SendContext(
                        job_id=job_id,
                        batch_id=batch_id,
                        expires_at=expires_at,
                        timestamp_key=timestamp_key,
                        timestamp_now=self._clock.now,
                        lane=lane,
                    )
                )
            failure: ApiError | None = None
            try:
                return self._send_once(
                    job, origin_url, expires_at, context, report.attempts, permit.timestamp
                )
            except ApiError as exc:
                failure = exc
                raise
            finally:
                if permit.after is not None:
                    permit.after(failure)

        def on_retry(number: int, wait: float, error: ApiError) -> None:
            for hook in self._hooks:
                hook.on_retry(RetryScheduled(context, number, wait, error))

        try:
            report.success = self._policy.run(attempt, deadline=deadline, on_retry=on_retry)
        except (ApiError, JobExpired, JobCancelled, Throttled) as exc:
            report.error = exc
        return report

    def _send_once(
        self,
        job: CloseJob,
        origin_url: str | None,
        expires_at: float,
        context: AttemptContext,
        attempts: list[Attempt],
        claimed: int | None = None,
    ) -> transport.ApiSuccess:
        # Claimed here, right before signing and sending, unless the hook just claimed it.
        timestamp = self._clock.claim(job.target.key) if claimed is None else claimed
        on_time = self._clock.settle(timestamp, until=expires_at)
        # Checked after any wait: nothing is sent at or after the job's expiry. A timestamp
        # that lies beyond it was not waited for: the job ends now, its thread freed.
        if not on_time or time.time() >= expires_at:
            raise JobExpired(
                "the job expired before it could be sent"
                if on_time
                else "the target's next timestamp lies beyond the job's expiry (is a clock "
                "running fast?); nothing was sent"
            )
        fields = request_fields(
            command=CLOSE_COMMAND,
            api_key=self._account.api_key.get_secret_value(),
            timestamp=timestamp,
            cdn=self._account.cdn,
            job=job,
            origin_url=origin_url,
        )
        body = signed_body(fields, self._account.api_secret.get_secret_value())
        number = len(attempts) + 1
        for hook in self._hooks:
            hook.on_attempt_start(AttemptStart(context, number, timestamp))
        started = time.monotonic()
        status: int | None = None
        failure: ApiError | None = None
        try:
            response = self._transport.send(self._url, body, timeout=self._timeout)
            status = response.status_code
            return transport.classify(response)
        except ApiError as exc:
            failure = exc
            raise
        finally:
            attempt = Attempt(
                timestamp=timestamp,
                http_status=status,
                error=None if failure is None else f"{type(failure).__name__}: {failure.message}",
                duration=round(time.monotonic() - started, 4),
            )
            attempts.append(attempt)
            for hook in self._hooks:
                hook.on_attempt_end(AttemptEnd(context, number, attempt, failure))
