"""Guards for two kombu Redis-transport bugs that stop a worker for good (kombu 5.7).

Both were found by the fault suite (tests/faults/):

* Redis restarting (test_fault_redis_restart.py). When the broker connection drops while a
  BRPOP is pending, Celery closes the connection twice: ``collect()`` detaches the transport
  (``transport.client = None``) but leaves the channel open, because reading the pending BRPOP
  raised; the second ``close()`` restores the unacknowledged messages through a new connection
  pool, whose parameters are read from ``transport.client``: an AttributeError that Celery does
  not expect ("Unrecoverable error"), and the worker exits. A connection error instead lets
  Celery go on reconnecting; the messages not restored stay in Redis' unacked set and come back
  after the visibility timeout, as after any crash.
* Garbage on the queue (test_fault_bad_input.py). Bytes that are not a kombu message (not
  JSON, not UTF-8, JSON of the wrong shape, an unknown body encoding) raise while the message
  is being read, before Celery sees it, and the worker exits. Such an item is already off the
  queue and was never added to the unacked set: it is logged and dropped (``Empty`` tells the
  event loop that nothing was read).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger("streamctl.broker")

_original_connparams: Callable[..., Any] = kombu_redis.Channel._connparams
_original_brpop_read: Callable[..., Any] = kombu_redis.Channel._brpop_read
_OriginalMessage: Any = kombu_redis.Channel.Message


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    if self.connection is None or self.connection.client is None:
        raise redis.ConnectionError("the broker connection is already closed")
    return _original_connparams(self, asynchronous)


def _dropped(reason: str) -> Empty:
    # The item's content is not logged: it is unknown bytes.
    log.error("dropped an item on the broker queue that is not a kombu message (%s)", reason)
    return Empty()


def _brpop_read(self: Any, **options: Any) -> Any:
    try:
        return _original_brpop_read(self, **options)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # the envelope itself
        raise _dropped(type(exc).__name__) from None


class _CheckedMessage(_OriginalMessage):  # type: ignore[misc]
    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        try:
            super().__init__(payload, channel=channel, **kwargs)
        except Exception as exc:  # any malformed envelope: there is nothing to ack yet
            raise _dropped(type(exc).__name__) from None


def install() -> None:
    """Put the guards in place (idempotent)."""
    channel: Any = kombu_redis.Channel
    channel._connparams = _connparams
    channel._brpop_read = _brpop_read
    channel.Message = _CheckedMessage
