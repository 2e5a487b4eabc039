"""Shared parts of the fault suite: a private cluster to break, and the figures each test reports.

A ``Cluster`` is a Redis of its own (broker, job state and results), a producer bound to it and
worker processes started with the cluster's own tuning, so that a test can kill, restart or
flood it without disturbing the session's Redis and worker. The session's sandbox is shared: a
test uses targets of its own, so its per-target request counts are its own.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from celery import Celery

from config.brokers import broker_transport_options, declare_queue
from config.lanes import CONSUMED_QUEUES
from config.settings import Settings, load_settings
from tests.conftest import WorkerProcess
from worker.dev.embedded_redis import EmbeddedRedis
from worker.produce.producer import Producer

#: Quick timing for fault clusters; Settings' invariants hold (see ``_check_timing``): the
#: longest countdown (2 s) and the visibility timeout are under the expiry. A short visibility
#: timeout (live workers renew their messages) brings a killed worker's jobs back within seconds.
FAULT_TUNING = {
    "STREAMCTL_VISIBILITY_TIMEOUT": "10",
    "STREAMCTL_RETRY_DEADLINE": "5",
    "STREAMCTL_READ_TIMEOUT": "1.5",
    "STREAMCTL_CONNECT_TIMEOUT": "1",
    "STREAMCTL_MAX_ATTEMPTS": "5",
    "STREAMCTL_BACKOFF_INITIAL": "0.2",
    "STREAMCTL_BACKOFF_MAX": "1",
    "STREAMCTL_BUSY_BACKOFF": "1",
    "STREAMCTL_CELERY_RETRY_COUNTDOWN": "1",
    "STREAMCTL_CELERY_MAX_RETRIES": "2",
    "STREAMCTL_JOB_EXPIRY": "60",
    # A message lost in transit ends (expired) soon after its expiry, within the tests' waits.
    "STREAMCTL_JANITOR_INTERVAL": "1",
    "STREAMCTL_JANITOR_GRACE": "2",
    "STREAMCTL_LOG_LEVEL": "INFO",
}
# Settings the session environment may carry that a cluster must not inherit.
_NOT_INHERITED = ("CELERY_BROKER_URL", "STREAMCTL_RATE_LIMIT", "STREAMCTL_MAX_IN_FLIGHT")


def report(name: str, **figures: Any) -> dict[str, Any]:
    """Print a test's figures on one line; append them as JSON to $STREAMCTL_FIGURES_FILE."""
    print(f"FIGURES {name}: " + " ".join(f"{key}={value}" for key, value in figures.items()))
    path = os.environ.get("STREAMCTL_FIGURES_FILE")
    if path:
        entry = {"test": name, "at": datetime.now(UTC).isoformat(timespec="seconds"), **figures}
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")
    return figures


def unique_target(prefix: str) -> dict[str, str]:
    return {"app": "faults", "inst": "live", "stream": f"{prefix}-{uuid.uuid4().hex[:12]}"}


def make_app(settings: Settings, queue: str | None = None) -> Celery:
    """A Celery app like ``worker.broker.app.app`` but bound to ``settings``' broker: its
    queues (every lane's, or ``queue`` alone) and transport options declared for that broker,
    as config.celeryconfig does."""
    app = Celery("streamctl", set_as_current=False)
    app.config_from_object("config.celeryconfig")
    name = queue or app.conf.task_default_queue
    names = (queue,) if queue else CONSUMED_QUEUES
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.redis_url,
        broker_transport_options=broker_transport_options(settings),
        task_default_queue=name,
        task_queues=tuple(declare_queue(each, settings) for each in names),
    )
    return app


# --- RabbitMQ -------------------------------------------------------------------------------

T = TypeVar("T")

#: The issues' full-size fault scenarios (2,000 targets at 100/s, ...) with
#: STREAMCTL_FAULTS_FULL=1; the test command runs them smaller, to keep the suite short: the
#: same mechanism and the same bounds, over fewer jobs and an earlier kill.
FULL_SCALE = os.environ.get("STREAMCTL_FAULTS_FULL") == "1"


def scaled(full: T, quick: T) -> T:
    """``full`` with STREAMCTL_FAULTS_FULL=1, else ``quick``."""
    return full if FULL_SCALE else quick


#: The machine's RabbitMQ; every test takes a virtual host of its own on it, never ``/``.
RABBITMQ_URL = os.environ.get("STREAMCTL_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def rabbitmq_reachable() -> bool:
    parts = urlsplit(RABBITMQ_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            return shutil.which("rabbitmqctl") is not None
    except OSError:
        return False


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A fresh virtual host on the machine's RabbitMQ; yields its broker URL, deletes it after.

    Nothing a test leaves there (queues, messages, the delayed-delivery exchanges) reaches
    another test or another engineer's run on the same server.
    """
    parts = urlsplit(RABBITMQ_URL)
    vhost = f"streamctl-test-{secrets.token_hex(4)}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
        yield urlunsplit(parts._replace(path="/" + vhost))
    finally:
        # In the background (rabbitmqctl takes over a second): the test's clients are closed,
        # and the interpreter waits for the thread before it exits.
        threading.Thread(target=rabbitmqctl, args=("delete_vhost", vhost)).start()


@contextmanager
def broker(kind: str) -> Iterator[str | None]:
    """A test's broker URL for a parametrized test: ``"rabbitmq"`` a virtual host of its own,
    ``"redis"`` None (the cluster's own Redis is the broker)."""
    if kind == "redis":
        yield None
        return
    with rabbitmq_vhost() as url:
        yield url


#: Parameters for a test that runs on each broker; the RabbitMQ case needs the server.
BROKERS = [
    pytest.param("redis"),
    pytest.param(
        "rabbitmq",
        marks=pytest.mark.skipif(not rabbitmq_reachable(), reason=f"no RabbitMQ at {RABBITMQ_URL}"),
    ),
]


def close_vhost_connections(url: str) -> None:
    """Close every client connection to the virtual host of ``url``: the broker restart a
    test may cause on a shared RabbitMQ (stopping the server would break others' runs)."""
    vhost = urlsplit(url).path.removeprefix("/")
    rabbitmqctl("close_all_connections", "--vhost", vhost, "broker restarted by a test")


class Cluster:
    """A private Redis, a producer bound to it and the workers a test starts on it."""

    def __init__(
        self,
        root: Path,
        *,
        tuning: Mapping[str, str] | None = None,
        persistence: bool = False,
        broker_url: str | None = None,
        queue: str | None = None,
    ) -> None:
        self.root = root
        self.redis_server = EmbeddedRedis(persistence=persistence).start()
        self.queue = queue
        tuned = {**FAULT_TUNING, **(tuning or {})}
        channel = f"streamctl-faults-{secrets.token_hex(4)}:results"
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in _NOT_INHERITED},
            **tuned,
            "REDIS_URL": self.redis_server.url,
            "STREAMCTL_RESULTS_CHANNEL": channel,
        }
        if broker_url is not None:
            self.env["CELERY_BROKER_URL"] = broker_url
        overrides: dict[str, Any] = {
            name.removeprefix("STREAMCTL_").lower(): value for name, value in tuned.items()
        }
        self.settings = load_settings(
            **overrides,
            redis_url=self.redis_server.url,
            celery_broker_url=broker_url,
            results_channel=channel,
            rate_limit=None,
            max_in_flight=None,
        )
        self.app = make_app(self.settings, queue)
        self.producer = Producer(settings=self.settings, app=self.app)
        self.redis = redis.Redis.from_url(self.redis_server.url)
        self.workers: list[WorkerProcess] = []
        self._seen: dict[str, list[dict[str, Any]]] = {}
        self._last = "0-0"

    def start_worker(self, name: str, *, concurrency: int = 8) -> WorkerProcess:
        args = ("-Q", self.queue) if self.queue else ()
        worker = WorkerProcess(
            self.root / f"{name}.log", concurrency=concurrency, env=self.env, args=args
        )
        self.workers.append(worker.start())
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.redis.close()
        self.redis_server.cleanup()

    # --- results -------------------------------------------------------------------------

    def read_results(self) -> dict[str, list[dict[str, Any]]]:
        """Every job result in the results log so far, by job id (read incrementally)."""
        while True:
            entries = self.redis.xrange(self.settings.results_log, min=f"({self._last}", count=5000)
            if not entries:
                return self._seen
            for entry_id, fields in entries:
                self._last = entry_id.decode()
                result = json.loads(fields[b"result"])
                if result.get("type", "job") == "job":
                    self._seen.setdefault(result["job_id"], []).append(result)

    def wait_for(
        self, job_ids: Iterable[str], *, timeout: float, idle: float | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """Results of ``job_ids`` once all have one, or whatever came by ``timeout`` (or when
        no new result came for ``idle`` seconds)."""
        wanted = set(job_ids)
        deadline = time.monotonic() + timeout
        count, progressed = -1, time.monotonic()
        while True:
            seen = self.read_results()
            now = time.monotonic()
            if len(seen) != count:
                count, progressed = len(seen), now
            stalled = idle is not None and now - progressed > idle
            if wanted <= seen.keys() or now > deadline or stalled:
                return {job_id: seen.get(job_id, []) for job_id in wanted}
            time.sleep(0.2)

    def wait_until_done(self, count: int, *, timeout: float) -> int:
        """Wait until ``count`` job results are in the log; return how many there are."""
        deadline = time.monotonic() + timeout
        while len(self.read_results()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self._seen)


class TricklingProducer:
    """A producer thread that enqueues ``jobs`` closes one after another and, like any caller,
    retries an enqueue that raised EnqueueError; anything else it raises is a finding.

    The fault tests that take the broker away mid-run (a Redis restart, RabbitMQ's connections
    closed) let enqueues straddle the fault with it.
    """

    def __init__(self, producer: Producer, prefix: str, jobs: int, pause: float) -> None:
        self.accepted: list[str] = []
        self.failed_enqueues: list[str] = []
        self.unexpected: list[BaseException] = []
        self._args = (producer, prefix, jobs, pause)
        self.thread = threading.Thread(target=self._produce, daemon=True)

    def _produce(self) -> None:
        from worker.errors import EnqueueError

        producer, prefix, jobs, pause = self._args
        try:
            for index in range(jobs):
                target, job_id = unique_target(prefix), f"{prefix}-{index}"
                while True:
                    try:
                        producer.close(**target, job_id=job_id)
                    except EnqueueError as exc:
                        self.failed_enqueues.append(f"{job_id}: {exc}")
                        time.sleep(0.2)
                        continue
                    self.accepted.append(job_id)
                    break
                time.sleep(pause)  # a steady trickle, so enqueues straddle the fault
        except BaseException as exc:  # anything but EnqueueError is a finding
            self.unexpected.append(exc)

    def start_and_wait_for(self, count: int) -> int:
        """Start, and return once ``count`` enqueues were accepted (or the thread ended)."""
        self.thread.start()
        while len(self.accepted) < count and self.thread.is_alive():
            time.sleep(0.05)
        return len(self.accepted)


@contextmanager
def cluster(root: Path, **options: Any) -> Iterator[Cluster]:
    made = Cluster(root, **options)
    try:
        yield made
    finally:
        made.close()


def outcomes(results: Mapping[str, list[dict[str, Any]]]) -> Counter[str]:
    """How many jobs ended with each outcome (jobs with no result count as ``lost``)."""
    return Counter(found[0]["outcome"] if found else "lost" for found in results.values())


def lost_and_doubled(results: Mapping[str, list[dict[str, Any]]]) -> tuple[int, int]:
    """Jobs without a final result, and jobs with more than one."""
    lost = sum(1 for found in results.values() if not found)
    doubled = sum(1 for found in results.values() if len(found) > 1)
    return lost, doubled
