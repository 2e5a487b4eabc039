"""Schedules: validation at start, wall-clock slots, and two beats that enqueue each run once."""

from __future__ import annotations

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
from celery import Celery

from tests.conftest import WorkerProcess
from worker.errors import NoSuchBatch, ScheduleError
from worker.schedule.file import load_schedule, parse_every
from worker.schedule.scheduler import RUNS_LOG, LeaderLock, LockedScheduler
from worker.store.batches import BatchState

#: Redis databases of these tests' own: their queues, locks and run keys touch no other test's.
BEAT_DB = "/9"
SPLIT_DB = "/10"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- validation -------------------------------------------------------------------------------

BAD_SCHEDULE = """
[[schedule]]
name = "fine"
every = "10m"
targets = [{ app = "live", inst = "_definst_", stream = "a" }, { stream_id = 7 }]

[[schedule]]
name = "bad-cron"
cron = "61 * * * *"
targets = [{ stream_id = 1 }]

[[schedule]]
name = "missing-file"
cron = "0 3 * * *"
file = "nowhere.csv"

[[schedule]]
name = "bad-target"
every = 60
targets = [{ app = "live" }]

[[schedule]]
name = "bad-line"
every = "1h"
file = "targets.csv"
"""


def test_bad_entries_are_reported_by_name(tmp_path: Path) -> None:
    _write(tmp_path / "targets.csv", "app,inst,stream\nlive,_definst_,ok\nlive,,\n")
    with pytest.raises(ScheduleError) as caught:
        load_schedule(_write(tmp_path / "schedules.toml", BAD_SCHEDULE))
    lines = str(caught.value).splitlines()[1:]
    assert len(lines) == 4
    assert "entry 'bad-cron'" in lines[0] and "61" in lines[0]
    assert "entry 'missing-file'" in lines[1] and "nowhere.csv" in lines[1]
    assert "entry 'bad-target'" in lines[2] and "target 1" in lines[2]
    assert "entry 'bad-line'" in lines[3] and "targets.csv line 3" in lines[3]
    assert not any("'fine'" in line for line in lines)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('name = "x"\ncron = "0 3 * *"\ntargets = [{stream_id = 1}]', "5 fields"),
        ('name = "x"\ncron = "0 3 * * *"\nevery = 60\ntargets = [{stream_id = 1}]', "either"),
        ('name = "x"\nevery = "5 minutes"\ntargets = [{stream_id = 1}]', "every"),
        ('name = "x"\nevery = 60\ntargets = [{stream_id = 1}]\nrate = "fast"', "rate"),
        ('name = "x"\nevery = 60\ntargets = []', "no targets"),
        ('name = "x"\nevery = 60\ntargets = [{stream_id = 1}]\ncolour = "red"', "colour"),
        ('name = "no spaces"\nevery = 60\ntargets = [{stream_id = 1}]', "name"),
    ],
)
def test_each_rule_names_the_entry(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message) as caught:
        load_schedule(_write(tmp_path / "s.toml", f"[[schedule]]\n{entry}\n"))
    assert "entry '" in str(caught.value)


def test_the_shipped_schedule_is_valid_and_empty() -> None:
    assert load_schedule(Path("config/schedules.toml")).entries == ()


def test_intervals_and_slots(tmp_path: Path) -> None:
    assert [parse_every(v) for v in (30, "30", "90s", "10m", "1h", "1d")] == [
        30,
        30,
        90,
        600,
        3600,
        86400,
    ]
    schedule = load_schedule(
        _write(
            tmp_path / "s.toml",
            '[[schedule]]\nname = "nightly"\ncron = "30 2 * * *"\ntargets = [{stream_id = 1}]\n'
            '[[schedule]]\nname = "often"\nevery = "10m"\ntargets = [{stream_id = 1}]\n',
        )
    )
    nightly, often = schedule.entries
    two_thirty = 1_700_000_000 - 1_700_000_000 % 86400 + 2 * 3600 + 30 * 60  # a UTC 02:30
    assert nightly.latest_slot(two_thirty + 59.9) == two_thirty
    assert nightly.latest_slot(two_thirty + 60) is None
    # Slots depend on the wall clock only, so every scheduler names the same run.
    assert often.latest_slot(1_700_000_123.4) == 1_700_000_123 // 600 * 600
    assert often.batch_id(1_699_999_800) == "often.1699999800"


def test_beat_does_not_start_on_a_bad_entry(tmp_path: Path) -> None:
    schedule = _write(tmp_path / "s.toml", BAD_SCHEDULE)
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "beat"],
        env={**os.environ, "STREAMCTL_SCHEDULE_FILE": str(schedule)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "entry 'bad-cron'" in done.stderr and "entry 'missing-file'" in done.stderr
    assert "beat: Starting" not in done.stdout + done.stderr


# --- one run, once ---------------------------------------------------------------------------


def test_lock_has_one_holder_at_a_time(redis_client: redis.Redis) -> None:
    key = f"streamctl-test:lock:{secrets.token_hex(4)}"
    first, second = LeaderLock(redis_client, key, ttl=0.3), LeaderLock(redis_client, key, ttl=0.3)
    assert first.hold() and not second.hold()
    assert first.hold()  # the holder renews
    first.release()
    assert second.hold() and not first.hold()


def test_split_brain_schedulers_send_a_run_once(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """Two schedulers that both hold "the" lock (distinct keys) still send each run once."""
    name = f"split-{secrets.token_hex(3)}"
    schedule = _write(
        tmp_path / "s.toml",
        f'[[schedule]]\nname = "{name}"\nevery = 1\ntargets = [{{stream_id = 1}}]\n',
    )
    # Their own broker database, so that no worker of this test session runs the runs.
    broker = urlunsplit(urlsplit(redis_url)._replace(path=SPLIT_DB))
    app = Celery("split-brain", broker=broker)
    schedulers = []
    for side in "ab":
        scheduler = LockedScheduler(app=app, schedule_path=schedule)
        scheduler._lock = LeaderLock(redis_client, f"streamctl-test:lock:{name}:{side}")
        scheduler._seen[name] = None  # both see the current slot as not yet run
        schedulers.append(scheduler)
    for scheduler in schedulers:
        scheduler.tick()
    for scheduler in schedulers:
        scheduler.close()
    assert redis.Redis.from_url(broker).llen("celery") == 1  # the one run message
    redis.Redis.from_url(broker).flushdb()
    runs = [
        fields for _id, fields in redis_client.xrange(RUNS_LOG) if fields[b"entry"] == name.encode()
    ]
    assert len(runs) == 1
    assert runs[0][b"by"] in {s._lock.token.encode() for s in schedulers}


@pytest.mark.e2e
def test_two_beats_enqueue_each_due_run_once(
    tmp_path: Path, redis_url: str, sandbox: Any, settings: Any
) -> None:
    name = f"twice-{secrets.token_hex(3)}"
    targets = [
        {"app": "sched", "inst": "_definst_", "stream": name},
        {"app": "sched", "inst": "_definst_", "stream": f"{name}-b"},
    ]
    inline = ", ".join(
        "{ " + ", ".join(f'{k} = "{v}"' for k, v in target.items()) + " }" for target in targets
    )
    schedule = _write(
        tmp_path / "s.toml", f'[[schedule]]\nname = "{name}"\nevery = 2\ntargets = [{inline}]\n'
    )
    db_url = urlunsplit(urlsplit(redis_url)._replace(path=BEAT_DB))
    env = {"REDIS_URL": db_url, "STREAMCTL_SCHEDULE_FILE": str(schedule)}
    worker = WorkerProcess(tmp_path / "worker.log", concurrency=2, env=env).start()
    beats: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(2):
            with (tmp_path / f"beat{n}.log").open("wb") as log:
                beats.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "worker.cli", "beat"],
                        env={**os.environ, **env},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        # Both running first (a loaded machine takes seconds to import Celery), then 7 s of
        # both beats competing for each due run.
        deadline = time.monotonic() + 30
        while not all(
            "beat: Starting" in (tmp_path / f"beat{n}.log").read_text() for n in range(2)
        ):
            assert time.monotonic() < deadline, "the beats did not start"
            time.sleep(0.1)
        time.sleep(7)
    finally:
        for beat in beats:
            beat.terminate()
        for beat in beats:
            beat.wait(timeout=20)
        client = redis.Redis.from_url(db_url)
        runs = [f for _id, f in client.xrange(RUNS_LOG) if f[b"entry"] == name.encode()]
        batch_ids = [run[b"batch_id"].decode() for run in runs]
        batches = BatchState(client, ttl_seconds=settings.result_ttl)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _all_finished(batches, batch_ids):
            time.sleep(0.1)
        worker.stop()
    logs = [(tmp_path / f"beat{n}.log").read_text() for n in range(2)]
    assert all("beat: Starting" in log for log in logs)
    assert sum("running the schedule" in log for log in logs) == 1  # one held the lock
    # Each due run (a distinct slot, 2 s apart) was sent once and enqueued once ...
    assert len(runs) >= 2
    assert len(set(batch_ids)) == len(batch_ids)
    assert all(int(run[b"slot"]) % 2 == 0 for run in runs)  # slots of the wall clock
    for batch_id in batch_ids:
        summary = batches.progress(batch_id).summary
        assert summary is not None, worker.log()[-3000:]
        assert summary["total"] == 2 and summary["counts"]["success"] == 2
    # ... so each target was closed exactly once per run.
    for target in targets:
        assert len(sandbox.requests_for(target)) == len(runs)


def _all_finished(batches: BatchState, batch_ids: list[str]) -> bool:
    try:
        return all(batches.progress(batch_id).finished for batch_id in batch_ids)
    except NoSuchBatch:
        return False
