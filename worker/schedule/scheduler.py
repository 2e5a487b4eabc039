"""Celery beat for the schedule file, safe when two schedulers run by mistake.

Two guards, as celery-redbeat does it and one more:

* a leader lock in Redis (redis-py's ``Lock``: ``SET NX`` with a TTL, renewed on every tick by
  its holder only, released by its holder only): only the scheduler holding it looks at the
  schedule; another one stands by and takes over within ``LOCK_TTL`` seconds when the holder
  dies;
* a key per run (``SET NX`` on entry and slot): a run is sent only by the scheduler that
  creates the key, so even two schedulers that both believe they hold the lock (a process
  frozen past its TTL, then woken) cannot send a run twice.

Slots come from the wall clock (``ScheduleEntry.latest_slot``), so both schedulers name a run
alike. A scheduler remembers the last slot it saw per entry, starting from the one current at
its start: it never sends a run that was due before it started, but a standby that takes over
sends the current run if the old holder had not (the per-run key says whether it had).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import redis
from celery.beat import Scheduler
from redis.exceptions import LockError
from redis.lock import Lock

from config.settings import get_settings
from worker.errors import StreamctlError
from worker.model import keys
from worker.produce.producer import PUBLISH_RETRY_POLICY
from worker.schedule.file import Schedule, ScheduleEntry, load_schedule
from worker.schedule.run import SCHEDULE_TASK, publish_failed_run, run_kwargs
from worker.store.redis import redis_client

LOCK_KEY = keys.BEAT_LOCK
#: A capped stream of the runs sent (entry, slot, batch id, scheduler): an audit trail.
RUNS_LOG = keys.SCHEDULE_RUNS
RUNS_LOG_MAXLEN = 10_000
#: A standby takes over this long after the holder stopped renewing. Short enough that a cron
#: run (recognised during its own minute only) is still sent after a takeover.
LOCK_TTL = 20.0
#: The holder renews, and a standby retries, this often: several renewals fit in one TTL.
RENEW_EVERY = LOCK_TTL / 4
#: Sleep a little past a slot boundary, so that the tick after it sees the new slot.
_PAST_BOUNDARY = 0.01

logger = logging.getLogger("streamctl.beat")


class LeaderLock:
    """The beat's leader lock: redis-py's ``Lock`` with a TTL, renewed by its holder only.

    Its token names the holder (host, pid), readable in Redis when two schedulers are suspected.
    """

    def __init__(self, client: redis.Redis, key: str = LOCK_KEY, ttl: float = LOCK_TTL) -> None:
        self.client = client
        self.key = key
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        # The token lives on the object, not per thread: whichever thread ticks holds it.
        self._lock = Lock(client, key, timeout=ttl, blocking=False, thread_local=False)

    def hold(self) -> bool:
        """Take the lock or extend it; False while another scheduler holds it."""
        try:
            return self._lock.reacquire()  # the holder's renewal: its token, a fresh TTL
        except LockError:  # not taken yet, or lost (expired, taken by another): take it anew
            return bool(self._lock.acquire(token=self.token))

    def release(self) -> None:
        with contextlib.suppress(LockError):  # not held (any more): nothing to release
            self._lock.release()


class LockedScheduler(Scheduler):  # type: ignore[misc]  # Celery ships no type hints
    """A beat scheduler that runs ``STREAMCTL_SCHEDULE_FILE`` while it holds the leader lock."""

    _schedule_file: Schedule
    _lock: LeaderLock
    _redis: redis.Redis
    _seen: dict[str, int | None]
    _holding: bool | None = None

    def __init__(self, *args: Any, schedule_path: Path | None = None, **kwargs: Any) -> None:
        #: None: STREAMCTL_SCHEDULE_FILE, which workers read too (another path is for tests).
        self._schedule_path = schedule_path
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        settings = get_settings()
        self._schedule_file = load_schedule(self._schedule_path or settings.schedule_file)
        self._redis = redis_client(settings)
        self._lock = LeaderLock(self._redis)
        now = time.time()
        self._seen = {entry.name: entry.latest_slot(now) for entry in self._schedule_file.entries}

    @property
    def info(self) -> str:
        # Beat's banner asks a lazy instance, one that never ran setup_schedule.
        return f"    . schedule -> {get_settings().schedule_file}\n    . lock -> {LOCK_KEY}"

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Send the runs that came due; return the seconds to sleep before the next tick."""
        if not self._take_lock():
            return RENEW_EVERY
        entries = self._schedule_file.entries
        now = time.time()
        for entry in entries:
            slot = entry.latest_slot(now)
            if slot is not None and slot != self._seen.get(entry.name) and self._run(entry, slot):
                self._seen[entry.name] = slot
        if not entries:
            return RENEW_EVERY
        wait = min(entry.seconds_to_next_slot(time.time()) for entry in entries)
        return min(wait + _PAST_BOUNDARY, RENEW_EVERY)

    def close(self) -> None:
        if self._holding:
            # A standby takes over at once, not after the TTL; if Redis is gone, the TTL does it.
            with contextlib.suppress(redis.RedisError):
                self._lock.release()
        super().close()

    # --- internals -----------------------------------------------------------------------------

    def _take_lock(self) -> bool:
        try:
            holding = self._lock.hold()
        except redis.RedisError as exc:
            logger.warning("beat: Redis unreachable (%s); not scheduling", type(exc).__name__)
            holding = False
        if holding != self._holding:
            if holding:
                logger.info("beat: holding the schedule lock %s; running the schedule", LOCK_KEY)
            else:
                logger.info("beat: another scheduler holds %s; standing by", LOCK_KEY)
            self._holding = holding
        return holding

    def _run(self, entry: ScheduleEntry, slot: int) -> bool:
        """Send the run at ``slot`` unless another scheduler did; False to try again later."""
        key = keys.schedule_run_key(entry.name, slot)
        batch_id = entry.batch_id(slot)
        try:
            # The key outlives the time during which any scheduler may take this slot as due.
            if not self._redis.set(key, self._lock.token, nx=True, ex=2 * entry.period + 60):
                logger.info("beat: run %s was sent by another scheduler", batch_id)
                return True
        except redis.RedisError as exc:
            logger.warning(
                "beat: Redis unreachable (%s); run %s waits", type(exc).__name__, batch_id
            )
            return False
        try:
            # Read now, sent in the message: the worker needs neither the schedule file nor the
            # targets file, so beat and workers may run in different folders or machines.
            jobs = entry.source.jobs()
        except StreamctlError as exc:  # the targets file turned unreadable or invalid
            logger.error(
                "beat: run %s not sent: schedule entry %s: %s",
                batch_id,
                entry.name,
                exc,
                extra={"event": "schedule_run_failed", "batch_id": batch_id},
            )
            publish_failed_run(get_settings(), batch_id, f"schedule entry {entry.name}: {exc}")
            return True  # this slot is over; the next one reads the file again
        try:
            self.app.send_task(
                SCHEDULE_TASK,
                args=[entry.name, slot],
                kwargs=run_kwargs(jobs, entry.rate, entry.expires),
                task_id=f"schedule-{batch_id}",
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
            )
        except Exception as exc:
            logger.error("beat: could not send run %s (%s); retrying", batch_id, type(exc).__name__)
            with contextlib.suppress(redis.RedisError):
                self._redis.delete(key)  # so that the next tick may send it
            return False
        logger.info(
            "beat: sent run %s, %d target(s)",
            batch_id,
            len(jobs),
            extra={"event": "schedule_sent", "batch_id": batch_id},
        )
        self._record(entry, slot, batch_id)
        return True

    def _record(self, entry: ScheduleEntry, slot: int, batch_id: str) -> None:
        fields = {"entry": entry.name, "slot": slot, "batch_id": batch_id, "by": self._lock.token}
        try:
            self._redis.xadd(RUNS_LOG, fields, maxlen=RUNS_LOG_MAXLEN, approximate=True)  # type: ignore[arg-type]
        except redis.RedisError:
            logger.warning("beat: run %s sent but not recorded in %s", batch_id, RUNS_LOG)
