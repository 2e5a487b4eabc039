"""Is a Redis broker holding no message at all: none queued, none taken and unacknowledged?

The janitor's test for a message kombu lost in its pop window (``worker.consume.janitor``):
while any message is queued or held, a pending job may be in it; when none is, every pending
job without a result has lost its message. Read through kombu's own channel, so a key prefix,
priority lists and a Sentinel-found master are the ones the workers use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from celery import Celery
from kombu.exceptions import InconsistencyError


def queue_names(app: Celery, channel: Any) -> list[str]:
    """The queues this app knows, and every queue bound on the broker to one of its exchanges
    (a worker started with ``-Q`` for another queue declared it there)."""
    names = {str(name) for name in app.amqp.queues} | {str(app.conf.task_default_queue)}
    exchanges = {str(queue.exchange.name) for queue in app.amqp.queues.values() if queue.exchange}
    for exchange in exchanges | {str(app.conf.task_default_exchange or "")}:
        with contextlib.suppress(InconsistencyError):  # nothing bound to that exchange
            names.update(str(queue) for _key, _pattern, queue in channel.get_table(exchange))
    return sorted(names)


def redis_broker_idle(app: Celery, queues: Iterable[str] | None = None) -> bool | None:
    """True when the Redis broker holds no message in ``queues`` (default: the app's) and none
    unacknowledged; None when the broker is not Redis (RabbitMQ loses no popped message)."""
    with app.connection_for_read() as connection:
        if connection.transport.driver_type != "redis":
            return None
        channel = connection.default_channel
        if any(channel._size(name) for name in queues or queue_names(app, channel)):
            return False
        with channel.conn_or_acquire() as client:
            return int(client.hlen(channel.unacked_key)) == 0
