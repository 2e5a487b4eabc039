"""Strictly increasing request timestamps, shared by every worker through Redis.

The API's timestamp has one-second resolution and is its only defence against replays. Two
closes of one stream signed in the same second would be byte-identical, so for each account and
target the timestamp handed out must be strictly greater than the last one used, whichever
worker or job used it. A Lua script makes claiming atomic: it hands out
``max(now, last + 1)`` and records it. A claim that lands in the future is waited for, so a
request never carries a time ahead of the local clock (the server's window is centred on now).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import redis

#: The last timestamp of a target is kept this long after use. It only has to outlive the
#: API's timestamp window (unknown; webhook senders use about five minutes): after that, a
#: body with an older timestamp would be refused as stale anyway.
CLAIM_TTL_SECONDS = 3600

_CLAIM = """
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local now = tonumber(ARGV[1])
local claimed = now
if claimed <= last then claimed = last + 1 end
redis.call('SET', KEYS[1], claimed, 'EX', tonumber(ARGV[2]))
return claimed
"""


def account_scope(cdn: int, api_key: str) -> str:
    """A Redis key prefix for an account that does not reveal its API key."""
    digest = hashlib.sha256(f"{cdn}:{api_key}".encode()).hexdigest()[:16]
    return f"streamctl:ts:{cdn}:{digest}"


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
        self._script = client.register_script(_CLAIM)
        self._scope = scope
        self._now = now
        self._sleep = sleep

    def claim(self, target_key: str) -> int:
        """Reserve the next timestamp for ``target_key`` and wait until it is not in the future."""
        now = int(self._now())
        claimed = int(
            self._script(keys=[f"{self._scope}:{target_key}"], args=[now, CLAIM_TTL_SECONDS])
        )
        wait = claimed - self._now()
        if wait > 0:
            self._sleep(wait)
        return claimed
