"""What ``streamctl reconnect`` and ``batch --wait`` draw while a batch runs: a progress bar from
the results log on a terminal, a line every few seconds off one, and the summary table.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from worker.cli.errors import emit
from worker.model.results import OUTCOME_STYLE as STYLE

if TYPE_CHECKING:
    from worker.produce.batch import BatchSender, StartedBatch

#: Seconds without any result before saying so (no worker?), then between two such notices.
QUIET_FIRST, QUIET_EVERY = 10.0, 30.0
#: Off a terminal (a log, a CI job): a progress line every this many seconds.
PLAIN_PROGRESS_EVERY = 5.0


def _outcomes_text(counts: dict[str, int], *, styled: bool) -> str:
    return " ".join(
        f"[{STYLE.get(name, 'white')}]{name} {count}[/]" if styled else f"{name} {count}"
        for name, count in sorted(counts.items())
        if count
    )


def follow_with_progress(
    err: Console,
    started: StartedBatch,
    timeout: float | None,
    sender: BatchSender,
    counts: dict[str, int],
) -> dict[str, Any] | None:
    from worker.produce.batch import wait_for_batch

    begun = time.monotonic()
    quiet = {"next": begun + QUIET_FIRST, "plain": begun + PLAIN_PROGRESS_EVERY}

    def notify(text: str) -> None:
        err.print(f"streamctl: {text}", highlight=False)

    def done() -> int:
        return sum(counts.values())

    def say_if_quiet() -> None:
        now = time.monotonic()
        if done() == 0 and now >= quiet["next"]:
            notify(
                f"no result yet after {now - begun:.0f} s: is a worker running? (streamctl worker)"
            )
            quiet["next"] += QUIET_EVERY
        if not err.is_terminal and now >= quiet["plain"]:
            err.print(
                f"batch {started.batch_id}: {done()}/{started.total} "
                f"{_outcomes_text(counts, styled=False)}",
                highlight=False,
                markup=False,
            )
            quiet["plain"] = now + PLAIN_PROGRESS_EVERY

    def count(result: dict[str, Any]) -> None:
        outcome = str(result.get("outcome"))
        counts[outcome] = counts.get(outcome, 0) + 1

    err.print(f"following batch {started.batch_id} (Ctrl-C stops following, not the batch)")
    if not err.is_terminal:

        def on_plain_result(result: dict[str, Any]) -> None:
            count(result)
            say_if_quiet()

        return wait_for_batch(
            started,
            timeout=timeout,
            on_result=on_plain_result,
            sender=sender,
            notify=notify,
            on_idle=say_if_quiet,
        )

    # Fits 80 columns with three outcomes: the batch id is printed above, not in the bar.
    columns = (
        BarColumn(bar_width=14),
        MofNCompleteColumn(),
        TextColumn("{task.fields[outcomes]}"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(
            "",
            total=started.total,
            completed=done(),
            outcomes=_outcomes_text(counts, styled=True),
            rate="",
        )

        def on_result(result: dict[str, Any]) -> None:
            count(result)
            per_second = done() / max(time.monotonic() - begun, 1e-6)
            progress.update(
                task,
                completed=done(),
                outcomes=_outcomes_text(counts, styled=True),
                rate=f"{per_second:.0f}/s",
            )

        return wait_for_batch(
            started,
            timeout=timeout,
            on_result=on_result,
            sender=sender,
            notify=notify,
            on_idle=say_if_quiet,
        )


def print_summary(err: Console, summary: dict[str, Any]) -> None:
    # The id above the table, not as its title: a title wraps at the table's narrow width.
    err.print(f"batch {summary['batch_id']}", highlight=False)
    table = Table()
    table.add_column("outcome")
    table.add_column("jobs", justify="right")
    for name, count in summary["counts"].items():
        if count:
            table.add_row(f"[{STYLE.get(name, 'white')}]{name}[/]", str(count))
    table.add_row("total", str(summary["total"]))
    err.print(table)
    err.print(f"started {summary['started_at']}, finished {summary['finished_at']}")
    emit(json.dumps(summary, ensure_ascii=False))


