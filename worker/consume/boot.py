"""What a worker does as it starts: the ``worker_init`` hooks (eviction, metrics, janitor, GC),
and on ``worker_ready`` the renewer of its held messages.

The task package imports this module (``tasks/__init__.py``), and every worker imports the
task modules (``config.celeryconfig``'s ``imports``) before it sends ``worker_init``, whether it
was started by ``streamctl worker`` or ``celery -A worker.app worker``. Producers import the
broker app only, so they never connect these hooks.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from worker.broker.app import app
from worker.consume.lanes import UrgentConsumer
from worker.telemetry.logs import queue_stderr_handlers

# The urgent lane's own consumer channel and reserved threads, in every worker process.
app.steps["consumer"].add(UrgentConsumer)

#: Exit code of a worker that refuses to start on a Redis that may evict (a configuration error).
EVICTING_REDIS_EXIT = 2
_redis_policy_checked = False


def refuse_evicting_redis(**_: object) -> None:
    """Exit (code 2) before serving if a Redis the worker uses may evict keys (see
    ``worker.store.redis_policy``). Once a process: forked worker processes inherit the parent's
    check.

    On ``worker_init``, first of the hooks, for ``streamctl worker`` and ``celery worker`` alike.
    A plain exception would not do: Celery logs what a signal handler raises and starts anyway.
    """
    global _redis_policy_checked
    if _redis_policy_checked:
        return
    from config.settings import get_settings
    from worker.errors import ConfigError
    from worker.store.redis_policy import log, require_no_eviction

    try:
        require_no_eviction(get_settings())
    except ConfigError as exc:
        log.critical("refusing to start: %s", exc, extra={"event": "redis_policy_refused"})
        raise SystemExit(EVICTING_REDIS_EXIT) from None
    _redis_policy_checked = True


signals.worker_init.connect(refuse_evicting_redis, weak=False)


def _start_metrics_exporter(**_: object) -> None:
    """A worker serves its Prometheus metrics when STREAMCTL_METRICS_PORT is set, on
    STREAMCTL_METRICS_ADDRESS.

    ``worker_init`` fires in the process that runs the tasks (the pool is threads), before the
    worker reports ready, whether it was started by ``streamctl worker`` or ``celery worker``.
    """
    from config.settings import get_settings
    from worker.telemetry.metrics import start_exporter

    settings = get_settings()
    start_exporter(settings.metrics_port, str(settings.metrics_address))


signals.worker_init.connect(_start_metrics_exporter, weak=False)


def _declare_queues(**_: object) -> None:
    """Declare every lane's queue (and its exchange) before the consumer starts.

    On RabbitMQ, Celery's delayed-delivery step binds every queue of the app to its delay
    exchanges as the consumer starts; the urgent lane's queues are consumed by their own step
    (``worker.consume.lanes``), which declares them later, so their exchanges did not exist yet
    and countdowns (Celery retries, hand-backs) of urgent jobs were never delivered. A broker
    that does not answer yet is logged: the consumer declares the queues when it connects.
    """
    import logging

    log = logging.getLogger("streamctl.boot")
    try:
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            for queue in app.amqp.queues.values():
                queue(channel).declare()
    except Exception as exc:  # the broker is not reachable yet, say; Celery retries
        log.warning("could not declare the queues at start (%s)", type(exc).__name__)


signals.worker_init.connect(_declare_queues, weak=False)


def _start_janitor(**_: object) -> None:
    """Every worker sweeps for jobs the broker lost and ends them (see ``worker.consume.janitor``).

    Started on the same signal as the exporter, for the same reasons; producers never run it.
    """
    from config.settings import get_settings
    from worker.consume import janitor

    janitor.start(get_settings())


signals.worker_init.connect(_start_janitor, weak=False)


def _publish_without_confirms(sender: Any = None, **_: object) -> None:
    """A worker's own publishes (retries, hand-backs, a batch message's leftover jobs) go out
    without RabbitMQ's publisher confirms; producers keep them (config.brokers).

    With confirms on, a worker's threads publishing at once lost some of those messages under
    load: the publish returned, the message never reached the queue, and its jobs ended
    ``expired`` (tests/faults/test_fault_replays.py on RabbitMQ: 170 of 1,000 in one run,
    none without confirms). Set before the worker opens its producer connections.
    """
    app = getattr(sender, "app", None)
    if app is None:
        return
    options = dict(app.conf.broker_transport_options or {})
    if options.pop("confirm_publish", False):
        app.conf.broker_transport_options = options


signals.worker_init.connect(_publish_without_confirms, weak=False)

#: Allocations between two young-generation collections (CPython's default: 700). A job
#: allocates a few thousand short-lived objects; at the default, collections ran several times
#: per job, and older-generation ones stalled every thread of the worker for tens of ms, which
#: showed as a dip in throughput (benchmarks/run.py).
GC_YOUNG_THRESHOLD = 10_000


def _tune_gc(**_: object) -> None:
    """Collect less often, and never again scan what the worker imported at start.

    ``gc.freeze`` moves every object alive now (modules, classes, the app, the task modules
    Celery imported before this signal) to a generation the collector skips; the cycle
    collector still runs, for what the jobs allocate.
    """
    import gc

    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


signals.worker_init.connect(_tune_gc, weak=False)


def _start_renewer(sender: object = None, **_: object) -> None:
    """Renew the claims of the messages this worker holds (``worker.consume.renewer``).

    On ``worker_ready``, whose sender is the consumer: its channel holds the messages.
    """
    from config.settings import get_settings
    from worker.consume import renewer

    renewer.start(get_settings(), sender)


signals.worker_ready.connect(_start_renewer, weak=False)


def _queue_celery_log_lines(logger: logging.Logger | None = None, **_: object) -> None:
    """Celery's own worker lines go through the log writer too (worker.telemetry.logs)."""
    if logger is not None:
        queue_stderr_handlers(logger)


signals.after_setup_logger.connect(_queue_celery_log_lines, weak=False)
