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


def since_to_stream_id(since: str, now: float | None = None) -> str:
    """``--since``: a stream id (``1700000000000-0``), ``all``, or a duration like ``10m``."""
    if since in ("all", "0"):
        return "0-0"
    seconds = duration_seconds(since, unit_required=True)
    if seconds is not None:
        moment = (time.time() if now is None else now) - seconds
        return f"{int(moment * 1000)}-0"
    if re.match(r"^\d+(-\d+)?$", since):
        return since
    raise StreamctlError(
        f"--since: expected a duration (30s, 10m, 2h, 1d), 'all' or a stream id, not {since!r}"
    )


def follow(
    client: redis.Redis,
    log_stream: str,
    *,
    since: str | None = None,
    block_ms: int = 1000,
    stop_after: float | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (stream id, result) from ``since`` on (default: only new ones), until stopped."""
    last = since_to_stream_id(since) if since is not None else "$"
    if last == "$":
        # Resolve "$" once, so that results arriving between two reads are not skipped.
        info = client.xinfo_stream(log_stream) if client.exists(log_stream) else None
        last = text(info["last-generated-id"]) if info else "0-0"
    deadline = None if stop_after is None else time.monotonic() + stop_after
    while deadline is None or time.monotonic() < deadline:
        replies: Any = client.xread({log_stream: last}, count=500, block=block_ms)
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
) -> dict[str, Any] | None:
    """Wait for ``job_id``'s final result; None when ``timeout`` passes first.

    Subscribe first, then look the result up, so a result published in between is not missed.
    """
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(channel)
    try:
        existing = state_lookup(job_id)
        if existing is not None:
            return dict(existing)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=min(left, 1.0))
            if message is None:
                continue
            result = json.loads(message["data"])
            if result.get("job_id") == job_id:
                return dict(result)
        return None
    finally:
        pubsub.close()
