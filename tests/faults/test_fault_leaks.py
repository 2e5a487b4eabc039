"""Leaks: with retries and failures going on, the secret, the API key and the request signatures
appear nowhere outside the worker: not on the broker, in results, the results log, logs or Flower.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_API_KEY, TEST_SECRET
from tests.faults.harness import cluster, report, unique_target
from worker.broker.app import CLOSE_TASK

pytestmark = pytest.mark.faults

# Any base64 HMAC-SHA256 (44 characters, one "=" of padding), raw or JSON-escaped.
SIGNATURE_SHAPE = re.compile(r"(?:[A-Za-z0-9+]|\\?/){43}=")


@contextmanager
def running_flower(env: dict[str, str], log_dir: Path) -> Iterator[Any]:
    """``streamctl flower`` on the cluster (None if this checkout has no Flower support)."""
    try:
        from tests.test_flower import Flower
    except ImportError:
        yield None
        return
    flower = Flower(log_dir / "flower.log")
    flower.env.update(env)
    flower.start()
    try:
        yield flower
    finally:
        flower.stop()


def flower_pages(flower: Any, job_ids: list[str]) -> dict[str, str]:
    """What Flower serves about the cluster's workers and these jobs."""
    if flower is None:
        return {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # Flower learns of jobs from their events
        if all(job_id in flower.get("/api/tasks").json() for job_id in job_ids):
            break
        time.sleep(0.3)
    pages = {
        "tasks": flower.get("/api/tasks").text,
        "workers": flower.get("/api/workers?refresh=1").text,
        "task types": flower.get("/api/task/types").text,
        "queues": flower.get("/api/queues/length").text,
        "metrics": flower.get("/metrics").text,
        "dashboard": flower.get("/workers").text,
    }
    for job_id in job_ids:
        pages[f"task {job_id}"] = flower.get(f"/api/task/info/{job_id}").text
        pages[f"result {job_id}"] = flower.get(f"/api/task/result/{job_id}").text
    pages["log"] = flower.log()
    return pages


def test_secret_key_and_signatures_appear_nowhere(tmp_path: Path, sandbox: Any) -> None:
    captured: list[str] = []
    published: list[str] = []
    stop = threading.Event()
    quick = {"STREAMCTL_RETRY_DEADLINE": "2", "STREAMCTL_CELERY_MAX_RETRIES": "1"}
    with cluster(tmp_path, tuning={**quick, "STREAMCTL_LOG_LEVEL": "DEBUG"}) as fleet:

        def monitor() -> None:
            with fleet.redis.monitor() as session:
                for command in session.listen():
                    captured.append(str(command.get("command", "")))
                    if stop.is_set():
                        return

        def subscribe() -> None:
            pubsub = fleet.redis.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(fleet.settings.results_channel)
            while not stop.is_set():
                message = pubsub.get_message(timeout=0.2)
                if message:
                    published.append(message["data"].decode())
            pubsub.close()

        threads = [threading.Thread(target=fn, daemon=True) for fn in (monitor, subscribe)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        worker = fleet.start_worker("worker", concurrency=8)
        with running_flower(fleet.env, tmp_path) as flower:
            faults = {
                "flaky": [("http_error", {"times": 2, "status": 500})],
                "slow": [("slow", {"delay": 2.5})],
                "reset": [("reset", {})],
                "429": [("rate_limit", {"retry_after": 1})],
                "refused": [("refuse", {"code": "0003"})],
                "down": [("http_error", {"times": 50, "status": 503})],
                "fine": [],
            }
            targets = {name: unique_target(f"leak-{name}") for name in faults}
            for name, injected in faults.items():
                for kind, options in injected:
                    sandbox.inject(targets[name], kind, **options)
            job_ids = [fleet.producer.close(**target) for target in targets.values()]
            rejected = str(uuid.uuid4())
            fleet.app.send_task(
                CLOSE_TASK, kwargs={"stream_id": 7, "colour": "x"}, task_id=rejected
            )
            results = fleet.wait_for([*job_ids, rejected], timeout=90)
            pages = flower_pages(flower, [*job_ids, rejected])
        stream = [
            fields[b"result"].decode()
            for _id, fields in fleet.redis.xrange(fleet.settings.results_log)
        ]
        stop.set()
        fleet.redis.ping()  # wakes the monitor so it sees the stop flag
        for thread in threads:
            thread.join(timeout=5)
        log = worker.log()

    outcomes = sorted(found[0]["outcome"] for found in results.values() if found)
    texts = {
        "broker and Redis traffic": "\n".join(captured),
        "published results": "\n".join(published),
        "results log": "\n".join(stream),
        "result records": json.dumps(results),
        "worker log": log,
        **{f"Flower {name}": text for name, text in pages.items()},
    }
    leaks, candidates = [], 0
    for where, text in texts.items():
        if TEST_SECRET in text:
            leaks.append(f"the secret in the {where}")
        if TEST_API_KEY in text:
            leaks.append(f"the API key in the {where}")
        if '"signature"' in text:
            leaks.append(f"a signed body in the {where}")
        for candidate in SIGNATURE_SHAPE.findall(text):
            candidates += 1
            if sandbox.signature_seen(candidate.replace("\\/", "/")):
                leaks.append(f"a signature in the {where}")
    signed = sum(len(sandbox.requests_for(target)) for target in targets.values())
    report(
        "leaks",
        jobs=len(results),
        outcomes=outcomes,
        requests_signed=signed,
        sources=len(texts),
        flower_pages=len(pages),
        bytes_scanned=sum(len(text) for text in texts.values()),
        signature_shaped_strings=candidates,
        leaks=len(leaks),
    )
    assert not leaks, leaks
    assert "scaleengine.stream.close" in texts["broker and Redis traffic"]  # the capture worked
    assert all(job_id in texts["published results"] for job_id in job_ids)
    assert set(outcomes) == {"success", "failure", "error", "rejected"}
    assert signed >= 10
