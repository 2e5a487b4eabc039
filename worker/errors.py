"""The one place where every failure streamctl can meet is named.

The tree is split the way the retry policy needs it: anything under ``TransientError`` may
succeed if the same close is signed afresh and sent again later; anything under
``PermanentError`` will not, so it is never retried. The retry predicate is therefore a plain
``isinstance`` check (see ``worker.api.retry``), never a match on a message.

No exception here ever carries the API secret, the request body or its signature: they are
built from the response, the target and the HTTP status only.

The tree (``StreamctlError`` and ``ConfigError`` are defined in ``config.errors``, since the
settings raise them and ``config/`` imports nothing from ``worker/``; they are re-exported here)::

    StreamctlError
    ├── ConfigError                 a setting is missing or malformed
    │   └── ScheduleError           the schedule file or one of its entries
    ├── IncompatibleDependency
    ├── InvalidTarget (ValueError)  a job names no valid target
    ├── InvalidLines                lines of a target file name no valid target
    ├── InvalidChunk                a batch message of the wrong shape
    ├── IdempotencyConflict
    ├── EnqueueError                a job could not be handed to the broker
    ├── NoSuchBatch
    ├── ApiError
    │   ├── TransientError          worth sending again, freshly signed
    │   │   ├── ConnectionFailed
    │   │   ├── RequestTimedOut
    │   │   ├── ServerError
    │   │   ├── RateLimited
    │   │   ├── InvalidResponse
    │   │   ├── ApiUnavailable
    │   │   └── ApiBusy
    │   └── PermanentError          never retried
    │       ├── ApiRefused
    │       ├── TimestampRejected
    │       ├── TlsFailed
    │       └── HttpRefused
    ├── JobExpired
    ├── JobCancelled
    ├── JobNotSucceeded             a task's job(s) ended, published, other than ``success``
    └── Throttled

Usage errors of the command line stay ``click.UsageError`` subclasses (``worker.cli``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# The root and ConfigError are defined beside the settings, which raise it (config/ imports
# nothing from worker/); they are the same classes here.
from config.errors import ConfigError as ConfigError
from config.errors import StreamctlError as StreamctlError

# --- configuration and input -------------------------------------------------------------


class IncompatibleDependency(StreamctlError):
    """An installed package lacks what streamctl relies on; the message names it and its version."""


class InvalidTarget(StreamctlError, ValueError):
    """A close-stream job names no valid target (outcome ``rejected``, never sent)."""


class ScheduleError(ConfigError):
    """The schedule file, or an entry of it, is invalid; the message names each entry."""


#: Bad lines quoted in an ``InvalidLines`` message; the rest are counted.
MAX_QUOTED_ERRORS = 20


class InvalidLines(StreamctlError):
    """Some lines name no valid target; nothing was enqueued.

    ``errors`` are the file's line errors (``worker.produce.targetfile.LineError``), each
    printing as ``line N: what is wrong``.
    """

    def __init__(self, errors: Sequence[object]) -> None:
        quoted = "\n  ".join(str(error) for error in errors[:MAX_QUOTED_ERRORS])
        more = len(errors) - MAX_QUOTED_ERRORS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{len(errors)} invalid line(s); nothing was enqueued "
            f"(--skip-invalid sends the valid ones):\n  {quoted}{tail}"
        )
        self.errors = list(errors)


class InvalidChunk(StreamctlError):
    """A batch message whose shape is wrong: no job in it can be identified."""


class EnqueueError(StreamctlError):
    """The job could not be handed to the broker; it was not enqueued."""


class NoSuchBatch(StreamctlError):
    """No batch by that id (never started, or older than STREAMCTL_RESULT_TTL)."""


class IdempotencyConflict(StreamctlError):
    """A job id given again with other fields: it names the first job, so nothing is enqueued.

    Not an ``EnqueueError``: trying again later will not help, the caller needs a new job id.
    """


# --- talking to the API --------------------------------------------------------------------


class ApiError(StreamctlError):
    """A single HTTP attempt against the API did not succeed.

    ``http_status`` is None when no response arrived; ``api_code`` is the ``code`` field of a
    ``"status": "failure"`` reply, when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        api_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.api_code = api_code


class TransientError(ApiError):
    """Sending the same close again later, freshly signed, may succeed."""

    #: Seconds the server asked us to wait (HTTP Retry-After), if it said.
    retry_after: float | None = None


class ConnectionFailed(TransientError):
    """No connection could be made, or it broke before a full reply arrived."""


class RequestTimedOut(TransientError):
    """The connect or read timeout passed."""


class ServerError(TransientError):
    """HTTP 5xx."""


class RateLimited(TransientError):
    """HTTP 429; ``retry_after`` holds the server's Retry-After when given."""

    def __init__(self, message: str, *, retry_after: float | None, http_status: int = 429):
        super().__init__(message, http_status=http_status)
        self.retry_after = retry_after


class InvalidResponse(TransientError):
    """HTTP 200 whose body is not the JSON object the API promises (a proxy's error page...)."""


class ApiUnavailable(TransientError):
    """``"status": "failure"`` with code 0004 (unexpected error): worth another try."""


class ApiBusy(TransientError):
    """``"status": "failure"`` with code 1000: the API asks for less traffic; back off hard."""


class PermanentError(ApiError):
    """Sending the same close again will not help."""


class ApiRefused(PermanentError):
    """``"status": "failure"``: the API refused the close (auth, unknown stream, ...)."""


class TimestampRejected(PermanentError):
    """Code 0002, timestamp outside the valid range.

    Permanent in itself (a skewed clock stays skewed), but the retry policy signs it afresh
    once, at once, before giving up, since a request can also be delayed in flight.
    """


class TlsFailed(PermanentError):
    """The API's TLS certificate did not verify: a configuration fault, never retried."""


class HttpRefused(PermanentError):
    """HTTP 4xx other than 429."""


# --- job lifecycle ----------------------------------------------------------------------------


class JobExpired(StreamctlError):
    """The job's expiry passed before it could be sent (outcome ``expired``)."""


class JobCancelled(StreamctlError):
    """The job's batch was cancelled before this job was sent (outcome ``cancelled``)."""


class JobNotSucceeded(StreamctlError):
    """A close task's job, or some jobs of a batch message, ended other than ``success``.

    Raised by the tasks (``tasks.close``) after every final result was published, only so that
    Celery marks the task FAILURE and sends ``task-failed`` (Flower shows the job as failed).
    The tasks declare it in ``throws``: Celery logs it in one line, without a traceback, and
    acknowledges the message like any other failure of an ``acks_late`` task; nothing retries
    it. ``outcomes`` counts the task's ended jobs per outcome.
    """

    def __init__(self, outcomes: Mapping[str, int], detail: str = "") -> None:
        self.outcomes = dict(outcomes)
        self.detail = detail
        counted = ", ".join(f"{name} {count}" for name, count in sorted(self.outcomes.items()))
        super().__init__(detail or counted)

    def __reduce__(self) -> tuple[type[JobNotSucceeded], tuple[dict[str, int], str]]:
        return type(self), (self.outcomes, self.detail)


class Throttled(StreamctlError):
    """The cluster's rate limit would hold the job longer than a worker thread should wait.

    ``wait`` is the number of seconds until the limiter lets it go: the job goes back to the
    broker with that countdown instead of holding a worker thread idle.
    """

    def __init__(self, message: str, *, wait: float) -> None:
        super().__init__(message)
        self.wait = wait
