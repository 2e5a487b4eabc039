"""``streamctl check`` finds what every close would fail on: no worker, a wrong API path, and
refusals in the results log that name a setting (a wrong secret: every close ends 0003)."""

from __future__ import annotations

import http.server
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import TEST_SECRET, WorkerProcess
from tests.test_health import statuses, streamctl_check
from worker.cli.check_cluster import judge_refusals

CLOSE = (sys.executable, "-m", "worker.cli", "close")


def isolated_env(redis_url: str, db: int) -> dict[str, str]:
    """A broker and results log of the test's own: another Redis db, another channel."""
    base = redis_url.rsplit("/", 1)[0]
    return {
        "REDIS_URL": f"{base}/{db}",
        "STREAMCTL_RESULTS_CHANNEL": f"check-{secrets.token_hex(4)}:results",
    }


def test_check_fails_when_no_worker_answers(redis_url: str) -> None:
    done = streamctl_check(**isolated_env(redis_url, 9))
    assert done.returncode == 1, done.stdout + done.stderr
    found = statuses(done.stdout)
    assert found["workers"] == "fail", done.stdout
    assert "no worker answered" in done.stdout
    assert found["queues"] == "ok" and "streamctl 0" in done.stdout
    assert found["refusals"] == "skip"
    assert done.stdout.rstrip().endswith("problems found")


def test_check_passes_with_a_worker(worker: WorkerProcess) -> None:
    fresh = {"STREAMCTL_RESULTS_CHANNEL": f"check-{secrets.token_hex(4)}:results"}
    done = streamctl_check(**fresh)
    assert done.returncode == 0, done.stdout + done.stderr
    found = statuses(done.stdout)
    # Every lane's queue, the urgent ones on their own channel included (worker.consume.lanes).
    consumed = "1 answered (1 on streamctl,streamctl.bulk,streamctl.urgent)"
    assert found["workers"] == "ok" and consumed in done.stdout
    assert found["api"] == "ok", done.stdout
    assert "a ScaleEngine API: it refused the probe (code 0003)" in done.stdout
    assert done.stdout.rstrip().endswith("all checks passed")


class NotTheApi(http.server.BaseHTTPRequestHandler):
    """A web server at the wrong path: POST answers 405 with an HTML page, as nginx does."""

    def do_POST(self) -> None:
        body = b"<html><body>405 Not Allowed</body></html>"
        self.send_response(405)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def not_the_api() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotTheApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/wrong/"
    server.shutdown()


def test_check_fails_when_the_api_url_is_no_scaleengine_api(
    not_the_api: str, sandbox: Any, redis_url: str
) -> None:
    before = sandbox.stats()
    done = streamctl_check(SCALEENGINE_API_URL=not_the_api, **isolated_env(redis_url, 9))
    assert done.returncode == 1
    assert statuses(done.stdout)["api"] == "fail", done.stdout
    assert "HTTP 405 (text/html)" in done.stdout and "SCALEENGINE_API_URL" in done.stdout
    # The sandbox's own control path is no API either (404, text/plain).
    control = urlsplit(sandbox.url)._replace(path="/_sandbox/nothing").geturl()
    done = streamctl_check(SCALEENGINE_API_URL=control, **isolated_env(redis_url, 9))
    assert statuses(done.stdout)["api"] == "fail" and "not a ScaleEngine API" in done.stdout
    assert sandbox.stats()["replies"].get("success") == before["replies"].get("success")


@pytest.mark.e2e
def test_check_reports_the_refusals_of_a_wrong_secret(redis_url: str, tmp_path: Path) -> None:
    env = {**isolated_env(redis_url, 10), "SCALEENGINE_API_SECRET": "not-" + TEST_SECRET}
    worker = WorkerProcess(tmp_path / "worker.log", concurrency=2, env=env).start()
    try:
        for stream_id in (1, 2):
            closed = subprocess.run(
                [*CLOSE, "--stream-id", str(stream_id), "--wait", "--timeout", "20"],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert closed.returncode == 1 and "0003" in closed.stdout, closed.stdout
        done = streamctl_check(**env)
    finally:
        worker.stop()
    assert done.returncode == 1, done.stdout
    found = statuses(done.stdout)
    assert found["workers"] == "ok", done.stdout
    assert found["refusals"] == "fail", done.stdout
    assert "the last 2 close(s) were refused: failed HMAC signature" in done.stdout
    assert "check SCALEENGINE_API_SECRET" in done.stdout
    assert "not-" + TEST_SECRET not in done.stdout + done.stderr


def _job(outcome: str, code: str | None) -> dict[str, Any]:
    return {"type": "job", "outcome": outcome, "api_code": code, "finished_at": "t"}


def test_an_older_refusal_warns_and_a_rejected_job_is_no_close() -> None:
    newest_first = [_job("rejected", None), _job("success", None), _job("failure", "0001")]
    found = judge_refusals([*newest_first, None])
    assert found.status == "warn" and "1 of the last 2 closes" in found.detail
    assert "SCALEENGINE_CDN" in found.detail
    assert judge_refusals([_job("failure", "0006")]).status == "ok"
