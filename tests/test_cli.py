"""The streamctl command as an operator runs it: real processes, real Redis, the sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from typing import Any

import pytest

from config.lanes import CONSUMED_QUEUES
from tests.conftest import wait_for_result

pytestmark = pytest.mark.e2e


def streamctl(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_close_wait_prints_the_result_and_exits_0(worker: Any, sandbox: Any) -> None:
    stream = f"cli-{uuid.uuid4().hex[:8]}"
    done = streamctl(
        "close", "--app", "demo-origin", "--inst", "live", "--stream", stream, "--wait"
    )
    assert done.returncode == 0, done.stderr
    # stdout is exactly one JSON document (``| jq .outcome`` works); it holds the job id.
    result = json.loads(done.stdout)
    job_id = result["job_id"]
    assert f"enqueued job {job_id}" in done.stderr
    assert result["outcome"] == "success"
    assert result["target"] == {"app": "demo-origin", "inst": "live", "stream": stream}


def test_close_wait_exits_1_on_a_refusal(worker: Any, sandbox: Any) -> None:
    stream_id = 700_000 + uuid.uuid4().int % 100_000
    sandbox.inject({"stream_id": stream_id}, "refuse", times=1, code="0005")
    done = streamctl("close", "--stream-id", str(stream_id), "--wait")
    assert done.returncode == 1
    assert json.loads(done.stdout)["outcome"] == "failure"


def test_close_without_wait_prints_the_job_id(worker: Any, producer: Any) -> None:
    done = streamctl(
        "close", "--stream-id", "123456", "--origin-url", "jb-origin.secdn.net", "--expires", "30"
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    result = wait_for_result(producer, job_id)
    assert result["origin_url"] == "jb-origin.secdn.net"


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--app", "a", "--inst", "i"], "missing stream"),
        (["--stream-id", "0"], "positive integer"),
        (["--stream-id", "5", "--app", "a"], "not both"),
        ([], "no target"),
        (["--app", "a", "--inst", "i", "--stream", "bad\tname"], "control character"),
        (["--stream-id", "5", "--origin-url", "http://x y"], "origin_url"),
        (["--stream-id", "5", "--expires", "-1"], "expires"),
    ],
)
def test_bad_close_is_refused_and_nothing_enqueued(
    args: list[str], complaint: str, redis_client: Any
) -> None:
    before = queued(redis_client)
    done = streamctl("close", *args)
    assert done.returncode == 2
    assert complaint in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert queued(redis_client) == before


def test_unreachable_broker_fails_fast_with_a_clear_message() -> None:
    done = streamctl(
        "close",
        "--stream-id",
        "5",
        env={"REDIS_URL": "redis://127.0.0.1:1/0"},
        timeout=60,
    )
    assert done.returncode == 2
    assert "unreachable" in done.stderr
    assert "Traceback" not in done.stderr


def test_watch_since_replays_results(worker: Any, producer: Any) -> None:
    job_id = producer.close(stream_id=555_000 + uuid.uuid4().int % 1000)
    wait_for_result(producer, job_id)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "watch", "--since", "all"],
        stdout=subprocess.PIPE,
        text=True,
    )
    killer = threading.Timer(30, watcher.kill)  # a missing result fails the test, never hangs it
    killer.start()
    found = False
    try:
        assert watcher.stdout is not None
        for line in watcher.stdout:
            if json.loads(line).get("job_id") == job_id:
                found = True
                break
    finally:
        killer.cancel()
        watcher.terminate()
        watcher.wait(timeout=10)
    assert found


def test_watch_rejects_a_bad_since() -> None:
    done = streamctl("watch", "--since", "yesterday")
    assert done.returncode == 2
    assert "--since" in done.stderr


def queued(client: Any) -> int:
    """Messages waiting in every lane's queue (config.lanes), the pre-lane queue too."""
    return sum(client.llen(queue) for queue in CONSUMED_QUEUES)
