"""The timing rules the settings are chosen together to keep; the settings refuse to break them.

A retry's countdown is shorter than a job's expiry, or the retry could never run; the broker's
visibility timeout is shorter than the expiry, so that a job lost with a crashed worker is
redelivered while it may still run (live workers renew the messages they hold, so a countdown
or a long batch message need not fit inside the timeout); and the worker processes are no
more than its calls in flight (each takes one), their metrics ports under 65536.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from config.processes import process_count

if TYPE_CHECKING:
    from config.settings import Settings


def check_timing(settings: Settings) -> None:
    """Raise ValueError, naming the variable, when the settings break a timing rule."""
    longest_countdown = settings.celery_retry_countdown * 2 ** max(
        settings.celery_max_retries - 1, 0
    )
    if longest_countdown >= settings.job_expiry:
        raise ValueError(
            "STREAMCTL_CELERY_RETRY_COUNTDOWN: the longest retry countdown "
            f"({longest_countdown:g} s) must be shorter than STREAMCTL_JOB_EXPIRY "
            f"({settings.job_expiry:g} s), or the retry could never run"
        )
    processes = process_count(settings.worker_concurrency, settings.worker_processes)
    if processes > settings.worker_concurrency:
        raise ValueError(
            f"STREAMCTL_WORKER_PROCESSES ({processes}) must be at most "
            f"STREAMCTL_WORKER_CONCURRENCY ({settings.worker_concurrency}): the processes share "
            "the calls in flight, each at least one"
        )
    port = settings.metrics_port
    if port is not None and port + processes > 65536:
        raise ValueError(
            "STREAMCTL_METRICS_PORT: the worker processes take this port and the "
            f"{processes - 1} after it, which must stay under 65536"
        )
    if settings.visibility_timeout >= settings.job_expiry:
        raise ValueError(
            f"STREAMCTL_VISIBILITY_TIMEOUT ({settings.visibility_timeout:g} s) must be shorter "
            f"than STREAMCTL_JOB_EXPIRY ({settings.job_expiry:g} s), so that a lost job is "
            "redelivered while it may still run"
        )
