"""``streamctl check`` against the sandbox, a dead Redis, a TLS server and a skewed clock."""

from __future__ import annotations

import email.utils
import http.server
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


def test_check_passes_against_the_sandbox() -> None:
    done = streamctl_check()
    assert done.returncode == 0, done.stdout + done.stderr
    assert statuses(done.stdout) == {
        "configuration": "ok",
        "redis": "ok",
        "redis-policy": "ok",  # the session's Redis has the default policy, noeviction
        "dns": "ok",
        "tls": "skip",
        "clock": "ok",
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
