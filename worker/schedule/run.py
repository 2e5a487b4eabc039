"""What a due schedule run does, inside a worker: enqueue the entry's targets as one batch.

The run message carries what the run needs: beat reads the entry's targets when the run is due
(inline ones, or its ``file`` read and validated then, so a file edited between runs is used as
it is now) and sends ``streamctl.schedule.run(entry_name, slot, targets=[...], rate=, expires=)``.
A worker therefore needs neither the schedule file nor the targets file: beat and the workers
may run in different folders, containers or machines. Thousands of targets make a message of a
few hundred kB, well within what Redis and RabbitMQ carry.

The batch is ``<entry>.<slot>``, the same wherever the run is handled, and a batch id is created
at most once (``BatchState.create``), so a run message delivered twice enqueues nothing twice.
A run that enqueues nothing (invalid targets, a Redis error) still ends with a batch summary on
the results channel: ``total`` 0 and an ``error`` saying why (``publish_failed_run``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis

from config.settings import Settings, get_settings
from worker.errors import InvalidTarget, NoSuchBatch, StreamctlError
from worker.model.targets import CloseJob
from worker.produce.batch import BatchSender
from worker.schedule.file import TargetSource, load_schedule, run_batch_id

#: The stable name beat sends; defined in ``tasks.schedule``.
SCHEDULE_TASK = "streamctl.schedule.run"

logger = logging.getLogger("streamctl.schedule")


def run_kwargs(
    jobs: Sequence[CloseJob], rate: float | None, expires: float | None
) -> dict[str, Any]:
    """The run message's keyword arguments: the targets beat read, and the entry's limits."""
    return {"targets": [job.as_fields() for job in jobs], "rate": rate, "expires": expires}


def run_entry(
    name: str,
    slot: int,
    *,
    targets: object = None,
    rate: object = None,
    expires: object = None,
    settings: Settings | None = None,
    sender: BatchSender | None = None,
) -> dict[str, Any]:
    """Enqueue the run of entry ``name`` due at ``slot`` (unix seconds); return what was done.

    ``targets`` None: a run sent by an older beat, without its targets; the entry is then read
    from STREAMCTL_SCHEDULE_FILE here, as before. Targets that turned invalid enqueue nothing
    (a schedule never sends part of a bad list) and the failure is published as the batch's
    summary, naming the entry.
    """
    settings = settings or get_settings()
    batch_id = run_batch_id(name, slot)
    report: dict[str, Any] = {"entry": name, "slot": slot, "batch_id": batch_id}
    try:
        sender = sender or BatchSender(settings)
        if targets is None:
            entry = load_schedule(settings.schedule_file, only=name).entries[0]
            jobs, rate, expires = entry.source.jobs(), entry.rate, entry.expires
        else:
            jobs = _message_jobs(targets)
        if _exists(sender, batch_id):
            logger.info(
                "schedule entry %s: batch %s was enqueued already",
                name,
                batch_id,
                extra={"event": "schedule_run_repeated", "entry": name, "batch_id": batch_id},
            )
            return {**report, "outcome": "already_enqueued"}
        started = sender.start(
            jobs, rate=_limit("rate", rate), expires=_limit("expires", expires), batch_id=batch_id
        )
    except (StreamctlError, redis.RedisError) as exc:
        error = str(exc) if isinstance(exc, StreamctlError) else f"Redis: {type(exc).__name__}"
        logger.error(
            "schedule entry %s: run %s enqueued nothing: %s",
            name,
            batch_id,
            error,
            extra={"event": "schedule_run_failed", "entry": name, "batch_id": batch_id},
        )
        publish_failed_run(settings, batch_id, f"schedule entry {name}: {error}", sender)
        return {**report, "outcome": "failed", "error": error}
    logger.info(
        "schedule entry %s: batch %s enqueued, %d job(s)",
        name,
        started.batch_id,
        started.total,
        extra={"event": "schedule_run", "entry": name, "batch_id": started.batch_id},
    )
    return {**report, "outcome": "enqueued", "total": started.total}


def publish_failed_run(
    settings: Settings, batch_id: str, error: str, sender: BatchSender | None = None
) -> bool:
    """Publish the summary of a run that enqueued nothing; False if it could not be (logged)."""
    try:
        batches = (sender or BatchSender(settings)).batches
        return batches.fail(
            batch_id,
            error,
            channel=settings.results_channel,
            log=settings.results_log,
            log_maxlen=settings.results_log_maxlen,
        )
    except (StreamctlError, redis.RedisError) as exc:
        logger.error(
            "run %s: its failure summary was not published (%s)",
            batch_id,
            exc if isinstance(exc, StreamctlError) else type(exc).__name__,
        )
        return False


def _message_jobs(targets: object) -> list[CloseJob]:
    """The run message's targets, validated again: a broker message is input like any other."""
    if not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets):
        raise InvalidTarget("the run message's targets must be a list of objects")
    return TargetSource(inline=tuple(targets)).jobs()


def _limit(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise StreamctlError(f"the run message's {name} must be a positive number")
    return float(value)


def _exists(sender: BatchSender, batch_id: str) -> bool:
    try:
        sender.batches.progress(batch_id)
    except NoSuchBatch:
        return False
    return True
