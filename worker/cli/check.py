"""``streamctl check``: is this machine ready to close streams? A short report, one line a check.

Checks, in order: the configuration (every setting valid, the account's credentials present),
that Redis answers, that the API's host resolves, that its TLS certificate verifies (with the
same session set-up the worker uses), that the URL answers like a ScaleEngine API (an unsigned
probe it can only refuse, ``probe_body``), the local clock against the API's ``Date`` header,
then the cluster (``worker.cli.check_cluster``): workers that answer, queue depths, and recent
refusals in the results log that name a setting. A failed check makes the command exit 1; a
warning does not.

Why the clock: each request carries a signed unix timestamp, and the API refuses one outside
its window (code 0002). The window is not documented, so the limits are conservative:

* ``Date`` has whole seconds and the reply takes a round trip, so under about 2 s is noise;
  over ``CLOCK_WARN_SECONDS`` (5 s) NTP is evidently not keeping this clock, and it will drift.
* over ``CLOCK_FAIL_SECONDS`` (60 s) requests risk refusal, and worse, timestamps are shared per
  target through Redis: a worker running ahead hands out future timestamps that every other
  worker must wait for (``worker.api.clock``), so one skewed machine stalls the cluster.
"""

from __future__ import annotations

import email.utils
import shutil
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import click

from config.settings import Settings, load_settings
from config.urls import is_sentinel, mask_url
from worker.cli.errors import friendly_errors
from worker.errors import ApiError, ConfigError, TlsFailed

CLOCK_WARN_SECONDS = 5.0
CLOCK_FAIL_SECONDS = 60.0
#: A check must not hang the command: Redis and DNS answer in milliseconds when healthy.
REDIS_TIMEOUT = 3.0
#: The API probe's command: not one the API knows, and never ``stream.close``.
PROBE_COMMAND = "streamctl.check"

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str


def judge_skew(skew: float) -> Status:
    size = abs(skew)
    if size > CLOCK_FAIL_SECONDS:
        return "fail"
    if size > CLOCK_WARN_SECONDS:
        return "warn"
    return "ok"


def run_checks() -> Iterator[Check]:
    """Run every check, yielding each result as it is known."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        yield Check("configuration", "fail", str(exc))
        return
    try:
        cdn, _key, _secret = settings.require_credentials()
        del _key, _secret  # checked for presence only
        yield Check("configuration", "ok", f"cdn {cdn}, API {mask_url(settings.api_url)}")
    except ConfigError as exc:
        yield Check("configuration", "fail", str(exc))
    redis_check = _check_redis("redis", settings.redis_url, settings.redis_ssl, settings)
    yield redis_check
    broker_check = redis_check
    if settings.celery_broker_url and settings.celery_broker_url != settings.redis_url:
        if urlsplit(settings.broker_url).scheme.lower() in ("amqp", "amqps"):
            broker_check = _check_amqp(settings.broker_url, settings.broker_ssl)
        else:
            broker_check = _check_redis(
                "broker", settings.broker_url, settings.broker_ssl, settings
            )
        yield broker_check
    yield from _check_redis_policies(settings)
    yield from _check_api(settings)
    # Imported here: it reads this module's Check, and it imports the Celery app.
    from worker.cli.check_cluster import check_cluster

    yield from check_cluster(settings, broker_answers=broker_check.status == "ok")


def _check_redis(
    name: str, url: str, ssl_options: dict[str, Any] | None, settings: Settings
) -> Check:
    import redis

    if is_sentinel(url):
        assert settings.sentinel_master is not None  # Settings requires it
        return _check_sentinel(name, url, settings.sentinel_master)
    try:
        started = time.monotonic()
        with redis.Redis.from_url(
            url,
            socket_connect_timeout=REDIS_TIMEOUT,
            socket_timeout=REDIS_TIMEOUT,
            **(ssl_options or {}),
        ) as client:
            client.ping()
        elapsed = (time.monotonic() - started) * 1000
        return Check(name, "ok", f"{mask_url(url)} answers (PING {elapsed:.1f} ms)")
    except Exception as exc:  # any failure is the finding
        return Check(name, "fail", f"{mask_url(url)} does not answer: {_reason(exc)}")


def _check_sentinel(name: str, url: str, master: str) -> Check:
    """Redis Sentinel: the master the sentinels name, its replicas and quorum; a fail when the
    address they give answers as a replica (a failover under way, or sentinels out of date)."""
    from worker.store.redis import sentinel_view

    try:
        view = sentinel_view(url, master, timeout=REDIS_TIMEOUT)
    except Exception as exc:  # any failure is the finding
        return Check(name, "fail", f"{mask_url(url)}: master {master!r} not found: {_reason(exc)}")
    host, port = view.address
    seen = (
        f"{mask_url(url)}: master {master!r} at {host}:{port}, {view.replicas} replica(s), "
        f"quorum {view.quorum} of {view.sentinels} sentinel(s)"
    )
    if view.role != "master":
        return Check(name, "fail", f"{seen}; but it answers as a {view.role}, not a master")
    return Check(name, "ok", seen)


def _check_amqp(url: str, ssl_options: dict[str, Any] | None) -> Check:
    """A RabbitMQ broker: open and close one AMQP connection, as a worker's first step."""
    from kombu.connection import Connection

    try:
        started = time.monotonic()
        connection = Connection(url, ssl=ssl_options or False, connect_timeout=REDIS_TIMEOUT)  # type: ignore[no-untyped-call]
        with connection as conn:
            conn.ensure_connection(max_retries=0)
        elapsed = (time.monotonic() - started) * 1000
        return Check("broker", "ok", f"{mask_url(url)} answers (connected in {elapsed:.1f} ms)")
    except Exception as exc:  # any failure is the finding
        return Check("broker", "fail", f"{mask_url(url)} does not answer: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    """The error's class, and for a TLS failure the verification error (it names the fix)."""
    import ssl

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"{type(exc).__name__} (certificate: {cause.verify_message})"
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def _check_redis_policies(settings: Settings) -> Iterator[Check]:
    """Each Redis the worker uses must not evict (the check of worker.store.redis_policy)."""
    import redis

    from worker.store.redis_policy import check_url, redis_urls

    for name, url, ssl in redis_urls(settings):
        try:
            finding = check_url(
                url, timeout=REDIS_TIMEOUT, ssl=ssl, sentinel_master=settings.sentinel_master
            )
        except (redis.ConnectionError, redis.TimeoutError):
            yield Check(f"{name}-policy", "skip", "not checked: this Redis does not answer")
            continue
        yield Check(f"{name}-policy", finding.status, finding.detail)


def _check_api(settings: Settings) -> Iterator[Check]:
    from worker.api.transport import SessionPool, send

    parts = urlsplit(settings.api_url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = sorted({info[4][0] for info in socket.getaddrinfo(host, port)})
    except OSError as exc:
        yield Check("dns", "fail", f"{host} does not resolve: {exc}")
        return
    yield Check("dns", "ok", f"{host} -> {', '.join(str(a) for a in addresses[:4])}")

    # The worker's own session set-up and form encoding: the same CA bundle, verification
    # always on (``transport.send`` passes ``verify`` so REQUESTS_CA_BUNDLE cannot override it).
    pool = SessionPool(ca_bundle=settings.ca_bundle)
    before = time.time()
    try:
        response = send(
            pool,
            settings.api_url,
            probe_body(settings),
            timeout=(settings.connect_timeout, settings.read_timeout),
        )
    except TlsFailed as exc:
        yield Check("tls", "fail", f"certificate of {host} does not verify: {exc.message[:200]}")
        return
    except ApiError as exc:
        yield Check("api", "fail", f"{host}:{port} unreachable: {type(exc).__name__}")
        return
    after = time.time()
    if parts.scheme == "https":
        bundle = settings.ca_bundle or "the default CA bundle"
        yield Check("tls", "ok", f"certificate of {host} verified against {bundle}")
    else:
        yield Check("tls", "skip", "not used: plain http on loopback (a local sandbox)")
    yield judge_probe(response.status_code, response.headers.get("Content-Type", ""), response.text)
    yield _check_clock(response.headers.get("Date"), before, after)


def probe_body(settings: Settings) -> str:
    """The API probe: a request no API can take for a close, and that nothing can replay as one.

    Its command is not ``stream.close`` (``streamctl.check`` is no API command), it carries no
    ``api_key`` and no ``signature`` (so no secret is used and nothing is signed). The API can
    only refuse it; the way it refuses (HTTP 200, ``"status": "failure"``) is what tells a
    ScaleEngine API from a wrong path or host (405, 404, an HTML page).
    """
    import json

    probe = {"command": PROBE_COMMAND, "cdn": settings.cdn, "timestamp": int(time.time())}
    return json.dumps(probe)


def judge_probe(http_status: int, content_type: str, text: str) -> Check:
    """``api`` ok when the probe got a ScaleEngine refusal; fail on anything else."""
    import json

    hint = "check SCALEENGINE_API_URL (e.g. https://api.scaleengine.net/stable/)"
    try:
        reply = json.loads(text) if http_status == 200 else None
    except ValueError:
        reply = None
    if isinstance(reply, dict) and reply.get("status") == "failure":
        code = reply.get("code")
        said = f" (code {code})" if code is not None else ""
        return Check("api", "ok", f"a ScaleEngine API: it refused the probe{said}")
    if isinstance(reply, dict) and reply.get("status") == "success":
        # An API that accepts an unsigned, unknown command is not the one the worker expects.
        return Check("api", "fail", f"accepted an unsigned probe: not a ScaleEngine API; {hint}")
    kind = content_type.split(";", 1)[0].strip() or "no content type"
    return Check(
        "api", "fail", f"HTTP {http_status} ({kind}) to a POST: not a ScaleEngine API; {hint}"
    )


def _check_clock(date_header: str | None, before: float, after: float) -> Check:
    if not date_header:
        return Check("clock", "warn", "the API sent no Date header; the clock was not checked")
    try:
        server = email.utils.parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return Check("clock", "warn", "the API's Date header is unreadable; clock not checked")
    # Date truncates to the second: the server's time was, on average, half a second later.
    skew = (before + after) / 2 - (server + 0.5)
    uncertainty = 0.5 + (after - before) / 2
    direction = "ahead of" if skew > 0 else "behind"
    detail = (
        f"local clock {abs(skew):.1f} s {direction} the API's (+/- {uncertainty:.1f} s); "
        f"warn over {CLOCK_WARN_SECONDS:g} s, fail over {CLOCK_FAIL_SECONDS:g} s"
    )
    status = judge_skew(skew)
    if status != "ok":
        detail += ": sync this machine's clock (NTP)"
    return Check("clock", status, detail)


@click.command()
@friendly_errors
def check() -> None:
    """Check the configuration, Redis, the API, the clock, the workers, the queues and the
    latest closes' refusals; exit 1 on a problem."""
    # On a terminal a long detail wraps under its own column; piped, one line per check.
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    failed = False
    for result in run_checks():
        failed = failed or result.status == "fail"
        click.echo(format_line(result, width))
    click.echo("problems found" if failed else "all checks passed")
    sys.exit(1 if failed else 0)


def format_line(result: Check, width: int | None) -> str:
    line = f"{result.status:<5} {result.name:<14} {result.detail}"
    if width is None or len(line) <= width:
        return line
    indent = " " * 21  # under the detail column
    return textwrap.fill(
        line,
        width=max(width, 40),
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )
