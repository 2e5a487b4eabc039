"""Redis Sentinel: ``sentinel://`` URLs, every process following the master through failovers.

Real processes: a master, a replica and three ``redis-server --sentinel``
(``tests.private_redis.SentinelSet``); ``streamctl check`` runs as a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from config.settings import load_settings
from config.urls import mask_url
from tests.private_redis import SentinelSet
from tests.test_health import statuses
from tests.test_settings import clean_env
from worker.errors import ConfigError
from worker.store.redis import MASTER_RECHECK, job_state, redis_client

__all__ = ["clean_env"]  # a fixture, shared with tests.test_settings


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    with SentinelSet(tmp_path) as started:
        yield started


def sentinel_env(sentinels: SentinelSet, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k != "CELERY_BROKER_URL"}
    return {**base, "REDIS_URL": sentinels.url, "STREAMCTL_SENTINEL_MASTER": "m", **env}


# --- settings ----------------------------------------------------------------------------------


def test_a_sentinel_url_is_read_in_one_spelling(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REDIS_URL", "sentinel://:pw@10.0.0.1:26379;sentinel://10.0.0.2/3")
    clean_env.setenv("STREAMCTL_SENTINEL_MASTER", "mymaster")
    settings = load_settings()
    # Every part carries the password and database: Celery and kombu read the first part's.
    assert settings.redis_url == ("sentinel://:pw@10.0.0.1:26379/3;sentinel://:pw@10.0.0.2:26379/3")
    shown = "sentinel://***@10.0.0.1:26379/3;sentinel://***@10.0.0.2:26379/3"
    assert mask_url(settings.redis_url) == shown


def test_a_sentinel_url_needs_the_master_name(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CELERY_BROKER_URL", "sentinel://10.0.0.1:26379")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "STREAMCTL_SENTINEL_MASTER: required with a sentinel:// CELERY_BROKER_URL" in str(
        caught.value
    )


def test_the_redis_password_variable_reaches_every_sentinel_part(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("REDIS_URL", "sentinel://h1:1;sentinel://h2:2")
    clean_env.setenv("STREAMCTL_SENTINEL_MASTER", "m")
    clean_env.setenv("STREAMCTL_REDIS_PASSWORD", "p#a/s?s")
    url = load_settings().redis_url
    assert url == "sentinel://:p%23a%2Fs%3Fs@h1:1/0;sentinel://:p%23a%2Fs%3Fs@h2:2/0"


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("sentinel://h1:1/0;sentinel://h2:2/1", "the sentinel:// parts name different databases"),
        ("sentinel://h1:1;redis://h2:2", "each sentinel is a sentinel://host:port part"),
        ("sentinel://h1:port", "a sentinel's port must be a number"),
        ("sentinel://h1:1/zero", "the database must be a number"),
    ],
)
def test_a_bad_sentinel_url_is_named(
    clean_env: pytest.MonkeyPatch, value: str, complaint: str
) -> None:
    clean_env.setenv("REDIS_URL", value)
    clean_env.setenv("STREAMCTL_SENTINEL_MASTER", "m")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert f"REDIS_URL: {complaint}" in str(caught.value)


# --- real sentinels ----------------------------------------------------------------------------


def test_the_state_client_follows_a_demoted_master(sentinels: SentinelSet) -> None:
    """SENTINEL FAILOVER promotes the replica while the old master still takes writes: within
    MASTER_RECHECK of the sentinels naming the new master, every write goes there, none fails.

    Before, a client pointed at the master kept writing to it (10 s in the issue's trial, lost
    when it resynced), then failed; a worker exited.
    """
    settings = load_settings(redis_url=sentinels.url, sentinel_master="m")
    client = redis_client(settings)
    old_port = sentinels.master_port()
    written: list[tuple[int, float]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            try:
                client.rpush("writes", len(written))
                written.append((len(written), time.monotonic()))
            except Exception as exc:  # the finding: no write may fail
                errors.append(exc)
                return
            time.sleep(0.01)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.3)
    with redis.Redis(port=sentinels.sentinel_ports[0]) as sentinel:
        sentinel.execute_command("SENTINEL", "FAILOVER", "m")
    deadline = time.monotonic() + 20
    while sentinels.master_port() == old_port and time.monotonic() < deadline:
        time.sleep(0.05)
    switched_at = time.monotonic()
    time.sleep(MASTER_RECHECK + 1.5)  # writes after the switch
    stop.set()
    writer.join()

    assert errors == []
    new_port = sentinels.master_port()
    assert new_port != old_port
    with redis.Redis(port=new_port) as new_master:
        landed = {int(value) for value in new_master.lrange("writes", 0, -1)}
        assert new_master.info("replication")["role"] == "master"
    settled = [index for index, at in written if at > switched_at + MASTER_RECHECK + 0.1]
    assert len(settled) > 20
    assert set(settled) <= landed
    assert job_state(settings, client).final_result("no-such-job") is None


def test_check_reports_the_sentinel_view(sentinels: SentinelSet) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "check"],
        env=sentinel_env(sentinels),
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = statuses(done.stdout)
    assert found["redis"] == "ok" and found["redis-policy"] == "ok", done.stdout + done.stderr
    line = next(line for line in done.stdout.splitlines() if line.split()[1:2] == ["redis"])
    assert f"master 'm' at 127.0.0.1:{sentinels.master.port}" in line
    assert "1 replica(s), quorum 2 of 3 sentinel(s)" in line


def test_check_fails_when_the_named_master_is_a_replica(sentinels: SentinelSet) -> None:
    # The master made a replica by hand: the sentinels still name it for a few seconds.
    with redis.Redis(port=sentinels.master.port) as master:
        master.replicaof("127.0.0.1", sentinels.replica.port)
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "check"],
        env=sentinel_env(sentinels),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert statuses(done.stdout)["redis"] == "fail"
    assert "answers as a slave, not a master" in done.stdout
