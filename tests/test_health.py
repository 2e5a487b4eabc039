"""``streamctl check`` against the sandbox, a dead Redis, a TLS server and a skewed clock."""

from __future__ import annotations

import email.utils
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_SECRET
from worker.cli.check import CLOCK_FAIL_SECONDS, CLOCK_WARN_SECONDS, judge_skew, run_checks
from worker.dev.embedded_redis import free_port


def streamctl_check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "check"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def statuses(output: str) -> dict[str, str]:
    """``{check name: status}`` from the report's lines."""
    found = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("ok", "warn", "fail", "skip"):
            found[parts[1]] = parts[0]
    return found


def failed_checks(output: str) -> set[str]:
    """The names of the checks that failed."""
    return {name for name, status in statuses(output).items() if status == "fail"}


def test_check_passes_against_the_sandbox(worker: Any) -> None:
    done = streamctl_check(STREAMCTL_RESULTS_CHANNEL="check-fresh:results")
    assert done.returncode == 0, done.stdout + done.stderr
    assert statuses(done.stdout) == {
        "configuration": "ok",
        "redis": "ok",
        "redis-policy": "ok",  # the session's Redis has the default policy, noeviction
        "dns": "ok",
        "tls": "skip",
        "api": "ok",  # the unsigned probe was refused as the API refuses it
        "clock": "ok",
        "workers": "ok",
        "queues": "ok",
        "refusals": "skip",  # a fresh results log: no close yet
    }
    assert "TLS" not in done.stdout and "not used" in done.stdout
    assert TEST_SECRET not in done.stdout + done.stderr


def test_check_fails_when_redis_does_not_answer() -> None:
    done = streamctl_check(REDIS_URL=f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    assert done.returncode == 1
    assert statuses(done.stdout)["redis"] == "fail"
    assert statuses(done.stdout)["redis-policy"] == "skip"  # not read, not failed twice
    assert statuses(done.stdout)["clock"] == "ok"  # the other checks still ran
    assert "hunter2" not in done.stdout  # the Redis password is not printed
    assert "problems found" in done.stdout


def test_check_fails_on_missing_credentials() -> None:
    done = streamctl_check(SCALEENGINE_API_SECRET="")
    assert done.returncode == 1
    assert statuses(done.stdout)["configuration"] == "fail"
    assert "SCALEENGINE_API_SECRET" in done.stdout


# --- TLS and the clock, against a server of our own ------------------------------------------


class Skewed(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 405 and a Date header ``skew`` seconds off this machine's clock."""

    skew = 0.0

    def do_GET(self) -> None:
        self.send_response(405)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def date_time_string(self, timestamp: float | None = None) -> str:
        return email.utils.formatdate(time.time() + self.skew, usegmt=True)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An https server on loopback with a self-signed certificate: (its URL, the certificate)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Skewed)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_port}/stable/", cert
    server.shutdown()


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    def run(**env: str) -> dict[str, Any]:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return {check.name: check for check in run_checks()}

    return run


def test_untrusted_certificate_fails_the_tls_check(
    tls_server: tuple[str, Path], checks: Callable[..., dict[str, Any]]
) -> None:
    url, _cert = tls_server
    found = checks(SCALEENGINE_API_URL=url)
    assert found["tls"].status == "fail"
    assert "does not verify" in found["tls"].detail
    assert "clock" not in found  # no trusted reply, so no Date to compare with


@pytest.mark.parametrize(
    ("skew", "status"),
    [(0.0, "ok"), (CLOCK_WARN_SECONDS + 5, "warn"), (-(CLOCK_FAIL_SECONDS + 60), "fail")],
)
def test_clock_is_compared_with_the_api_date_header(
    tls_server: tuple[str, Path],
    checks: Callable[..., dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    skew: float,
    status: str,
) -> None:
    url, cert = tls_server
    monkeypatch.setattr(Skewed, "skew", skew)
    found = checks(SCALEENGINE_API_URL=url, STREAMCTL_CA_BUNDLE=str(cert))
    assert found["tls"].status == "ok", found["tls"].detail
    assert "verified" in found["tls"].detail
    assert found["clock"].status == status, found["clock"].detail
    if skew < 0:
        assert "ahead of" in found["clock"].detail and "NTP" in found["clock"].detail


@pytest.mark.parametrize(
    ("skew", "status"),
    [(0.4, "ok"), (-5.0, "ok"), (5.1, "warn"), (-59.0, "warn"), (60.5, "fail"), (-3600, "fail")],
)
def test_skew_limits(skew: float, status: str) -> None:
    assert judge_skew(skew) == status


# --- URLs and credentials: validated once, masked wherever shown ------------------------------

AWKWARD_PASSWORD = "p#a/s?s"
ENCODED_PASSWORD = "p%23a%2Fs%3Fs"
FRAGMENTS = ("p#a", "a/s", "s?s", "p%23", "%2Fs", "%3Fs")


def streamctl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_masks_the_api_url_credentials(sandbox: Any) -> None:
    url = sandbox.url.replace("http://", "http://apiuser:pa55word@")
    done = streamctl_check(SCALEENGINE_API_URL=url)
    assert statuses(done.stdout)["configuration"] == "ok", done.stdout
    assert "pa55word" not in done.stdout + done.stderr
    assert "apiuser" not in done.stdout and "***@127.0.0.1" in done.stdout


@pytest.mark.parametrize(
    "command",
    [("check",), ("close", "--stream-id", "1"), ("worker",)],
    ids=["check", "close", "worker"],
)
def test_a_raw_password_is_refused_without_a_traceback_or_a_fragment(
    command: tuple[str, ...],
) -> None:
    done = streamctl(*command, REDIS_URL=f"redis://:{AWKWARD_PASSWORD}@127.0.0.1:6399/0")
    output = done.stdout + done.stderr
    assert done.returncode == (1 if command == ("check",) else 2), output
    assert "REDIS_URL" in output and "percent-encode" in output
    assert "Traceback" not in output
    for fragment in FRAGMENTS:
        assert fragment not in output


def test_check_reports_an_unreachable_amqp_broker() -> None:
    done = streamctl_check(CELERY_BROKER_URL=f"amqp://guest:brokerpw@127.0.0.1:{free_port()}//")
    assert done.returncode == 1, done.stdout + done.stderr
    assert statuses(done.stdout)["broker"] == "fail"
    assert "Traceback" not in done.stderr and "brokerpw" not in done.stdout + done.stderr
    assert "amqp://***@127.0.0.1" in done.stdout


@pytest.fixture(scope="module")
def guarded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.private_redis import PrivateRedis

    folder = tmp_path_factory.mktemp("guarded")
    with PrivateRedis(folder, "--requirepass", AWKWARD_PASSWORD) as server:
        yield server


def test_a_percent_encoded_password_works_end_to_end(guarded_redis: Any, tmp_path: Path) -> None:
    """check, close, and a worker (broker, result backend, state) with the password encoded."""
    from tests.conftest import WorkerProcess

    url = f"redis://:{ENCODED_PASSWORD}@127.0.0.1:{guarded_redis.port}/0"
    checked = streamctl_check(REDIS_URL=url)
    assert statuses(checked.stdout)["redis"] == "ok", checked.stdout
    worker = WorkerProcess(tmp_path / "worker.log", concurrency=2, env={"REDIS_URL": url}).start()
    try:
        closed = streamctl("close", "--stream-id", "77", "--wait", "--timeout", "20", REDIS_URL=url)
    finally:
        worker.stop()
    assert closed.returncode == 0, closed.stdout + closed.stderr
    assert json.loads(closed.stdout.splitlines()[-1])["outcome"] == "success"
    # Celery's start-up banner shows the broker and the backend, masked.
    assert f"redis://:**@127.0.0.1:{guarded_redis.port}/0" in worker.log()
    for fragment in FRAGMENTS:
        assert fragment not in checked.stdout + closed.stdout + closed.stderr + worker.log()


def test_the_redis_password_can_come_from_a_file(guarded_redis: Any, tmp_path: Path) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(AWKWARD_PASSWORD + "\n")
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{guarded_redis.port}/0",
        "STREAMCTL_REDIS_PASSWORD_FILE": str(secret),
    }
    checked = streamctl_check(**env)
    assert statuses(checked.stdout)["redis"] == "ok", checked.stdout
    closed = streamctl("close", "--stream-id", "78", **env)
    assert closed.returncode == 0, closed.stdout + closed.stderr
    without = streamctl_check(REDIS_URL=env["REDIS_URL"])
    assert statuses(without.stdout)["redis"] == "fail"  # the password is what let it in


def test_the_api_client_repr_masks_the_url_credentials(redis_client: Any) -> None:
    from pydantic import SecretStr

    from worker.api.client import Account, ScaleEngineClient
    from worker.api.clock import TimestampClock
    from worker.api.retry import RetryPolicy
    from worker.api.transport import RequestsTransport, SessionPool

    client = ScaleEngineClient(
        api_url="https://apiuser:pa55word@api.example.com/stable/",
        account=Account(cdn=1, api_key=SecretStr("k"), api_secret=SecretStr("s")),
        clock=TimestampClock(redis_client, "test-repr"),
        transport=RequestsTransport(SessionPool()),
        policy=RetryPolicy(
            max_attempts=1,
            deadline=1,
            backoff_initial=0.1,
            backoff_max=0.1,
            busy_backoff=0.1,
            celery_max_retries=0,
            celery_retry_countdown=1,
        ),
        timeout=(1.0, 1.0),
    )
    assert "pa55word" not in repr(client) and "apiuser" not in repr(client)
    assert "https://***@api.example.com/stable/" in repr(client)


def test_the_broker_password_variable_reaches_the_broker(guarded_redis: Any) -> None:
    broker = f"redis://127.0.0.1:{guarded_redis.port}/1"
    checked = streamctl_check(CELERY_BROKER_URL=broker, STREAMCTL_BROKER_PASSWORD=AWKWARD_PASSWORD)
    assert statuses(checked.stdout)["broker"] == "ok", checked.stdout
    assert statuses(streamctl_check(CELERY_BROKER_URL=broker).stdout)["broker"] == "fail"
    for fragment in FRAGMENTS:
        assert fragment not in checked.stdout + checked.stderr


def test_a_unix_socket_redis_works_end_to_end(tmp_path_factory: pytest.TempPathFactory) -> None:
    """REDIS_URL=unix://: check, a worker (broker, result backend, state) and close --wait."""
    from tests.conftest import WorkerProcess
    from tests.private_redis import PrivateRedis

    folder = tmp_path_factory.mktemp("unix")
    socket_path = folder / "redis.sock"
    args = ("--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700")
    with PrivateRedis(folder, *args):
        url = f"unix://{socket_path}?db=2"
        checked = streamctl_check(REDIS_URL=url)
        assert statuses(checked.stdout)["redis"] == "ok", checked.stdout
        worker = WorkerProcess(folder / "worker.log", concurrency=2, env={"REDIS_URL": url})
        worker.start()
        try:
            closed = streamctl(
                "close", "--stream-id", "79", "--wait", "--timeout", "20", REDIS_URL=url
            )
        finally:
            worker.stop()
    assert closed.returncode == 0, closed.stdout + closed.stderr
    assert json.loads(closed.stdout.splitlines()[-1])["outcome"] == "success"
