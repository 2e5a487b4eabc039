"""The schedule of mass reconnects (``STREAMCTL_SCHEDULE_FILE``, TOML), validated in full.

Each ``[[schedule]]`` entry has a ``name``, a ``cron`` (five crontab fields, Celery's meaning,
evaluated in UTC) or an ``every`` interval (seconds, or ``90s``, ``10m``, ``1h``, ``1d``), its
targets (inline ``targets = [{...}, ...]`` or a CSV/JSON-lines ``file`` relative to the schedule
file) and optionally ``rate`` and ``expires``. Every entry is checked before the scheduler starts
(the cron parses, the file exists, every target is valid) and each problem is reported with its
entry's name, so a typo is found at start, not at three in the morning.

Run times are *slots* computed from the wall clock alone (``every = 600`` runs at unix times
that are multiples of 600; a cron at the minutes it matches), never from when a scheduler
started: two schedulers therefore agree on which run is due, and a per-slot key in Redis lets
only one of them enqueue it (``worker.schedule.scheduler``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery.schedules import crontab
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from config.units import duration_seconds, parse_rate
from worker.errors import InvalidTarget, ScheduleError, StreamctlError
from worker.model.targets import CloseJob

#: Entry names go into Redis keys, task ids and batch ids (``<name>.<slot>``, at most 64).
ENTRY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
#: Problems listed per target file before the rest are summarised: enough to fix a file by.
MAX_LISTED = 5


def parse_every(value: object) -> int:
    """An interval in whole seconds: ``30``, ``"30"``, ``"90s"``, ``"10m"``, ``"1h"``, ``"1d"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (duration := duration_seconds(value, whole=True)) is not None:
        seconds = int(duration)
    else:
        raise ValueError("must be whole seconds or a duration such as 90s, 10m, 1h or 1d")
    if seconds < 1:
        raise ValueError("must be at least 1 second")
    return seconds


@dataclass(frozen=True, slots=True)
class TargetSource:
    """Where an entry's targets come from: inline fields or a file (read when the run is due)."""

    inline: tuple[Mapping[str, Any], ...] | None = None
    file: Path | None = None

    def jobs(self) -> list[CloseJob]:
        """The entry's validated jobs, each target once, in the order given.

        Read and validated as ``streamctl reconnect`` does (``worker.produce.batch``); any bad line
        or target raises InvalidTarget naming it: a schedule never skips targets silently.
        """
        from worker.produce.targetfile import read_targets, validate

        if self.file is not None:
            targets = read_targets(self.file)
            where = f"{self.file.name} line"
        else:
            targets = validate(enumerate(self.inline or (), 1))
            where = "target"
        if targets.errors:
            problems = [f"{where} {error.line}: {error.message}" for error in targets.errors]
            more = len(problems) - MAX_LISTED
            listed = problems[:MAX_LISTED] + ([f"... and {more} more"] if more > 0 else [])
            raise InvalidTarget("; ".join(listed))
        if not targets.jobs:
            raise InvalidTarget("no targets")
        return targets.jobs


class ScheduleEntry(BaseModel):
    """One ``[[schedule]]`` entry. ``file`` is resolved against the schedule file's folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    cron: str | None = None
    every: int | None = None
    targets: tuple[dict[str, Any], ...] | None = None
    file: Path | None = None
    #: Caps this entry's batch below the cluster-wide STREAMCTL_RATE_LIMIT (requests/second).
    rate: float | None = None
    #: Seconds after enqueueing past which a job is not sent (default: STREAMCTL_JOB_EXPIRY).
    expires: float | None = Field(None, gt=0)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        # In words: a regular expression is no message for an operator.
        if not ENTRY_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a name: 1 to 40 letters, digits, '_', '.' and '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("every", mode="before")
    @classmethod
    def _check_every(cls, value: object) -> int | None:
        return None if value is None else parse_every(value)

    @field_validator("rate", mode="before")
    @classmethod
    def _check_rate(cls, value: object) -> float | None:
        return parse_rate(value)

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        if value is not None:
            _crontab(value)
        return value

    @model_validator(mode="after")
    def _check_entry(self) -> ScheduleEntry:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give either cron or every")
        if (self.targets is None) == (self.file is None):
            raise ValueError("give either targets or file")
        if self.file is not None and not self.file.is_file():
            raise ValueError(f"no such targets file: {self.file}")
        try:
            self.source.jobs()  # raises InvalidTarget, naming the line or the target
        except StreamctlError as exc:  # an unreadable file; InvalidTarget is a ValueError already
            raise ValueError(str(exc)) from None
        return self

    @property
    def source(self) -> TargetSource:
        return TargetSource(inline=self.targets, file=self.file)

    # --- timing ----------------------------------------------------------------------------

    def latest_slot(self, now: float) -> int | None:
        """The run time (unix seconds) due at or before ``now``; None if this minute has none.

        A cron slot is only recognised during its own minute: a scheduler ticks far more often.
        """
        if self.every is not None:
            return int(now // self.every) * self.every
        assert self.cron is not None
        minute = int(now // 60) * 60
        return minute if _matches(_crontab(self.cron), minute) else None

    def seconds_to_next_slot(self, now: float) -> float:
        """How long until the next slot may start: the next multiple, or the next minute."""
        period = self.every if self.every is not None else 60
        return (int(now // period) + 1) * period - now

    @property
    def period(self) -> int:
        """The shortest time between two runs, in seconds."""
        return self.every if self.every is not None else 60

    def batch_id(self, slot: int) -> str:
        """The batch id of the run at ``slot``: the same in every scheduler and worker."""
        return run_batch_id(self.name, slot)


def run_batch_id(name: str, slot: int) -> str:
    """The batch id of entry ``name``'s run at ``slot``."""
    return f"{name}.{slot}"


def _crontab(expression: str) -> crontab:
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"cron must have 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)}"
        )
    try:
        return crontab.from_string(" ".join(fields))
    except (ValueError, KeyError, IndexError) as exc:
        raise ValueError(f"bad cron {expression!r}: {exc}") from None


def _matches(spec: crontab, minute: int) -> bool:
    """Celery's crontab meaning: every field must match (day of week 0 is Sunday)."""
    moment = datetime.fromtimestamp(minute, UTC)
    return (
        moment.minute in spec.minute
        and moment.hour in spec.hour
        and moment.day in spec.day_of_month
        and moment.month in spec.month_of_year
        and moment.isoweekday() % 7 in spec.day_of_week
    )


@dataclass(frozen=True, slots=True)
class Schedule:
    path: Path
    entries: tuple[ScheduleEntry, ...]

    def get(self, name: str) -> ScheduleEntry | None:
        return next((entry for entry in self.entries if entry.name == name), None)


def load_schedule(path: Path, *, only: str | None = None) -> Schedule:
    """Read and validate the schedule (or only the entry ``only``), raising ScheduleError.

    The error lists every bad entry by name, one line each. Paths are made absolute here, so
    that a targets file read later (beat reads it at each run) is the one checked at start.
    """
    path = path.absolute()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScheduleError(
            f"schedule file {path}: {exc.strerror or type(exc).__name__} "
            "(set STREAMCTL_SCHEDULE_FILE)"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScheduleError(f"schedule file {path}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"schedule"})
    raw = document.get("schedule", [])
    if unknown or not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise ScheduleError(
            f"schedule file {path}: expected only [[schedule]] tables"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    entries, problems = _parse_entries(raw, path.parent, only)
    if problems:
        raise ScheduleError(f"schedule file {path}:\n  " + "\n  ".join(problems))
    return Schedule(path=path, entries=tuple(entries))


def _parse_entries(
    raw: Iterable[dict[str, Any]], base: Path, only: str | None
) -> tuple[list[ScheduleEntry], list[str]]:
    entries: list[ScheduleEntry] = []
    problems: list[str] = []
    seen: set[str] = set()
    for number, fields in enumerate(raw, 1):
        name = fields.get("name")
        label = f"entry {name!r}" if isinstance(name, str) else f"entry #{number} (no name)"
        if isinstance(name, str) and name in seen:
            problems.append(f"{label}: the name is used twice")
            continue
        seen.add(str(name))
        if only is not None and name != only:
            continue
        if isinstance(fields.get("file"), str):
            fields = {**fields, "file": base / fields["file"]}
        try:
            entries.append(ScheduleEntry.model_validate(fields))
        except ValidationError as exc:  # InvalidTarget is a ValueError: pydantic wraps it
            problems.extend(f"{label}: {_describe(error)}" for error in exc.errors())
    if only is not None and not entries and not problems:
        problems.append(f"entry {only!r}: not in the schedule")
    return entries, problems


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
