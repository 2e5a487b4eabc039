"""The janitor: ends the jobs whose message the broker lost, so every job gets a final result.

Kombu's Redis transport pops a message (BRPOP) before it records it as unacknowledged, so a
worker SIGKILLed in between takes the message along and no redelivery brings it back. Producers
record every job as pending before publishing it (``JobState.record_pending``), and the script
that publishes a job's final result drops that record. A job still pending well past its
expiry has no final result, and no delivery may send it any more: the janitor ends it
``expired``, through the same ``JobRunner`` and ``publish_final`` as every other result, whose
``SET NX`` makes it lose to any result a delivery published first.

How long "well past" is (``grace_seconds``): a delivery checks the expiry right before each
request, so a request started just before it ends at most one connect plus one read timeout
later, and its result is published right after. ``STREAMCTL_JANITOR_GRACE`` adds room for
clock skew between hosts and a slow publish.

Every worker runs a sweep each ``STREAMCTL_JANITOR_INTERVAL`` seconds in a daemon thread
(started by ``worker.consume.boot``). A short Redis lock lets one sweep per interval run in the
whole cluster; two at once would still be safe (``SET NX``), only wasted work.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from config.settings import Settings
from worker.model import keys
from worker.model.results import JobResult
from worker.store.jobs import JobState

log = logging.getLogger("streamctl.janitor")

LOCK_KEY = keys.JANITOR_LOCK
#: Pending jobs read per round trip; the lock is renewed between chunks of a long sweep.
SWEEP_CHUNK = 200
LOST_MESSAGE = (
    "the broker lost the job's message (a worker or Redis died while it was being taken from "
    "the queue); nothing was sent after its expiry"
)

EndLost = Callable[[str, Mapping[str, Any], str], JobResult]

_started_lock = threading.Lock()
_thread: threading.Thread | None = None


def grace_seconds(settings: Settings) -> float:
    """Seconds past a job's expiry after which no delivery can still publish its result."""
    return settings.connect_timeout + settings.read_timeout + settings.janitor_grace


def sweep(
    state: JobState,
    end_lost: EndLost,
    *,
    grace: float,
    lock_seconds: float,
    now: float | None = None,
) -> int | None:
    """End every job still pending ``grace`` seconds past its expiry; return how many.

    None when another worker holds the sweep lock. The lock is not released: it lapses after
    ``lock_seconds`` (the interval), so the cluster sweeps once per interval.
    """
    lock_ms = max(int(lock_seconds * 1000), 1)
    if not state.redis.set(LOCK_KEY, uuid.uuid4().hex, nx=True, px=lock_ms):
        return None
    cutoff = (time.time() if now is None else now) - grace
    ended = 0
    while True:
        due = state.pending_due(cutoff, SWEEP_CHUNK)
        for job_id, kwargs in due:
            end_lost(job_id, kwargs, LOST_MESSAGE)  # publish_final drops it from pending
        ended += len(due)
        if len(due) < SWEEP_CHUNK:
            break
        state.redis.pexpire(LOCK_KEY, lock_ms)
    if ended:
        log.warning(
            "janitor: ended %d job(s) the broker lost, as expired",
            ended,
            extra={"event": "janitor_ended", "count": ended},
        )
    return ended


def _run_forever(settings: Settings) -> None:
    from worker.consume.wiring import runner  # built on first use, as the tasks build it

    grace = grace_seconds(settings)
    while True:
        time.sleep(settings.janitor_interval)
        try:
            job_runner = runner()
            sweep(
                job_runner.state,
                job_runner.end_lost,
                grace=grace,
                lock_seconds=settings.janitor_interval,
            )
        except Exception as exc:  # Redis down, say: the next sweep tries again
            log.warning(
                "janitor: sweep failed (%s); trying again in %g s",
                type(exc).__name__,
                settings.janitor_interval,
                extra={"event": "janitor_failed"},
            )


def start(settings: Settings) -> bool:
    """Start this process's janitor thread, once; False if it runs already."""
    global _thread
    with _started_lock:
        if _thread is not None:
            return False
        _thread = threading.Thread(
            target=_run_forever, args=(settings,), name="streamctl-janitor", daemon=True
        )
        _thread.start()
    return True
