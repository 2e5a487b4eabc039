"""A scheduled run carries its targets: a worker in another folder than beat (the default
schedule path is relative) still enqueues it, and a run that enqueues nothing says so on the
results channel with a batch summary of ``total`` 0 and an ``error``."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tests.conftest import WorkerProcess

pytestmark = pytest.mark.e2e
#: A Redis database of this module's own: its queue, lock and run keys touch no other test's.
RUNS_DB = "/11"


def summaries(client: redis.Redis, log: str, batch_prefix: str) -> list[dict[str, Any]]:
    found = [json.loads(fields[b"result"]) for _id, fields in client.xrange(log)]
    return [
        message
        for message in found
        if message.get("type") == "batch" and str(message.get("batch_id")).startswith(batch_prefix)
    ]


def wait_for(condition: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_a_run_reaches_a_worker_in_another_folder_and_a_failed_run_is_published(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"cwd-{secrets.token_hex(3)}"
    beat_dir, worker_dir = tmp_path / "beat", tmp_path / "worker"
    beat_dir.mkdir()
    worker_dir.mkdir()
    targets = beat_dir / "targets.csv"
    targets.write_text(f"app,inst,stream\nsched,_definst_,{name}\n", encoding="utf-8")
    (beat_dir / "schedule.toml").write_text(
        f'[[schedule]]\nname = "{name}"\nevery = 2\nfile = "targets.csv"\n', encoding="utf-8"
    )
    db_url = urlunsplit(urlsplit(redis_url)._replace(path=RUNS_DB))
    channel = f"runs-{secrets.token_hex(4)}:results"
    # The default is relative too (config/schedules.toml): each process reads it from its cwd.
    env = {
        "REDIS_URL": db_url,
        "STREAMCTL_RESULTS_CHANNEL": channel,
        "STREAMCTL_SCHEDULE_FILE": "schedule.toml",
    }
    monkeypatch.chdir(worker_dir)  # the worker's folder has no schedule.toml
    worker = WorkerProcess(tmp_path / "worker.log", concurrency=2, env=env).start()
    client = redis.Redis.from_url(db_url)
    beat_log = tmp_path / "beat.log"
    with beat_log.open("wb") as log:
        beat = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "beat"],
            env={**os.environ, **env},
            cwd=beat_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        log_key = f"{channel}:log"
        ok = wait_for(lambda: summaries(client, log_key, name))
        assert ok, worker.log()[-2000:] + beat_log.read_text()[-2000:]
        first = summaries(client, log_key, name)[0]
        assert first["total"] == 1 and first["counts"]["success"] == 1, first
        assert "error" not in first
        # The targets file turns invalid between runs: the next run enqueues nothing, and says so.
        targets.write_text("app,inst,stream\nsched,,\n", encoding="utf-8")
        failed = wait_for(lambda: any(s["total"] == 0 for s in summaries(client, log_key, name)))
        assert failed, beat_log.read_text()[-2000:]
    finally:
        beat.terminate()
        beat.wait(timeout=20)
        worker.stop()
    bad = next(s for s in summaries(client, log_key, name) if s["total"] == 0)
    assert bad["error"].startswith(f"schedule entry {name}: targets.csv line 2:"), bad
    assert set(bad["counts"].values()) == {0} and bad["finished_at"]
    beat_output = beat_log.read_text()
    assert f"beat: run {bad['batch_id']} not sent: schedule entry {name}" in beat_output
    assert f"beat: sent run {bad['batch_id']}" not in beat_output
    assert "ERROR" not in worker.log()  # nothing failed unseen on the worker's side
