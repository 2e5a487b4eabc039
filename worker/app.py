"""The Celery app. Configuration is loaded by string from ``config.celeryconfig``."""

from __future__ import annotations

from celery import Celery, signals

from worker import brokerfix

brokerfix.install()  # keeps a worker alive through a Redis restart (see worker.brokerfix)
# The base class of every task the app registers: a malformed message is dropped, not fatal.
app = Celery("streamctl", task_cls="worker.taskstrategy:GuardedTask")
app.config_from_object("config.celeryconfig")

#: Exit code of a worker that refuses to start on a Redis that may evict (a configuration error).
EVICTING_REDIS_EXIT = 2
_redis_policy_checked = False


def refuse_evicting_redis(**_: object) -> None:
    """Exit (code 2) before serving if a Redis the worker uses may evict keys (see
    ``worker.redis_policy``). Once a process: forked worker processes inherit the parent's check.

    On ``worker_init``, first of the hooks, for ``streamctl worker`` and ``celery worker`` alike.
    A plain exception would not do: Celery logs what a signal handler raises and starts anyway.
    """
    global _redis_policy_checked
    if _redis_policy_checked:
        return
    from config.settings import get_settings
    from worker.errors import ConfigError
    from worker.redis_policy import log, require_no_eviction

    try:
        require_no_eviction(get_settings())
    except ConfigError as exc:
        log.critical("refusing to start: %s", exc, extra={"event": "redis_policy_refused"})
        raise SystemExit(EVICTING_REDIS_EXIT) from None
    _redis_policy_checked = True


signals.worker_init.connect(refuse_evicting_redis, weak=False)

#: The stable task name; producers in any language enqueue by it.
CLOSE_TASK = "scaleengine.stream.close"
#: Many close jobs in one message (batches; see ``worker.chunks``).
CLOSE_MANY_TASK = "scaleengine.stream.close_many"


def _start_metrics_exporter(**_: object) -> None:
    """A worker serves its Prometheus metrics when STREAMCTL_METRICS_PORT is set, on
    STREAMCTL_METRICS_ADDRESS.

    ``worker_init`` fires in the process that runs the tasks (the pool is threads), before the
    worker reports ready, whether it was started by ``streamctl worker`` or ``celery worker``.
    """
    from config.settings import get_settings
    from worker.metrics import start_exporter

    settings = get_settings()
    start_exporter(settings.metrics_port, str(settings.metrics_address))


signals.worker_init.connect(_start_metrics_exporter, weak=False)


def _start_janitor(**_: object) -> None:
    """Every worker sweeps for jobs the broker lost and ends them (see ``worker.janitor``).

    Started on the same signal as the exporter, for the same reasons; producers never run it.
    """
    from config.settings import get_settings
    from worker import janitor

    janitor.start(get_settings())


signals.worker_init.connect(_start_janitor, weak=False)

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
