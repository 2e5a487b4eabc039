"""What a worker does as it starts: the ``worker_init`` hooks (metrics exporter, janitor, GC).

The task package imports this module (``tasks/__init__.py``), and every worker imports the
task modules (``config.celeryconfig``'s ``imports``) before it sends ``worker_init``, whether it
was started by ``streamctl worker`` or ``celery -A worker.app worker``. Producers import the
broker app only, so they never connect these hooks.
"""

from __future__ import annotations

from celery import signals


def _start_metrics_exporter(**_: object) -> None:
    """A worker serves its Prometheus metrics when STREAMCTL_METRICS_PORT is set.

    ``worker_init`` fires in the process that runs the tasks (the pool is threads), before the
    worker reports ready, whether it was started by ``streamctl worker`` or ``celery worker``.
    """
    from config.settings import get_settings
    from worker.telemetry.metrics import start_exporter

    start_exporter(get_settings().metrics_port)


signals.worker_init.connect(_start_metrics_exporter, weak=False)


def _start_janitor(**_: object) -> None:
    """Every worker sweeps for jobs the broker lost and ends them (see ``worker.consume.janitor``).

    Started on the same signal as the exporter, for the same reasons; producers never run it.
    """
    from config.settings import get_settings
    from worker.consume import janitor

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
