"""The Redis client for state and results, and the job state on it.

Producers and workers both build theirs here (moved out of the worker's wiring, which producers
must not import).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from config.settings import Settings
from config.urls import is_sentinel, parse_sentinel
from worker.store.jobs import JobState

#: Seconds a thread waits for a free pooled Redis connection before it is an error.
POOL_WAIT = 10.0
#: How long a command keeps retrying while Sentinel fails the master over: sentinels agree a
#: master is down after their down-after-milliseconds (a few seconds) and promote a replica
#: within a second or two more. Backoff from 50 ms doubling to 1 s: about 25 s in all.
FAILOVER_RETRIES = 30
_FAILOVER_BACKOFF = ExponentialBackoff(cap=1.0, base=0.05)
#: Seconds between two questions to the sentinels for the master's address while connections
#: are in use: the most a client goes on writing to a master that Sentinel replaced.
MASTER_RECHECK = 1.0


class _FollowingPool(SentinelConnectionPool):
    """A Sentinel pool that also notices a failover its connections have not felt.

    redis-py's pool asks the sentinels only when it opens a connection, so a pooled connection
    to a master that Sentinel replaced without killing it (``SENTINEL FAILOVER``, a partition)
    goes on writing there until that server turns read-only, and those writes are lost when it
    resyncs from the new master. Here, at most once per MASTER_RECHECK, taking a connection asks
    the sentinels; a new address closes the idle connections (redis-py's own step), and one
    taken to the old address is reconnected before it is used.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._next_check = 0.0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + MASTER_RECHECK
            # No sentinel answers, or no master yet: the command's own retry waits for one.
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                self.get_master_address()  # type: ignore[no-untyped-call]
        connection = super().get_connection(*args, **kwargs)
        address = self.master_address
        if address is not None and (connection.host, connection.port) != address:
            connection.disconnect()  # type: ignore[no-untyped-call]
            connection.connect()  # type: ignore[no-untyped-call]
        return connection


def redis_client(settings: Settings) -> redis.Redis:
    """A Redis client for state and results, its pool sized for a threaded worker.

    A blocking pool: a thread beyond the pool's size waits for a connection instead of failing
    the job with "Too many connections" (a worker started with more threads than
    STREAMCTL_WORKER_CONCURRENCY, by ``celery worker -c``, say, must still work).

    A ``sentinel://`` REDIS_URL gives a client of the master Sentinel names (``sentinel_client``).
    """
    if is_sentinel(settings.redis_url):
        return sentinel_client(
            settings.redis_url,
            _master_name(settings),
            socket_connect_timeout=5,
            socket_timeout=10,
            health_check_interval=30,
        )
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


def _master_name(settings: Settings) -> str:
    assert settings.sentinel_master is not None  # Settings requires it with a sentinel:// URL
    return settings.sentinel_master


def sentinels(url: str, *, timeout: float = 5.0) -> Sentinel:
    """The ``Sentinel`` of a ``sentinel://`` URL, whose clients find the master by themselves.

    The sentinels are asked with short timeouts: one that is down must not hold up asking the
    next. The master's password (the URL's) is for the master and its replicas only.
    """
    address = parse_sentinel(url)
    return Sentinel(  # type: ignore[no-untyped-call]
        list(address.sentinels),
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
        db=address.db,
        username=address.username,
        password=address.password,
    )


def sentinel_client(url: str, master: str, **options: Any) -> redis.Redis:
    """A client of the master the sentinels of ``url`` name ``master``, through failovers.

    Its pool asks the sentinels for the master's address on each new connection; a connection to
    an old master that was demoted answers READONLY, which redis-py turns into a ConnectionError
    and a disconnect. The ``Retry`` then re-runs the command on a fresh connection, to the new
    master, for as long as a failover takes: no write goes to a replica, no process restarts.
    """
    retry = Retry(_FAILOVER_BACKOFF, FAILOVER_RETRIES)
    return sentinels(url).master_for(  # type: ignore[no-untyped-call,no-any-return]
        master,
        connection_pool_class=_FollowingPool,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError],
        **options,
    )


def client_for_url(
    url: str,
    *,
    sentinel_master: str | None,
    timeout: float,
    ssl: dict[str, Any] | None = None,
) -> redis.Redis:
    """A short-lived client of the Redis at ``url`` (its master, for a ``sentinel://`` URL), for
    the checks of ``streamctl check`` and the worker's start."""
    if is_sentinel(url):
        assert sentinel_master is not None  # Settings requires it with a sentinel:// URL
        return sentinels(url, timeout=timeout).master_for(  # type: ignore[no-untyped-call,no-any-return]
            sentinel_master, socket_connect_timeout=timeout, socket_timeout=timeout
        )
    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, **(ssl or {})
    )


def job_state(settings: Settings, client: redis.Redis | None = None) -> JobState:
    return JobState(
        client or redis_client(settings),
        channel=settings.results_channel,
        log_stream=settings.results_log,
        log_maxlen=settings.results_log_maxlen,
        ttl_seconds=settings.result_ttl,
    )


@dataclass(frozen=True, slots=True)
class SentinelView:
    """What the sentinels say of a master, and what that master says it is."""

    master: str
    address: tuple[str, int]
    replicas: int
    quorum: int
    sentinels: int
    role: str


def sentinel_view(url: str, master: str, *, timeout: float) -> SentinelView:
    """Ask the sentinels of ``url`` about ``master``, then ask that master its role.

    Raises ``redis.ConnectionError``/``TimeoutError`` when no sentinel answers or the master does
    not, and ``MasterNotFoundError`` (a ConnectionError) when no sentinel knows ``master``.
    """
    sentinel = sentinels(url, timeout=timeout)
    host, port = sentinel.discover_master(master)  # type: ignore[no-untyped-call]
    state: dict[str, Any] = {}
    for one in sentinel.sentinels:
        try:
            found = one.sentinel_master(master)
            state = dict(found) if isinstance(found, dict) else {}
            break
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            continue
    client = sentinel.master_for(  # type: ignore[no-untyped-call]
        master, socket_connect_timeout=timeout, socket_timeout=timeout
    )
    try:
        role = str(client.info("replication").get("role", "unknown"))
    finally:
        client.close()
    return SentinelView(
        master=master,
        address=(str(host), int(port)),
        replicas=int(state.get("num-slaves", 0)),
        quorum=int(state.get("quorum", 0)),
        sentinels=int(state.get("num-other-sentinels", 0)) + 1,
        role=role,
    )
