"""The cluster-wide rate limit: one atomic Lua script in Redis, asked before every HTTP attempt.

Celery's own ``rate_limit`` is per worker; this one bounds all workers together. Every attempt
(retries included) goes through ``ClusterLimiter.before_send``, the ``before_send`` hook of
``ScaleEngineClient``. One script call, on Redis's clock, decides in order:

1. the job's batch was cancelled -> JobCancelled (nothing is sent);
2. ``STREAMCTL_MAX_IN_FLIGHT`` requests are out -> wait for a release. In-flight slots are
   leases in a sorted set, scored by when they lapse, so a crashed worker's slots free
   themselves after the HTTP timeouts. An urgent attempt waiting for one is marked so, and
   bulk attempts leave the next slot freed to it;
3. the rates: GCRA (a virtual-scheduling token bucket) on the cluster key, and on the batch's
   own key when the batch has ``--rate``. The caller is given a send time and the script
   reserves it, so waiting callers never race for the same slot and never poll.
4. the lanes (``config.lanes``): an urgent attempt reserves on the urgent lane's own key and
   moves every bulk reservation back by one interval, so it goes ahead of bulk work already
   waiting for its turn, and the lanes together stay within the rate plus burst (the script's
   header has the reasoning). With ``STREAMCTL_URGENT_SHARE`` the bulk lane alone uses at most
   ``1 - share`` of the rate. While the API answered code 1000 recently (a shared "busy until"
   key), bulk drops to ``STREAMCTL_BUSY_RATE`` with no burst; urgent work slows down too only
   when the API still answers 1000 after that.

The reserved send time is kept for the job (a per-job slot key). A wait up to
``STREAMCTL_THROTTLE_HOLD`` is slept in the worker thread, and then the thread asks again: its
send time may have moved back for urgent work meanwhile. A longer wait raises Throttled: the job
goes back to the broker with a countdown and its send time stays reserved, so it does not queue
again behind later jobs when it comes back. No wait outlasts the job's expiry (JobExpired).

The go (always without a wait, see above) also claims the attempt's timestamp
(worker.api.clock) in the same script: one round trip for an unthrottled attempt, and a
timestamp claimed right before its send, never seconds old nor overtaken by a later claim. In a
batch message that round trip also carries the job before's final result and its slot's
release (worker.store.carry): one round trip per job.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import uuid
from dataclasses import dataclass

import redis

from config.lanes import URGENT
from config.settings import Settings
from worker.api.client import Permit, SendContext
from worker.api.clock import CLAIM_TTL_SECONDS
from worker.errors import ApiBusy, ApiError, JobCancelled, JobExpired, Throttled
from worker.model import keys
from worker.model.keys import batch_key
from worker.model.scripts import load_script
from worker.store.carry import Carry
from worker.telemetry import metrics

log = logging.getLogger("streamctl.ratelimit")

PREFIX = keys.LIMIT_PREFIX
#: Spare seconds on an in-flight lease beyond the HTTP timeouts (signing, a slow thread).
LEASE_MARGIN = 5.0
#: The longest a throttled job waits in the broker between two asks (it was half of the old
#: 300 s visibility timeout): long enough not to churn, short enough to notice a cancel.
MAX_HANDBACK_COUNTDOWN = 150.0
#: How often an urgent attempt waiting for an in-flight slot asks again (its mark, which keeps
#: bulk attempts off the next slot freed, lapses 2 s after its last ask).
URGENT_POLL = 0.02

GO, FULL, THROTTLED, CANCELLED, TOO_LATE = range(5)

def _ignore(_reply: object) -> None:
    pass


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
    #: Longest countdown a throttled job is handed back with. Held messages are renewed
    #: (worker.consume.renewer), so it need not fit the visibility timeout; a job that must
    #: wait longer comes back, asks again and keeps its reserved send time.
    max_countdown: float
    #: The share of the rate the bulk lane leaves to urgent work (STREAMCTL_URGENT_SHARE).
    urgent_share: float = 0.0

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
            max_countdown=min(MAX_HANDBACK_COUNTDOWN, settings.job_expiry / 2),
            urgent_share=settings.urgent_share,
        )


class ClusterLimiter:
    """The ``before_send`` hook every worker thread calls before each HTTP attempt."""

    def __init__(
        self,
        client: redis.Redis,
        config: LimitConfig,
        *,
        prefix: str = PREFIX,
        carry: Carry | None = None,
    ) -> None:
        self.redis = client
        #: Sends the thread's carried calls (a batch's last result) with each ask.
        self._carry = carry or Carry(client)
        self.config = config
        self.prefix = prefix
        self.busy_key = keys.limiter_key(prefix, "busy_until")
        self._tat_key = keys.limiter_key(prefix, "tat")
        self._urgent_tat_key = keys.limiter_key(prefix, "urgent:tat")
        self._urgent_busy_key = keys.limiter_key(prefix, "urgent:busy_until")
        self._shift_key = keys.limiter_key(prefix, "shift")
        self._urgent_waiting_key = keys.limiter_key(prefix, "urgent:waiting")
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

        With ``context.timestamp_key`` the go also carries the attempt's timestamp, claimed in
        the same script. A wait is slept and then asked about again (the send time may have
        moved back for urgent work). No wait outlasts the job's expiry.
        """
        config = self.config
        lease = uuid.uuid4().hex
        started = time.monotonic()
        while True:
            left = config.hold - (time.monotonic() - started)
            status, wait_us, claimed, slowed = self._ask(context, lease, max(left, 0.0))
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
                longest = min(max(wait, 0.001), left, remaining)
                if context.lane == URGENT:
                    # Marked waiting, it gets the next slot freed: it asks again soon rather
                    # than queue for the wake-up list with the bulk attempts.
                    time.sleep(min(URGENT_POLL, longest))
                else:
                    self._wait_for_release(longest)
                continue
            if wait > 0:
                # Its send time is reserved (the slot key); asked again then, the script checks
                # for a cancel and for urgent work that moved the time back meanwhile.
                time.sleep(wait)
                continue
            return Permit(
                after=functools.partial(self._after, lease, escalate=bool(slowed)),
                timestamp=claimed or None,
            )

    def _ask(
        self, context: SendContext, lease: str, max_wait: float
    ) -> tuple[int, int, int, int]:
        config = self.config
        job = context.job_id or lease
        script_keys = [
            self._tat_key,
            self.busy_key,
            self._in_flight_key,
            batch_key(context.batch_id),
            keys.limiter_batch_tat(self.prefix, context.batch_id),
            keys.limiter_slot(self.prefix, job),
            self._urgent_tat_key,
            self._urgent_busy_key,
            self._shift_key,
            self._urgent_waiting_key,
        ]
        if context.timestamp_key is not None:
            script_keys.append(context.timestamp_key)
        reply = self._carry.run(
            self._acquire,
            script_keys,
            [
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
                context.lane,
                _us(1 / (config.rate * (1 - config.urgent_share))) if config.rate else 0,
            ],
        )
        return int(reply[0]), int(reply[1]), int(reply[2]), int(reply[3])

    def _wait_for_release(self, seconds: float) -> None:
        """Block on the wake-up list (a release pushes to it) rather than polling the script."""
        self.redis.blpop([self._freed_key], timeout=max(round(seconds, 3), 0.001))

    def _after(self, lease: str, error: ApiError | None, *, escalate: bool = False) -> None:
        """Free the attempt's lease; note a 1000 (``escalate``: it slows urgent work too)."""
        busy = isinstance(error, ApiBusy)
        if busy:
            log.warning(
                "API busy (code 1000): bulk work sends at most %g requests/s for %g s%s",
                self.config.busy_rate,
                self.config.busy_seconds,
                ", urgent work too (busy while slowed down already)" if escalate else "",
            )
        if not self.config.max_in_flight and not busy:
            return
        script_keys = [self._in_flight_key, self._freed_key, self.busy_key, self._urgent_busy_key]
        args: list[str | int] = [
            lease if self.config.max_in_flight else "",
            self.config.max_in_flight or 1,
            _us(self.config.busy_seconds) if busy else 0,
            1 if escalate else 0,
        ]
        if error is None and self._carry.is_holding:
            # The attempt ended its job (no retry, no wait follows): in a batch message its
            # slot is freed with the thread's next round trip, with the job's result, before
            # the thread's next request (worker.store.carry).
            self._carry.add(self._release, script_keys, args, _ignore)
        else:
            self._carry.run(self._release, script_keys, args)
