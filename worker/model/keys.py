"""Every Redis key streamctl writes, in one schema (the Lua scripts are in ``lua/``).

Built here and nowhere else; a module that needs a key imports its builder. ``<job>`` is a
job id, ``<batch>`` a batch id (``-`` where a script must be given a key and there is none).

Jobs (``worker.store.jobs``)::

    streamctl:job:<job>:enqueued    string  "<state>\\n<request fields JSON>": an enqueue's
                                            claim on the job id (idempotency key)
    streamctl:job:<job>:result      string  the one final result (JSON), SET NX
    streamctl:job:<job>:attempts    list    its attempts across deliveries (JSON each)
    streamctl:job:<job>:seen        string  deliveries counted (redeliveries)
    streamctl:pending               zset    jobs enqueued and not ended -> their expires_at
    streamctl:pending:data          hash    job id -> its task keyword arguments (JSON)

Batches (``worker.store.batches``)::

    streamctl:batch:<batch>         hash    total, started_at, rate, cancelled, done,
                                            outcome:<outcome> counts, finished_at, summary
    streamctl:batch:<batch>:jobs    hash    job id -> target, for ``--retry-failed``

Results: the channel (pub/sub) and its log (stream) are settings, STREAMCTL_RESULTS_CHANNEL
(default ``streamctl:results``) and ``<channel>:log`` (``config.settings.Settings.results_log``):
``config/`` cannot import this module.

Request timestamps (``worker.api.clock``)::

    streamctl:ts:<cdn>:<account digest>:<target>  string  the target's last timestamp

The rate limiter (``worker.store.limiter``; the prefix is a parameter so tests can use their
own, default ``streamctl:limit``)::

    <prefix>:tat                    string  the cluster's theoretical arrival time (µs): bulk
                                            reserves on it, each urgent reservation moves it
    <prefix>:urgent:tat             string  the urgent lane's own TAT (µs)
    <prefix>:shift                  string  µs the bulk lane was moved back by urgent work so
                                            far (a bulk slot's send time moves with it)
    <prefix>:busy_until             string  the end of the bulk lane's slow-down after an API
                                            1000 (µs)
    <prefix>:urgent:busy_until      string  the same for urgent work: a 1000 answered while
                                            bulk was already slowed down
    <prefix>:in_flight              zset    lease id -> its lapse (µs)
    <prefix>:urgent:waiting         zset    urgent attempts waiting for an in-flight slot ->
                                            when the mark lapses (µs)
    <prefix>:freed                  list    wake-ups for threads waiting for a lease
    <prefix>:batch:<batch>:tat      string  a batch's own rate limit
    <prefix>:slot:<job>             string  the send time reserved for a waiting or throttled
                                            job (µs), "<time>:<shift then>" for a bulk one

Locks and the schedule (``worker.consume.janitor``, ``worker.schedule.scheduler``)::

    streamctl:janitor:lock          string  the one janitor sweeping at a time
    streamctl:janitor:suspects      set     pending jobs seen with the broker empty, once
    streamctl:beat:lock             string  the one scheduler running the schedule
    streamctl:schedule:run:<entry>:<slot>  string  a scheduled run, sent once
    streamctl:schedule:runs         stream  the runs sent: an audit trail
"""

from __future__ import annotations

import hashlib

ROOT = "streamctl"

_JOB = f"{ROOT}:job"
_BATCH = f"{ROOT}:batch"

PENDING = f"{ROOT}:pending"
PENDING_DATA = f"{ROOT}:pending:data"
NO_BATCH = f"{_BATCH}:-"

LIMIT_PREFIX = f"{ROOT}:limit"

JANITOR_LOCK = f"{ROOT}:janitor:lock"
#: Pending jobs the last sweep found while the broker held no message at all (a rescue's
#: first sighting; see worker.consume.janitor.rescue).
JANITOR_SUSPECTS = f"{ROOT}:janitor:suspects"
BEAT_LOCK = f"{ROOT}:beat:lock"
SCHEDULE_RUNS = f"{ROOT}:schedule:runs"


def job_key(job_id: str, part: str) -> str:
    """One of a job's keys: ``part`` is enqueued, result, attempts or seen."""
    return f"{_JOB}:{job_id}:{part}"


def batch_key(batch_id: str | None) -> str:
    return f"{_BATCH}:{batch_id}" if batch_id else NO_BATCH


def batch_jobs_key(batch_id: str) -> str:
    return f"{_BATCH}:{batch_id}:jobs"


def account_scope(cdn: int, api_key: str) -> str:
    """The prefix of an account's timestamp keys; it does not reveal the API key."""
    digest = hashlib.sha256(f"{cdn}:{api_key}".encode()).hexdigest()[:16]
    return f"{ROOT}:ts:{cdn}:{digest}"


def timestamp_key(scope: str, target_key: str) -> str:
    return f"{scope}:{target_key}"


def limiter_key(prefix: str, name: str) -> str:
    """A cluster-wide key of the limiter: tat, busy_until, in_flight, freed, shift,
    urgent:tat, urgent:busy_until or urgent:waiting."""
    return f"{prefix}:{name}"


def limiter_batch_tat(prefix: str, batch_id: str | None) -> str:
    return f"{prefix}:batch:{batch_id or '-'}:tat"


def limiter_slot(prefix: str, job: str) -> str:
    return f"{prefix}:slot:{job}"


def schedule_run_key(entry: str, slot: int | str) -> str:
    return f"{ROOT}:schedule:run:{entry}:{slot}"
