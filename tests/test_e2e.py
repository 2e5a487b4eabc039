"""End to end: producer -> broker -> real worker process -> sandbox over HTTP -> results."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from tests.conftest import TEST_API_KEY, TEST_SECRET, wait_for_result
from worker.model.results import RESULT_FIELDS
from worker.model.targets import Target

pytestmark = pytest.mark.e2e
SIGNATURE_SHAPE = re.compile(r"(?:[A-Za-z0-9+]|\\?/){43}=")


def unique_stream(prefix: str = "s") -> dict[str, str]:
    return {"app": "demo-origin", "inst": "live", "stream": f"{prefix}-{uuid.uuid4().hex[:10]}"}


def test_close_succeeds_and_result_is_on_channel_and_in_stream(
    producer: Any, worker: Any, redis_client: redis.Redis, settings: Any, sandbox: Any
) -> None:
    target = unique_stream()
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(settings.results_channel)
    job_id = producer.close(**target, origin_url="jb-origin.secdn.net")

    result = wait_for_result(producer, job_id)
    assert result["outcome"] == "success"
    assert list(result) == list(RESULT_FIELDS)
    assert result["type"] == "job"
    assert result["target"] == target
    assert result["cdn"] == 158
    assert result["origin_url"] == "jb-origin.secdn.net"
    assert result["handle_time"] is not None and result["handle_time"] >= 0
    assert len(result["attempts"]) == 1 and result["attempts"][0]["http_status"] == 200
    assert result["enqueued_at"] and result["finished_at"] and result["worker"]

    published = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not published:
        message = pubsub.get_message(timeout=0.5)
        if message and json.loads(message["data"]).get("job_id") == job_id:
            published.append(json.loads(message["data"]))
    pubsub.close()
    assert published == [result]

    logged = [
        json.loads(fields[b"result"])
        for _id, fields in redis_client.xrange(settings.results_log)
        if json.loads(fields[b"result"]).get("job_id") == job_id
    ]
    assert logged == [result]
    assert len(sandbox.requests_for(target)) == 1


def test_target_failing_three_times_succeeds_on_fourth_with_fresh_signatures(
    producer: Any, worker: Any, sandbox: Any
) -> None:
    target = unique_stream("flaky")
    sandbox.inject(target, "http_error", times=3, status=503)
    job_id = producer.close(**target)

    result = wait_for_result(producer, job_id, timeout=40)
    assert result["outcome"] == "success", result
    assert [a["http_status"] for a in result["attempts"]] == [503, 503, 503, 200]
    seen = sandbox.requests_for(target)
    assert len(seen) == 4
    timestamps = [record["timestamp"] for record in seen]
    assert timestamps == sorted(timestamps) and len(set(timestamps)) == 4
    assert len({record["body_sha256"] for record in seen}) == 4
    assert [a["timestamp"] for a in result["attempts"]] == timestamps


def test_two_closes_of_one_stream_at_once_carry_different_timestamps(
    producer: Any, worker: Any, sandbox: Any
) -> None:
    target = {"stream_id": 900_000 + uuid.uuid4().int % 100_000}
    first = producer.close(**target)
    second = producer.close(**target)
    results = [wait_for_result(producer, job_id) for job_id in (first, second)]
    assert [r["outcome"] for r in results] == ["success", "success"]
    seen = sandbox.requests_for(target)
    assert len(seen) == 2
    assert seen[0]["timestamp"] != seen[1]["timestamp"]
    assert seen[0]["body_sha256"] != seen[1]["body_sha256"]
    assert sandbox.stats()["replays"] == 0


def test_permanent_refusal_is_failure_without_retry(
    producer: Any, worker: Any, sandbox: Any
) -> None:
    target = unique_stream("refused")
    sandbox.inject(target, "refuse", times=5, code="0005")
    result = wait_for_result(producer, producer.close(**target))
    assert result["outcome"] == "failure"
    assert result["api_code"] == "0005"
    assert len(result["attempts"]) == 1


def test_transient_failures_outlasting_retries_end_as_error(
    producer: Any, worker: Any, sandbox: Any, settings: Any
) -> None:
    target = unique_stream("down")
    sandbox.inject(target, "http_error", times=1000, status=502)
    result = wait_for_result(producer, producer.close(**target), timeout=90)
    assert result["outcome"] == "error"
    assert "retries exhausted" in result["message"]
    # Every delivery (the first and each Celery retry) ran its in-task attempts.
    deliveries = settings.celery_max_retries + 1
    assert len(result["attempts"]) >= deliveries
    assert all(a["http_status"] == 502 for a in result["attempts"])


def test_expired_job_is_never_sent(producer: Any, worker: Any, sandbox: Any) -> None:
    target = unique_stream("late")
    # The only attempt is slower than the job's whole life: nothing may be sent after expiry.
    sandbox.inject(target, "http_error", times=1000, status=503)
    job_id = producer.close(**target, expires=1.5)
    result = wait_for_result(producer, job_id, timeout=30)
    assert result["outcome"] == "expired"
    expires_at = time.time()  # upper bound for when the job's expiry had passed
    for record in sandbox.requests_for(target):
        assert record["received_at"] <= expires_at
    count = len(sandbox.requests_for(target))
    time.sleep(2)
    assert len(sandbox.requests_for(target)) == count


def test_job_already_expired_at_pickup(producer: Any, worker: Any, sandbox: Any) -> None:
    target = unique_stream("stale")
    job_id = str(uuid.uuid4())
    producer.app.send_task(
        "scaleengine.stream.close",
        kwargs={**target, "enqueued_at": time.time() - 100, "expires_at": time.time() - 1},
        task_id=job_id,
    )
    result = wait_for_result(producer, job_id)
    assert result["outcome"] == "expired"
    assert result["attempts"] == []
    assert sandbox.requests_for(target) == []


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"app": "a", "inst": "i"}, "missing stream"),
        ({"stream_id": -4}, "positive integer"),
        ({"stream_id": 5, "app": "a"}, "not both"),
        ({"app": "a", "inst": "i", "stream": ""}, "must not be empty"),
        ({"app": "a", "inst": "i", "stream": "x\n"}, "control character"),
        ({"app": "a", "inst": "i", "stream": "x" * 10_000}, "limit is 255"),
        ({"stream_id": 5, "signature": "forged"}, "unknown field"),
        ({"stream_id": [1]}, "positive integer"),
        ({"stream_id": 5, "expires_at": "tomorrow"}, "expires_at"),
    ],
)
def test_bad_raw_message_is_rejected_and_worker_survives(
    producer: Any, worker: Any, sandbox: Any, kwargs: dict[str, Any], complaint: str
) -> None:
    before = sandbox.stats()["total"]
    job_id = str(uuid.uuid4())
    producer.app.send_task("scaleengine.stream.close", kwargs=kwargs, task_id=job_id)
    result = wait_for_result(producer, job_id)
    assert result["outcome"] == "rejected"
    assert complaint in result["message"]
    assert result["attempts"] == []
    assert sandbox.stats()["total"] == before
    assert worker.alive()


def test_positional_arguments_are_rejected(producer: Any, worker: Any) -> None:
    job_id = str(uuid.uuid4())
    producer.app.send_task("scaleengine.stream.close", args=["a", "i", "s"], task_id=job_id)
    result = wait_for_result(producer, job_id)
    assert result["outcome"] == "rejected"
    assert "positional" in result["message"]


def test_same_job_id_closes_once(producer: Any, worker: Any, sandbox: Any) -> None:
    target = unique_stream("idem")
    job_id = f"my-key-{uuid.uuid4().hex}"
    assert producer.close(**target, job_id=job_id) == job_id
    assert producer.close(**target, job_id=job_id) == job_id  # still pending or running
    wait_for_result(producer, job_id)
    assert producer.close(**target, job_id=job_id) == job_id  # done
    time.sleep(1.0)
    assert len(sandbox.requests_for(target)) == 1


def test_redelivered_final_job_is_not_sent_again(producer: Any, worker: Any, sandbox: Any) -> None:
    target = unique_stream("redeliver")
    job_id = producer.close(**target)
    first = wait_for_result(producer, job_id)
    # The broker hands the same job over again (as after a lost acknowledgement).
    producer.app.send_task("scaleengine.stream.close", kwargs=target, task_id=job_id)
    time.sleep(1.5)
    assert len(sandbox.requests_for(target)) == 1
    assert producer.state.final_result(job_id) == first


def test_secret_and_signatures_never_leave_the_worker(
    producer: Any, worker: Any, sandbox: Any, redis_client: redis.Redis
) -> None:
    """Everything written to Redis (broker messages, results, stream) and the worker's log."""
    captured: list[str] = []
    stop = threading.Event()

    def monitor() -> None:
        with redis_client.monitor() as session:
            for command in session.listen():
                captured.append(str(command.get("command", "")))
                if stop.is_set():
                    return

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    time.sleep(0.3)
    flaky = unique_stream("leak")
    sandbox.inject(flaky, "http_error", times=2, status=500)
    refused = unique_stream("leak-refused")
    sandbox.inject(refused, "refuse", times=1, code="0003")
    jobs = [producer.close(**flaky), producer.close(**refused), producer.close(stream_id=4242)]
    results = [wait_for_result(producer, job_id, timeout=40) for job_id in jobs]
    stop.set()
    redis_client.ping()  # wakes the monitor so it sees the stop flag
    thread.join(timeout=5)

    traffic = "\n".join(captured)
    assert "scaleengine.stream.close" in traffic  # the capture did see the broker messages
    assert any(r["job_id"] in traffic for r in results)
    texts = {"redis traffic": traffic, "results": json.dumps(results), "worker log": worker.log()}
    for where, text in texts.items():
        assert TEST_SECRET not in text, f"the secret leaked into the {where}"
        assert TEST_API_KEY not in text, f"the API key leaked into the {where}"
        assert '"signature"' not in text, f"a signed body leaked into the {where}"
        # Any base64 HMAC-SHA256 (44 characters, one "=" of padding), raw or JSON-escaped.
        for candidate in SIGNATURE_SHAPE.findall(text):
            unescaped = candidate.replace("\\/", "/")
            assert not sandbox.signature_seen(unescaped), f"a signature leaked into the {where}"
    assert sandbox.stats()["total"] > 0


def test_target_key_is_stable() -> None:
    assert (
        Target.parse({"app": "a/b", "inst": "c", "stream": "d"}).key
        != Target.parse({"app": "a", "inst": "b/c", "stream": "d"}).key
    )
