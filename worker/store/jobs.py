"""Per-job state in Redis: idempotency keys, attempts across deliveries, the final result.

Delivery is at least once (acks_late), so a job may run again after a crash or a redelivery.
Two rules keep that safe:

* the final result is written with ``SET NX`` in the same Lua script that publishes it, so a
  job publishes exactly one final result however often it runs;
* a job whose final result exists is not run again (``final_result`` is checked first).

Delivery can also lose a message outright: kombu's Redis transport pops it (BRPOP) before it
records it as unacknowledged, so a worker killed in between takes it along. Producers therefore
record every job they enqueue as pending (``PENDING_KEY``, scored by its expiry, its task
arguments in ``PENDING_DATA_KEY``); the publish script drops it, and ``worker.consume.janitor`` ends
the ones still pending well past their expiry.

A job id given by a producer is an idempotency key held to the job's request fields (its
target and origin_url, see ``claim_job_id``): the same fields again get the first job, other
fields are refused (``IdempotencyConflict``), as Stripe does with its idempotency keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from worker.api.hooks import AttemptEnd, AttemptHook
from worker.errors import IdempotencyConflict
from worker.model.results import Attempt, JobResult
from worker.model.targets import JOB_FIELDS
from worker.store.batches import COUNT_IN_BATCH_LUA, OUTCOMES_JSON, SUMMARY_FIELDS_JSON, batch_key

_PREFIX = "streamctl:job"
#: Jobs enqueued and not yet ended: job id -> its expires_at.
PENDING_KEY = "streamctl:pending"
#: Job id -> its task keyword arguments (compact JSON), to end it without its message.
PENDING_DATA_KEY = "streamctl:pending:data"

# The batch count runs in the same script, in the branch a new result takes: a redelivered
# job that had already ended is neither published nor counted again. Whichever result wins,
# the job is no longer pending.
_PUBLISH_ONCE = (
    """
redis.call('ZREM', KEYS[5], ARGV[10])
redis.call('HDEL', KEYS[6], ARGV[10])
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', tonumber(ARGV[3])) then
  redis.call('PUBLISH', ARGV[2], ARGV[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[4]), '*', 'result', ARGV[1])
"""
    + COUNT_IN_BATCH_LUA
    + """
  redis.call('DEL', KEYS[4])
  return 1
end
return 0
"""
)

# A job id is taken when it has a claim (a close's), a final result, or a pending entry of a
# batch (a batch's jobs have no claim): the script returns what holds it, or claims it, in one
# step. A close's pending entry left without its claim (an enqueue that failed with Redis
# unreachable, its claim expired since) does not hold the id: the retry enqueues it again.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then return {'claim', held} end
local result = redis.call('GET', KEYS[2])
if result then return {'result', result} end
local pending = redis.call('HGET', KEYS[3], ARGV[3])
if pending and cjson.decode(pending)['batch_id'] then return {'pending', pending} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return {'claimed', ARGV[1]}
"""

# Only the enqueue that claimed a job id may release it (and the pending entry it recorded).
_RELEASE_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
end
return 0
"""
#: Seconds an enqueue's claim on a job id lasts before it is published: far above one publish
#: with its retries, short enough that a claim left by a failed enqueue soon frees the id.
CLAIM_TTL = 30
#: Pending jobs written per pipelined command: a 10,000-job batch is a few commands.
_PENDING_CHUNK = 1000


def _encode_fields(fields: Mapping[str, Any]) -> str:
    return json.dumps(dict(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _claim_value(state: str, fields: Mapping[str, Any]) -> str:
    # A claim key holds "<state>\n<fields as JSON>"; JSON never holds a raw newline.
    return f"{state}\n{_encode_fields(fields)}"


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _differing(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[str]:
    return [name for name in JOB_FIELDS if first.get(name) != second.get(name)]


def _request_fields(holder: str, raw: str) -> dict[str, Any] | None:
    """The request fields of whatever holds a job id (None: not known, a pre-rule claim)."""
    if holder == "claim":
        _state, newline, encoded = raw.partition("\n")
        return dict(json.loads(encoded)) if newline else None
    data = json.loads(raw)
    if holder == "result":  # the final result of a job enqueued without a claim (a batch's)
        fields = dict(data.get("target") or {})
        if data.get("origin_url") is not None:
            fields["origin_url"] = data["origin_url"]
        return fields
    return {name: data[name] for name in JOB_FIELDS if name in data}  # its task kwargs


@dataclass(frozen=True, slots=True)
class PriorState:
    """A job's state as a new delivery of it finds it."""

    result: dict[str, Any] | None
    attempts: list[Attempt]


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
        self._release = client.register_script(_RELEASE_CLAIM)
        self._claim = client.register_script(_CLAIM)

    # --- producer side ----------------------------------------------------------------------

    def claim_job_id(self, job_id: str, token: str, fields: Mapping[str, Any]) -> bool | None:
        """Claim ``job_id`` for one enqueue of the request ``fields``, identified by ``token``.

        ``fields`` are what makes two requests the same job: its target and origin_url. A job
        id already taken by other fields raises ``IdempotencyConflict`` naming the fields that
        differ (not their values). Otherwise True: claimed, also when redis-py re-sent the
        script after a dropped reply and it had already run; False: the job is enqueued or
        done already; None: another enqueue of it has not completed (one that failed with
        Redis unreachable leaves its claim to expire after CLAIM_TTL seconds). The claim
        becomes the lasting idempotency key only once the message is published
        (``confirm_job_id``). Claims written before this rule hold no fields: they count as
        the same request, as they did then.
        """
        mine = _claim_value(f"claimed:{token}", fields)
        holder, raw = (
            _text(part)
            for part in self._claim(
                keys=[_key(job_id, "enqueued"), _key(job_id, "result"), PENDING_DATA_KEY],
                args=[mine, CLAIM_TTL, job_id],
            )
        )
        if holder == "claimed" or raw == mine:
            return True
        first = _request_fields(holder, raw)
        if first is not None and (differing := _differing(first, fields)):
            raise IdempotencyConflict(
                f"job id {job_id} was used for another job (its fields differ: "
                f"{', '.join(differing)}); nothing was enqueued: give this job its own job id"
            )
        return None if holder == "claim" and raw.startswith("claimed:") else False

    def claimed_job_ids(self, job_ids: Sequence[str]) -> list[str]:
        """Those of ``job_ids`` that a close holds as its idempotency key.

        One EXISTS of many keys per thousand ids, all in one round trip (10,000 ids: about
        30 ms measured on a loaded 2-core machine); only a chunk that holds one is looked at
        id by id.
        """
        chunks = [job_ids[i : i + _PENDING_CHUNK] for i in range(0, len(job_ids), _PENDING_CHUNK)]
        pipe = self.redis.pipeline(transaction=False)
        for chunk in chunks:
            pipe.exists(*[_key(job_id, "enqueued") for job_id in chunk])
        suspects = [
            job_id for chunk, n in zip(chunks, pipe.execute(), strict=True) if n for job_id in chunk
        ]
        for job_id in suspects:
            pipe.exists(_key(job_id, "enqueued"))
        held = pipe.execute() if suspects else []
        return [job_id for job_id, one in zip(suspects, held, strict=True) if one]

    def record_pending(self, jobs: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Record jobs as pending before their messages are published: (job id, task kwargs).

        One pipelined round trip. Only new job ids come here (a claimed id, a new batch).
        """
        pipe = self.redis.pipeline(transaction=False)
        items = list(jobs)
        for start in range(0, len(items), _PENDING_CHUNK):
            chunk = items[start : start + _PENDING_CHUNK]
            pipe.zadd(PENDING_KEY, {job_id: kw["expires_at"] for job_id, kw in chunk})
            data = {job_id: json.dumps(kw, separators=(",", ":")) for job_id, kw in chunk}
            pipe.hset(PENDING_DATA_KEY, mapping=data)  # type: ignore[arg-type]
        pipe.execute()

    def pending_due(self, before: float, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``limit`` pending jobs that expired before ``before``: (job id, task kwargs)."""
        raw_ids = self.redis.zrangebyscore(PENDING_KEY, "-inf", before, start=0, num=limit)
        ids = [raw.decode() if isinstance(raw, bytes) else str(raw) for raw in raw_ids]
        if not ids:
            return []
        data = self.redis.hmget(PENDING_DATA_KEY, ids)
        # An entry without data (a half-failed write) still ends, with its job id alone.
        return [
            (job_id, json.loads(raw) if raw else {}) for job_id, raw in zip(ids, data, strict=True)
        ]

    def confirm_job_id(self, job_id: str, fields: Mapping[str, Any]) -> None:
        """The job is published: keep its idempotency key, and its fields, for the result TTL."""
        self.redis.set(_key(job_id, "enqueued"), _claim_value("enqueued", fields), ex=self._ttl)

    def release_job_id(self, job_id: str, token: str, fields: Mapping[str, Any]) -> None:
        """Undo ``claim_job_id`` when the enqueue itself failed, so the producer can retry."""
        self._release(
            keys=[_key(job_id, "enqueued"), PENDING_KEY, PENDING_DATA_KEY],
            args=[_claim_value(f"claimed:{token}", fields), job_id],
        )

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
        pipe.rpush(key, json.dumps(attempt.to_dict()))
        pipe.expire(key, self._ttl)
        pipe.execute()

    def attempts(self, job_id: str) -> list[Attempt]:
        raw = self.redis.lrange(_key(job_id, "attempts"), 0, -1)
        return [Attempt(**json.loads(item)) for item in raw]

    def prior_states(self, job_ids: Sequence[str]) -> list[PriorState]:
        """What earlier deliveries left of each job, in one round trip for all of them.

        A job with a final result is not run again; a job without one carries on from the
        attempts it made before (they are listed in its final result).
        """
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.get(_key(job_id, "result"))
            pipe.lrange(_key(job_id, "attempts"), 0, -1)
        replies = pipe.execute()
        return [
            PriorState(
                result=None if result is None else dict(json.loads(result)),
                attempts=[Attempt(**json.loads(item)) for item in attempts],
            )
            for result, attempts in zip(replies[0::2], replies[1::2], strict=True)
        ]

    def final_results(self, job_ids: list[str]) -> dict[str, dict[str, Any] | None]:
        """Many jobs' final results in one round trip (None: no result yet)."""
        raw = self.redis.mget([_key(job_id, "result") for job_id in job_ids]) if job_ids else []
        return {
            job_id: None if item is None else dict(json.loads(item))
            for job_id, item in zip(job_ids, raw, strict=True)
        }

    def final_result(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(_key(job_id, "result"))
        return None if raw is None else dict(json.loads(raw))

    def publish_final(self, result: JobResult) -> bool:
        """Store, publish and log the final result; False if the job already had one."""
        published = self._publish_once(
            keys=[
                _key(result.job_id, "result"),
                self._log_stream,
                batch_key(result.batch_id),
                _key(result.job_id, "attempts"),
                PENDING_KEY,
                PENDING_DATA_KEY,
            ],
            args=[
                result.to_json(),
                self._channel,
                self._ttl,
                self._log_maxlen,
                str(result.outcome),
                result.finished_at,
                result.batch_id or "",
                SUMMARY_FIELDS_JSON,
                OUTCOMES_JSON,
                result.job_id,
            ],
        )
        return bool(published)


class RecordFailedAttempts(AttemptHook):
    """Keeps each failed attempt in Redis as it ends: another attempt may follow, perhaps in
    another delivery, and the final result lists them all. A successful attempt is the last;
    it goes into the final result directly, which saves a round trip per job."""

    def __init__(self, state: JobState) -> None:
        self.state = state

    def on_attempt_end(self, end: AttemptEnd) -> None:
        if end.attempt.error is not None and end.context.job_id is not None:
            self.state.record_attempt(end.context.job_id, end.attempt)
