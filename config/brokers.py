"""What each broker needs of Celery's configuration: the task queues and the transport options.

RabbitMQ (``amqp://``, ``amqps://``) is the broker for production (README "Reliability"): it
hands a dead consumer's unacknowledged messages back at once, where Redis waits for the
visibility timeout. On it every task queue is a quorum queue (replicated, durable, its
messages persistent), published to with publisher confirms, so that a producer that returned
has a job the broker holds. Redis keeps plain queues and its visibility timeout.

One function declares every task queue, whatever its name (``declare_queue``), so that each
queue of the configuration is declared the same way on the broker it runs on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kombu.entity import Exchange, Queue

if TYPE_CHECKING:
    from config.settings import Settings

#: Schemes of a RabbitMQ broker (kombu's py-amqp transport).
AMQP_SCHEMES = ("amqp", "amqps")


def is_amqp(url: str) -> bool:
    """Whether ``url`` names a RabbitMQ broker."""
    return url.partition("://")[0].lower() in AMQP_SCHEMES


def declare_queue(name: str, settings: Settings) -> Queue:
    """The task queue ``name`` as the settings' broker should hold it.

    On RabbitMQ a quorum queue, bound to a topic exchange of its own name: Celery's native
    delayed delivery (which quorum queues need for countdowns, see below) routes only through
    topic exchanges. Celery detects the quorum queue and turns global QoS off (quorum queues
    refuse it), and sends a message with a countdown through its ``celery_delayed_*``
    exchanges, so that the broker holds it until it is due instead of a worker's prefetch
    slot (with per-consumer QoS a worker could otherwise fill its prefetch with waiting
    messages and take nothing else). On Redis a plain queue with a direct exchange of its own
    name, as Celery declares one.
    """
    if is_amqp(settings.broker_url):
        return Queue(  # type: ignore[no-untyped-call]
            name,
            Exchange(name, type="topic", durable=True),  # type: ignore[no-untyped-call]
            routing_key=name,
            durable=True,
            queue_arguments={"x-queue-type": "quorum"},
        )
    return Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Celery's ``broker_transport_options`` for the settings' broker."""
    if is_amqp(settings.broker_url):
        # Every publish waits for the broker's ack (on a quorum queue: once a majority of its
        # replicas wrote it) and raises on a nack: a producer returns only for a job the broker
        # holds. A message the queue refuses (full, say) is an error, never a silent loss.
        return {"confirm_publish": True}
    # Redis redelivers a message that was not acknowledged within this time (a crashed worker);
    # live workers renew the claims of the messages they hold (worker.consume.renewer), so a
    # countdown or a long message need not fit inside it. Shorter than a job's expiry (Settings).
    # Kombu sweeps for such messages every interval x throttle seconds, 100 s by default, which
    # would add up to 100 s to a lost job's wait: sweep every tenth of the timeout (10 s at most).
    return {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": max(1, min(10, round(settings.visibility_timeout / 10))),
        "unacked_restore_throttle": 1,
        # Each channel's pool of Redis connections, which every acknowledgement takes one of:
        # kombu keeps 10 and raises MaxConnectionsError past them. With 500 jobs ending together
        # (measured under a trial gevent pool) acknowledgements failed
        # ("Couldn't ack") and their messages came back; a thread pool's acks take the same
        # path. One per thread, and some for the consumer, the renewer and the control channel.
        "max_connections": settings.worker_concurrency + settings.urgent_threads + 16,
    }


def delayed_delivery_seconds(countdown: float) -> float:
    """A countdown that Celery's native delayed delivery (RabbitMQ, quorum queues) accepts.

    It counts whole seconds and fails on a countdown under one (``int(0.4)`` is no delay it
    can route): such a countdown is rounded up to one second, on every broker alike.
    """
    return 1.0 if 0 < countdown < 1 else countdown
