"""A batch's state in Redis: its size, its jobs, its counts per outcome, its cancel flag.

A batch is a hash ``streamctl:batch:<id>`` (``total``, ``started_at``, optional ``rate`` and
``cancelled``, then ``done``, ``outcome:<name>``, ``finished_at`` and ``summary`` as jobs end)
and a hash ``streamctl:batch:<id>:jobs`` of job id -> target, kept for ``--retry-failed``.
Both live as long as the jobs' results (STREAMCTL_RESULT_TTL).

Counting happens inside the Lua script that publishes a job's final result (see
``worker.store.jobs``), in the branch that only runs when the result was new: a redelivered job
is counted once, and exactly one job — the one that brings ``done`` to ``total`` — publishes
the batch summary.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from worker.errors import NoSuchBatch, StreamctlError
from worker.model.keys import batch_jobs_key, batch_key
from worker.model.results import BATCH_SUMMARY_FIELDS, BatchSummary, Outcome, isoformat
from worker.store.decode import text

#: A batch id goes into Redis keys and messages: keep it short and plain.
BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_WRITE_CHUNK = 1000

SUMMARY_FIELDS_JSON = json.dumps(list(BATCH_SUMMARY_FIELDS))
OUTCOMES_JSON = json.dumps([str(outcome) for outcome in Outcome])


def check_batch_id(batch_id: str) -> str:
    if not BATCH_ID.match(batch_id):
        raise StreamctlError(
            "a batch id is 1 to 64 letters, digits and _.:- (starting with a letter or digit)"
        )
    return batch_id


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """A batch as it stands: the summary's fields plus what is known mid-run."""

    batch_id: str
    total: int
    done: int
    counts: dict[str, int]
    started_at: str | None
    finished_at: str | None
    cancelled: bool
    rate: float | None
    summary: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def as_summary(self) -> BatchSummary:
        return BatchSummary(
            batch_id=self.batch_id,
            total=self.total,
            counts=self.counts,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )

    def to_dict(self) -> dict[str, Any]:
        data = self.as_summary().to_dict()
        data.update(type="batch_progress", done=self.done, cancelled=self.cancelled)
        return data


class BatchState:
    """Reads and writes the Redis keys of batches."""

    def __init__(self, client: redis.Redis, *, ttl_seconds: int) -> None:
        self.redis = client
        self._ttl = ttl_seconds

    def create(self, batch_id: str, total: int, *, rate: float | None = None) -> str:
        """Record a batch of ``total`` jobs before any of them is enqueued (so every result is
        counted). Its jobs' targets are kept apart (``record_jobs``): they are read only once
        the batch has ended."""
        check_batch_id(batch_id)
        key = batch_key(batch_id)
        fields: dict[str, str | int | float] = {
            "total": total,
            "done": 0,
            "started_at": isoformat(datetime.now(UTC)),
        }
        if rate is not None:
            fields["rate"] = rate
        if not self.redis.hsetnx(key, "total", total):
            raise StreamctlError(f"batch {batch_id} exists already")
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(key, self._ttl)
        pipe.execute()
        return batch_id

    def record_jobs(self, batch_id: str, jobs: Mapping[str, Mapping[str, Any]]) -> None:
        """Keep each job's target, to send the failed ones again (``BatchSender.failed_jobs``)."""
        pipe = self.redis.pipeline(transaction=False)
        items = list(jobs.items())
        for start in range(0, len(items), _WRITE_CHUNK):
            chunk = {
                job_id: json.dumps(target) for job_id, target in items[start : start + _WRITE_CHUNK]
            }
            pipe.hset(batch_jobs_key(batch_id), mapping=chunk)  # type: ignore[arg-type]
        pipe.expire(batch_jobs_key(batch_id), self._ttl)
        pipe.execute()

    def fail(self, batch_id: str, error: str, *, channel: str, log: str, log_maxlen: int) -> bool:
        """End, before it started, a batch that enqueued nothing (a scheduled run that failed):
        record it with ``total`` 0 and publish its summary, ``error`` saying why, on the results
        channel and its log. False, and nothing published, if the batch exists already: a run
        delivered twice is reported once."""
        check_batch_id(batch_id)
        key = batch_key(batch_id)
        if not self.redis.hsetnx(key, "total", 0):
            return False
        now = isoformat(datetime.now(UTC))
        summary = BatchSummary(batch_id, 0, {}, now, now, error=error).to_json()
        fields = {"done": 0, "started_at": now, "finished_at": now, "summary": summary}
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(key, self._ttl)
        pipe.publish(channel, summary)
        pipe.xadd(log, {"result": summary}, maxlen=log_maxlen, approximate=True)
        pipe.execute()
        return True

    def shrink(self, batch_id: str, total: int) -> None:
        """Lower ``total`` after an enqueue that stopped part way (the rest was never sent)."""
        self.redis.hset(batch_key(batch_id), "total", total)

    def cancel(self, batch_id: str) -> BatchProgress:
        """Mark the batch cancelled: its jobs not yet sent end with outcome ``cancelled``."""
        progress = self.progress(batch_id)
        self.redis.hset(batch_key(batch_id), "cancelled", 1)
        return progress

    def progress(self, batch_id: str) -> BatchProgress:
        raw = {text(k): text(v) for k, v in self.redis.hgetall(batch_key(batch_id)).items()}
        if "total" not in raw:
            raise NoSuchBatch(f"no batch {batch_id} (unknown, or older than its results)")
        summary = json.loads(raw["summary"]) if "summary" in raw else None
        return BatchProgress(
            batch_id=batch_id,
            total=int(raw["total"]),
            done=int(raw.get("done", 0)),
            counts={str(o): int(raw.get(f"outcome:{o}", 0)) for o in Outcome},
            started_at=raw.get("started_at"),
            finished_at=raw.get("finished_at"),
            cancelled="cancelled" in raw,
            rate=float(raw["rate"]) if "rate" in raw else None,
            summary=summary,
        )

    def jobs(self, batch_id: str) -> dict[str, dict[str, Any]]:
        """The batch's job ids and their targets (as enqueued)."""
        raw = self.redis.hgetall(batch_jobs_key(batch_id))
        if not raw:
            raise NoSuchBatch(f"no batch {batch_id} (unknown, or older than its results)")
        return {text(k): json.loads(v) for k, v in raw.items()}


__all__ = ["BatchProgress", "BatchState"]
