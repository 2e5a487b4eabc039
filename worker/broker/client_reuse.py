"""One redis-py client per kombu Redis channel, not one per command (kombu 5.7).

Kombu's Redis channel sends everything outside its event loop (a publish, every task event a
worker sends for Flower, each message's acknowledgement and its entry in the unacked set)
through ``Channel.conn_or_acquire``, which builds a new ``redis.Redis`` for each: a client
whose constructor fills a table of about 200 reply callbacks. In a worker with a thousand
threads that was an eighth of all the CPU its consumer thread spent (py-spy, benchmarks/run.py
at 1,000 in flight): the consumer thread hands out every message, so its time is every thread's
wait.

A ``redis.Redis`` holds no connection of its own: each command takes one from the channel's
pool and gives it back, so one client serves every thread. It is built again whenever the
channel's pool is replaced (kombu makes a new one after a reconnect), so that it never sends
through a pool kombu has let go.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kombu
from kombu.transport import redis as kombu_redis

from worker.errors import IncompatibleDependency

#: The private names of ``kombu.transport.redis.Channel`` this module reads or replaces.
USED = ("conn_or_acquire", "_create_client", "pool")
_CACHE = "_streamctl_sync_client"

_originals: dict[str, Any] = {}


@contextmanager
def conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
    if client:
        yield client
        return
    pool = self.pool  # kombu's own property: a new pool after a reconnect
    cached = self.__dict__.get(_CACHE)
    if cached is None or cached[0] is not pool:
        cached = (pool, self._create_client())
        self.__dict__[_CACHE] = cached
    yield cached[1]


def install() -> None:
    """Put the shared client in place (idempotent); IncompatibleDependency if kombu differs."""
    channel: Any = kombu_redis.Channel
    if _originals.get("Channel") is channel:
        return
    missing = [name for name in USED if not hasattr(channel, name)]
    if missing:
        raise IncompatibleDependency(
            f"kombu {kombu.__version__} is not supported: kombu.transport.redis.Channel has no "
            f"{', '.join(missing)} (worker.broker.client_reuse reads these private names): "
            "install the kombu version pyproject.toml allows"
        )
    _originals.update(conn_or_acquire=channel.conn_or_acquire, Channel=channel)
    channel.conn_or_acquire = conn_or_acquire
