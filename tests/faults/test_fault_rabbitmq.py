"""Another broker: the whole path on RabbitMQ (state and results stay on Redis)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from config.lanes import BULK, URGENT
from tests.faults.harness import cluster, report, unique_target
from worker.broker.app import CLOSE_TASK

pytestmark = pytest.mark.faults

RABBITMQ_URL = os.environ.get("STREAMCTL_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            return shutil.which("rabbitmqctl") is not None
    except OSError:
        return False


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60, check=True)


@contextmanager
def own_vhost(url: str) -> Iterator[str]:
    """A virtual host of this run's own (the lanes' queues have fixed names): yields its URL."""
    parts = urlsplit(url)
    vhost = f"streamctl-test-{secrets.token_hex(4)}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
        yield urlunsplit(parts._replace(path="/" + vhost))
    finally:
        rabbitmqctl("delete_vhost", vhost)


@pytest.mark.skipif(not reachable(RABBITMQ_URL), reason=f"no RabbitMQ at {RABBITMQ_URL}")
def test_close_outcomes_with_rabbitmq_as_the_broker(tmp_path: Path, sandbox: Any) -> None:
    purged = 0  # a fresh virtual host: nothing of other runs to purge
    with own_vhost(RABBITMQ_URL) as broker_url, cluster(tmp_path, broker_url=broker_url) as fleet:
        fleet.start_worker("worker", concurrency=8)
        targets = {name: unique_target(f"amqp-{name}") for name in ("ok", "refused", "flaky")}
        sandbox.inject(targets["refused"], "refuse", code="0005")
        # More failures than one delivery's five attempts: only a Celery retry, published
        # with a countdown through RabbitMQ, can reach the success.
        sandbox.inject(targets["flaky"], "http_error", status=503, times=8)
        jobs = {fleet.producer.close(**target): name for name, target in targets.items()}
        bulk_close = fleet.producer.close(**unique_target("amqp-bulk"), lane=BULK)
        bad, stale = str(uuid.uuid4()), str(uuid.uuid4())
        fleet.app.send_task(CLOSE_TASK, kwargs={"stream_id": -1}, task_id=bad)
        late = {**unique_target("amqp-stale"), "expires_at": time.time() - 1}
        fleet.app.send_task(CLOSE_TASK, kwargs=late, task_id=stale)
        jobs.update({bad: "malformed", stale: "stale", bulk_close: "bulk"})
        results = fleet.wait_for(jobs, timeout=90)
        log = fleet.workers[0].log()

    outcomes = {
        jobs[job_id]: found[0]["outcome"] if found else "lost" for job_id, found in results.items()
    }
    flaky = next(found[0] for job_id, found in results.items() if jobs[job_id] == "flaky")
    report(
        "rabbitmq",
        broker="RabbitMQ",
        leftover_messages_purged=purged or 0,
        outcomes=outcomes,
        flaky_attempts=len(flaky["attempts"]),
        lost=sum(1 for outcome in outcomes.values() if outcome == "lost"),
    )
    assert "amqp://" in log  # the worker really ran on RabbitMQ
    assert "urgent lane: consuming streamctl.urgent, streamctl on a channel of its own" in log
    lanes = {jobs[job_id]: found[0]["lane"] for job_id, found in results.items() if found}
    # A rejected single close still has its task's default lane.
    assert lanes == {**dict.fromkeys(set(jobs.values()) - {"bulk"}, URGENT), "bulk": BULK}
    assert outcomes == {
        "bulk": "success",
        "ok": "success",
        "refused": "failure",
        "flaky": "success",
        "malformed": "rejected",
        "stale": "expired",
    }
    assert [a["http_status"] for a in flaky["attempts"]] == [503] * 8 + [200]
    assert len(sandbox.requests_for(targets["flaky"])) == 9
