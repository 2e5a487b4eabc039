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

A lost job that can still meet its expiry is run again instead (``rescue``): when two sweeps in
a row find a Redis broker holding no message at all, none queued and none unacknowledged, a job
pending in both (and due no sooner than one attempt's timeouts from now) has lost its message,
since every delivery of it would be in one of those places. It is sent again from its pending
record as a single close, with its job id; its lost message never runs, so it runs once, and the
final result's ``SET NX`` and the per-target timestamps would still keep a mistaken rescue to
one result and no replayed request. In a long batch that is at its end, when the queue drains:
the rescue waits for the messages queued before it, as the lost one would have. RabbitMQ loses
no popped message: there, nothing is rescued.

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
from worker.store.decode import text
from worker.store.jobs import JobState

log = logging.getLogger("streamctl.janitor")

LOCK_KEY = keys.JANITOR_LOCK
SUSPECTS_KEY = keys.JANITOR_SUSPECTS
#: Most lost jobs one sweep sends again.
RESCUE_LIMIT = 1000
#: Pending jobs read per round trip; the lock is renewed between chunks of a long sweep.
SWEEP_CHUNK = 200
LOST_MESSAGE = (
    "the broker lost the job's message (a worker or Redis died while it was being taken from "
    "the queue); nothing was sent after its expiry"
)

EndLost = Callable[[str, Mapping[str, Any], str], JobResult]
#: Sends a lost job again from its task kwargs (``worker.broker.messages.send_retry``).
Resend = Callable[[str, Mapping[str, Any]], None]

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


def rescue(
    state: JobState,
    broker_idle: bool | None,
    resend: Resend,
    *,
    min_left: float,
    memory_seconds: float,
    now: float | None = None,
) -> int:
    """Send again the pending jobs two idle-broker sweeps in a row found; return how many.

    Run by the sweep that holds the lock. ``broker_idle``: the broker holds no message at all
    (None: not a Redis broker). ``min_left``: a rescued job is due no sooner than this (one
    attempt's timeouts); ``memory_seconds``: how long a first sighting counts (a few intervals).
    """
    if not broker_idle:
        state.redis.delete(SUSPECTS_KEY)
        return 0
    moment = time.time() if now is None else now
    alive = state.pending_alive(moment + min_left, RESCUE_LIMIT)
    seen_before = {text(raw) for raw in state.redis.smembers(SUSPECTS_KEY)}
    lost = sorted(job_id for job_id in alive if job_id in seen_before)
    for job_id in lost:
        resend(job_id, alive[job_id])
    pipe = state.redis.pipeline()
    pipe.delete(SUSPECTS_KEY)
    first_seen = [job_id for job_id in alive if job_id not in seen_before]
    if first_seen:
        pipe.sadd(SUSPECTS_KEY, *first_seen)
        pipe.expire(SUSPECTS_KEY, max(int(memory_seconds), 1))
    pipe.execute()
    if lost:
        log.warning(
            "janitor: sent again %d job(s) whose message the broker lost",
            len(lost),
            extra={"event": "janitor_rescued", "count": len(lost)},
        )
    return len(lost)


def _run_forever(settings: Settings) -> None:
    from worker.broker.app import app
    from worker.broker.idle import redis_broker_idle
    from worker.broker.messages import send_retry
    from worker.consume.wiring import runner  # built on first use, as the tasks build it

    grace = grace_seconds(settings)
    attempt_seconds = settings.connect_timeout + settings.read_timeout

    def resend(job_id: str, kwargs: Mapping[str, Any]) -> None:
        send_retry(app, job_id, kwargs, countdown=0)

    while True:
        time.sleep(settings.janitor_interval)
        try:
            job_runner = runner()
            swept = sweep(
                job_runner.state,
                job_runner.end_lost,
                grace=grace,
                lock_seconds=settings.janitor_interval,
            )
            if swept is not None:  # this worker holds the sweep's lock
                rescue(
                    job_runner.state,
                    redis_broker_idle(app),
                    resend,
                    min_left=attempt_seconds,
                    memory_seconds=3 * settings.janitor_interval,
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
