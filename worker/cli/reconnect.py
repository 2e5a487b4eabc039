"""``streamctl reconnect FILE`` and ``streamctl batch BATCH_ID``: mass reconnects at a terminal.

The work is done by ``worker.produce.batch`` (the same functions other systems call); this
module only reads options, draws the progress bar from the results log and prints the summary.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from config.lanes import Lane
from config.units import parse_rate
from worker.cli.errors import friendly_errors
from worker.errors import InvalidLines, StreamctlError
from worker.model.results import OUTCOME_STYLE as STYLE
from worker.model.results import Outcome

if TYPE_CHECKING:
    from worker.produce.batch import BatchSender, StartedBatch

#: Exit codes: every job succeeded; some did not; no summary came in time (as ``close``).
EXIT_OK, EXIT_NOT_ALL_SUCCEEDED, EXIT_NO_RESULT = 0, 1, 3


def _rate(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    try:
        return parse_rate(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.argument("file", required=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "csv", "jsonl"]),
    default="auto",
    show_default=True,
    help="CSV with a header row, or JSON lines; auto looks at the first line.",
)
@click.option("--skip-invalid", is_flag=True, help="Send the valid lines even if some are bad.")
@click.option("--dry-run", is_flag=True, help="Print what would be closed; send nothing.")
@click.option("--no-wait", is_flag=True, help="Print the batch id and return after enqueueing.")
@click.option(
    "--rate", callback=_rate, help="Cap this batch, e.g. 50/s or 600/m (below the global limit)."
)
@click.option(
    "--expires", type=float, help="Seconds until the jobs expire (default: STREAMCTL_JOB_EXPIRY)."
)
@click.option(
    "--retry-failed",
    "retry_batch",
    metavar="BATCH_ID",
    help="Send again, as a new batch, the jobs of an earlier batch that did not succeed.",
)
@click.option("--timeout", type=float, help="Seconds to wait for the summary (default: expiry).")
@click.option(
    "--lane",
    type=click.Choice(["bulk", "urgent"]),
    default="bulk",
    show_default=True,
    help="urgent: ahead of every bulk job (for a few targets someone waits for).",
)
@friendly_errors
def reconnect(
    file: str | None,
    fmt: str,
    skip_invalid: bool,
    dry_run: bool,
    no_wait: bool,
    rate: float | None,
    expires: float | None,
    retry_batch: str | None,
    timeout: float | None,
    lane: Lane,
) -> None:
    """Close every stream named in FILE ('-': standard input) as one batch, and follow it."""
    from worker.produce.batch import BatchSender
    from worker.produce.targetfile import read_targets

    err = Console(stderr=True)
    if (file is None) == (retry_batch is None):
        raise StreamctlError("give a FILE of targets, or --retry-failed BATCH_ID (not both)")
    sender = BatchSender()
    if retry_batch is not None:
        jobs = sender.failed_jobs(retry_batch)
        if not jobs:
            err.print(f"every job of batch {retry_batch} succeeded: nothing to send again")
            return
        err.print(f"{len(jobs)} job(s) of batch {retry_batch} did not succeed")
    else:
        assert file is not None
        targets = read_targets(file, fmt=fmt)
        if targets.errors and not skip_invalid:
            raise InvalidLines(targets.errors)
        for error in targets.errors:
            err.print(f"[yellow]skipped[/] {error}", highlight=False)
        if targets.duplicates:
            err.print(f"{targets.duplicates} duplicate target(s) will be closed once")
        jobs = targets.jobs
    started = sender.start(jobs, rate=rate, expires=expires, dry_run=dry_run, lane=lane)
    if dry_run:
        for job in jobs:
            click.echo(json.dumps({**job.target.as_fields(), "origin_url": job.origin_url}))
        err.print(f"dry run: {started.total} close(s) would be sent; nothing was enqueued")
        return
    click.echo(started.batch_id)
    err.print(
        f"enqueued batch {started.batch_id}: {started.total} job(s) "
        f"in {started.enqueue_seconds:.2f} s"
    )
    if no_wait:
        return
    summary = _follow_with_progress(err, started, timeout, sender)
    if summary is None:
        err.print(f"[red]no summary for batch {started.batch_id} in time[/]")
        sys.exit(EXIT_NO_RESULT)
    _print_summary(err, summary)
    succeeded = summary["counts"].get(Outcome.SUCCESS, 0) == summary["total"]
    sys.exit(EXIT_OK if succeeded else EXIT_NOT_ALL_SUCCEEDED)


def _follow_with_progress(
    err: Console, started: StartedBatch, timeout: float | None, sender: BatchSender
) -> dict[str, Any] | None:
    from worker.produce.batch import wait_for_batch

    counts: dict[str, int] = {}
    begun = time.monotonic()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[outcomes]}"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(started.batch_id, total=started.total, outcomes="", rate="")

        def on_result(result: dict[str, Any]) -> None:
            outcome = str(result.get("outcome"))
            counts[outcome] = counts.get(outcome, 0) + 1
            done = sum(counts.values())
            per_second = done / max(time.monotonic() - begun, 1e-6)
            progress.update(
                task,
                completed=done,
                outcomes=" ".join(
                    f"[{STYLE.get(name, 'white')}]{name} {count}[/]"
                    for name, count in sorted(counts.items())
                ),
                rate=f"{per_second:.0f}/s",
            )

        return wait_for_batch(started, timeout=timeout, on_result=on_result, sender=sender)


def _print_summary(err: Console, summary: dict[str, Any]) -> None:
    table = Table(title=f"batch {summary['batch_id']}")
    table.add_column("outcome")
    table.add_column("jobs", justify="right")
    for name, count in summary["counts"].items():
        if count:
            table.add_row(f"[{STYLE.get(name, 'white')}]{name}[/]", str(count))
    table.add_row("total", str(summary["total"]))
    err.print(table)
    err.print(f"started {summary['started_at']}, finished {summary['finished_at']}")
    click.echo(json.dumps(summary, ensure_ascii=False))


@click.command()
@click.argument("batch_id")
@click.option("--cancel", is_flag=True, help="Stop the batch: jobs not yet sent end cancelled.")
@friendly_errors
def batch(batch_id: str, cancel: bool) -> None:
    """Show a batch's progress, or its summary once it ended (JSON)."""
    from config.settings import get_settings
    from worker.store.batches import BatchState
    from worker.store.redis import redis_client

    settings = get_settings()
    state = BatchState(redis_client(settings), ttl_seconds=settings.result_ttl)
    if cancel:
        before = state.cancel(batch_id)
        click.echo(
            f"cancelled batch {batch_id}: {before.done} of {before.total} job(s) had ended; "
            "the rest end as cancelled unless already being sent",
            err=True,
        )
    progress = state.progress(batch_id)
    shown = progress.summary if progress.summary is not None else progress.to_dict()
    click.echo(json.dumps(shown, ensure_ascii=False))
