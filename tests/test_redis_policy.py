"""Redis must not evict: ``streamctl check`` and the worker read ``maxmemory-policy``.

Real private redis-server processes, one per policy; ``check`` and workers run as real
processes against them.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.settings import load_settings
from tests.conftest import WorkerProcess
from tests.test_health import statuses
from worker.dev.embedded_redis import EmbeddedRedis, free_port
from worker.errors import ConfigError
from worker.store.redis_policy import check_url, redis_urls, require_no_eviction

FIX = "CONFIG SET maxmemory-policy noeviction"


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, EmbeddedRedis]]:
    """A Redis per case: two evicting policies, noeviction, a hidden CONFIG, a replica."""
    started: dict[str, EmbeddedRedis] = {}
    cases = {
        "allkeys-lru": ("--maxmemory-policy", "allkeys-lru"),
        "volatile-lru": ("--maxmemory-policy", "volatile-lru"),
        "noeviction": ("--maxmemory-policy", "noeviction"),
        # A managed Redis that hides CONFIG: the command does not exist under its name.
        "hidden-config": ("--maxmemory-policy", "allkeys-lru", "--rename-command", "CONFIG", ""),
    }
    try:
        for name, args in cases.items():
            started[name] = EmbeddedRedis(extra_args=args).start()
        # A Redis whose ACL denies CONFIG to the user streamctl connects as (NOPERM).
        started["acl-denied"] = EmbeddedRedis(extra_args=cases["allkeys-lru"]).start()
        with redis.Redis.from_url(started["acl-denied"].url) as client:
            client.acl_setuser("default", enabled=True, commands=["-config"])
        master = started["allkeys-lru"]
        started["replica"] = EmbeddedRedis(
            extra_args=("--replicaof", "127.0.0.1", str(master.port))
        ).start()
        yield started
    finally:
        for server in started.values():
            server.cleanup()


def no_broker_env(**env: str) -> dict[str, str]:
    """The session's environment without CELERY_BROKER_URL, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k != "CELERY_BROKER_URL"}
    return {**base, **env}


def check_with(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "check"],
        env=no_broker_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- streamctl check ---------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
def test_check_fails_on_an_evicting_redis(servers: dict[str, EmbeddedRedis], policy: str) -> None:
    done = check_with(REDIS_URL=servers[policy].url)
    assert done.returncode == 1, done.stdout + done.stderr
    found = statuses(done.stdout)
    assert found["redis"] == "ok" and found["redis-policy"] == "fail", done.stdout
    line = next(line for line in done.stdout.splitlines() if "redis-policy" in line)
    assert f"maxmemory-policy is {policy}" in line and FIX in line and "redis.conf" in line
    assert "problems found" in done.stdout


def test_check_passes_on_noeviction(servers: dict[str, EmbeddedRedis]) -> None:
    done = check_with(REDIS_URL=servers["noeviction"].url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert statuses(done.stdout)["redis-policy"] == "ok"
    assert "noeviction" in done.stdout and "master" in done.stdout


def test_check_warns_where_config_is_hidden(servers: dict[str, EmbeddedRedis]) -> None:
    done = check_with(REDIS_URL=servers["hidden-config"].url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert statuses(done.stdout)["redis-policy"] == "warn"
    assert "could not read maxmemory-policy" in done.stdout


def test_check_reports_a_replica_and_does_not_judge_it(servers: dict[str, EmbeddedRedis]) -> None:
    done = check_with(REDIS_URL=servers["replica"].url)
    assert statuses(done.stdout)["redis-policy"] == "warn", done.stdout
    assert "replica" in done.stdout and "master" in done.stdout


def test_check_reads_the_broker_redis_too(servers: dict[str, EmbeddedRedis]) -> None:
    done = check_with(
        REDIS_URL=servers["noeviction"].url, CELERY_BROKER_URL=servers["allkeys-lru"].url
    )
    assert done.returncode == 1, done.stdout + done.stderr
    found = statuses(done.stdout)
    assert found["redis-policy"] == "ok" and found["broker-policy"] == "fail", done.stdout


# --- the worker refuses to start ----------------------------------------------------------------

STREAMCTL_WORKER = ("-m", "worker.cli", "worker", "-c", "2")
CELERY_WORKER = ("-m", "celery", "-A", "worker.app", "worker", "--pool", "threads", "-c", "2")


def run_worker(command: tuple[str, ...], **env: str) -> subprocess.CompletedProcess[str]:
    """A worker that is expected to refuse: it must exit by itself, well within the timeout."""
    return subprocess.run(
        [sys.executable, *command],
        env=no_broker_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("command", [STREAMCTL_WORKER, CELERY_WORKER], ids=["streamctl", "celery"])
def test_a_worker_refuses_an_evicting_redis(
    servers: dict[str, EmbeddedRedis], command: tuple[str, ...]
) -> None:
    done = run_worker(command, REDIS_URL=servers["allkeys-lru"].url)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "maxmemory-policy is allkeys-lru" in output and FIX in output, output
    assert " ready." not in output


def test_a_worker_refuses_an_evicting_broker(servers: dict[str, EmbeddedRedis]) -> None:
    done = run_worker(
        STREAMCTL_WORKER,
        REDIS_URL=servers["noeviction"].url,
        CELERY_BROKER_URL=servers["volatile-lru"].url,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "broker" in output and "maxmemory-policy is volatile-lru" in output, output


def test_several_worker_processes_refuse_too(servers: dict[str, EmbeddedRedis]) -> None:
    done = run_worker(
        (*STREAMCTL_WORKER, "--processes", "2"), REDIS_URL=servers["allkeys-lru"].url
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "maxmemory-policy is allkeys-lru" in output, output


def test_a_worker_starts_with_a_warning_where_config_is_hidden(
    servers: dict[str, EmbeddedRedis], tmp_path: Path
) -> None:
    worker = WorkerProcess(
        tmp_path / "worker.log", concurrency=2, env={"REDIS_URL": servers["hidden-config"].url}
    )
    try:
        worker.start()
        assert worker.alive()
        assert "could not read maxmemory-policy" in worker.log()
    finally:
        worker.stop()


# --- the one check both use, in process ------------------------------------------------------


def test_the_refusal_names_the_variable_and_the_fix(servers: dict[str, EmbeddedRedis]) -> None:
    settings = load_settings(
        redis_url=servers["noeviction"].url, celery_broker_url=servers["allkeys-lru"].url
    )
    with pytest.raises(ConfigError) as refused:
        require_no_eviction(settings)
    message = str(refused.value)
    assert "CELERY_BROKER_URL" in message and "maxmemory-policy is allkeys-lru" in message
    assert FIX in message


def test_a_broker_that_is_not_redis_is_not_read() -> None:
    settings = load_settings(celery_broker_url="amqp://guest:guest@127.0.0.1:5672/streamctl")
    assert [name for name, _url, _ssl in redis_urls(settings)] == ["redis"]


def test_a_redis_that_does_not_answer_is_a_warning_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = load_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with caplog.at_level(logging.WARNING, logger="streamctl.redis"):
        require_no_eviction(settings)  # Celery itself waits for a broker that is down
    assert "maxmemory-policy not checked" in caplog.text and "REDIS_URL" in caplog.text


def test_a_policy_the_acl_hides_is_a_warning(servers: dict[str, EmbeddedRedis]) -> None:
    finding = check_url(servers["acl-denied"].url)
    assert finding.status == "warn", finding
    assert "could not read maxmemory-policy" in finding.detail
    assert "noeviction" in finding.detail  # what to make sure of, where it cannot be read
