"""The client against the sandbox over real HTTP: every response kind classified right."""

from __future__ import annotations

import http.server
import logging
import ssl
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from tests.conftest import TEST_API_KEY, TEST_CDN, TEST_SECRET
from worker import errors
from worker.api.client import Account, BeforeSend, ScaleEngineClient
from worker.api.clock import TimestampClock
from worker.api.retry import RetryPolicy
from worker.api.transport import RequestsTransport, SessionPool, form_encode
from worker.consume.runner import Delivery
from worker.consume.wiring import build_runner
from worker.dev.embedded_redis import free_port
from worker.model.keys import account_scope
from worker.model.results import Attempt, JobResult
from worker.model.targets import CloseJob
from worker.store.limiter import ClusterLimiter, LimitConfig

ACCOUNT = Account(cdn=TEST_CDN, api_key=SecretStr(TEST_API_KEY), api_secret=SecretStr(TEST_SECRET))


def policy(max_attempts: int = 1, deadline: float = 20.0) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=max_attempts,
        deadline=deadline,
        backoff_initial=0.05,
        backoff_max=0.2,
        busy_backoff=0.2,
        celery_max_retries=0,
        celery_retry_countdown=1,
    )


def make_client(
    url: str,
    redis_client: redis.Redis,
    *,
    attempts: int = 1,
    now: Callable[[], float] = time.time,
    read_timeout: float = 1.0,
    ca_bundle: Path | None = None,
    clock: TimestampClock | None = None,
    before_send: BeforeSend | None = None,
) -> ScaleEngineClient:
    return ScaleEngineClient(
        api_url=url,
        account=ACCOUNT,
        clock=clock or new_clock(redis_client, now=now),
        transport=RequestsTransport(SessionPool(ca_bundle=ca_bundle)),
        policy=policy(attempts),
        timeout=(1.0, read_timeout),
        before_send=before_send,
    )


def new_clock(redis_client: redis.Redis, *, now: Callable[[], float] = time.time) -> TimestampClock:
    """A clock on keys of its own: no other test's timestamps for the same target."""
    scope = account_scope(TEST_CDN, TEST_API_KEY) + ":" + uuid.uuid4().hex[:6]
    return TimestampClock(redis_client, scope, now=now)


def unthrottled_limiter(redis_client: redis.Redis) -> ClusterLimiter:
    """The cluster limiter with no limits set: every go claims the timestamp in its script."""
    config = LimitConfig(
        rate=None,
        burst=1,
        max_in_flight=None,
        busy_rate=1.0,
        busy_seconds=30.0,
        hold=5.0,
        lease_seconds=10.0,
        max_countdown=15.0,
    )
    return ClusterLimiter(
        redis_client, config, prefix=f"streamctl-test-limit:{uuid.uuid4().hex[:8]}"
    )


def new_job() -> CloseJob:
    return CloseJob.parse(
        {"app": "demo-origin", "inst": "live", "stream": f"c-{uuid.uuid4().hex[:8]}"}
    )


def close(
    client: ScaleEngineClient, job: CloseJob, *, expires_in: float = 60
) -> tuple[Any, list[Attempt]]:
    report = client.close_stream(
        job, origin_url=None, expires_at=time.time() + expires_in, deadline=20
    )
    return report.unwrap(), report.attempts


def test_success_parses_string_handle_time(sandbox: Any, redis_client: redis.Redis) -> None:
    outcome, attempts = close(make_client(sandbox.url, redis_client), new_job())
    assert isinstance(outcome.handle_time, float) and outcome.handle_time >= 0
    assert [a.http_status for a in attempts] == [200]
    assert attempts[0].error is None


def test_success_parses_numeric_handle_time(redis_client: redis.Redis) -> None:
    from worker.dev.sandbox import Sandbox

    with Sandbox(
        secret=TEST_SECRET, api_key=TEST_API_KEY, cdn=TEST_CDN, handle_time_as_string=False
    ) as numeric:
        outcome, _ = close(make_client(numeric.url, redis_client), new_job())
    assert isinstance(outcome.handle_time, float)


@pytest.mark.parametrize(
    ("fault", "params", "error_type", "api_code"),
    [
        ("http_error", {"status": 503}, errors.ServerError, None),
        ("http_error", {"status": 500}, errors.ServerError, None),
        ("rate_limit", {"retry_after": 7}, errors.RateLimited, None),
        ("not_json", {}, errors.InvalidResponse, None),
        ("refuse", {"code": "1000"}, errors.ApiBusy, "1000"),
        ("refuse", {"code": "0004"}, errors.ApiUnavailable, "0004"),
        ("refuse", {"code": "0005"}, errors.ApiRefused, "0005"),
        ("refuse", {"code": "0001"}, errors.ApiRefused, "0001"),
        ("reset", {}, errors.ConnectionFailed, None),
        ("slow", {"delay": 2.0}, errors.RequestTimedOut, None),
    ],
)
def test_fault_is_classified(
    sandbox: Any,
    redis_client: redis.Redis,
    fault: str,
    params: dict[str, Any],
    error_type: type[errors.ApiError],
    api_code: str | None,
) -> None:
    job = new_job()
    sandbox.inject(dict(job.target.as_fields()), fault, times=1, **params)
    with pytest.raises(error_type) as caught:
        close(make_client(sandbox.url, redis_client, read_timeout=0.5), job)
    assert caught.value.api_code == api_code
    if fault == "rate_limit":
        assert caught.value.retry_after == 7
    transient = error_type not in (errors.ApiRefused,)
    assert isinstance(caught.value, errors.TransientError) is transient
    assert TEST_SECRET not in str(caught.value) and TEST_SECRET not in repr(caught.value)


def test_unreachable_api_is_a_connection_failure(redis_client: redis.Redis) -> None:
    url = f"http://127.0.0.1:{free_port()}/stable/"
    with pytest.raises(errors.ConnectionFailed):
        close(make_client(url, redis_client), new_job())


def test_transient_failures_are_retried_with_fresh_timestamps(
    sandbox: Any, redis_client: redis.Redis
) -> None:
    job = new_job()
    sandbox.inject(dict(job.target.as_fields()), "http_error", times=3, status=503)
    outcome, attempts = close(make_client(sandbox.url, redis_client, attempts=5), job)
    assert outcome.handle_time is not None
    assert [a.http_status for a in attempts] == [503, 503, 503, 200]
    stamps = [a.timestamp for a in attempts]
    assert stamps == sorted(set(stamps))
    assert len({r["body_sha256"] for r in sandbox.requests_for(dict(job.target.as_fields()))}) == 4


def test_retry_after_is_honoured(sandbox: Any, redis_client: redis.Redis) -> None:
    job = new_job()
    sandbox.inject(dict(job.target.as_fields()), "rate_limit", times=1, retry_after=2)
    close(make_client(sandbox.url, redis_client, attempts=3), job)
    first, second = sandbox.requests_for(dict(job.target.as_fields()))
    assert second["received_at"] - first["received_at"] >= 2.0


def test_permanent_refusal_is_not_retried(sandbox: Any, redis_client: redis.Redis) -> None:
    job = new_job()
    sandbox.inject(dict(job.target.as_fields()), "refuse", times=5, code="0006")
    with pytest.raises(errors.ApiRefused):
        close(make_client(sandbox.url, redis_client, attempts=5), job)
    assert len(sandbox.requests_for(dict(job.target.as_fields()))) == 1


def test_stale_timestamp_is_resigned_once_with_a_warning(
    sandbox: Any, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    skewed = make_client(sandbox.url, redis_client, attempts=5, now=lambda: time.time() - 3600)
    with (
        caplog.at_level(logging.WARNING, logger="streamctl.client"),
        pytest.raises(errors.TimestampRejected) as caught,
    ):
        close(skewed, new_job())
    assert caught.value.api_code == "0002"
    assert sum("clock" in record.getMessage() for record in caplog.records) == 1
    # Re-signed once: two requests, and not retried further although 5 attempts were allowed.
    assert sandbox.stats()["replies"].get("0002", 0) >= 2


def test_nothing_is_sent_after_expiry(sandbox: Any, redis_client: redis.Redis) -> None:
    job = new_job()
    sandbox.inject(dict(job.target.as_fields()), "http_error", times=100, status=503)
    client = make_client(sandbox.url, redis_client, attempts=50)
    expires_at = time.time() + 1.2
    with pytest.raises(errors.JobExpired):  # the deadline (20 s) is not what stops the retries
        client.close_stream(job, origin_url=None, expires_at=expires_at, deadline=20).unwrap()
    stop = time.time()
    time.sleep(0.5)
    records = sandbox.requests_for(dict(job.target.as_fields()))
    assert records and all(r["received_at"] < expires_at for r in records)
    assert stop - expires_at < 0.5  # it ended at its expiry, not when the retries ran out


@pytest.mark.parametrize("claimed_by", ["client", "limiter"])
def test_a_timestamp_beyond_the_expiry_ends_the_job_at_once(
    sandbox: Any, redis_client: redis.Redis, claimed_by: str
) -> None:
    """The target's last timestamp is 30 s ahead (a host whose clock runs fast wrote it): the
    job, which expires in 5 s, ends expired at once instead of holding its thread 30 s."""
    clock = new_clock(redis_client)
    limiter = unthrottled_limiter(redis_client) if claimed_by == "limiter" else None
    client = make_client(sandbox.url, redis_client, clock=clock, before_send=limiter)
    job = new_job()
    redis_client.set(clock.key(job.target.key), int(time.time()) + 30, ex=60)
    ended: list[BaseException | None] = []

    def run() -> None:
        try:
            close(client, job, expires_in=5)
        except BaseException as exc:
            ended.append(exc)
        else:
            ended.append(None)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=3)
    assert not thread.is_alive(), "the wait for a timestamp 30 s ahead held the thread"
    assert time.monotonic() - started < 1.0
    assert isinstance(ended[0], errors.JobExpired)
    assert "timestamp" in str(ended[0])
    assert sandbox.requests_for(dict(job.target.as_fields())) == []


def test_a_job_whose_next_timestamp_lies_beyond_its_expiry_is_never_sent(
    sandbox: Any, redis_client: redis.Redis, settings: Any
) -> None:
    """The only way to send it is after its expiry: it ends expired and nothing is sent, not
    even once the timestamp comes due (the client's expiry check before sending)."""
    runner = build_runner(settings)
    job = new_job()
    key = TimestampClock(redis_client, account_scope(TEST_CDN, TEST_API_KEY)).key(job.target.key)
    ahead = int(time.time()) + 3
    redis_client.set(key, ahead, ex=60)
    kwargs = {**job.target.as_fields(), "expires_at": time.time() + 1.5}
    outcome = runner.run(Delivery(job_id=f"ahead-{uuid.uuid4().hex}", args=(), kwargs=kwargs))
    assert isinstance(outcome, JobResult)
    assert (outcome.outcome, outcome.attempts) == ("expired", [])
    time.sleep(max(ahead + 0.5 - time.time(), 0.0))  # a late send would have arrived by now
    assert sandbox.requests_for(dict(job.target.as_fields())) == []


# --- replies the sandbox does not make: a tiny server of our own --------------------------------


class Canned(http.server.BaseHTTPRequestHandler):
    reply: tuple[int, dict[str, str], bytes] = (200, {}, b"")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, headers, body = self.reply
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[Callable[[int, dict[str, str], bytes], str]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def set_reply(status: int, headers: dict[str, str], body: bytes) -> str:
        Canned.reply = (status, headers, body)
        return f"http://127.0.0.1:{server.server_port}/stable/"

    yield set_reply
    server.shutdown()


@pytest.mark.parametrize(
    ("status", "headers", "body", "error_type", "api_code"),
    [
        (404, {}, b"not here", errors.HttpRefused, None),
        (302, {"Location": "http://127.0.0.1:1/"}, b"", errors.HttpRefused, None),
        (200, {}, b"[1, 2]", errors.InvalidResponse, None),
        (200, {}, b'{"message": "?"}', errors.InvalidResponse, None),
        (200, {}, b'{"status": "failure", "code": 2}', errors.TimestampRejected, "0002"),
        (200, {}, b'{"status": "failure", "code": 1000}', errors.ApiBusy, "1000"),
        (200, {}, b'{"status": "failure", "message": "no such stream"}', errors.ApiRefused, None),
        (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"", errors.RateLimited, None),
    ],
)
def test_unusual_replies_are_classified(
    canned: Callable[[int, dict[str, str], bytes], str],
    redis_client: redis.Redis,
    status: int,
    headers: dict[str, str],
    body: bytes,
    error_type: type[errors.ApiError],
    api_code: str | None,
) -> None:
    url = canned(status, headers, body)
    with pytest.raises(error_type) as caught:
        close(make_client(url, redis_client), new_job())
    assert caught.value.api_code == api_code
    assert caught.value.http_status == status


def test_numeric_handle_time_and_message(
    canned: Callable[[int, dict[str, str], bytes], str], redis_client: redis.Redis
) -> None:
    url = canned(200, {}, b'{"status": "success", "message": "closed", "handle_time": 0.25}')
    outcome, _ = close(make_client(url, redis_client), new_job())
    assert (outcome.message, outcome.handle_time) == ("closed", 0.25)


def test_tls_is_verified(tmp_path: Path, redis_client: redis.Redis) -> None:
    """A self-signed certificate is refused, and permanently: there is no switch around it."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    Canned.reply = (200, {}, b'{"status": "success", "message": "", "handle_time": 0.1}')
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_port}/stable/"
    try:
        with pytest.raises(errors.TlsFailed):
            close(make_client(url, redis_client, attempts=3), new_job())
        # With the certificate as the configured CA bundle, the same server is trusted.
        outcome, _ = close(make_client(url, redis_client, ca_bundle=cert), new_job())
        assert outcome.handle_time == 0.1
    finally:
        server.shutdown()


def test_form_encoding_is_urlencode_s() -> None:
    every_ascii = "".join(chr(code) for code in range(128))
    for value in (every_ascii, "", "a b+c", '{"k":"v\\/w"}', "é and 😀 (not ASCII)"):
        fields = {"json": value, "a b": value[::-1]}
        assert form_encode(fields) == urllib.parse.urlencode(fields).encode("ascii")
