"""``streamctl beat``: Celery beat running the schedule file (``STREAMCTL_SCHEDULE_FILE``).

The whole schedule is validated first: a bad entry (bad cron, missing file, invalid target) is
reported with its name and the scheduler does not start. Starting a second one by mistake is
safe (see ``worker.schedule.scheduler``). Workers read the same schedule file when a run is
due, so they must see the same ``STREAMCTL_SCHEDULE_FILE`` and targets files.
"""

from __future__ import annotations

import click

from worker.cli.errors import friendly_errors


@click.command()
@click.option("--loglevel", "-l", default=None, help="Log level (default: STREAMCTL_LOG_LEVEL).")
@friendly_errors
def beat(loglevel: str | None) -> None:
    """Run the schedule of mass reconnects (STREAMCTL_SCHEDULE_FILE) with Celery beat."""
    from config.settings import get_settings
    from worker.schedule.file import load_schedule
    from worker.telemetry.logs import configure_logging

    settings = get_settings()
    schedule = load_schedule(settings.schedule_file)
    configure_logging(settings)
    click.echo(f"schedule {schedule.path}: {len(schedule.entries)} entries")
    for entry in schedule.entries:
        when = f"cron {entry.cron!r} (UTC)" if entry.cron else f"every {entry.every} s"
        click.echo(f"  {entry.name}: {when}")
    from worker.broker.app import app
    from worker.schedule.scheduler import LockedScheduler

    app.Beat(scheduler=LockedScheduler, loglevel=loglevel or settings.log_level).run()
