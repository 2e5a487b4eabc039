"""The cluster-wide rate limit: one atomic Lua script in Redis, asked before every HTTP attempt.

Celery's own ``rate_limit`` is per worker; this one bounds all workers together. Every attempt
(retries included) goes through ``ClusterLimiter.before_send``, the ``before_send`` hook of
``ScaleEngineClient``. One script call, on Redis's clock, decides in order:

1. the job's batch was cancelled -> JobCancelled (nothing is sent);
2. ``STREAMCTL_MAX_IN_FLIGHT`` requests are out -> wait for a release. In-flight slots are
   leases in a sorted set, scored by when they lapse, so a crashed worker's slots free
   themselves after the HTTP timeouts;
3. the rates: GCRA (a virtual-scheduling token bucket) on the cluster key, and on the batch's
   own key when the batch has ``--rate``. The caller is given a send time and the script
   reserves it, so waiting callers never race for the same slot and never poll. While the API
   answered code 1000 recently (a shared "busy until" key), the cluster rate drops to
   ``STREAMCTL_BUSY_RATE`` with no burst.

A wait up to ``STREAMCTL_THROTTLE_HOLD`` is slept in the worker thread; a longer one raises
Throttled: the job goes back to the broker with a countdown, its send time stays reserved for
it (a per-job slot key), so it does not queue again behind later jobs when it comes back. No
wait outlasts the job's expiry (JobExpired instead).

A go without a wait also claims the attempt's timestamp (worker.api.clock) in the same script,
so the common unthrottled attempt costs one round trip. After a wait the client claims it, right
before it sends: a timestamp claimed before the wait would be seconds old at the send, and a
later claim with a shorter wait could reach the API first.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass

import redis

from config.settings import Settings
from worker.api.client import Permit, SendContext
from worker.api.clock import CLAIM_TTL_SECONDS
from worker.errors import ApiBusy, ApiError, JobCancelled, JobExpired, Throttled
from worker.model import keys
from worker.model.keys import batch_key
from worker.model.scripts import load_script
from worker.telemetry import metrics

log = logging.getLogger("streamctl.ratelimit")

PREFIX = keys.LIMIT_PREFIX
#: Spare seconds on an in-flight lease beyond the HTTP timeouts (signing, a slow thread).
LEASE_MARGIN = 5.0

GO, FULL, THROTTLED, CANCELLED, TOO_LATE = range(5)

def _us(seconds: float) -> int:
    return math.ceil(seconds * 1_000_000)


@dataclass(frozen=True, slots=True)
class LimitConfig:
    rate: float | None
    burst: int
    max_in_flight: int | None
    busy_rate: float
    busy_seconds: float
    hold: float
    lease_seconds: float
    #: Longest countdown a throttled job is handed back with: under half the visibility
    #: timeout, the same bound the retry countdowns keep (see Settings._check_timing).
    max_countdown: float

    @classmethod
    def from_settings(cls, settings: Settings) -> LimitConfig:
        return cls(
            rate=settings.rate_limit,
            burst=settings.rate_burst,
            max_in_flight=settings.max_in_flight,
            busy_rate=settings.busy_rate,
            busy_seconds=settings.busy_backoff,
            hold=settings.throttle_hold,
            lease_seconds=settings.connect_timeout + settings.read_timeout + LEASE_MARGIN,
            max_countdown=settings.visibility_timeout / 2,
        )


class ClusterLimiter:
    """The ``before_send`` hook every worker thread calls before each HTTP attempt."""

    def __init__(self, client: redis.Redis, config: LimitConfig, *, prefix: str = PREFIX) -> None:
        self.redis = client
        self.config = config
        self.prefix = prefix
        self.busy_key = keys.limiter_key(prefix, "busy_until")
        self._tat_key = keys.limiter_key(prefix, "tat")
        self._in_flight_key = keys.limiter_key(prefix, "in_flight")
        self._freed_key = keys.limiter_key(prefix, "freed")
        # Scripts and their KEYS/ARGV: lua/limiter_acquire.lua, lua/limiter_release.lua.
        self._acquire = client.register_script(load_script("limiter_acquire"))
        self._release = client.register_script(load_script("limiter_release"))

    def __call__(self, context: SendContext) -> Permit:
        started = time.monotonic()
        try:
            return self.before_send(context)
        finally:
            metrics.observe_rate_limit_wait(time.monotonic() - started)

    def before_send(self, context: SendContext) -> Permit:
        """Wait for the limiter's go; raise JobCancelled, JobExpired or Throttled instead.

        With ``context.timestamp_key`` a go without a wait also carries the attempt's
        timestamp, claimed in the same script: one Redis round trip before an unthrottled
        attempt instead of two. After a wait the client claims (one more round trip, for
        throttled attempts only). No wait outlasts the job's expiry.
        """
        config = self.config
        lease = uuid.uuid4().hex
        started = time.monotonic()
        while True:
            left = config.hold - (time.monotonic() - started)
            status, wait_us, claimed = self._ask(context, lease, max(left, 0.0))
            wait = wait_us / 1_000_000
            if status == CANCELLED:
                raise JobCancelled("the batch was cancelled before this job was sent")
            if status == TOO_LATE:
                raise JobExpired("the rate limit would hold the job past its expiry")
            if status == THROTTLED:
                countdown = min(max(wait - config.hold / 2, 0.0), config.max_countdown)
                raise Throttled(f"rate limited for {wait:.1f} s", wait=countdown)
            if status == FULL:
                remaining = context.expires_at - time.time() if context.expires_at else math.inf
                if remaining <= 0:
                    raise JobExpired("every in-flight slot was busy until the job's expiry")
                if left <= 0:
                    raise Throttled("every in-flight slot is busy", wait=min(1.0, config.hold))
                self._wait_for_release(min(max(wait, 0.001), left, remaining))
                continue
            if wait > 0:
                time.sleep(wait)
                # A cancel that came while this thread slept still stops the send.
                if context.batch_id and self.redis.hexists(
                    batch_key(context.batch_id), "cancelled"
                ):
                    self._after(lease, None)
                    raise JobCancelled("the batch was cancelled before this job was sent")
            return Permit(after=lambda error: self._after(lease, error), timestamp=claimed or None)

    def _ask(self, context: SendContext, lease: str, max_wait: float) -> tuple[int, int, int]:
        config = self.config
        job = context.job_id or lease
        script_keys = [
            self._tat_key,
            self.busy_key,
            self._in_flight_key,
            batch_key(context.batch_id),
            keys.limiter_batch_tat(self.prefix, context.batch_id),
            keys.limiter_slot(self.prefix, job),
        ]
        if context.timestamp_key is not None:
            script_keys.append(context.timestamp_key)
        reply = self._acquire(
            keys=script_keys,
            args=[
                _us(1 / config.rate) if config.rate else 0,
                config.burst,
                _us(1 / config.busy_rate),
                config.max_in_flight or 0,
                lease,
                _us(config.lease_seconds),
                _us(max_wait),
                _us(context.expires_at) if context.expires_at else 0,
                int((config.max_countdown + config.hold) * 1000) + 60_000,
                # Read at the claim, not when the attempt began (a wait for a slot may lie between).
                context.timestamp_now() if context.timestamp_now is not None else 0,
                CLAIM_TTL_SECONDS,
            ],
        )
        return int(reply[0]), int(reply[1]), int(reply[2]) if len(reply) > 2 else 0

    def _wait_for_release(self, seconds: float) -> None:
        """Block on the wake-up list (a release pushes to it) rather than polling the script."""
        self.redis.blpop([self._freed_key], timeout=max(round(seconds, 3), 0.001))

    def _after(self, lease: str, error: ApiError | None) -> None:
        busy = isinstance(error, ApiBusy)
        if busy:
            log.warning(
                "API busy (code 1000): the cluster sends at most %g requests/s for %g s",
                self.config.busy_rate,
                self.config.busy_seconds,
            )
        if not self.config.max_in_flight and not busy:
            return
        self._release(
            keys=[self._in_flight_key, self._freed_key, self.busy_key],
            args=[
                lease if self.config.max_in_flight else "",
                self.config.max_in_flight or 1,
                _us(self.config.busy_seconds) if busy else 0,
            ],
        )
