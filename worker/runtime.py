"""Building the worker's long-lived parts once per process, from the one settings object."""

from __future__ import annotations

import threading

import redis

from config.settings import Settings, get_settings
from worker.client import Account, ScaleEngineClient
from worker.http import SessionPool
from worker.jobs import JobRunner
from worker.jobstate import JobState
from worker.ratelimit import ClusterLimiter, LimitConfig
from worker.retry import RetryPolicy
from worker.timestamps import TimestampClock, account_scope

_lock = threading.Lock()
_runner: JobRunner | None = None


#: Seconds a thread waits for a free pooled Redis connection before it is an error.
POOL_WAIT = 10.0


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client for state and results, its pool sized for a threaded worker.

    A blocking pool: a thread beyond the pool's size waits for a connection instead of failing
    the job with "Too many connections" (a worker started with more threads than
    STREAMCTL_WORKER_CONCURRENCY, by ``celery worker -c``, say, must still work).
    """
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.worker_concurrency + 8,
        timeout=POOL_WAIT,
        health_check_interval=30,
        socket_connect_timeout=5,
        socket_timeout=10,
        retry_on_timeout=True,
        **(settings.redis_ssl or {}),  # rediss://: the certificate is always verified
    )
    return redis.Redis(connection_pool=pool)


def job_state(settings: Settings, client: redis.Redis | None = None) -> JobState:
    return JobState(
        client or redis_client(settings),
        channel=settings.results_channel,
        log_stream=settings.results_log,
        log_maxlen=settings.results_log_maxlen,
        ttl_seconds=settings.result_ttl,
    )


def build_runner(settings: Settings) -> JobRunner:
    cdn, api_key, api_secret = settings.require_credentials()
    assert settings.api_key is not None and settings.api_secret is not None
    client = redis_client(settings)
    policy = RetryPolicy.from_settings(settings)
    api = ScaleEngineClient(
        api_url=settings.api_url,
        account=Account(cdn=cdn, api_key=settings.api_key, api_secret=settings.api_secret),
        clock=TimestampClock(client, account_scope(cdn, api_key)),
        sessions=SessionPool(ca_bundle=settings.ca_bundle),
        policy=policy,
        timeout=(settings.connect_timeout, settings.read_timeout),
        before_send=ClusterLimiter(client, LimitConfig.from_settings(settings)),
    )
    del api_secret  # kept only inside the SecretStr
    return JobRunner(
        client=api,
        state=job_state(settings, client),
        policy=policy,
        job_expiry=settings.job_expiry,
        default_origin_url=settings.origin_url,
        chunk_budget=chunk_budget(settings),
    )


def chunk_budget(settings: Settings) -> float:
    """Seconds after which a batch message starts no more of its jobs.

    The message is acknowledged only when its last job ends, and Redis redelivers it after
    the visibility timeout. A job started within the budget ends within one delivery's retry
    deadline, one read timeout and one throttle wait, so the whole message is done within half
    the visibility timeout, the same margin a single job's countdown keeps.
    """
    longest_job = settings.retry_deadline + settings.read_timeout + settings.throttle_hold
    return max(settings.visibility_timeout / 2 - longest_job, 0.0)


def runner() -> JobRunner:
    """The process-wide job runner, built on first use."""
    global _runner
    with _lock:
        if _runner is None:
            _runner = build_runner(get_settings())
        return _runner
