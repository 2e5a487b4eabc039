"""Mass reconnects end to end: CLI -> one batch -> real worker -> sandbox -> results + summary."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from worker.cli.main import main
from worker.model.results import BATCH_SUMMARY_FIELDS, Outcome
from worker.store.batches import BatchState

pytestmark = pytest.mark.e2e


def names(prefix: str, count: int) -> list[dict[str, str]]:
    tag = uuid.uuid4().hex[:6]
    return [
        {"app": "demo-origin", "inst": "live", "stream": f"{prefix}-{tag}-{i:04d}"}
        for i in range(count)
    ]


def write_csv(path: Path, rows: list[dict[str, str]], bad_at: int | None = None) -> Path:
    lines = ["app,inst,stream"]
    for index, row in enumerate(rows):
        if bad_at is not None and index + 2 == bad_at:  # +2: the header is line 1
            lines.append("demo-origin,live")  # no stream
        lines.append(f"{row['app']},{row['inst']},{row['stream']}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def batch_messages(client: redis.Redis, log: str, batch_id: str) -> list[dict[str, Any]]:
    return [
        message
        for _id, fields in client.xrange(log)
        if (message := json.loads(fields[b"result"])).get("batch_id") == batch_id
    ]


def wait_for_summary(state: BatchState, batch_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = state.progress(batch_id)
        if progress.summary is not None:
            return progress.summary
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not end within {timeout} s")


@pytest.fixture
def batches(redis_client: redis.Redis, settings: Any) -> BatchState:
    return BatchState(redis_client, ttl_seconds=settings.result_ttl)


def test_reconnect_validates_dedupes_and_summarises(
    tmp_path: Path,
    worker: Any,
    sandbox: Any,
    redis_client: redis.Redis,
    settings: Any,
    batches: BatchState,
) -> None:
    targets = names("mass", 290)
    rows = targets + targets[:10]  # ten targets twice
    path = write_csv(tmp_path / "targets.csv", rows, bad_at=57)
    before = set(redis_client.scan_iter("streamctl:batch:*"))

    refused = run("reconnect", str(path))
    assert refused.exit_code == 2
    assert "line 57: missing stream" in refused.stderr
    assert set(redis_client.scan_iter("streamctl:batch:*")) == before  # nothing enqueued
    assert sandbox.requests_for(targets[0]) == []

    done = run("reconnect", str(path), "--skip-invalid")
    assert done.exit_code == 0, done.stderr
    # stdout is the summary alone (scripts pipe it to jq); the batch id is in it and on stderr.
    summary = json.loads(done.stdout)
    batch_id = summary["batch_id"]
    assert f"enqueued batch {batch_id}" in done.stderr
    assert list(summary) == list(BATCH_SUMMARY_FIELDS)
    assert summary["type"] == "batch" and summary["batch_id"] == batch_id
    assert summary["total"] == 290
    assert summary["counts"] == {str(o): (290 if o == Outcome.SUCCESS else 0) for o in Outcome}

    messages = batch_messages(redis_client, settings.results_log, batch_id)
    results = [m for m in messages if m["type"] == "job"]
    assert [m for m in messages if m["type"] == "batch"] == [summary]  # exactly one
    assert messages[-1] == summary  # after the last job's result
    assert len({r["job_id"] for r in results}) == len(results) == 290
    assert Counter(r["outcome"] for r in results) == {"success": 290}
    assert all(len(sandbox.requests_for(target)) == 1 for target in targets[:10])

    shown = run("batch", batch_id)
    assert json.loads(shown.stdout) == summary


def test_dry_run_sends_nothing(tmp_path: Path, sandbox: Any, redis_client: redis.Redis) -> None:
    targets = names("dry", 5)
    jsonl = "\n".join(json.dumps(t) for t in targets) + "\n"
    before = set(redis_client.scan_iter("streamctl:batch:*"))
    result = run("reconnect", "-", "--dry-run", input=jsonl)
    assert result.exit_code == 0
    assert [json.loads(line)["stream"] for line in result.stdout.splitlines()] == [
        t["stream"] for t in targets
    ]
    assert set(redis_client.scan_iter("streamctl:batch:*")) == before
    assert all(sandbox.requests_for(target) == [] for target in targets)


def test_cancel_ends_unsent_jobs_cancelled(
    tmp_path: Path, worker: Any, sandbox: Any, batches: BatchState
) -> None:
    targets = names("cancel", 16)
    path = write_csv(tmp_path / "targets.csv", targets)
    # 1/s after a burst of 10: jobs 11-15 wait in worker threads (up to the 5 s hold), the
    # 16th would wait 6 s, so it goes back to the broker with a countdown.
    started = run("reconnect", str(path), "--rate", "1/s", "--no-wait")
    assert started.exit_code == 0, started.stderr
    batch_id = started.stdout.strip()
    deadline = time.monotonic() + 20
    while batches.progress(batch_id).counts["success"] < 11 and time.monotonic() < deadline:
        time.sleep(0.05)
    cancelled = run("batch", batch_id, "--cancel")
    assert cancelled.exit_code == 0

    summary = wait_for_summary(batches, batch_id)
    counts = summary["counts"]
    assert counts["success"] >= 11 and counts["cancelled"] >= 1
    assert counts["success"] + counts["cancelled"] == 16
    jobs = batches.jobs(batch_id)
    # At least one job went back to the broker for the rate limit, using none of its retries
    # (the counts travel in its message: worker.api.retry.Counts).
    handbacks = [line for line in worker.log().splitlines() if "handed back" in line]
    assert any(
        f"job {job_id} handed back" in line and "retries 0, hand-backs 1" in line
        for line in handbacks
        for job_id in jobs
    )
    for job_id, target in jobs.items():
        result = batches.redis.get(f"streamctl:job:{job_id}:result")
        assert result is not None
        if json.loads(result)["outcome"] == "cancelled":
            assert sandbox.requests_for(target) == []

    # Cancelled jobs are not "failed": they are sent again only when asked.
    cancelled_streams = sorted(
        target["stream"]
        for job_id, target in jobs.items()
        if json.loads(batches.redis.get(f"streamctl:job:{job_id}:result") or "{}")["outcome"]
        == "cancelled"
    )
    assert run("batch", batch_id, "--failed").stdout == ""
    with_cancelled = run("batch", batch_id, "--failed", "--include-cancelled")
    assert sorted(json.loads(line)["stream"] for line in with_cancelled.stdout.splitlines()) == (
        cancelled_streams
    )
    again = run("reconnect", "--retry-failed", batch_id)
    assert again.exit_code == 0 and "nothing to send again" in again.stderr


def test_retry_failed_sends_only_the_failed_ones(tmp_path: Path, worker: Any, sandbox: Any) -> None:
    targets = names("retry", 6)
    for target in targets[:2]:
        sandbox.inject(target, "refuse", times=1, code="0009")
    first = run("reconnect", str(write_csv(tmp_path / "t.csv", targets)))
    assert first.exit_code == 1  # not every job succeeded
    first_summary = json.loads(first.stdout)
    first_batch = first_summary["batch_id"]
    assert first_summary["counts"]["failure"] == 2

    again = run("reconnect", "--retry-failed", first_batch)
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["total"] == 2
    assert [len(sandbox.requests_for(t)) for t in targets] == [2, 2, 1, 1, 1, 1]


def test_batch_rate_bounds_the_busiest_second(tmp_path: Path, worker: Any, sandbox: Any) -> None:
    sandbox.reset()  # busiest_second counts from here
    path = write_csv(tmp_path / "t.csv", names("rate", 60))
    result = run("reconnect", str(path), "--rate", "20/s")
    assert result.exit_code == 0, result.stderr
    burst = 10  # STREAMCTL_RATE_BURST's default
    assert sandbox.stats()["busiest_second"] <= 20 + burst
