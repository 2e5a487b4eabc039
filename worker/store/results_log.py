"""Reading results: following the results log, and waiting for one job's result.

``follow`` reads the ``<channel>:log`` stream with blocking XREAD rather than subscribing to
the channel: the stream holds the same messages, and reading it from a known position means
no result can fall into the gap between replaying old ones and receiving new ones.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis

from config.units import duration_seconds
from worker.errors import StreamctlError
from worker.store.decode import text

#: Longest pause between two attempts to reach Redis again while following.
RECONNECT_MAX_DELAY = 10.0
#: While waiting for a result, a first notice after this many seconds, then every QUIET_EVERY.
QUIET_FIRST, QUIET_EVERY = 10.0, 30.0


def since_to_stream_id(since: str, now: float | None = None) -> str:
    """``--since``: a duration (``30``: seconds, as everywhere; ``10m``), ``all``, or a
    results-log entry id (``1700000000000-0``, with its dash)."""
    since = since.strip()
    if since in ("all", "0"):
        return "0-0"
    seconds = duration_seconds(since)  # a bare number is seconds, as everywhere else
    if seconds is not None:
        moment = (time.time() if now is None else now) - seconds
        return f"{max(int(moment * 1000), 0)}-0"
    if re.match(r"^\d+-\d+$", since):
        return since
    raise StreamctlError(
        "--since: expected a duration (30 or 30s, 10m, 2h, 1d), 'all' or a results-log "
        f"entry id (1700000000000-0), not {since!r}"
    )


def follow(
    client: redis.Redis,
    log_stream: str,
    *,
    since: str | None = None,
    block_ms: int = 1000,
    stop_after: float | None = None,
    notify: Callable[[str], None] | None = None,
    on_idle: Callable[[], None] | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (stream id, result) from ``since`` on (default: only new ones), until stopped.

    With ``notify``, a lost Redis connection is retried with backoff (``notify`` says so)
    and following resumes where it stopped; without, the error is raised. ``on_idle`` is
    called after each read that brought nothing (about every ``block_ms``).
    """
    last = since_to_stream_id(since) if since is not None else "$"
    if last == "$":
        # Resolve "$" once, so that results arriving between two reads are not skipped.
        info = client.xinfo_stream(log_stream) if client.exists(log_stream) else None
        last = text(info["last-generated-id"]) if info else "0-0"
    deadline = None if stop_after is None else time.monotonic() + stop_after
    delay = 0.0
    while deadline is None or time.monotonic() < deadline:
        try:
            replies: Any = client.xread({log_stream: last}, count=500, block=block_ms)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if notify is None:
                raise
            delay = min(max(delay * 2, 0.5), RECONNECT_MAX_DELAY)
            notify(f"lost the connection to Redis ({exc}); trying again in {delay:g} s")
            time.sleep(delay)
            continue
        if delay and notify is not None:
            notify("connected to Redis again; following on")
        delay = 0.0
        if not replies and on_idle is not None:
            on_idle()
        for _stream, entries in replies or []:
            for entry_id, fields in entries:
                last = text(entry_id)
                yield last, json.loads(fields[b"result"])


def wait_for_result(
    client: redis.Redis,
    channel: str,
    job_id: str,
    *,
    timeout: float,
    state_lookup: Callable[[str], dict[str, Any] | None],
    on_quiet: Callable[[float], None] | None = None,
) -> dict[str, Any] | None:
    """Wait for ``job_id``'s final result; None when ``timeout`` passes first.

    Subscribe first, then look the result up, so a result published in between is not missed.
    ``on_quiet(seconds waited)`` is called while nothing comes (after QUIET_FIRST s, then every
    QUIET_EVERY s).
    """
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(channel)
    try:
        existing = state_lookup(job_id)
        if existing is not None:
            return dict(existing)
        begun = time.monotonic()
        deadline = begun + timeout
        next_notice = begun + QUIET_FIRST
        while (left := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=min(left, 1.0))
            if on_quiet is not None and time.monotonic() >= next_notice:
                on_quiet(time.monotonic() - begun)
                next_notice += QUIET_EVERY
            if message is None:
                continue
            result = json.loads(message["data"])
            if result.get("job_id") == job_id:
                return dict(result)
        return None
    finally:
        pubsub.close()
