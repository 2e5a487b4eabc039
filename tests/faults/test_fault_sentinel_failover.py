"""Redis Sentinel: the master SIGKILLed 6 s into a 1,500-target reconnect at 100/s.

Real processes: a master, a replica and three sentinels (``tests.private_redis.SentinelSet``)
hold the broker, the job state and the results; two workers and the producer find the master
through the sentinels. After the kill, the sentinels promote the replica within a few seconds
and every process goes on against it, with no restart. Redis replication is asynchronous, so
writes the master acknowledged just before it died may be missing on the replica: a popped
message may come back (a target closed twice, freshly signed), never a replay.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from config.settings import Settings, load_settings
from tests.conftest import WorkerProcess
from tests.faults.harness import FAULT_TUNING, make_app, report, scaled, unique_target
from tests.private_redis import SentinelSet
from worker.model.targets import CloseJob
from worker.produce.batch import BatchSender, wait_for_batch
from worker.store.redis import redis_client

pytestmark = pytest.mark.faults

JOBS = scaled(1500, 600)
RATE = 100.0
KILL_AFTER = scaled(6.0, 3.0)
EXPIRES = 120.0
_NOT_INHERITED = ("CELERY_BROKER_URL", "STREAMCTL_RATE_LIMIT", "STREAMCTL_MAX_IN_FLIGHT")


def test_master_killed_mid_batch_the_batch_ends_on_the_new_master(
    tmp_path: Path, sandbox: Any
) -> None:
    with SentinelSet(tmp_path) as redis_set:
        env, settings, app = _sentinel_cluster(redis_set)
        workers = [
            WorkerProcess(tmp_path / f"worker-{n}.log", concurrency=8, env=env).start()
            for n in range(2)
        ]
        try:
            replays_before = sandbox.stats()["replays"]
            jobs = [CloseJob.parse(unique_target("sentinel")) for _ in range(JOBS)]
            sender = BatchSender(settings, app)
            started = time.monotonic()
            batch = sender.start(jobs, rate=RATE, expires=EXPIRES)
            time.sleep(max(KILL_AFTER - (time.monotonic() - started), 0))
            old_master = redis_set.master.port
            redis_set.kill_master()
            summary = wait_for_batch(batch, timeout=EXPIRES + 60, sender=sender)
            took = time.monotonic() - started
            new_master = redis_set.master_port()
            alive = [worker.alive() for worker in workers]
            readies = [worker.log().count(" ready.") for worker in workers]
            results = _job_results(redis_client(settings), settings.results_log)
        finally:
            for worker in workers:
                worker.stop()

    sends = Counter(
        len(sandbox.requests_for(job.target.as_fields())) for job in jobs
    )  # requests per target
    closed_twice = sum(count for sends_per, count in sends.items() if sends_per > 1)
    figures = report(
        "sentinel-failover",
        jobs=JOBS,
        rate=RATE,
        summary=summary is not None,
        outcomes=(summary or {}).get("counts"),
        targets_by_requests=dict(sends),
        closed_twice=closed_twice,
        results=len(results),
        replays=sandbox.stats()["replays"] - replays_before,
        batch_s=round(took, 1),
        workers_alive=alive,
        worker_starts=readies,
    )
    assert new_master != old_master
    assert summary is not None, figures
    assert summary["counts"]["success"] == JOBS, summary
    assert sends.get(0, 0) == 0 and max(sends) <= 2, figures  # every target closed, <= twice
    assert figures["replays"] == 0
    assert alive == [True, True] and readies == [1, 1], figures
    assert results == dict.fromkeys(batch.job_ids, 1)  # one result each, on the new master


def _sentinel_cluster(redis_set: SentinelSet) -> tuple[dict[str, str], Settings, Celery]:
    """The workers' environment, and this process's settings and app, on ``redis_set``."""
    channel = f"streamctl-sentinel-{secrets.token_hex(4)}:results"
    env = {
        **{k: v for k, v in os.environ.items() if k not in _NOT_INHERITED},
        **FAULT_TUNING,
        "REDIS_URL": redis_set.url,
        "STREAMCTL_SENTINEL_MASTER": SentinelSet.MASTER,
        "STREAMCTL_RESULTS_CHANNEL": channel,
    }
    overrides: dict[str, Any] = {
        name.removeprefix("STREAMCTL_").lower(): value for name, value in FAULT_TUNING.items()
    }
    settings = load_settings(
        **overrides,
        redis_url=redis_set.url,
        sentinel_master=SentinelSet.MASTER,
        results_channel=channel,
        celery_broker_url=None,
        rate_limit=None,
        max_in_flight=None,
    )
    app = make_app(settings)
    # This process's Celery configuration was read before the sentinels existed.
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "master_name": SentinelSet.MASTER,
    }
    app.conf.result_backend_transport_options = {"master_name": SentinelSet.MASTER}
    return env, settings, app


def _job_results(client: Any, log_stream: str) -> dict[str, int]:
    """Job id -> how many results of it the log holds (the log as the new master has it)."""
    found: Counter[str] = Counter()
    for _entry, fields in client.xrange(log_stream):
        result = json.loads(fields[b"result"])
        if result.get("type", "job") == "job":
            found[result["job_id"]] += 1
    return dict(found)


def test_workers_go_on_when_sentinel_demotes_the_master(tmp_path: Path, sandbox: Any) -> None:
    """SENTINEL FAILOVER: the old master lives on and is made a replica (READONLY to writes).

    Before, a worker whose Redis turned read-only exited ("Unrecoverable error"); under
    Sentinel it goes on against the new master, and jobs enqueued after the switch end.
    """
    with SentinelSet(tmp_path) as redis_set:
        env, settings, app = _sentinel_cluster(redis_set)
        worker = WorkerProcess(tmp_path / "worker.log", concurrency=4, env=env).start()
        try:
            sender = BatchSender(settings, app)
            first = sender.start([CloseJob.parse(unique_target("demote")) for _ in range(20)])
            assert wait_for_batch(first, timeout=30, sender=sender) is not None
            old_master = redis_set.master_port()
            with redis.Redis(port=redis_set.sentinel_ports[0]) as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", SentinelSet.MASTER)
            deadline = time.monotonic() + 20
            while redis_set.master_port() == old_master and time.monotonic() < deadline:
                time.sleep(0.1)
            # The old master turns into a replica of the new one a little later.
            with redis.Redis(port=old_master) as old:
                while old.info("replication")["role"] != "slave":
                    assert time.monotonic() < deadline + 20, "the old master was not demoted"
                    time.sleep(0.2)
            second = sender.start([CloseJob.parse(unique_target("demote")) for _ in range(50)])
            summary = wait_for_batch(second, timeout=60, sender=sender)
            alive, starts = worker.alive(), worker.log().count(" ready.")
            log = worker.log()
            new_master = redis_set.master_port()
        finally:
            worker.stop()

    assert new_master != old_master
    assert summary is not None and summary["counts"]["success"] == 50, summary
    assert alive and starts == 1, log[-3000:]
    assert "Unrecoverable error" not in log
