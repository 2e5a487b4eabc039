"""A batch message's results ride along with the next job's ask (worker.store.carry).

In-process, as tests/test_runner.py: the real runner on the test Redis, its HTTP a
``MockTransport``. Each job's one final result is out before the next job's request is sent,
in the same round trip as that job's limiter ask; the message's last result when it ends.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.connection import AbstractConnection

from config.settings import Settings
from tests.faults.harness import unique_target
from worker.api.transport import MockReply, MockRequest, MockTransport, Reply
from worker.consume.runner import Delivery, JobRunner
from worker.consume.wiring import build_runner
from worker.model import keys
from worker.store.carry import Carry

SUCCESS = MockReply.of({"status": "success", "message": "closed", "handle_time": "0.012"})


def deliveries(count: int) -> list[Delivery]:
    now = time.time()
    return [
        Delivery(
            job_id=f"carry-{uuid.uuid4().hex}",
            args=(),
            kwargs={**unique_target("carry"), "enqueued_at": now, "expires_at": now + 30},
        )
        for _ in range(count)
    ]


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the test process's Redis round trips (a pipeline is one) while the test runs."""
    count = [0]
    original = AbstractConnection.send_packed_command

    def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        count[0] += 1
        original(self, command, check_health)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    yield count


def runner_with(settings: Settings, handler: Any) -> JobRunner:
    return build_runner(settings, transport=MockTransport(handler), clock_sleep=lambda _s: None)


@pytest.mark.parametrize("max_in_flight", [None, 2])
def test_each_result_is_out_before_the_next_request_in_one_round_trip_per_job(
    settings: Settings, redis_client: redis.Redis, round_trips: list[int], max_in_flight: int | None
) -> None:
    jobs = deliveries(5)
    in_flight_key = keys.limiter_key(keys.LIMIT_PREFIX, "in_flight")
    seen_before_send: list[tuple[list[bool], int]] = []

    def handler(request: MockRequest) -> Reply:
        sent = len(seen_before_send)
        done = [runner.state.final_result(d.job_id) is not None for d in jobs[:sent]]
        seen_before_send.append((done, redis_client.zcard(in_flight_key)))
        return SUCCESS

    runner = runner_with(settings.model_copy(update={"max_in_flight": max_in_flight}), handler)
    runner.run_chunk(deliveries(1))  # the scripts loaded, the connections made
    seen_before_send.clear()
    round_trips[0] = 0
    run = runner.run_chunk(jobs)
    trips = round_trips[0]

    assert run.outcomes == {"success": 5}
    # Every earlier job's result was stored before each request went out, and with an
    # in-flight cap its slot was freed: only the request's own is held.
    held = 1 if max_in_flight else 0
    assert seen_before_send == [([True] * n, held) for n in range(5)]
    assert redis_client.zcard(in_flight_key) == 0
    for delivery in jobs:
        stored = runner.state.final_result(delivery.job_id)
        assert stored is not None and stored["outcome"] == "success"
    # The handler's own reads are 2 per request and 1 + 2 + 3 + 4; the message's: its prior
    # states, one ask per job (each but the first carrying the job before it: its result, and
    # its slot's release), the last job's when the message ends.
    assert trips - 5 - sum(range(5)) == 1 + 5 + 1


def test_carried_results_survive_redis_losing_its_scripts(
    settings: Settings, redis_client: redis.Redis
) -> None:
    jobs = deliveries(3)

    def handler(request: MockRequest) -> Reply:
        redis_client.script_flush()  # as a restarted Redis: the carried publish meets NOSCRIPT
        return SUCCESS

    runner = runner_with(settings, handler)
    run = runner.run_chunk(jobs)

    assert run.outcomes == {"success": 3}
    for delivery in jobs:
        stored = runner.state.final_result(delivery.job_id)
        assert stored is not None and stored["outcome"] == "success"


def test_an_error_answer_to_a_carried_call_is_raised_when_holding_ends(
    redis_client: redis.Redis,
) -> None:
    key = f"carry-test-{uuid.uuid4().hex}"
    redis_client.set(key, "not a number")
    failing = redis_client.register_script("return redis.call('INCR', KEYS[1])")
    echo = redis_client.register_script("return ARGV[1]")
    carry = Carry(redis_client)
    answers: list[Any] = []

    with pytest.raises(redis.ResponseError, match="not an integer"), carry.holding():
        carry.add(failing, [key], [], answers.append)
        carry.add(echo, [], ["carried"], answers.append)
        # The call that carried them has its own answer, whatever theirs were.
        assert carry.run(echo, [], ["mine"]) == b"mine"
        assert answers == [b"carried"]
    carry.flush()  # nothing left over: the error was raised once
    assert answers == [b"carried"]
