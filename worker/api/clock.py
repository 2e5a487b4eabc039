"""Strictly increasing request timestamps, shared by every worker through Redis.

The API's timestamp has one-second resolution and is its only defence against replays. Two
closes of one stream signed in the same second would be byte-identical, so for each account and
target the timestamp handed out must be strictly greater than the last one used, whichever
worker or job used it. A Lua script makes claiming atomic: it hands out
``max(now, last + 1)`` and records it. A claim that lands in the future is waited for, so a
request never carries a time ahead of the local clock (the server's window is centred on now),
but never past the job's expiry: a claim beyond it is not waited for at all (``settle``).

A timestamp is claimed right before its request is signed and sent, after any wait of the rate
limiter, from the local time of the claim. So for one target the API sees the timestamps in the
order they were claimed, each at most a second behind its send (plus the milliseconds from claim
to arrival; two sends claimed within those milliseconds of each other across a second boundary
are the one case a network can still reorder).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from worker.model.keys import timestamp_key
from worker.model.scripts import load_script

#: The last timestamp of a target is kept this long after use. It only has to outlive the
#: API's timestamp window (unknown; webhook senders use about five minutes): after that, a
#: body with an older timestamp would be refused as stale anyway.
CLAIM_TTL_SECONDS = 3600

# The claim rule is one Lua function (lua/claim_timestamp.lib.lua), so that another script
# (the rate limiter's, which runs before every attempt anyway) can claim in the same round trip.


class TimestampClock:
    """Hands out request timestamps, strictly increasing per target across the cluster."""

    def __init__(
        self,
        client: redis.Redis,
        scope: str,
        *,
        now: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._script = client.register_script(load_script("claim_timestamp"))
        self._scope = scope
        self._now = now
        self._sleep = sleep

    def key(self, target_key: str) -> str:
        """The Redis key holding ``target_key``'s last timestamp."""
        return timestamp_key(self._scope, target_key)

    def now(self) -> int:
        """The time a claim made now starts from (whole seconds, the API's resolution)."""
        return int(self._now())

    def claim(self, target_key: str) -> int:
        """Reserve the next timestamp for ``target_key``, from now. It may lie in the future
        (the last one is this second's, or ahead): ``settle`` waits for it."""
        return int(self._script(keys=[self.key(target_key)], args=[self.now(), CLAIM_TTL_SECONDS]))

    def settle(self, claimed: int, *, until: float) -> bool:
        """Wait until ``claimed`` is not in the future, if that comes before ``until`` (unix
        time: the job's expiry); False, at once and without waiting, when it does not.

        The wait is then shorter than the time left before ``until``. A claim beyond it (the
        target's last timestamp lies ahead: a host whose clock runs fast, a stray write) is
        left used: a later claim is still greater, as the API needs.
        """
        if claimed >= until:
            return False
        wait = claimed - self._now()
        if wait > 0:
            self._sleep(wait)
        return True
