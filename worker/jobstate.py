"""Per-job state in Redis: idempotency keys, attempts across deliveries, the final result.

Delivery is at least once (acks_late), so a job may run again after a crash or a redelivery.
Two rules keep that safe:

* the final result is written with ``SET NX`` in the same Lua script that publishes it, so a
  job publishes exactly one final result however often it runs;
* a job whose final result exists is not run again (``final_result`` is checked first).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import redis

from worker.results import Attempt, JobResult

_PREFIX = "streamctl:job"

_PUBLISH_ONCE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', tonumber(ARGV[3])) then
  redis.call('PUBLISH', ARGV[2], ARGV[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[4]), '*', 'result', ARGV[1])
  return 1
end
return 0
"""


def _key(job_id: str, part: str) -> str:
    return f"{_PREFIX}:{job_id}:{part}"


class JobState:
    """Reads and writes the Redis keys of jobs. Safe to share between threads."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        channel: str,
        log_stream: str,
        log_maxlen: int,
        ttl_seconds: int,
    ) -> None:
        self.redis = client
        self._channel = channel
        self._log_stream = log_stream
        self._log_maxlen = log_maxlen
        self._ttl = ttl_seconds
        self._publish_once = client.register_script(_PUBLISH_ONCE)

    # --- producer side ----------------------------------------------------------------------

    def claim_job_id(self, job_id: str) -> bool:
        """Mark ``job_id`` as enqueued; False if it already was (pending or done)."""
        return bool(self.redis.set(_key(job_id, "enqueued"), "1", nx=True, ex=self._ttl))

    def release_job_id(self, job_id: str) -> None:
        """Undo ``claim_job_id`` when the enqueue itself failed, so the producer can retry."""
        self.redis.delete(_key(job_id, "enqueued"))

    # --- worker side ------------------------------------------------------------------------

    def first_seen(self, job_id: str, now: float) -> float:
        """When a worker first saw this job: the expiry base for jobs enqueued without one."""
        key = _key(job_id, "seen")
        self.redis.set(key, repr(now), nx=True, ex=self._ttl)
        stored = self.redis.get(key)
        return float(stored) if stored is not None else now

    def record_attempt(self, job_id: str, attempt: Attempt) -> None:
        """Keep an attempt so the final result lists every request, across deliveries."""
        key = _key(job_id, "attempts")
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, json.dumps(asdict(attempt)))
        pipe.expire(key, self._ttl)
        pipe.execute()

    def attempts(self, job_id: str) -> list[Attempt]:
        raw = self.redis.lrange(_key(job_id, "attempts"), 0, -1)
        return [Attempt(**json.loads(item)) for item in raw]

    def final_result(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(_key(job_id, "result"))
        return None if raw is None else dict(json.loads(raw))

    def publish_final(self, result: JobResult) -> bool:
        """Store, publish and log the final result; False if the job already had one."""
        published = self._publish_once(
            keys=[_key(result.job_id, "result"), self._log_stream],
            args=[result.to_json(), self._channel, self._ttl, self._log_maxlen],
        )
        if published:
            self.redis.delete(_key(result.job_id, "attempts"))
        return bool(published)
