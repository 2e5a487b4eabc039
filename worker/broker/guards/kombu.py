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

import inspect
import json
import logging
from collections.abc import Callable
from queue import Empty
from typing import Any

import kombu
import redis
from kombu.transport import redis as kombu_redis

from worker.errors import IncompatibleDependency

log = logging.getLogger("streamctl.broker")

#: The private names of ``kombu.transport.redis.Channel`` the guards replace. They are not
#: kombu's public API: ``install`` checks that they are there, as the guards call them, before
#: it replaces anything, so that another kombu fails at start with a clear error, not with an
#: AttributeError in the middle of a Redis restart.
PATCHED = ("_connparams", "_brpop_read", "Message")
#: The kombu the guards were written and tested against (tests/faults/).
TESTED_WITH = "5.7"

#: Kombu's own versions of the patched names, and the Channel class they were taken from.
_originals: dict[str, Any] = {}


def _connparams(self: Any, asynchronous: bool = False) -> Any:
    if self.connection is None or self.connection.client is None:
        raise redis.ConnectionError("the broker connection is already closed")
    return _originals["_connparams"](self, asynchronous)


def _dropped(reason: str) -> Empty:
    # The item's content is not logged: it is unknown bytes.
    log.error("dropped an item on the broker queue that is not a kombu message (%s)", reason)
    return Empty()


def _brpop_read(self: Any, **options: Any) -> Any:
    try:
        return _originals["_brpop_read"](self, **options)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # the envelope itself
        raise _dropped(type(exc).__name__) from None


def _checked_message(original: type) -> type:
    class _CheckedMessage(original):  # type: ignore[misc]
        def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
            try:
                super().__init__(payload, channel=channel, **kwargs)
            except Exception as exc:  # any malformed envelope: there is nothing to ack yet
                raise _dropped(type(exc).__name__) from None

    return _CheckedMessage


def check_patchable(channel: Any) -> None:
    """Raise IncompatibleDependency unless ``channel`` has the names the guards replace, in the
    shape the guards call them."""
    problems = [f"no {name}" for name in PATCHED if not callable(getattr(channel, name, None))]
    if not problems:
        if not _accepts(channel._connparams, "asynchronous"):
            problems.append("_connparams takes no 'asynchronous' argument")
        if not isinstance(channel.Message, type) or not _accepts(channel.Message, "channel"):
            problems.append("Message is not a class taking a 'channel' argument")
    if problems:
        raise IncompatibleDependency(
            f"kombu {kombu.__version__} is not supported: kombu.transport.redis.Channel has "
            f"{'; '.join(problems)} (worker.broker.guards.kombu guards these private names; it was "
            f"tested with kombu {TESTED_WITH}): install the kombu version pyproject.toml allows"
        )


def _accepts(function: Callable[..., Any], argument: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # no signature to read: it cannot be vouched for
        return False
    return argument in parameters


def install() -> None:
    """Put the guards in place (idempotent); IncompatibleDependency if kombu lacks a name."""
    channel: Any = kombu_redis.Channel
    if _originals.get("Channel") is channel:
        return
    check_patchable(channel)
    _originals.update({name: getattr(channel, name) for name in PATCHED}, Channel=channel)
    channel._connparams = _connparams
    channel._brpop_read = _brpop_read
    channel.Message = _checked_message(channel.Message)
