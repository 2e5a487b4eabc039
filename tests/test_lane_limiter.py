"""The limiter's lanes on a real Redis: urgent goes ahead of bulk reservations, which move
back (never early, never lost); the lanes together stay within the rate; 1000 slows bulk first."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from config.lanes import BULK, URGENT, Lane
from worker.api.client import SendContext
from worker.errors import ApiBusy, Throttled
from worker.store.limiter import ClusterLimiter, LimitConfig

BASE = LimitConfig(
    rate=None,
    burst=1,
    max_in_flight=None,
    busy_rate=1.0,
    busy_seconds=30.0,
    hold=5.0,
    lease_seconds=10.0,
    max_countdown=15.0,
)


@pytest.fixture
def make(redis_client: redis.Redis) -> Iterator[object]:
    prefix = f"streamctl-test-lanes:{uuid.uuid4().hex[:8]}"

    def build(**changes: object) -> ClusterLimiter:
        return ClusterLimiter(redis_client, replace(BASE, **changes), prefix=prefix)  # type: ignore[arg-type]

    yield build
    keys = list(redis_client.scan_iter(f"{prefix}:*"))
    if keys:
        redis_client.delete(*keys)


def context(lane: Lane, job_id: str | None = None) -> SendContext:
    return SendContext(
        job_id=job_id or uuid.uuid4().hex, batch_id=None, expires_at=time.time() + 60, lane=lane
    )


def goes(limiter: ClusterLimiter, send_context: SendContext) -> bool:
    try:
        limiter.before_send(send_context)
    except Throttled:
        return False
    return True


def sleep_until(moment: float) -> None:
    time.sleep(max(moment - time.monotonic(), 0))


def test_an_urgent_attempt_goes_ahead_of_bulk_reservations_which_move_back(make: object) -> None:
    interval = 0.25
    limiter = make(rate=1 / interval, burst=1, hold=0.02)  # type: ignore[operator]
    assert goes(limiter, context(BULK))
    start = time.monotonic()
    first, second = context(BULK), context(BULK)
    assert not goes(limiter, first)  # reserved: one interval from now
    assert not goes(limiter, second)  # two intervals
    assert goes(limiter, context(URGENT))  # at once, ahead of both
    urgent_took = time.monotonic() - start
    # Back at its reserved time, the first bulk job finds it moved back by one interval.
    sleep_until(start + interval + 0.05)
    assert not goes(limiter, first)
    sleep_until(start + 2 * interval + 0.05)
    assert goes(limiter, first)
    assert not goes(limiter, second)  # kept its turn, behind the first, moved back as well
    sleep_until(start + 3 * interval + 0.05)
    assert goes(limiter, second)
    assert urgent_took < interval / 2, urgent_took


def test_the_lanes_together_stay_within_the_rate_plus_burst(make: object) -> None:
    """Bulk threads saturate the rate (sleeping for their reserved times, asking again); urgent
    attempts come every 0.2 s: each goes at once, and no second sees more than rate + burst."""
    rate, burst, seconds = 20.0, 2, 2.5
    limiter = make(rate=rate, burst=burst, hold=5.0)  # type: ignore[operator]
    sent: list[tuple[float, str]] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def bulk() -> None:
        while time.monotonic() < stop:
            limiter.before_send(context(BULK))
            with lock:
                sent.append((time.monotonic(), BULK))

    threads = [threading.Thread(target=bulk) for _ in range(6)]
    for thread in threads:
        thread.start()
    urgent_waits = []
    time.sleep(0.3)
    while time.monotonic() < stop - 0.3:
        asked = time.monotonic()
        limiter.before_send(context(URGENT))
        with lock:
            sent.append((time.monotonic(), URGENT))
        urgent_waits.append(time.monotonic() - asked)
        time.sleep(0.2)
    for thread in threads:
        thread.join()

    moments = sorted(moment for moment, _lane in sent)
    busiest = max(sum(1 for m in moments if t <= m < t + 1.0) for t in moments)
    assert busiest <= rate + burst, busiest
    assert len(urgent_waits) >= 5
    assert max(urgent_waits) < 0.05, urgent_waits
    assert sum(1 for _m, lane in sent if lane == BULK) >= rate * (seconds - 1) - len(urgent_waits)


def test_code_1000_slows_bulk_first_then_urgent_work(make: object) -> None:
    limiter = make(busy_rate=1.0, busy_seconds=30.0, hold=0.2)  # type: ignore[operator]
    after = limiter.before_send(context(BULK)).after
    assert after is not None
    after(ApiBusy("too busy", api_code="1000"))  # sent before any slow-down
    assert goes(limiter, context(BULK))  # bulk: one request a second
    assert not goes(limiter, context(BULK))
    for _ in range(3):  # urgent work still goes at once
        permit = limiter.before_send(context(URGENT))
        assert permit.after is not None
        permit.after(None)
    # The API answers 1000 to an attempt sent while bulk was slowed down: urgent slows too.
    permit = limiter.before_send(context(URGENT))
    assert permit.after is not None
    permit.after(ApiBusy("too busy", api_code="1000"))
    assert goes(limiter, context(URGENT))
    assert not goes(limiter, context(URGENT))


def test_the_urgent_share_leaves_part_of_the_rate_to_urgent_work(make: object) -> None:
    limiter = make(rate=10.0, burst=1, hold=5.0, urgent_share=0.5)  # type: ignore[operator]
    started = time.monotonic()
    for _ in range(4):  # bulk alone: 5 requests a second
        limiter.before_send(context(BULK))
    bulk_took = time.monotonic() - started
    assert 0.55 <= bulk_took < 0.9, bulk_took
    started = time.monotonic()
    for _ in range(4):  # urgent: the whole rate
        limiter.before_send(context(URGENT))
    assert time.monotonic() - started < 0.45


def test_the_next_in_flight_slot_freed_goes_to_a_waiting_urgent_attempt(make: object) -> None:
    limiter = make(max_in_flight=1, hold=3.0)  # type: ignore[operator]
    first = limiter.before_send(context(BULK))
    went: dict[str, float] = {}

    def attempt(name: str, lane: Lane) -> None:
        permit = limiter.before_send(context(lane))
        went[name] = time.monotonic()
        time.sleep(0.1)
        assert permit.after is not None
        permit.after(None)

    bulk = threading.Thread(target=attempt, args=("bulk", BULK))
    bulk.start()
    time.sleep(0.1)  # the bulk attempt waits for the wake-up list first
    urgent = threading.Thread(target=attempt, args=("urgent", URGENT))
    urgent.start()
    time.sleep(0.1)
    assert first.after is not None
    released = time.monotonic()
    first.after(None)
    bulk.join()
    urgent.join()

    assert went["urgent"] < went["bulk"], went
    assert went["urgent"] - released < 0.1
