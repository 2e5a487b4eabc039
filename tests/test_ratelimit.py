"""The cluster-wide limiter against a real Redis: rate bounds, in-flight leases, code 1000."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis

from config.lanes import BULK, Lane
from worker.api.client import SendContext
from worker.api.clock import TimestampClock
from worker.errors import ApiBusy, JobCancelled, JobExpired, Throttled
from worker.store.batches import BatchState
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
    """Limiters on keys of their own, so the session's worker is never slowed down."""
    prefix = f"streamctl-test-limit:{uuid.uuid4().hex[:8]}"

    def build(**changes: object) -> ClusterLimiter:
        return ClusterLimiter(redis_client, replace(BASE, **changes), prefix=prefix)  # type: ignore[arg-type]

    yield build
    keys = list(redis_client.scan_iter(f"{prefix}:*"))
    if keys:
        redis_client.delete(*keys)


def context(
    batch_id: str | None = None, expires_in: float = 60.0, lane: Lane = BULK
) -> SendContext:
    """A bulk attempt unless told (the lanes' own tests are in tests/test_lane_limiter.py)."""
    return SendContext(
        job_id=uuid.uuid4().hex,
        batch_id=batch_id,
        expires_at=time.time() + expires_in,
        lane=lane,
    )


def goes(limiter: ClusterLimiter, send_context: SendContext) -> bool:
    """True when the limiter lets the attempt go (it may sleep first), False when it hands the
    job back (Throttled); a cancel or an expiry raises."""
    try:
        limiter.before_send(send_context)
    except Throttled:
        return False
    return True


def test_a_go_carries_a_timestamp_claimed_as_the_clock_claims_it(
    make: object, redis_client: redis.Redis
) -> None:
    """The limiter claims the attempt's timestamp in its own round trip (worker.api.clock'
    rule): strictly increasing per target, whichever of the two claimed last."""
    limiter = make()  # type: ignore[operator]
    clock = TimestampClock(redis_client, f"streamctl-test-ts:{uuid.uuid4().hex[:8]}")
    now = clock.now()

    def claimed_by(go: ClusterLimiter, target: str) -> int | None:
        send_context = SendContext(
            job_id=uuid.uuid4().hex,
            batch_id=None,
            expires_at=time.time() + 60,
            timestamp_key=clock.key(target),
            timestamp_now=lambda: now,
        )
        return go.before_send(send_context).timestamp

    first = claimed_by(limiter, "a")
    second = claimed_by(limiter, "a")
    by_clock = clock.claim("a")  # about 2 s ahead: settle would wait for it
    third = claimed_by(limiter, "a")
    assert first == now and second == now + 1 and by_clock == now + 2 and third == now + 3
    assert claimed_by(limiter, "b") == now  # another target has its own sequence
    assert redis_client.ttl(clock.key("a")) > 0
    # Without a timestamp key the limiter claims nothing; the client claims itself.
    assert limiter.before_send(context()).timestamp is None  # type: ignore[attr-defined]
    # After a wait the limiter asks again when it ends, and claims then, right before the send
    # (the clock's time read at that claim): never a timestamp older than its send.
    throttled = make(rate=5.0, burst=1)  # type: ignore[operator]
    assert claimed_by(throttled, "c") == now  # at once
    started = time.monotonic()
    assert claimed_by(throttled, "c") == now + 1  # 0.2 s later
    assert time.monotonic() - started >= 0.19
    assert clock.claim("c") == now + 2


def test_rate_bound_holds_for_threads_sharing_the_limiter(make: object) -> None:
    rate, burst = 80.0, 4
    limiter = make(rate=rate, burst=burst)  # type: ignore[operator]
    sent: list[float] = []
    lock = threading.Lock()

    def send_many() -> None:
        for _ in range(12):
            after = limiter.before_send(context()).after
            with lock:
                sent.append(time.monotonic())
            if after is not None:
                after(None)

    threads = [threading.Thread(target=send_many) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sent) == 72
    sent.sort()
    # GCRA: any window of W seconds holds at most rate*W + burst sends. One extra for the
    # moment between the limiter's go and the thread reading the clock.
    window = 0.5
    for index, start in enumerate(sent):
        in_window = sum(1 for moment in sent[index:] if moment < start + window)
        assert in_window <= rate * window + burst + 1


def test_in_flight_slots_are_bounded_released_and_lapse(make: object) -> None:
    limiter = make(max_in_flight=2, hold=0.3, lease_seconds=0.5)  # type: ignore[operator]
    first = limiter.before_send(context()).after
    second = limiter.before_send(context()).after
    assert first is not None and second is not None
    with pytest.raises(Throttled):  # both slots taken: waits its hold, then hands back
        limiter.before_send(context())
    first(None)
    third = limiter.before_send(context()).after
    assert third is not None
    # Neither remaining slot is released (a crashed worker): their leases lapse.
    time.sleep(0.6)
    assert goes(limiter, context())


def test_a_wait_for_an_in_flight_slot_ends_at_the_jobs_expiry(make: object) -> None:
    """Every slot is busy and the hold is 5 s, but the job expires in 0.3 s: it ends expired
    then, instead of waiting out the hold past its expiry."""
    limiter = make(max_in_flight=1, hold=5.0)  # type: ignore[operator]
    assert limiter.before_send(context()).after is not None  # the one slot, never released
    started = time.monotonic()
    with pytest.raises(JobExpired):
        limiter.before_send(context(expires_in=0.3))
    assert time.monotonic() - started < 1.0


def test_code_1000_slows_every_caller_down(make: object) -> None:
    limiter = make(busy_rate=1.0, busy_seconds=30.0, hold=0.2)  # type: ignore[operator]
    other_worker = make(busy_rate=1.0, busy_seconds=30.0, hold=0.2)  # type: ignore[operator]
    for _ in range(5):  # no rate limit: nothing waits
        after = limiter.before_send(context()).after
        assert after is not None
        after(None)
    after = limiter.before_send(context()).after
    assert after is not None
    after(ApiBusy("too busy", api_code="1000"))
    assert goes(other_worker, context())  # one request a second still goes
    with pytest.raises(Throttled) as caught:
        other_worker.before_send(context())
    assert caught.value.wait >= 0


def test_cancelled_batch_and_send_after_expiry_are_refused(
    make: object, redis_client: redis.Redis
) -> None:
    limiter = make(rate=1.0, burst=1, hold=0.1)  # type: ignore[operator]
    batches = BatchState(redis_client, ttl_seconds=60)
    batch_id = f"t-{uuid.uuid4().hex[:10]}"
    batches.create(batch_id, 1)
    assert goes(limiter, context(batch_id))
    with pytest.raises(JobExpired):  # the next slot is a second away, the job expires first
        limiter.before_send(context(expires_in=0.5))
    batches.cancel(batch_id)
    with pytest.raises(JobCancelled):
        limiter.before_send(context(batch_id))


def test_a_job_handed_back_keeps_its_reserved_send_time(make: object) -> None:
    limiter = make(rate=4.0, burst=1, hold=0.1)  # type: ignore[operator]
    assert goes(limiter, context())  # at once
    late = context()
    with pytest.raises(Throttled) as caught:  # its slot is 0.25 s away: more than the hold
        limiter.before_send(late)
    with pytest.raises(Throttled):  # a later job queues behind the reserved slot
        limiter.before_send(context())
    time.sleep(caught.value.wait)
    # Back from the broker, the job goes in its reserved slot, ahead of the later job.
    assert goes(limiter, late)


@pytest.mark.parametrize(
    ("rate", "burst", "threads"),
    [
        (0.5, 1, 3),  # sends 2 s apart: a timestamp claimed before the wait would be stale
        (4.0, 2, 3),  # sends closer than the API's one-second resolution: claims queue up
    ],
)
def test_one_targets_timestamps_reach_the_api_in_order_and_fresh(
    make: object,
    redis_client: redis.Redis,
    sandbox: Any,
    rate: float,
    burst: int,
    threads: int,
) -> None:
    """Threads closing the same target through a throttled limiter: the API sees strictly
    increasing timestamps in arrival order, each claimed at send time (within a second)."""
    from tests.test_client import make_client, new_clock, new_job

    limiter = make(rate=rate, burst=burst, hold=5.0)  # type: ignore[operator]
    client = make_client(
        sandbox.url, redis_client, clock=new_clock(redis_client), before_send=limiter
    )
    job = new_job()
    # All start together, just after a second begins: two claims a few milliseconds apart
    # across a second boundary, both sent at once, are the one case the network may still
    # reorder (see worker.api.clock), and not what this test is about.
    begin = int(time.time() + 0.5) + 1.05
    failures: list[BaseException] = []

    def close_once() -> None:
        time.sleep(max(begin - time.time(), 0.0))
        try:
            client.close_stream(
                job, origin_url=None, expires_at=time.time() + 30, deadline=20
            ).unwrap()
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=close_once) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=20)
    records = sorted(sandbox.requests_for(job.target.as_fields()), key=lambda r: r["received_at"])
    assert failures == []
    assert [record["reply"] for record in records] == ["success"] * threads
    stamps = [record["timestamp"] for record in records]
    assert all(earlier < later for earlier, later in itertools.pairwise(stamps))
    # Whole seconds: a fresh claim is up to 1 s behind its arrival (plus the milliseconds from
    # claim to arrival); never ahead of it.
    lags = [record["received_at"] - record["timestamp"] for record in records]
    assert all(0 <= lag < 1.25 for lag in lags), lags
