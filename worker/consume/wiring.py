"""Building the worker's long-lived parts once per process, from the one settings object."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from config.settings import Settings, get_settings
from worker.api.client import Account, ScaleEngineClient
from worker.api.clock import TimestampClock
from worker.api.hooks import DEFAULT_HOOKS
from worker.api.retry import RetryPolicy
from worker.api.transport import RequestsTransport, SessionPool, Transport
from worker.consume.runner import JobRunner
from worker.model.keys import account_scope
from worker.store.jobs import RecordFailedAttempts
from worker.store.limiter import ClusterLimiter, LimitConfig
from worker.store.redis import job_state, redis_client

_lock = threading.Lock()
_runner: JobRunner | None = None


def build_runner(
    settings: Settings,
    *,
    transport: Transport | None = None,
    clock_sleep: Callable[[float], None] = time.sleep,
) -> JobRunner:
    """The job runner. Tests of its decisions give a ``MockTransport`` instead of HTTP, and a
    ``clock_sleep`` that does not wait for a timestamp claimed ahead (the same target's next
    second), so that a retry takes milliseconds."""
    cdn, api_key, api_secret = settings.require_credentials()
    assert settings.api_key is not None and settings.api_secret is not None
    client = redis_client(settings)
    policy = RetryPolicy.from_settings(settings)
    state = job_state(settings, client)
    api = ScaleEngineClient(
        api_url=settings.api_url,
        account=Account(cdn=cdn, api_key=settings.api_key, api_secret=settings.api_secret),
        clock=TimestampClock(client, account_scope(cdn, api_key), sleep=clock_sleep),
        transport=transport or RequestsTransport(SessionPool(ca_bundle=settings.ca_bundle)),
        policy=policy,
        timeout=(settings.connect_timeout, settings.read_timeout),
        # The limiter's asks carry the results a batch message's jobs left (worker.store.carry).
        before_send=ClusterLimiter(client, LimitConfig.from_settings(settings), carry=state.carry),
        hooks=(*DEFAULT_HOOKS, RecordFailedAttempts(state)),
    )
    del api_secret  # kept only inside the SecretStr
    return JobRunner(
        client=api,
        state=state,
        policy=policy,
        job_expiry=settings.job_expiry,
        default_origin_url=settings.origin_url,
        chunk_budget=chunk_budget(settings),
    )


#: The longest a batch message keeps starting its jobs, before a job's own run: 150 s, what
#: half the old 300 s visibility timeout allowed.
CHUNK_HOLD = 150.0


def chunk_budget(settings: Settings) -> float:
    """Seconds after which a batch message starts no more of its jobs: the rest go back as a
    new message.

    The message is acknowledged only when its last job ends. Its worker renews the message's
    claim meanwhile (``worker.consume.renewer``), so it is not redelivered however long it runs;
    the budget bounds how long it holds its thread while the messages prefetched behind it
    age: a job started within it ends within one delivery's retry deadline, one read timeout
    and one throttle wait, so the message is done within CHUNK_HOLD and half a job's expiry.
    """
    longest_job = settings.retry_deadline + settings.read_timeout + settings.throttle_hold
    return max(min(CHUNK_HOLD, settings.job_expiry / 2) - longest_job, 0.0)


def runner() -> JobRunner:
    """The process-wide job runner, built on first use."""
    global _runner
    with _lock:
        if _runner is None:
            _runner = build_runner(get_settings())
        return _runner
