"""Prometheus metrics of a worker: job outcomes, HTTP attempts, API latency, rate-limiter waits.

The exporter runs only when ``STREAMCTL_METRICS_PORT`` is set; it is started once per worker
process (see ``worker.consume.boot``), on ``STREAMCTL_METRICS_ADDRESS`` (loopback unless told
otherwise). A scrape is one short request, so a connection gets CONNECTION_TIMEOUT seconds in
all, and at most MAX_CONNECTIONS are served at once: a client that connects and sends nothing,
or trickles bytes, cannot pin threads (one such client had pinned 330 in 50 s).

Every name has the ``streamctl_`` prefix so that our metrics sit beside Flower's own
``/metrics`` (``flower_*``) in one Prometheus without clashing. Labels carry outcomes, HTTP
statuses and error class names only: never a target (unbounded cardinality) and never
anything from a request body.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from prometheus_client.exposition import MetricsHandler

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

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

#: Seconds a connection may last from accept to close, however slowly its client sends: a
#: scrape takes milliseconds; Prometheus' own scrape timeout is 10 s by default, and it
#: reconnects for each scrape.
CONNECTION_TIMEOUT = 5.0
#: Connections served at once; one more is closed at once. A scraper holds one at a time per
#: target; this leaves room for a few (a redundant Prometheus pair, a person with curl).
MAX_CONNECTIONS = 8

_started_lock = threading.Lock()
_started_port: int | None = None


#: Label values -> their child counter: ``labels()`` checks, locks and looks them up on every
#: call, and a job counts an attempt and an outcome. Filled on first use; two threads filling
#: the same entry get the same child, as ``labels()`` returns one child per value.
_attempt_counters: dict[tuple[int | None, str | None], Counter] = {}
_outcome_counters: dict[str, Counter] = {}


def observe_attempt(http_status: int | None, error_class: str | None, seconds: float) -> None:
    """Count one HTTP attempt and its latency (the client calls this after every attempt)."""
    counter = _attempt_counters.get((http_status, error_class))
    if counter is None:
        counter = _attempt_counters[http_status, error_class] = HTTP_ATTEMPTS.labels(
            http_status=str(http_status) if http_status is not None else "none",
            error=error_class or "none",
        )
    counter.inc()
    API_LATENCY.observe(seconds)


def observe_outcome(outcome: str) -> None:
    """Count one job's final outcome (called once per published final result)."""
    counter = _outcome_counters.get(outcome)
    if counter is None:
        counter = _outcome_counters[outcome] = JOB_OUTCOMES.labels(outcome=outcome)
    counter.inc()


def observe_rate_limit_wait(seconds: float) -> None:
    """Record how long an attempt waited for the rate limiter (the limiter calls this)."""
    RATE_LIMIT_WAIT.observe(max(seconds, 0.0))


class _DeadlineReader(io.RawIOBase):
    """A connection's input that ends at ``deadline`` (``time.monotonic()``): each read may
    wait only for what is left, so a client trickling a byte at a time is cut off too."""

    def __init__(self, connection: socket.socket, deadline: float) -> None:
        super().__init__()
        self._connection = connection
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the connection's time is up")
        self._connection.settimeout(left)
        return self._connection.recv_into(buffer)


class _Handler(MetricsHandler):
    server: MetricsServer

    def setup(self) -> None:
        super().setup()
        deadline = time.monotonic() + self.server.connection_timeout
        # The reply is written under the timeout of the last read, which ended before it.
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))


class MetricsServer(ThreadingHTTPServer):
    """``/metrics`` over HTTP, a thread per connection, with a deadline and a bound."""

    daemon_threads = True
    #: Connections the kernel queues until accepted (and then served or closed): past the
    #: default 5, a burst has its SYNs dropped, and clients retry only after a second.
    request_queue_size = 64

    def __init__(
        self,
        address: str,
        port: int,
        *,
        timeout: float = CONNECTION_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.connection_timeout = timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__((address, port), _Handler)

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # all slots taken: closed at once, no thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve_metrics(
    address: str,
    port: int,
    *,
    timeout: float = CONNECTION_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> MetricsServer:
    """Listen on ``address``:``port`` and serve ``/metrics`` from a daemon thread."""
    server = MetricsServer(address, port, timeout=timeout, max_connections=max_connections)
    threading.Thread(target=server.serve_forever, name="streamctl-metrics", daemon=True).start()
    return server


def start_exporter(port: int | None, address: str = "127.0.0.1") -> bool:
    """Serve ``/metrics`` on ``address``:``port`` in a daemon thread, once per process.

    Returns False when no port is set, or when the port cannot be bound: that is logged as an
    error, but the worker keeps closing streams, which matters more than its metrics.
    """
    global _started_port
    if port is None:
        return False
    with _started_lock:
        if _started_port is None:
            try:
                serve_metrics(address, port)
            except OSError as exc:
                log.error(
                    "metrics exporter cannot listen on %s port %d: %s",
                    address,
                    port,
                    exc,
                    extra={"event": "metrics_failed"},
                )
                return False
            _started_port = port
            log.info(
                "metrics exporter listening on %s port %d",
                address,
                port,
                extra={"event": "metrics"},
            )
    return True
