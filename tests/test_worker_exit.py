"""What a supervisor (systemd ``Restart=on-failure``, Kubernetes) sees when a worker ends.

A worker whose Redis turns read-only (a failover: the old master became a replica) meets an
error Celery cannot recover from; it must exit non-zero, as ``celery worker`` does, or a
supervisor that restarts on failure leaves it dead. Real processes on a private Redis (the
worker's broker and state), made a replica of a second private Redis: writes then fail with
READONLY.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import WorkerProcess
from tests.faults.harness import Cluster, cluster
from worker.dev.embedded_redis import EmbeddedRedis

pytestmark = pytest.mark.e2e

#: A read-only broker ends a worker within a second; a group after its crash loop (3 failures,
#: 1 s apart, each after a worker start of a second or two).
EXIT_WITHIN = 30.0


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path) as made:
        yield made


@pytest.fixture
def new_master() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


def exit_code_after_failover(
    fleet: Cluster, new_master: EmbeddedRedis, worker: WorkerProcess
) -> int:
    worker.start()
    fleet.redis.replicaof("127.0.0.1", new_master.port)
    assert worker.process is not None
    try:
        return worker.process.wait(timeout=EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        worker.kill()
        pytest.fail(f"the worker still ran {EXIT_WITHIN} s after its Redis turned read-only")
    finally:
        worker.kill()


def test_a_worker_whose_redis_turns_read_only_exits_non_zero(
    fleet: Cluster, new_master: EmbeddedRedis
) -> None:
    worker = WorkerProcess(fleet.root / "worker.log", concurrency=2, env=fleet.env)
    code = exit_code_after_failover(fleet, new_master, worker)
    assert "Unrecoverable error" in worker.log()
    assert code == 1, worker.log()[-2000:]


def test_a_worker_group_whose_redis_turns_read_only_exits_non_zero(
    fleet: Cluster, new_master: EmbeddedRedis
) -> None:
    worker = WorkerProcess(
        fleet.root / "group.log", concurrency=2, env=fleet.env, args=("--processes", "2")
    )
    code = exit_code_after_failover(fleet, new_master, worker)
    log = worker.log()
    assert "crash loop" in log, log[-3000:]
    assert code == 1, log[-3000:]


# --- the supervisor's policy, with trivial children --------------------------------------

GROUP = """
import sys, time
from worker.consume.processes import supervise

def run_child(index: int) -> int:
    if index == 1:
        return 3          # fails at once, every time: a crash loop
    time.sleep(60)        # a healthy child, stopped by the group's SIGTERM
    return 0

sys.exit(supervise(2, run_child))
"""


def test_a_crash_looping_child_stops_the_group_with_its_exit_code(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", GROUP],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=EXIT_WITHIN,
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert time.monotonic() - started < 10
    assert done.stderr.count("worker process 1 ") >= 3, done.stderr  # replaced before giving up
    assert "crash loop" in done.stderr


def test_read_only_redis_is_really_read_only(fleet: Cluster, new_master: EmbeddedRedis) -> None:
    """The premise of the tests above: REPLICAOF makes the worker's Redis refuse writes."""
    fleet.redis.replicaof("127.0.0.1", new_master.port)
    with pytest.raises(redis.ReadOnlyError):
        fleet.redis.lpush("streamctl", "x")


@pytest.mark.parametrize(
    ("args", "signum", "expected"),
    [
        ((), signal.SIGTERM, 0),  # a warm shutdown
        ((), signal.SIGQUIT, 0),  # a cold one (celery worker exits 0 after it too)
        (("--processes", "2"), signal.SIGQUIT, 0),  # the group says the same
    ],
    ids=["sigterm", "sigquit", "sigquit-group"],
)
def test_a_requested_shutdown_exits_as_celery_worker_does(
    fleet: Cluster, args: tuple[str, ...], signum: int, expected: int
) -> None:
    worker = WorkerProcess(fleet.root / "worker.log", concurrency=2, env=fleet.env, args=args)
    worker.start()
    time.sleep(1)  # every process of a group past its start (the first "ready." is one's)
    assert worker.process is not None
    worker.process.send_signal(signum)
    try:
        assert worker.process.wait(timeout=20) == expected, worker.log()[-2000:]
    finally:
        worker.kill()
