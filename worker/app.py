"""The Celery app. Configuration is loaded by string from ``config.celeryconfig``."""

from __future__ import annotations

from celery import Celery, signals

from worker import brokerfix

brokerfix.install()  # keeps a worker alive through a Redis restart (see worker.brokerfix)
app = Celery("streamctl")
app.config_from_object("config.celeryconfig")

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
