"""``streamctl reconnect FILE`` and ``streamctl batch BATCH_ID``: mass reconnects at a terminal.

The work is done by ``worker.produce.batch`` (the same functions other systems call); this
module only reads options, draws the progress bar from the results log and prints the summary.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from config.lanes import BULK, LANES, Lane
from config.units import parse_rate
from worker.cli.errors import EXIT_INTERRUPTED, emit, friendly_errors
from worker.cli.progress import follow_with_progress, print_summary
from worker.errors import InvalidLines, StreamctlError
from worker.model.results import Outcome

if TYPE_CHECKING:
    from worker.model.targets import CloseJob
    from worker.produce.batch import BatchSender, StartedBatch

#: Exit codes: every job succeeded; some did not; no summary came in time (as ``close``).
EXIT_OK, EXIT_NOT_ALL_SUCCEEDED, EXIT_NO_RESULT = 0, 1, 3
#: Durations that must be positive.
F = TypeVar("F", bound=Callable[..., Any])

POSITIVE_SECONDS = click.FloatRange(min=0, min_open=True)


def lane_option(default: Lane, help: str) -> Callable[[F], F]:
    """``--lane``, for ``close`` and ``reconnect``: each its default lane (config.lanes)."""
    option: Callable[[F], F] = click.option(
        "--lane", type=click.Choice(LANES), default=default, show_default=True, help=help
    )
    return option


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
    "--expires",
    type=POSITIVE_SECONDS,
    help="Seconds until the jobs expire (default: STREAMCTL_JOB_EXPIRY).",
)
@click.option(
    "--retry-failed",
    "retry_batch",
    metavar="BATCH_ID",
    help="Send again, as a new batch, the jobs of an earlier batch that did not succeed.",
)
@click.option(
    "--include-cancelled",
    is_flag=True,
    help="With --retry-failed: send the cancelled jobs again too.",
)
@click.option(
    "--timeout", type=POSITIVE_SECONDS, help="Seconds to wait for the summary (default: expiry)."
)
@lane_option(BULK, "urgent: ahead of every bulk job (for a few targets someone waits for).")
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
    include_cancelled: bool,
    timeout: float | None,
    lane: Lane,
) -> None:
    """Close every stream named in FILE ('-': standard input) as one batch, and follow it.

    Prints the summary (JSON) on stdout; the batch id and progress go to stderr.
    """
    from worker.produce.batch import BatchSender
    from worker.produce.targetfile import read_targets

    err = Console(stderr=True)
    if (file is None) == (retry_batch is None):
        raise StreamctlError("give a FILE of targets, or --retry-failed BATCH_ID (not both)")
    sender = BatchSender()
    if retry_batch is not None:
        jobs = _failed_jobs(sender, retry_batch, include_cancelled=include_cancelled)
        if not jobs:
            left_out = "" if include_cancelled else " (cancelled ones too: --include-cancelled)"
            err.print(
                f"no job of batch {retry_batch} failed: nothing to send again{left_out}",
                highlight=False,
            )
            return
        err.print(f"{len(jobs)} job(s) of batch {retry_batch} did not succeed")
    else:
        assert file is not None
        if file == "-" and sys.stdin.isatty():
            err.print("reading targets from standard input (CSV or JSON lines); end with Ctrl-D")
        targets = read_targets(file, fmt=fmt)
        if targets.errors and not skip_invalid:
            raise InvalidLines(targets.errors)
        for error in targets.errors:
            err.print(f"[yellow]skipped[/] {error}", highlight=False)
        if targets.duplicates:
            err.print(f"{targets.duplicates} duplicate target(s) will be closed once")
        jobs = targets.jobs
    _warn_if_rate_outlasts_expiry(err, len(jobs), rate, expires or sender.settings.job_expiry)
    started = sender.start(jobs, rate=rate, expires=expires, dry_run=dry_run, lane=lane)
    if dry_run:
        for job in jobs:
            emit(json.dumps(_target_line(job)))
        err.print(f"dry run: {started.total} close(s) would be sent; nothing was enqueued")
        return
    err.print(
        f"enqueued batch {started.batch_id}: {started.total} job(s) "
        f"in {started.enqueue_seconds:.2f} s",
        highlight=False,
    )
    if no_wait:
        emit(started.batch_id)
        return
    _follow_to_the_end(err, started, timeout, sender, counts={})


def _target_line(job: CloseJob) -> dict[str, Any]:
    """A job as a line of a JSON-lines target file (what ``reconnect`` reads)."""
    return {**job.target.as_fields(), "origin_url": job.origin_url}


def _failed_jobs(sender: BatchSender, batch_id: str, *, include_cancelled: bool) -> list[CloseJob]:
    """The jobs of an ended batch that did not succeed (cancelled ones only when asked)."""
    from worker.model.targets import CloseJob

    if include_cancelled:
        return sender.failed_jobs(batch_id)
    records = sender.batches.jobs(batch_id)
    results = sender.jobs.final_results(list(records))
    cancelled = {
        CloseJob.parse(records[job_id]).target.key
        for job_id, result in results.items()
        if result is not None and result.get("outcome") == Outcome.CANCELLED
    }
    return [job for job in sender.failed_jobs(batch_id) if job.target.key not in cancelled]


def _warn_if_rate_outlasts_expiry(
    err: Console, total: int, rate: float | None, expires: float
) -> None:
    if rate is None or not rate > 0 or total / rate <= expires:
        return
    late = total - int(rate * expires)
    err.print(
        f"[yellow]warning:[/] at {rate:g}/s, {total} job(s) take {total / rate:.0f} s to send, "
        f"longer than their expiry ({expires:g} s): about {late} will end expired. "
        "Raise --expires or --rate.",
        highlight=False,
    )


def _follow_to_the_end(
    err: Console,
    started: StartedBatch,
    timeout: float | None,
    sender: BatchSender,
    counts: dict[str, int],
) -> None:
    """Follow the batch to its summary, print it, and exit as ``reconnect`` does."""
    try:
        summary = follow_with_progress(err, started, timeout, sender, counts)
    except KeyboardInterrupt:
        err.print(
            f"\nstopped following batch {started.batch_id}; the batch goes on.\n"
            f"  follow it:  streamctl batch {started.batch_id} --wait\n"
            f"  stop it:    streamctl batch {started.batch_id} --cancel",
            highlight=False,
        )
        sys.exit(EXIT_INTERRUPTED)
    if summary is None:
        err.print(
            f"[red]no summary for batch {started.batch_id} in time[/] (it may go on: "
            f"streamctl batch {started.batch_id})",
            highlight=False,
        )
        sys.exit(EXIT_NO_RESULT)
    print_summary(err, summary)
    succeeded = summary["counts"].get(Outcome.SUCCESS, 0) == summary["total"]
    sys.exit(EXIT_OK if succeeded else EXIT_NOT_ALL_SUCCEEDED)


@click.command()
@click.argument("batch_id")
@click.option("--cancel", is_flag=True, help="Stop the batch: jobs not yet sent end cancelled.")
@click.option(
    "--wait", is_flag=True, help="Follow the batch to its summary; exit status as reconnect."
)
@click.option(
    "--failed",
    is_flag=True,
    help="Print the targets that did not succeed, as a target file reconnect reads.",
)
@click.option(
    "--include-cancelled", is_flag=True, help="With --failed: the cancelled jobs' targets too."
)
@click.option("--timeout", type=POSITIVE_SECONDS, help="With --wait: seconds to wait.")
@friendly_errors
def batch(
    batch_id: str,
    cancel: bool,
    wait: bool,
    failed: bool,
    include_cancelled: bool,
    timeout: float | None,
) -> None:
    """Show a batch's progress, or its summary once it ended (JSON)."""
    from worker.produce.batch import BatchSender, StartedBatch, log_position
    from worker.store.batches import check_batch_id

    check_batch_id(batch_id)
    sender = BatchSender()
    state = sender.batches
    if failed:
        for job in _failed_jobs(sender, batch_id, include_cancelled=include_cancelled):
            if not emit(json.dumps(_target_line(job))):
                return
        return
    if cancel:
        before = state.progress(batch_id)
        if before.finished:
            click.echo(
                f"streamctl: batch {batch_id} had ended already "
                f"({before.done} of {before.total} job(s)); nothing to cancel",
                err=True,
            )
            sys.exit(EXIT_NOT_ALL_SUCCEEDED)
        state.cancel(batch_id)
        click.echo(
            f"cancelled batch {batch_id}: {before.done} of {before.total} job(s) had ended; "
            "the rest end as cancelled unless already being sent",
            err=True,
        )
    if wait:
        # The log position first, then the state: a result in between is counted once.
        since = log_position(sender.redis, sender.settings.results_log)
        progress = state.progress(batch_id)
        err = Console(stderr=True)
        if progress.summary is not None:
            print_summary(err, progress.summary)
            succeeded = progress.summary["counts"].get(Outcome.SUCCESS, 0) == progress.total
            sys.exit(EXIT_OK if succeeded else EXIT_NOT_ALL_SUCCEEDED)
        expiry = float(sender.settings.job_expiry)
        started = StartedBatch(batch_id, [""] * progress.total, since, expiry, 0.0)
        counts = {name: count for name, count in progress.counts.items() if count}
        _follow_to_the_end(err, started, timeout, sender, counts=counts)
    progress = state.progress(batch_id)
    shown = progress.summary if progress.summary is not None else progress.to_dict()
    emit(json.dumps(shown, ensure_ascii=False))
