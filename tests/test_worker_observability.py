"""A worker's Prometheus metrics and JSON log lines, read from a real worker process.

The worker here listens on a broker database of its own, so that only the jobs of this module
reach it and its counters can be checked exactly.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_API_KEY, TEST_SECRET, WorkerProcess, wait_for_result
from worker.dev.embedded_redis import free_port
from worker.produce.producer import Producer

pytestmark = pytest.mark.e2e


@dataclass
class Observed:
    worker: WorkerProcess
    metrics_url: str
    flaky: tuple[str, dict[str, Any]]
    refused: tuple[str, dict[str, Any]]


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, settings: Any, sandbox: Any
) -> Iterator[Observed]:
    broker = urlunsplit(urlsplit(redis_url)._replace(path="/7"))
    port = free_port()
    worker = WorkerProcess(
        tmp_path_factory.mktemp("observed") / "worker.log",
        concurrency=2,
        env={
            "CELERY_BROKER_URL": broker,
            "STREAMCTL_METRICS_PORT": str(port),
            "STREAMCTL_LOG_FORMAT": "json",
        },
    ).start()
    app = Celery("observability-test", broker=broker)
    app.conf.task_default_queue = "streamctl"
    producer = Producer(app=app)
    try:
        flaky = {"app": "demo-origin", "inst": "live", "stream": f"obs-{uuid.uuid4().hex[:8]}"}
        refused = {"stream_id": 700_000 + uuid.uuid4().int % 100_000}
        sandbox.inject(flaky, "http_error", times=1, status=503)
        sandbox.inject(refused, "refuse", times=1, code="0005")
        jobs = [producer.close(**flaky), producer.close(**refused)]
        results = [wait_for_result(producer, job_id, timeout=40) for job_id in jobs]
        assert [r["outcome"] for r in results] == ["success", "failure"], results
        yield Observed(
            worker, f"http://127.0.0.1:{port}/metrics", (jobs[0], flaky), (jobs[1], refused)
        )
    finally:
        worker.stop()


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = requests.get(url, timeout=5).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_worker_serves_metrics_after_jobs(observed: Observed) -> None:
    def value(name: str, **labels: str) -> float | None:
        return samples(observed.metrics_url).get((name, frozenset(labels.items())))

    assert value("streamctl_jobs_total", outcome="success") == 1
    assert value("streamctl_jobs_total", outcome="failure") == 1
    assert value("streamctl_http_attempts_total", http_status="503", error="ServerError") == 1
    assert value("streamctl_http_attempts_total", http_status="200", error="none") == 1
    assert value("streamctl_http_attempts_total", http_status="200", error="ApiRefused") == 1
    assert value("streamctl_api_request_seconds_count") == 3
    # Exported whether or not any attempt had to wait for the rate limiter.
    assert value("streamctl_rate_limiter_wait_seconds_count") is not None


def test_worker_writes_json_lines_for_failed_attempts_and_outcomes(observed: Observed) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and '"event": "outcome"' not in observed.worker.log():
        time.sleep(0.1)
    log = observed.worker.log()
    assert TEST_SECRET not in log and TEST_API_KEY not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]

    def events(job_id: str, event: str) -> list[dict[str, Any]]:
        return [e for e in lines if e.get("job_id") == job_id and e.get("event") == event]

    flaky_id, flaky = observed.flaky
    # A line for the failed attempt; the successful one is told by the outcome line (its own
    # line is DEBUG: one line a job at INFO when nothing fails).
    [failed] = events(flaky_id, "attempt")
    assert (failed["http_status"], failed["level"], failed["target"]) == (503, "INFO", flaky)
    assert failed["error"].startswith("ServerError")
    [outcome] = events(flaky_id, "outcome")
    assert outcome["outcome"] == "success" and outcome["target"] == flaky
    assert outcome["attempts"] == 2

    refused_id, refused = observed.refused
    [outcome] = events(refused_id, "outcome")
    assert (outcome["outcome"], outcome["api_code"], outcome["target"]) == (
        "failure",
        "0005",
        refused,
    )


def test_exporter_on_a_taken_port_is_reported_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    from worker.telemetry.metrics import start_exporter

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with caplog.at_level("ERROR", logger="streamctl.metrics"):
            assert start_exporter(taken.getsockname()[1], "127.0.0.1") is False
    assert "cannot listen" in caplog.text
    assert start_exporter(None) is False
