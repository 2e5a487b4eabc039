"""Live workers renew the claims of the messages they hold, so Redis redelivers only a dead
worker's messages, and soon.

Kombu's Redis transport records each message a worker takes in ``unacked`` (a hash) and
``unacked_index`` (a sorted set scored by the time it was taken); every worker's restore sweep
puts back on the queue each message whose score is older than the visibility timeout. A score
never changes by itself, so the timeout had to outlast the longest time a live worker holds a
message (a countdown, a batch message's jobs): 300 s, and a SIGKILLed worker's messages waited
that long (the issue's trial: 317 s for a 20 s batch).

Here each worker process refreshes, every quarter of the visibility timeout, the scores of the
messages it still holds (``ZADD XX``: a message acknowledged meanwhile is not brought back).
A message is then redelivered only when no live worker has renewed it for a whole visibility
timeout: its worker died (or lost Redis for that long), and its jobs run elsewhere within the
timeout plus one restore sweep (``config.celeryconfig``). The per-target timestamp claims and
the final result's ``SET NX`` keep such a rerun from replaying a request or ending a job twice.

Only for a Redis broker: RabbitMQ returns a dead consumer's messages by itself, at once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from config.settings import Settings

log = logging.getLogger("streamctl.renewer")

#: Renewals per visibility timeout: three may fail in a row (a Redis blip) before a held
#: message is redelivered.
RENEWALS_PER_TIMEOUT = 4

_started_lock = threading.Lock()
_thread: threading.Thread | None = None


def renew_interval(settings: Settings) -> float:
    return settings.visibility_timeout / RENEWALS_PER_TIMEOUT


def held_tags(channel: Any) -> list[str]:
    """Delivery tags of the messages this channel holds unacknowledged (kombu's QoS)."""
    delivered = getattr(getattr(channel, "qos", None), "_delivered", None)
    if not delivered:
        return []
    # list() of a dict runs in C under the GIL: no "changed size during iteration" here.
    return [str(tag) for tag in list(delivered)]


def renew(channel: Any, now: float | None = None) -> int:
    """Refresh the unacked-index scores of ``channel``'s held messages; return how many.

    Through the channel's own (synchronous) pool, so a key prefix or a Sentinel-found master
    is the one kombu uses.
    """
    tags = held_tags(channel)
    if not tags or not hasattr(channel, "unacked_index_key"):
        return 0
    moment = time.time() if now is None else now
    with channel.conn_or_acquire() as client:
        client.zadd(channel.unacked_index_key, dict.fromkeys(tags, moment), xx=True)
    return len(tags)


def _task_channel(consumer: Any) -> Any:
    task_consumer = getattr(consumer, "task_consumer", None)
    return getattr(task_consumer, "channel", None)


def _run_forever(consumer: Any, interval: float) -> None:
    while True:
        time.sleep(interval)
        channel = _task_channel(consumer)  # read each time: a reconnect makes a new one
        if channel is None:
            continue
        try:
            renew(channel)
        except Exception as exc:  # Redis down, say: the next renewal tries again
            log.warning(
                "renewing held messages failed (%s); trying again in %g s",
                type(exc).__name__,
                interval,
                extra={"event": "renew_failed"},
            )


def start(settings: Settings, consumer: Any) -> bool:
    """Start this process's renewer for ``consumer``'s messages, once; False if it runs already
    or the broker is not Redis."""
    global _thread
    channel = _task_channel(consumer)
    if channel is None or not hasattr(channel, "unacked_index_key"):
        return False
    with _started_lock:
        if _thread is not None:
            return False
        _thread = threading.Thread(
            target=_run_forever,
            args=(consumer, renew_interval(settings)),
            name="streamctl-renewer",
            daemon=True,
        )
        _thread.start()
    return True
