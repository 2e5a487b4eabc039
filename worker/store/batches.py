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
from worker.model.results import BATCH_SUMMARY_FIELDS, BatchSummary, Outcome, isoformat

_PREFIX = "streamctl:batch"
#: A batch id goes into Redis keys and messages: keep it short and plain.
BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
#: Stands in for "no batch" where a Lua script must be given a key.
NO_BATCH_KEY = f"{_PREFIX}:-"
_WRITE_CHUNK = 1000

#: Lua, run by ``worker.store.jobs``'s publish script once a job's result is new. Uses KEYS[2]
#: (the results log), KEYS[3] (the batch hash) and ARGV[2] (channel), ARGV[4] (log length),
#: ARGV[5] (the job's outcome), ARGV[6] (its finished_at), ARGV[7] (the batch id), ARGV[8]
#: (the summary's field names, JSON) and ARGV[9] (the outcome names, JSON). The summary is
#: written field by field in the order those lists give, so ``BatchSummary`` stays its schema.
COUNT_IN_BATCH_LUA = """
if ARGV[7] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HINCRBY', KEYS[3], 'outcome:' .. ARGV[5], 1)
  local done = redis.call('HINCRBY', KEYS[3], 'done', 1)
  local total = tonumber(redis.call('HGET', KEYS[3], 'total') or '-1')
  if done == total then
    local counts = {}
    for _, name in ipairs(cjson.decode(ARGV[9])) do
      local n = tonumber(redis.call('HGET', KEYS[3], 'outcome:' .. name) or '0')
      counts[#counts + 1] = cjson.encode(name) .. ':' .. n
    end
    local values = {
      type = cjson.encode('batch'),
      batch_id = cjson.encode(ARGV[7]),
      total = tostring(total),
      counts = '{' .. table.concat(counts, ',') .. '}',
      started_at = cjson.encode(redis.call('HGET', KEYS[3], 'started_at') or ''),
      finished_at = cjson.encode(ARGV[6]),
    }
    local parts = {}
    for _, name in ipairs(cjson.decode(ARGV[8])) do
      parts[#parts + 1] = cjson.encode(name) .. ':' .. values[name]
    end
    local summary = '{' .. table.concat(parts, ',') .. '}'
    redis.call('HSET', KEYS[3], 'finished_at', ARGV[6], 'summary', summary)
    redis.call('PUBLISH', ARGV[2], summary)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[4]), '*', 'result', summary)
  end
end
"""
SUMMARY_FIELDS_JSON = json.dumps(list(BATCH_SUMMARY_FIELDS))
OUTCOMES_JSON = json.dumps([str(outcome) for outcome in Outcome])


def batch_key(batch_id: str | None) -> str:
    return f"{_PREFIX}:{batch_id}" if batch_id else NO_BATCH_KEY


def jobs_key(batch_id: str) -> str:
    return f"{_PREFIX}:{batch_id}:jobs"


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
            pipe.hset(jobs_key(batch_id), mapping=chunk)  # type: ignore[arg-type]
        pipe.expire(jobs_key(batch_id), self._ttl)
        pipe.execute()

    def shrink(self, batch_id: str, total: int) -> None:
        """Lower ``total`` after an enqueue that stopped part way (the rest was never sent)."""
        self.redis.hset(batch_key(batch_id), "total", total)

    def cancel(self, batch_id: str) -> BatchProgress:
        """Mark the batch cancelled: its jobs not yet sent end with outcome ``cancelled``."""
        progress = self.progress(batch_id)
        self.redis.hset(batch_key(batch_id), "cancelled", 1)
        return progress

    def progress(self, batch_id: str) -> BatchProgress:
        raw = {_text(k): _text(v) for k, v in self.redis.hgetall(batch_key(batch_id)).items()}
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
        raw = self.redis.hgetall(jobs_key(batch_id))
        if not raw:
            raise NoSuchBatch(f"no batch {batch_id} (unknown, or older than its results)")
        return {_text(k): json.loads(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


__all__ = ["BatchProgress", "BatchState", "batch_key", "jobs_key"]
