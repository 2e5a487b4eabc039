"""Prometheus metrics of a worker: job outcomes, HTTP attempts, API latency, rate-limiter waits.

The exporter runs only when ``STREAMCTL_METRICS_PORT`` is set; it is started once per worker
process (see ``worker.consume.boot``). Every name has the ``streamctl_`` prefix so that our
metrics sit beside Flower's own ``/metrics`` (``flower_*``) in one Prometheus without clashing.
Labels carry outcomes, HTTP statuses and error class names only: never a target (unbounded
cardinality) and never anything from a request body.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger("streamctl.metrics")

JOB_OUTCOMES = Counter("streamctl_jobs", "Jobs that ended, by final outcome.", ["outcome"])
HTTP_ATTEMPTS = Counter(
    "streamctl_http_attempts",
    "HTTP requests sent to the API, by HTTP status (none: no reply) and error class.",
    ["http_status", "error"],
)
#: The API answers in about 0.4 s; buckets resolve that region finely and reach the 10 s read
#: timeout, beyond which an attempt cannot last.
API_LATENCY = Histogram(
    "streamctl_api_request_seconds",
    "Time from sending a request to the API to its reply or failure.",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0),
)
#: Waits range from nothing (under the limit) to seconds (a burst held back).
RATE_LIMIT_WAIT = Histogram(
    "streamctl_rate_limiter_wait_seconds",
    "Time an attempt waited for the cluster-wide rate limiter before it was sent.",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)

_started_lock = threading.Lock()
_started_port: int | None = None


def observe_attempt(http_status: int | None, error_class: str | None, seconds: float) -> None:
    """Count one HTTP attempt and its latency (the client calls this after every attempt)."""
    HTTP_ATTEMPTS.labels(
        http_status=str(http_status) if http_status is not None else "none",
        error=error_class or "none",
    ).inc()
    API_LATENCY.observe(seconds)


def observe_outcome(outcome: str) -> None:
    """Count one job's final outcome (called once per published final result)."""
    JOB_OUTCOMES.labels(outcome=outcome).inc()


def observe_rate_limit_wait(seconds: float) -> None:
    """Record how long an attempt waited for the rate limiter (the limiter calls this)."""
    RATE_LIMIT_WAIT.observe(max(seconds, 0.0))


def start_exporter(port: int | None, address: str = "0.0.0.0") -> bool:  # noqa: S104
    """Serve ``/metrics`` on ``port`` in a daemon thread, once per process.

    Every interface by default: Prometheus scrapes workers from other hosts. Returns False when
    no port is set, or when the port cannot be bound: that is logged as an error, but the worker
    keeps closing streams, which matters more than its metrics.
    """
    global _started_port
    if port is None:
        return False
    with _started_lock:
        if _started_port is None:
            try:
                start_http_server(port, addr=address)
            except OSError as exc:
                log.error(
                    "metrics exporter cannot listen on port %d: %s",
                    port,
                    exc,
                    extra={"event": "metrics_failed"},
                )
                return False
            _started_port = port
            log.info("metrics exporter listening on port %d", port, extra={"event": "metrics"})
    return True
