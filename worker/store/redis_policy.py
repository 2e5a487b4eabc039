"""Every Redis streamctl uses must never evict a key: ``maxmemory-policy noeviction``.

Redis is the broker (queued messages, the unacknowledged set), the job state (pending records,
idempotency keys, final results) and the per-target timestamp clock. A Redis that evicts drops
them silently when memory runs short: a queued job vanishes with no result, the same job id is
accepted again, and an evicted timestamp lets the next close of a target go out with the same
timestamp and body in the same second, which the API refuses as a replay. ``allkeys-*`` evicts
any of these; ``volatile-*`` the keys with a TTL: the idempotency keys and the results. With
``noeviction`` a full Redis refuses writes instead: loud errors, never lost guarantees.

One function, ``check_url``, reads the policy, for ``streamctl check`` and for the worker's
start (``require_no_eviction``, run on ``worker_init`` by ``worker.consume.boot``): a worker
refuses to start on an evicting master. Only a master is judged: a replica does not evict by
itself (it applies its master's deletions), and which master it follows, and that master's
policy, cannot be read from here reliably. Where CONFIG is not allowed (managed Redis services
often hide it), the policy cannot be read: that is said, and the worker starts.

The same check refuses a Redis Cluster node (``INFO cluster``: ``cluster_enabled:1``): the Lua
scripts touch keys of several hash slots at once, which a cluster refuses (CROSSSLOT). A
``sentinel://`` URL is judged on the master its sentinels name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import redis

from config.settings import Settings
from config.urls import REDIS_SCHEMES
from worker.errors import ConfigError
from worker.store.redis import client_for_url

log = logging.getLogger("streamctl.redis")

REQUIRED_POLICY = "noeviction"
FIX = (
    "set it with CONFIG SET maxmemory-policy noeviction, and maxmemory-policy noeviction "
    "in redis.conf so that it survives a restart"
)
CLUSTER_REFUSED = (
    "a Redis Cluster node (cluster_enabled:1): Redis Cluster is not supported, as streamctl's "
    "scripts use keys of several hash slots at once; use one master, with Sentinel "
    "(sentinel://) for failover"
)
#: A check must not hang a worker's start: a healthy Redis answers in milliseconds.
CHECK_TIMEOUT = 3.0

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True, slots=True)
class PolicyFinding:
    status: Status
    detail: str


def check_url(
    url: str,
    *,
    timeout: float = CHECK_TIMEOUT,
    ssl: dict[str, Any] | None = None,
    sentinel_master: str | None = None,
) -> PolicyFinding:
    """Read the role and ``maxmemory-policy`` of the Redis at ``url`` and judge them.

    Raises ``redis.ConnectionError`` or ``redis.TimeoutError`` when that Redis does not answer:
    the caller says what that means for it. A ``sentinel://`` URL is judged on its master.
    """
    # The TLS options of the connection the worker opens: a rediss:// Redis is verified here too.
    client = client_for_url(url, sentinel_master=sentinel_master, timeout=timeout, ssl=ssl)
    try:
        return _judge(client)
    finally:
        client.close()


def _judge(client: redis.Redis) -> PolicyFinding:
    cluster = _cluster_finding(client)
    if cluster is not None:
        return cluster
    role = "unknown role"
    try:
        replication = client.info("replication")
    except redis.ResponseError:  # INFO refused too: judge the policy alone
        pass
    else:
        role = str(replication.get("role", role))
        if role == "slave":
            master = f"{replication.get('master_host')}:{replication.get('master_port')}"
            return PolicyFinding(
                "warn",
                f"a replica (of {master}): its maxmemory-policy is not judged here, only a "
                f"master's is; make sure the master's is {REQUIRED_POLICY}",
            )
    try:
        found = client.config_get("maxmemory-policy")
    except redis.ResponseError as exc:  # renamed or denied (ACL): a managed Redis, often
        reason = str(exc).splitlines()[0][:80].strip() if str(exc) else type(exc).__name__
        return PolicyFinding(
            "warn",
            f"could not read maxmemory-policy (CONFIG GET refused: {reason}); "
            f"make sure it is {REQUIRED_POLICY}",
        )
    policy = str(found.get("maxmemory-policy", "")) if isinstance(found, dict) else ""
    if not policy:
        return PolicyFinding(
            "warn", f"could not read maxmemory-policy (no value); make sure it is {REQUIRED_POLICY}"
        )
    if policy == REQUIRED_POLICY:
        return PolicyFinding("ok", f"maxmemory-policy {policy} ({role})")
    return PolicyFinding(
        "fail",
        f"maxmemory-policy is {policy} ({role}): Redis may evict queued jobs, idempotency keys, "
        f"results and timestamps; {FIX}",
    )


def _cluster_finding(client: redis.Redis) -> PolicyFinding | None:
    """Refuse a Redis Cluster node: streamctl's scripts touch a job's, its batch's and its
    target's keys in one call, and those keys lie in different hash slots (CROSSSLOT)."""
    try:
        cluster = client.info("cluster")
    except redis.ResponseError:  # INFO refused: a managed Redis; the policy check says so
        return None
    if str(cluster.get("cluster_enabled", "0")) != "1":
        return None
    return PolicyFinding("fail", CLUSTER_REFUSED)


def redis_urls(settings: Settings) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
    """``(name, URL, SSL options)`` of every Redis a worker uses: state and results, and a Redis
    broker."""
    yield "redis", settings.redis_url, settings.redis_ssl
    broker = settings.broker_url
    if broker != settings.redis_url and urlsplit(broker).scheme in REDIS_SCHEMES:
        yield "broker", broker, settings.broker_ssl


def require_no_eviction(settings: Settings) -> None:
    """Raise ConfigError when a Redis the worker uses is a master that may evict.

    A policy that cannot be read, a replica, or a Redis that does not answer yet is logged as a
    warning: the worker starts (Celery waits for an unreachable broker itself).
    """
    for name, url, ssl in redis_urls(settings):
        try:
            finding = check_url(url, ssl=ssl, sentinel_master=settings.sentinel_master)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning(
                "the %s: maxmemory-policy not checked: it does not answer (%s)",
                _described(name),
                type(exc).__name__,
                extra={"event": "redis_policy_unchecked"},
            )
            continue
        if finding.status == "fail":
            raise ConfigError(f"the {_described(name)}: {finding.detail}")
        if finding.status == "warn":
            log.warning(
                "the %s: %s",
                _described(name),
                finding.detail,
                extra={"event": "redis_policy_unchecked"},
            )


def _described(name: str) -> str:
    if name == "redis":
        return "state and results Redis (REDIS_URL)"
    return "broker Redis (CELERY_BROKER_URL)"
