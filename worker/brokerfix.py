"""A guard for a kombu Redis-transport bug that stops a worker for good when Redis restarts.

Found by the fault suite (tests/faults/test_fault_redis_restart.py), kombu 5.7: when the broker
connection drops while a BRPOP is pending, Celery closes the connection twice. ``collect()``
detaches the transport (``transport.client = None``) but leaves the channel open, because
reading the pending BRPOP raised; the second ``close()`` then restores the unacknowledged
messages through a new connection pool, whose parameters are read from ``transport.client``:
an AttributeError that Celery does not expect ("Unrecoverable error"), and the worker exits.

Raising a connection error there instead lets Celery go on reconnecting. The messages that
were not restored stay in Redis' unacked set and come back after the visibility timeout, as
after any crash.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

_original_connparams: Callable[..., Any] = kombu_redis.Channel._connparams


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    if self.connection is None or self.connection.client is None:
        raise redis.ConnectionError("the broker connection is already closed")
    return _original_connparams(self, asynchronous)


def install() -> None:
    """Put the guard in place (idempotent)."""
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
