"""What a due schedule run does, inside a worker: enqueue the entry's targets as one batch.

Celery beat sends only ``streamctl.schedule.run(entry_name, slot)``; a worker reads the entry's
targets then (so a targets file edited between runs is used as it is now) and starts the batch
``<entry>.<slot>``. That id is the same wherever the run is handled, and a batch id is created
at most once (``BatchState.create``), so a run message delivered twice enqueues nothing twice.
"""

from __future__ import annotations

import logging
from typing import Any

from config.settings import Settings, get_settings
from worker.errors import NoSuchBatch, StreamctlError
from worker.produce.batch import BatchSender
from worker.schedule.file import load_schedule

#: The stable name beat sends; defined in ``tasks.schedule``.
SCHEDULE_TASK = "streamctl.schedule.run"

logger = logging.getLogger("streamctl.schedule")


def run_entry(
    name: str,
    slot: int,
    *,
    settings: Settings | None = None,
    sender: BatchSender | None = None,
) -> dict[str, Any]:
    """Enqueue the run of entry ``name`` due at ``slot`` (unix seconds); return what was done.

    A schedule that turned invalid since beat started (a targets file edited badly) enqueues
    nothing and logs why, naming the entry: a schedule never sends part of a bad list.
    """
    settings = settings or get_settings()
    report: dict[str, Any] = {"entry": name, "slot": slot}
    try:
        entry = load_schedule(settings.schedule_file, only=name).entries[0]
        batch_id = entry.batch_id(slot)
        report["batch_id"] = batch_id
        sender = sender or BatchSender(settings)
        if _exists(sender, batch_id):
            logger.info(
                "schedule entry %s: batch %s was enqueued already",
                name,
                batch_id,
                extra={"event": "schedule_run_repeated", "entry": name, "batch_id": batch_id},
            )
            return {**report, "outcome": "already_enqueued"}
        started = sender.start(
            entry.source.jobs(), rate=entry.rate, expires=entry.expires, batch_id=batch_id
        )
    except StreamctlError as exc:
        logger.error(
            "schedule entry %s: nothing enqueued: %s",
            name,
            exc,
            extra={"event": "schedule_run_failed", "entry": name, "slot": slot},
        )
        return {**report, "outcome": "failed", "error": str(exc)}
    logger.info(
        "schedule entry %s: batch %s enqueued, %d job(s)",
        name,
        started.batch_id,
        started.total,
        extra={"event": "schedule_run", "entry": name, "batch_id": started.batch_id},
    )
    return {**report, "outcome": "enqueued", "total": started.total}


def _exists(sender: BatchSender, batch_id: str) -> bool:
    try:
        sender.batches.progress(batch_id)
    except NoSuchBatch:
        return False
    return True
