"""Requests we sign are accepted by a PHP backend that re-encodes them with its own json_encode.

tests/php/backend.php runs under ``php -S``; it decodes the ``json`` form field, drops the
signature and checks the HMAC over PHP's json_encode of the rest, as the real API does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from phpref import PHP, require_php

from worker.api.phpjson import php_json_encode
from worker.api.signing import CLOSE_COMMAND, request_fields, signature, signed_body
from worker.dev.embedded_redis import stop_process
from worker.model.targets import CloseJob

pytestmark = pytest.mark.php

BACKEND = Path(__file__).parent / "php" / "backend.php"
SECRET = 'backend-secret/"é+'
API_KEY = "APX4GKLM0RKQLSP2FBO1ROPKSSW47DZE"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Backend:
    url: str
    log: Path

    def post(self, body: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """POST ``json=body``; return the reply and the log line PHP wrote for it."""
        before = self.log.stat().st_size if self.log.exists() else 0
        with requests.Session() as session:
            session.trust_env = False  # straight to 127.0.0.1, whatever proxy is configured
            reply = session.post(self.url, data={"json": body}, timeout=5)
        reply.raise_for_status()
        with self.log.open("rb") as log_file:
            log_file.seek(before)
            lines = log_file.read().decode("utf-8").splitlines()
        assert len(lines) == 1, f"expected one log line for the request, got {lines!r}"
        return reply.json(), json.loads(lines[0])


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    require_php()
    work = tmp_path_factory.mktemp("php_backend")
    log = work / "backend.log"
    port = _free_port()
    env = {**os.environ, "SANDBOX_SECRET": SECRET, "BACKEND_LOG": str(log)}
    with (work / "server.out").open("wb") as server_out:
        process = subprocess.Popen(
            [PHP, "-S", f"127.0.0.1:{port}", str(BACKEND)],
            env=env,
            stdout=server_out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                pytest.fail(f"php -S exited: {(work / 'server.out').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("php -S did not accept connections within 10 s")
                time.sleep(0.02)
        yield Backend(url=f"http://127.0.0.1:{port}/stable/", log=log)
    finally:
        stop_process(process)


def _fields(job_fields: dict[str, str | int]) -> dict[str, str | int]:
    job = CloseJob.parse(job_fields)
    return request_fields(
        command=CLOSE_COMMAND,
        api_key=API_KEY,
        timestamp=int(time.time()),
        cdn=158,
        job=job,
        origin_url=job.origin_url,
    )


SUCCESS_KEYS = ["message", "status", "handle_time"]
REFUSED = {"status": "failure", "code": "0003", "message": "failed HMAC-SHA256 signature"}

NAMES = {
    "plain": ("demo-origin", "live", "my_live_stream"),
    "slashes": ("demo/origin", "live/", "/a/b//c"),
    "quotes": ('say "hi"', "it's", '"quoted"'),
    "backslashes": ("C:\\app", "\\", "a\\/b\\\\n"),
    "non_ascii": ("café", "直播", "straße é ñ"),
    # An emoji ZWJ sequence, and a 4-byte letter (U+2A6D6, CJK Extension B; private-use code
    # points such as U+10FFFD are refused as targets).
    "emoji": ("😀", "live 🎥", "👩\u200d💻 \U0002a6d6"),
    "html": ("<app>", "&inst", "</script>"),
    "everything": ('a/"\\é😀', "'<>&", 'x/\\"直😀/'),
}


@pytest.mark.parametrize("names", list(NAMES.values()), ids=list(NAMES))
def test_php_accepts_our_signature_and_decodes_the_same_names(
    backend: Backend, names: tuple[str, str, str]
) -> None:
    app, inst, stream = names
    fields = _fields({"app": app, "inst": inst, "stream": stream, "origin_url": "o.example"})
    reply, seen = backend.post(signed_body(fields, SECRET))
    assert reply["status"] == "success", (reply, seen)
    assert list(reply) == SUCCESS_KEYS
    assert reply["message"] == ""
    assert reply["handle_time"].endswith(" seconds")
    assert seen == {
        "app": app, "inst": inst, "stream": stream, "stream_id": None,
        "result": "ok", "reason": "",
    }  # fmt: skip


@pytest.mark.parametrize("stream_id", [1, 1000, 2**31, 2**63 - 1])
def test_php_accepts_stream_id(backend: Backend, stream_id: int) -> None:
    reply, seen = backend.post(signed_body(_fields({"stream_id": stream_id}), SECRET))
    assert reply["status"] == "success", (reply, seen)
    assert seen["stream_id"] == stream_id
    assert seen["result"] == "ok"


# --- the backend really checks ---------------------------------------------------------------


def _signed(stream: str = "a/b é") -> dict[str, str | int]:
    fields = _fields({"app": "app", "inst": "live", "stream": stream})
    return {**fields, "signature": signature(fields, SECRET)}


def test_tampered_signature_is_refused(backend: Backend) -> None:
    signed = _signed()
    good = str(signed["signature"])
    signed["signature"] = ("B" if good[0] == "A" else "A") + good[1:]
    reply, seen = backend.post(php_json_encode(signed))
    assert reply == REFUSED
    assert seen["result"] == "bad"
    assert seen["reason"] == "signature mismatch"


def test_tampered_field_is_refused(backend: Backend) -> None:
    signed = _signed()
    signed["stream"] = "a/c é"
    reply, seen = backend.post(php_json_encode(signed))
    assert reply == REFUSED
    assert seen["stream"] == "a/c é"


def test_wrong_secret_is_refused(backend: Backend) -> None:
    fields = _fields({"app": "app", "inst": "live", "stream": "a/b é"})
    reply, seen = backend.post(signed_body(fields, SECRET + "x"))
    assert reply == REFUSED
    assert seen["reason"] == "signature mismatch"


def test_missing_signature_is_refused(backend: Backend) -> None:
    signed = _signed()
    del signed["signature"]
    reply, seen = backend.post(php_json_encode(signed))
    assert reply == REFUSED
    assert seen["reason"] == "no signature"


def test_python_json_without_slash_escaping_is_refused(backend: Backend) -> None:
    """Signing Python's plain json.dumps (slashes unescaped) fails: PHP's encoding matters."""
    fields = _fields({"app": "app", "inst": "live", "stream": "a/b"})
    plain = json.dumps(fields, separators=(",", ":"))
    digest = hmac.new(SECRET.encode(), plain.encode(), hashlib.sha256).digest()
    body = json.dumps({**fields, "signature": base64.b64encode(digest).decode()})
    reply, seen = backend.post(body)
    assert reply == REFUSED
    assert seen["stream"] == "a/b"
    # The same request signed by us is accepted.
    assert backend.post(signed_body(fields, SECRET))[0]["status"] == "success"


@pytest.mark.parametrize("names", list(NAMES.values()), ids=list(NAMES))
def test_php_accepts_closes_sent_by_the_worker_client(
    backend: Backend, names: tuple[str, str, str], redis_client: Any
) -> None:
    """The whole send path a worker uses: clock, signing, session, classification."""
    from pydantic import SecretStr

    from worker.api.client import Account, ScaleEngineClient
    from worker.api.clock import TimestampClock
    from worker.api.retry import RetryPolicy
    from worker.api.transport import RequestsTransport, SessionPool

    client = ScaleEngineClient(
        api_url=backend.url,
        account=Account(cdn=158, api_key=SecretStr(API_KEY), api_secret=SecretStr(SECRET)),
        clock=TimestampClock(redis_client, f"streamctl:test-php:{time.time_ns()}"),
        transport=RequestsTransport(SessionPool()),
        policy=RetryPolicy(
            max_attempts=1,
            deadline=5,
            backoff_initial=0.1,
            backoff_max=0.1,
            busy_backoff=0.1,
            celery_max_retries=0,
            celery_retry_countdown=1,
        ),
        timeout=(2, 5),
    )
    app, inst, stream = names
    report = client.close_stream(
        CloseJob.parse({"app": app, "inst": inst, "stream": stream}),
        origin_url="jb-origin.secdn.net",
        expires_at=time.time() + 60,
        deadline=5,
    )
    success, attempts = report.unwrap(), report.attempts
    assert success.handle_time is not None  # PHP answered "status": "success"
    assert [attempt.http_status for attempt in attempts] == [200]
    last = json.loads(backend.log.read_text("utf-8").splitlines()[-1])
    assert (last["app"], last["inst"], last["stream"]) == names
