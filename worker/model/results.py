"""The result schema: the one description of what every job's final message holds.

Every job ends with exactly one ``JobResult``, published as JSON on the results channel and
appended to its ``<channel>:log`` stream (see ``worker.store.jobs``). README documents the same
fields; tests/test_results.py checks that README and this module agree.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from worker.model.targets import TARGET_FIELDS, Target


class Outcome(StrEnum):
    SUCCESS = "success"
    """The API answered ``"status": "success"``."""
    FAILURE = "failure"
    """The API refused the close (a permanent refusal, or an HTTP 4xx)."""
    ERROR = "error"
    """Transient failures outlasted every retry."""
    REJECTED = "rejected"
    """The job itself was invalid; nothing was sent."""
    EXPIRED = "expired"
    """The job's expiry passed before it could be sent; nothing more was sent after it."""
    CANCELLED = "cancelled"
    """The job's batch was cancelled (``streamctl batch ID --cancel``) before it was sent."""


#: API refusal codes that point at this deployment's configuration rather than at the job: every
#: close is refused the same way until a setting is fixed. Each: (what it means, what to check).
#: The worker logs these refusals at ERROR; ``streamctl check`` reports them from the results log.
CONFIG_REFUSALS = {
    "0001": ("CDN authorization failed", "check SCALEENGINE_CDN and SCALEENGINE_API_KEY"),
    "0003": ("failed HMAC signature", "check SCALEENGINE_API_SECRET"),
    "0005": ("unauthorized", "check the API key's permissions (SCALEENGINE_API_KEY)"),
}


#: The colour each outcome is shown in on a terminal (rich markup), by the CLI and the demo.
OUTCOME_STYLE = {
    "success": "green",
    "failure": "red",
    "error": "magenta",
    "expired": "yellow",
    "rejected": "red",
    "cancelled": "cyan",
}


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP request: its signed ``timestamp``, the HTTP status (None when no reply came),
    the error it ended with (None on success) and how long it took in seconds."""

    timestamp: int
    http_status: int | None
    error: str | None
    duration: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "timestamp": self.timestamp,
            "http_status": self.http_status,
            "error": self.error,
            "duration": self.duration,
        }


@dataclass(frozen=True, slots=True)
class JobResult:
    job_id: str
    outcome: Outcome
    target: dict[str, Any]
    command: str = "stream.close"
    cdn: int | None = None
    origin_url: str | None = None
    message: str = ""
    api_code: str | None = None
    handle_time: float | None = None
    attempts: list[Attempt] = field(default_factory=list)
    enqueued_at: str | None = None
    finished_at: str = field(default_factory=lambda: isoformat(datetime.now(UTC)))
    worker: str = field(default_factory=lambda: worker_name())
    batch_id: str | None = None
    #: ``urgent`` or ``bulk`` (config.lanes); None for a job rejected before its lane was read.
    lane: str | None = None
    type: str = "job"

    def to_dict(self) -> dict[str, Any]:
        # Field by field rather than dataclasses.asdict, whose deep copy of every value was
        # a tenth of a job's CPU in the worker; the target is the one nested mapping.
        data: dict[str, Any] = {key: getattr(self, key) for key in RESULT_FIELDS}
        data["outcome"] = str(self.outcome)
        data["target"] = dict(self.target)
        data["attempts"] = [attempt.to_dict() for attempt in self.attempts]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))


#: The published fields, in the order they are written.
RESULT_FIELDS = (
    "type",
    "job_id",
    "batch_id",
    "lane",
    "command",
    "cdn",
    "target",
    "origin_url",
    "outcome",
    "message",
    "api_code",
    "handle_time",
    "attempts",
    "enqueued_at",
    "finished_at",
    "worker",
)


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """The one message a batch ends with, published after its last job's result.

    ``counts`` holds every outcome (zeros included) in ``Outcome`` order. The message is built
    inside the Lua script that publishes the last job's result (``worker.store.batches``), from
    ``BATCH_SUMMARY_FIELDS`` and the outcome names this module passes it.
    """

    batch_id: str
    total: int
    counts: dict[str, int]
    started_at: str | None
    finished_at: str | None
    type: str = "batch"
    #: Only in the summary of a scheduled run that enqueued nothing (``total`` 0): why.
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["counts"] = {str(o): int(self.counts.get(str(o), 0)) for o in Outcome}
        summary = {key: data[key] for key in BATCH_SUMMARY_FIELDS}
        if self.error is not None:
            summary["error"] = self.error
        return summary

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))


#: The batch summary's fields, in the order they are written.
BATCH_SUMMARY_FIELDS = ("type", "batch_id", "total", "counts", "started_at", "finished_at")


def target_dict(target: Target | None, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``target`` field: ``{app, inst, stream}`` or ``{stream_id}``.

    A rejected job has no valid target; its raw target fields are echoed, cut short, so that
    the producer can tell which job it was.
    """
    if target is not None:
        return dict(target.as_fields())
    raw = raw or {}
    echoed: dict[str, Any] = {}
    for name in TARGET_FIELDS:
        if name in raw:
            value = raw[name]
            echoed[name] = value if isinstance(value, int | None) else str(value)[:64]
    return echoed


def isoformat(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def parse_handle_time(value: object) -> float | None:
    """``handle_time`` comes as a number or as a string like ``"0.3795 seconds"``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        head = value.strip().split(" ", 1)[0]
        try:
            return float(head)
        except ValueError:
            return None
    return None
