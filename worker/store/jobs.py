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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from worker.api.hooks import AttemptEnd, AttemptHook
from worker.errors import IdempotencyConflict
from worker.model import keys
from worker.model.keys import batch_key, job_key
from worker.model.results import Attempt, JobResult
from worker.model.scripts import load_script
from worker.model.targets import JOB_FIELDS
from worker.store.batches import OUTCOMES_JSON, SUMMARY_FIELDS_JSON
from worker.store.carry import Carry
from worker.store.decode import text

#: Jobs enqueued and not yet ended: job id -> its expires_at.
PENDING_KEY = keys.PENDING
#: Job id -> its task keyword arguments (compact JSON), to end it without its message.
PENDING_DATA_KEY = keys.PENDING_DATA

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
        # Scripts and their KEYS/ARGV: lua/publish_final.lua, release_job_id.lua, claim_job_id.lua.
        self._publish_once = client.register_script(load_script("publish_final"))
        self._release = client.register_script(load_script("release_job_id"))
        self._claim = client.register_script(load_script("claim_job_id"))
        #: Publishes left for the thread's next round trip (``end_job``, ``worker.store.carry``);
        #: the limiter sends them with its ask.
        self.carry = Carry(client)

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
            text(part)
            for part in self._claim(
                keys=[job_key(job_id, "enqueued"), job_key(job_id, "result"), PENDING_DATA_KEY],
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
            pipe.exists(*[job_key(job_id, "enqueued") for job_id in chunk])
        suspects = [
            job_id for chunk, n in zip(chunks, pipe.execute(), strict=True) if n for job_id in chunk
        ]
        for job_id in suspects:
            pipe.exists(job_key(job_id, "enqueued"))
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
        ids = [text(raw) for raw in raw_ids]
        if not ids:
            return []
        data = self.redis.hmget(PENDING_DATA_KEY, ids)
        # An entry without data (a half-failed write) still ends, with its job id alone.
        return [
            (job_id, json.loads(raw) if raw else {}) for job_id, raw in zip(ids, data, strict=True)
        ]

    def pending_alive(self, after: float, limit: int) -> dict[str, dict[str, Any]]:
        """Up to ``limit`` pending jobs expiring after ``after``: job id -> task kwargs (jobs
        whose data is missing are left out: they cannot be run again)."""
        raw_ids = self.redis.zrangebyscore(PENDING_KEY, after, "+inf", start=0, num=limit)
        ids = [text(raw) for raw in raw_ids]
        if not ids:
            return {}
        data = self.redis.hmget(PENDING_DATA_KEY, ids)
        return {job_id: json.loads(raw) for job_id, raw in zip(ids, data, strict=True) if raw}

    def confirm_job_id(self, job_id: str, fields: Mapping[str, Any]) -> None:
        """The job is published: keep its idempotency key, and its fields, for the result TTL."""
        self.redis.set(job_key(job_id, "enqueued"), _claim_value("enqueued", fields), ex=self._ttl)

    def release_job_id(self, job_id: str, token: str, fields: Mapping[str, Any]) -> None:
        """Undo ``claim_job_id`` when the enqueue itself failed, so the producer can retry."""
        self._release(
            keys=[job_key(job_id, "enqueued"), PENDING_KEY, PENDING_DATA_KEY],
            args=[_claim_value(f"claimed:{token}", fields), job_id],
        )

    # --- worker side ------------------------------------------------------------------------

    def first_seen(self, job_id: str, now: float) -> float:
        """When a worker first saw this job: the expiry base for jobs enqueued without one."""
        key = job_key(job_id, "seen")
        self.redis.set(key, repr(now), nx=True, ex=self._ttl)
        stored = self.redis.get(key)
        return float(stored) if stored is not None else now

    def record_attempt(self, job_id: str, attempt: Attempt) -> None:
        """Keep an attempt so the final result lists every request, across deliveries."""
        key = job_key(job_id, "attempts")
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, json.dumps(attempt.to_dict()))
        pipe.expire(key, self._ttl)
        pipe.execute()

    def attempts(self, job_id: str) -> list[Attempt]:
        raw = self.redis.lrange(job_key(job_id, "attempts"), 0, -1)
        return [Attempt(**json.loads(item)) for item in raw]

    def prior_states(self, job_ids: Sequence[str]) -> list[PriorState]:
        """What earlier deliveries left of each job, in one round trip for all of them.

        A job with a final result is not run again; a job without one carries on from the
        attempts it made before (they are listed in its final result).
        """
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.get(job_key(job_id, "result"))
            pipe.lrange(job_key(job_id, "attempts"), 0, -1)
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
        raw = self.redis.mget([job_key(job_id, "result") for job_id in job_ids]) if job_ids else []
        return {
            job_id: None if item is None else dict(json.loads(item))
            for job_id, item in zip(job_ids, raw, strict=True)
        }

    def final_result(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(job_key(job_id, "result"))
        return None if raw is None else dict(json.loads(raw))

    def publish_final(self, result: JobResult) -> bool:
        """Store, publish and log the final result; False if the job already had one.

        Sent at once, with whatever the thread's carry holds."""
        keys, args = self._publish_call(result)
        return bool(self.carry.run(self._publish_once, keys, args))

    def end_job(self, result: JobResult, then: Callable[[bool], None]) -> None:
        """``publish_final``, called back with its answer; inside ``carry.holding()`` (a batch
        message's run) sent with the thread's next round trip (``worker.store.carry``)."""
        keys, args = self._publish_call(result)
        self.carry.add(self._publish_once, keys, args, lambda reply: then(bool(reply)))

    def _publish_call(self, result: JobResult) -> tuple[list[str], list[str | int]]:
        """lua/publish_final.lua's KEYS and ARGV for ``result``."""
        keys = [
            job_key(result.job_id, "result"),
            self._log_stream,
            batch_key(result.batch_id),
            job_key(result.job_id, "attempts"),
            PENDING_KEY,
            PENDING_DATA_KEY,
        ]
        args: list[str | int] = [
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
        ]
        return keys, args


class RecordFailedAttempts(AttemptHook):
    """Keeps each failed attempt in Redis as it ends: another attempt may follow, perhaps in
    another delivery, and the final result lists them all. A successful attempt is the last;
    it goes into the final result directly, which saves a round trip per job."""

    def __init__(self, state: JobState) -> None:
        self.state = state

    def on_attempt_end(self, end: AttemptEnd) -> None:
        if end.attempt.error is not None and end.context.job_id is not None:
            self.state.record_attempt(end.context.job_id, end.attempt)
