"""A job that did not succeed is a failed task: ``task-failed`` (Flower shows FAILURE) from a
real worker, seen by a real event receiver; its refusal is logged at WARNING or ERROR, and the
job still has exactly one final result on the results log."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import WorkerProcess, wait_for_result
from worker.broker.app import CLOSE_MANY_TASK, CLOSE_TASK, app
from worker.broker.messages import chunk_kwargs

pytestmark = pytest.mark.e2e


class Events:
    """Task events of a real worker, received as Flower receives them: ``{task id: [types]}``."""

    def __init__(self) -> None:
        self.seen: dict[str, list[dict[str, Any]]] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Events:
        self._thread.start()
        assert self._ready.wait(10), "event receiver did not start"
        return self

    def _run(self) -> None:
        with app.connection() as connection:
            self._receiver = app.events.Receiver(
                connection, handlers={"*": self._on_event}, app=app
            )
            self._receiver.should_stop = False
            # The consumer (its queue bound to the events exchange) exists before this returns.
            consumer = self._receiver.consume(limit=None, timeout=None, wakeup=False)
            next(consumer)  # bind the queue
            self._ready.set()
            while not self._stop.is_set():
                try:
                    next(consumer)
                except (TimeoutError, OSError):
                    continue
                except StopIteration:
                    break

    def _on_event(self, event: dict[str, Any]) -> None:
        if "uuid" in event:
            self.seen.setdefault(event["uuid"], []).append(event)

    def final(self, task_id: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.seen.get(task_id, []):
                if event["type"] in ("task-failed", "task-succeeded", "task-retried"):
                    return event
            time.sleep(0.05)
        raise AssertionError(f"no final task event for {task_id}: {self.seen.get(task_id)}")

    def stop(self) -> None:
        self._stop.set()
        self._receiver.should_stop = True
        self._thread.join(5)


@pytest.fixture
def events(worker: WorkerProcess) -> Iterator[Events]:
    receiver = Events().start()
    yield receiver
    receiver.stop()


def stream(prefix: str) -> dict[str, str]:
    return {"app": "demo-origin", "inst": "live", "stream": f"{prefix}-{uuid.uuid4().hex[:8]}"}


def results_of(redis_client: Any, settings: Any, job_id: str) -> list[dict[str, Any]]:
    entries = redis_client.xrange(settings.results_log)
    found = [json.loads(fields[b"result"]) for _id, fields in entries]
    return [result for result in found if result.get("job_id") == job_id]


def test_a_refused_or_rejected_close_is_a_failed_task(
    events: Events,
    worker: WorkerProcess,
    producer: Any,
    sandbox: Any,
    redis_client: Any,
    settings: Any,
) -> None:
    # The session's worker is shared: only what it logs from here on is this test's.
    log_start = len(worker.log())
    good, refused = stream("ok"), stream("refused")
    sandbox.inject(refused, "refuse", code="0003")
    ok_id = producer.close(**good)
    refused_id = producer.close(**refused)
    rejected_id = f"rejected-{uuid.uuid4().hex}"
    app.send_task(CLOSE_TASK, kwargs={"stream_id": "not a number"}, task_id=rejected_id)

    assert events.final(ok_id)["type"] == "task-succeeded"
    failed = events.final(refused_id)
    assert failed["type"] == "task-failed", failed
    assert "JobNotSucceeded" in failed["exception"] and "0003" in failed["exception"]
    assert events.final(rejected_id)["type"] == "task-failed"
    assert "rejected" in events.final(rejected_id)["exception"]

    for job_id, outcome in ((ok_id, "success"), (refused_id, "failure"), (rejected_id, "rejected")):
        assert wait_for_result(producer, job_id)["outcome"] == outcome
        assert len(results_of(redis_client, settings, job_id)) == 1  # one final result, still
    log = worker.log()[log_start:]
    assert f"ERROR/streamctl.jobs] outcome [job={refused_id}] failure" in log
    assert f"WARNING/streamctl.jobs] outcome [job={rejected_id}] rejected" in log
    assert f"INFO/streamctl.jobs] outcome [job={ok_id}] success" in log
    assert f"[{refused_id}] succeeded" not in log
    # One line, the expected failure: no traceback.
    assert "Traceback" not in log


def test_a_batch_message_fails_when_one_of_its_jobs_did_not_succeed(
    events: Events, producer: Any, sandbox: Any
) -> None:
    good, refused = stream("b-ok"), stream("b-refused")
    sandbox.inject(refused, "refuse", code="0005")
    ids = [f"job-{uuid.uuid4().hex}" for _ in range(2)]
    message_id, all_good_id = f"chunk-{uuid.uuid4().hex}", f"chunk-{uuid.uuid4().hex}"
    app.send_task(
        CLOSE_MANY_TASK,
        kwargs=chunk_kwargs(list(zip(ids, [good, refused], strict=True))),
        task_id=message_id,
    )
    app.send_task(
        CLOSE_MANY_TASK,
        kwargs=chunk_kwargs([(f"job-{uuid.uuid4().hex}", stream("b-ok2"))]),
        task_id=all_good_id,
    )
    failed = events.final(message_id)
    assert failed["type"] == "task-failed", failed
    assert "1 of 2 job(s) did not succeed (failure 1, success 1)" in failed["exception"]
    assert events.final(all_good_id)["type"] == "task-succeeded"
    assert [wait_for_result(producer, job_id)["outcome"] for job_id in ids] == [
        "success",
        "failure",
    ]
