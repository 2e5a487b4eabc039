"""A job id is an idempotency key: the same request again gets the first job, another is refused.

"The same request" is the job's target and origin_url (not its expiry: a caller that retries
recomputes that). Real worker, real Redis, the sandbox over HTTP, the CLI as a subprocess.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from tests.conftest import wait_for_result
from tests.test_cli import streamctl

pytestmark = pytest.mark.e2e


def unique_id(base: int) -> int:
    return base + uuid.uuid4().int % 100_000


def key() -> str:
    return f"k-{uuid.uuid4().hex}"


def test_same_fields_again_return_the_first_job_and_its_result(
    producer: Any, worker: Any, sandbox: Any
) -> None:
    target = {"stream_id": unique_id(810_000)}
    job_id = key()
    assert producer.close(**target, origin_url="jb-origin.secdn.net", job_id=job_id) == job_id
    first = wait_for_result(producer, job_id)
    # A retry with a recomputed expiry is still the same close.
    again = producer.close(**target, origin_url="jb-origin.secdn.net", expires=60, job_id=job_id)
    assert again == job_id
    time.sleep(0.5)
    assert producer.state.final_result(job_id) == first
    assert len(sandbox.requests_for(target)) == 1


@pytest.mark.parametrize(
    ("change", "differing"),
    [
        ("stream_id", "stream_id"),
        ("names", "app, inst, stream, stream_id"),
        ("origin_url", "origin_url"),
    ],
)
def test_other_fields_under_a_used_job_id_are_refused(
    producer: Any, worker: Any, sandbox: Any, change: str, differing: str
) -> None:
    from worker.errors import IdempotencyConflict

    first_target = {"stream_id": unique_id(820_000)}
    job_id = key()
    producer.close(**first_target, job_id=job_id)
    other: dict[str, Any] = {
        "stream_id": {"stream_id": unique_id(830_000)},
        "names": {"app": "demo-origin", "inst": "live", "stream": job_id},
        "origin_url": {**first_target, "origin_url": "other-origin.secdn.net"},
    }[change]
    with pytest.raises(IdempotencyConflict) as pending:
        producer.close(**other, job_id=job_id)  # while the first is pending or running
    first = wait_for_result(producer, job_id)
    with pytest.raises(IdempotencyConflict) as done:
        producer.close(**other, job_id=job_id)  # and once it is done
    for refused in (pending, done):
        message = str(refused.value)
        assert f"job id {job_id}" in message
        assert f"differ: {differing}" in message
    assert first["target"] == first_target
    time.sleep(0.5)
    assert producer.state.final_result(job_id) == first
    assert len(sandbox.requests_for(first_target)) == 1
    if change != "origin_url":
        assert sandbox.requests_for(other) == []


def test_cli_refuses_a_reused_job_id_with_exit_2(worker: Any, sandbox: Any) -> None:
    first, other = unique_id(840_000), unique_id(850_000)
    job_id = key()
    done = streamctl("close", "--stream-id", str(first), "--job-id", job_id, "--wait")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["outcome"] == "success"

    refused = streamctl("close", "--stream-id", str(other), "--job-id", job_id, "--wait")
    assert refused.returncode == 2, refused.stdout
    assert refused.stdout == ""
    assert f"job id {job_id}" in refused.stderr
    assert "stream_id" in refused.stderr
    assert "Traceback" not in refused.stderr
    time.sleep(0.5)
    assert sandbox.requests_for({"stream_id": other}) == []

    # The same close again still answers with its first result.
    again = streamctl("close", "--stream-id", str(first), "--job-id", job_id, "--wait")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["target"] == {"stream_id": first}
    assert len(sandbox.requests_for({"stream_id": first})) == 1


def test_a_batch_job_id_is_held_to_its_target_too(producer: Any, worker: Any, sandbox: Any) -> None:
    from worker.errors import IdempotencyConflict
    from worker.model.targets import CloseJob
    from worker.produce.batch import BatchSender

    target = {"stream_id": unique_id(860_000)}
    other = {"stream_id": unique_id(870_000)}
    started = BatchSender().start([CloseJob.parse(target)])
    (job_id,) = started.job_ids
    with pytest.raises(IdempotencyConflict, match="differ: stream_id"):
        producer.close(**other, job_id=job_id)  # the batch job may still be pending
    first = wait_for_result(producer, job_id)
    with pytest.raises(IdempotencyConflict, match="differ: stream_id"):
        producer.close(**other, job_id=job_id)
    assert producer.close(**target, job_id=job_id) == job_id
    time.sleep(0.5)
    assert producer.state.final_result(job_id) == first
    assert sandbox.requests_for(other) == []
    assert len(sandbox.requests_for(target)) == 1


def test_a_batch_does_not_take_a_job_id_a_close_holds(producer: Any, worker: Any) -> None:
    from worker.errors import IdempotencyConflict, NoSuchBatch
    from worker.model.targets import CloseJob
    from worker.produce.batch import BatchSender

    # A scheduled batch's id is predictable (entry.slot), and so are its job ids.
    batch_id = f"nightly.{uuid.uuid4().int % 10**10}"
    held = f"{batch_id}-00001"
    producer.close(stream_id=unique_id(880_000), job_id=held)
    sender = BatchSender()
    jobs = [CloseJob.parse({"stream_id": unique_id(890_000) + n}) for n in range(3)]
    with pytest.raises(IdempotencyConflict, match=f"job id {held}"):
        sender.start(jobs, batch_id=batch_id)
    with pytest.raises(NoSuchBatch):
        sender.batches.progress(batch_id)
