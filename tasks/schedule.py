"""The scheduled-run task beat sends: enqueue one schedule entry's targets as a batch."""

from __future__ import annotations

from typing import Any

from worker.broker.app import app
from worker.schedule.run import SCHEDULE_TASK, run_entry


@app.task(name=SCHEDULE_TASK)
def run_schedule(entry_name: str, slot: int, **run: Any) -> dict[str, Any]:
    # ``run``: targets, rate and expires as beat read them (worker.schedule.run.run_kwargs).
    return run_entry(
        entry_name,
        int(slot),
        targets=run.get("targets"),
        rate=run.get("rate"),
        expires=run.get("expires"),
    )
