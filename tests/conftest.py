"""Real parts for the tests: a private Redis, the sandbox API over HTTP, real worker processes.

The environment is set in ``pytest_configure``, before any test module imports the Celery app,
so that the app, the producers and the worker processes all read the same settings.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from worker.dev.embedded_redis import EmbeddedRedis

TEST_CDN = 158
# Fixed, not random: test modules import these from tests.conftest, a second copy of this module.
TEST_API_KEY = "TESTKEY4GKLM0RKQLSP2FBO1ROPKSSW4"
TEST_SECRET = "s3cr3t-9f2c1e7a0b5d4c3e8f6a1b2c3d4e5f60718293a4b5c6d7e8"
#: Quick retries so tests finish in seconds; the Settings invariants still hold.
TEST_TUNING = {
    "STREAMCTL_BACKOFF_INITIAL": "0.2",
    "STREAMCTL_BACKOFF_MAX": "1",
    "STREAMCTL_BUSY_BACKOFF": "1",
    "STREAMCTL_RETRY_DEADLINE": "8",
    "STREAMCTL_READ_TIMEOUT": "1.5",
    "STREAMCTL_CONNECT_TIMEOUT": "1",
    "STREAMCTL_CELERY_RETRY_COUNTDOWN": "1",
    "STREAMCTL_CELERY_MAX_RETRIES": "2",
    "STREAMCTL_VISIBILITY_TIMEOUT": "30",
    "STREAMCTL_JOB_EXPIRY": "60",
    "STREAMCTL_LOG_LEVEL": "INFO",
}

_started: dict[str, Any] = {}


def _is_xdist_controller(config: pytest.Config) -> bool:
    """Under ``pytest -n N`` the controller runs no test: only its N workers need the parts."""
    return not hasattr(config, "workerinput") and bool(config.getoption("numprocesses", None))


def _given_redis_url(url: str) -> str:
    """A ``REDIS_URL`` given from outside, with a database of each xdist worker's own.

    Two test processes sharing one database would consume each other's jobs (each starts its
    own worker on it): ``gw0`` takes database 1, ``gw1`` database 2, and so on.
    """
    name = os.environ.get("PYTEST_XDIST_WORKER")
    if not name:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{int(name.removeprefix('gw')) + 1}"))


def pytest_configure(config: pytest.Config) -> None:
    if _is_xdist_controller(config):
        return
    if "REDIS_URL" in os.environ:
        redis_url = _given_redis_url(os.environ["REDIS_URL"])
    else:
        server = EmbeddedRedis().start()
        _started["redis"] = server
        redis_url = server.url
    from worker.dev.sandbox import Sandbox

    sandbox = Sandbox(secret=TEST_SECRET, api_key=TEST_API_KEY, cdn=TEST_CDN)
    sandbox.start()
    _started["sandbox"] = sandbox
    os.environ.update(
        {
            **TEST_TUNING,
            "REDIS_URL": redis_url,
            "SCALEENGINE_API_URL": sandbox.url,
            "SCALEENGINE_CDN": str(TEST_CDN),
            "SCALEENGINE_API_KEY": TEST_API_KEY,
            "SCALEENGINE_API_SECRET": TEST_SECRET,
            # A channel of the test run's own, so a shared Redis is never disturbed.
            "STREAMCTL_RESULTS_CHANNEL": f"streamctl-test-{secrets.token_hex(4)}:results",
        }
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    sandbox = _started.pop("sandbox", None)
    if sandbox is not None:
        sandbox.stop()
    server = _started.pop("redis", None)
    if server is not None:
        server.cleanup()


@pytest.fixture(scope="session")
def sandbox() -> Any:
    return _started["sandbox"]


@pytest.fixture(autouse=True)
def _clear_sandbox_faults() -> Iterator[None]:
    yield
    if "sandbox" in _started:
        _started["sandbox"].clear_faults()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ["REDIS_URL"]


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture(scope="session")
def settings() -> Any:
    from config.settings import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def producer() -> Any:
    from worker.produce.producer import Producer

    return Producer()


class WorkerProcess:
    """``streamctl worker`` as a real process, its output kept in a log file."""

    def __init__(
        self,
        log_path: Path,
        *,
        concurrency: int = 8,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ):
        self.log_path = log_path
        self.concurrency = concurrency
        self.env = {**os.environ, **(env or {})}
        self.args = args  # extra options for Celery's worker, e.g. ("-Q", "a-queue")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "worker.cli",
                    "worker",
                    "-c",
                    str(self.concurrency),
                    *self.args,
                ],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Its own process group, so that kill() takes the whole worker down at once.
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while b" ready." not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("worker did not start:\n" + self.log_path.read_text()[-3000:])
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        """SIGKILL the worker's whole process group, as a crash or the OOM killer would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    process = WorkerProcess(tmp_path_factory.mktemp("worker") / "worker.log").start()
    yield process
    process.stop()


def wait_for_result(producer: Any, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The job's final result, polled from Redis; fails the test when it does not come."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = producer.state.final_result(job_id)
        if result is not None:
            return dict(result)
        time.sleep(0.05)
    raise AssertionError(f"no final result for job {job_id} within {timeout} s")
