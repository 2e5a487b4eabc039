"""The Redis client for state and results, and the job state on it.

Producers and workers both build theirs here (moved out of the worker's wiring, which producers
must not import).
"""

from __future__ import annotations

import redis

from config.settings import Settings
from worker.store.jobs import JobState

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
        max_connections=settings.worker_concurrency + settings.urgent_threads + 8,
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
