"""``JobRunner``'s decision table, in-process: every way a delivery ends, in milliseconds.

A real runner (``build_runner``: the real client, retry policy, cluster limiter and ``JobState``
on the test Redis) whose HTTP is a ``MockTransport``: each test's handler answers as the API
would. No worker process, no sandbox. What a delivery ends in: a published final result
(success, failure, error, rejected, expired, cancelled), a hand-back to Celery carrying the
job's counts in its next message (``RetryLater``), or ``AlreadyFinal``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from config.settings import Settings
from tests.faults.harness import unique_target
from worker.api.hooks import AttemptEnd, AttemptHook, AttemptStart, RetryScheduled
from worker.api.transport import MockReply, MockRequest, MockTransport, Reply
from worker.consume.runner import AlreadyFinal, Delivery, JobRunner, RetryLater
from worker.consume.wiring import build_runner
from worker.errors import ConnectionFailed
from worker.model.results import JobResult
from worker.store.batches import batch_key

SUCCESS = MockReply.of({"status": "success", "message": "closed", "handle_time": "0.012"})
UNAVAILABLE = MockReply(503, b"<html>down</html>")


def refusal(code: str, message: str = "refused") -> MockReply:
    return MockReply.of({"status": "failure", "code": code, "message": message})


@pytest.fixture(scope="module")
def quick(settings: Settings) -> Settings:
    """The test settings with backoffs of milliseconds and a short throttle hold."""
    return settings.model_copy(
        update={
            "max_attempts": 3,
            "backoff_initial": 0.001,
            "backoff_max": 0.002,
            "busy_backoff": 0.002,
            "throttle_hold": 0.05,
            "rate_burst": 1,  # a batch rate lets one close go at once, no burst
        }
    )


Replies = Callable[[MockRequest], Reply]


@pytest.fixture
def runner_for(quick: Settings) -> Iterator[Callable[[Replies], tuple[JobRunner, MockTransport]]]:
    def build(handler: Replies) -> tuple[JobRunner, MockTransport]:
        transport = MockTransport(handler)
        return build_runner(quick, transport=transport, clock_sleep=lambda _s: None), transport

    yield build


def replies(*answers: Reply) -> Replies:
    """A handler giving ``answers`` in order, then repeating the last."""
    queue = list(answers)

    def handler(request: MockRequest) -> Reply:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return handler


def job(**extra: Any) -> tuple[str, dict[str, Any]]:
    kwargs: dict[str, Any] = {**unique_target("runner"), "expires_at": time.time() + 30, **extra}
    return f"runner-{uuid.uuid4().hex}", kwargs


def run(runner: JobRunner, job_id: str, kwargs: dict[str, Any]) -> Any:
    return runner.run(Delivery(job_id=job_id, args=(), kwargs=kwargs))


def published(runner: JobRunner, job_id: str, outcome: JobResult | Any) -> dict[str, Any]:
    """The job's one stored final result, the same as the runner returned."""
    assert isinstance(outcome, JobResult)
    stored = runner.state.final_result(job_id)
    assert stored is not None and stored["outcome"] == outcome.outcome
    return stored


# --- endings with a final result -----------------------------------------------------------


def test_success(runner_for: Callable[[Replies], tuple[JobRunner, MockTransport]]) -> None:
    runner, transport = runner_for(replies(SUCCESS))
    job_id, kwargs = job()
    result = published(runner, job_id, run(runner, job_id, kwargs))
    assert (result["outcome"], result["message"], result["handle_time"]) == (
        "success",
        "closed",
        0.012,
    )
    assert [a["http_status"] for a in result["attempts"]] == [200]
    (request,) = transport.requests
    assert request.json()["stream"] == kwargs["stream"]
    assert result["attempts"][0]["timestamp"] == request.json()["timestamp"]


def test_failure_is_final_at_once(
    runner_for: Callable[[Replies], tuple[JobRunner, MockTransport]],
) -> None:
    runner, transport = runner_for(replies(refusal("0005", "unauthorized")))
    job_id, kwargs = job()
    result = published(runner, job_id, run(runner, job_id, kwargs))
    assert (result["outcome"], result["api_code"], result["message"]) == (
        "failure",
        "0005",
        "unauthorized",
    )
    assert len(transport.requests) == 1


def test_transient_failures_are_retried_then_handed_back_with_the_count_in_the_message(
    runner_for: Callable[[Replies], tuple[JobRunner, MockTransport]],
) -> None:
    runner, transport = runner_for(replies(UNAVAILABLE))
    job_id, kwargs = job()  # no counts: a message of an older producer, Flower, celery call
    later = run(runner, job_id, kwargs)
    assert isinstance(later, RetryLater)
    assert len(transport.requests) == runner.policy.max_attempts
    # The lane is written in, so the next message (and the result) keeps it.
    assert later.kwargs == {**kwargs, "lane": "urgent", "retries": 1, "handbacks": 0}
    assert 0 < later.countdown <= runner.policy.celery_retry_countdown
    assert runner.state.final_result(job_id) is None
    # The failed attempts are kept for the final result (the hook records them).
    assert [a.http_status for a in runner.state.attempts(job_id)] == [503] * 3

    # The next delivery carries on from them.
    transport.handler = replies(SUCCESS)
    result = published(runner, job_id, run(runner, job_id, later.kwargs))
    assert [a["http_status"] for a in result["attempts"]] == [503, 503, 503, 200]
    stamps = [a["timestamp"] for a in result["attempts"]]
    assert stamps == sorted(set(stamps))  # a fresh timestamp for every attempt


def test_error_once_the_retries_carried_in_the_message_are_used_up(
    runner_for: Callable[[Replies], tuple[JobRunner, MockTransport]],
) -> None:
    runner, transport = runner_for(replies(UNAVAILABLE))
    job_id, kwargs = job(retries=runner.policy.celery_max_retries, handbacks=3)
    result = published(runner, job_id, run(runner, job_id, kwargs))
    assert result["outcome"] == "error"
    assert result["message"].startswith("retries exhausted: HTTP 503")
    assert len(transport.requests) == runner.policy.max_attempts


def test_a_connection_failure_counts_as_transient(
    runner_for: Callable[[Replies], tuple[JobRunner, MockTransport]],
) -> None:
    def unreachable(request: MockRequest) -> Reply:
        raise ConnectionFailed("connection failed: refused")

    runner, transport = runner_for(unreachable)
    job_id, kwargs = job(retries=1)
    later = run(runner, job_id, kwargs)
    assert isinstance(later, RetryLater) and later.kwargs["retries"] == 2
    assert len(transport.requests) == 3
    assert [a.http_status for a in runner.state.attempts(job_id)] == [None] * 3


@pytest.mark.parametrize(
    ("extra", "args", "named"),
    [
        ({"colour": "red"}, (), "colour"),
        ({"retries": -1}, (), "retries"),
        ({"handbacks": "two"}, (), "handbacks"),
        ({}, ("positional",), "positional"),
    ],
)
def test_rejected(
    runner_for: Callable[[Replies], tuple[JobRunner, MockTransport]],
    extra: dict[str, Any],
    args: tuple[Any, ...],
    named: str,
) -> None:
    runner, transport = runner_for(replies(SUCCESS))
    job_id, kwargs = job(**extra)
    outcome = runner.run(Delivery(job_id=job_id, args=args, kwargs=kwargs))
    result = published(runner, job_id, outcome)
    assert result["outcome"] == "rejected" and named in result["message"]
    assert result["target"]["stream"] == kwargs["stream"]
    assert transport.requests == []


def test_expired_before_it_was_sent(
    runner_for: Callable[[Replies], tuple[JobRunner, MockTransport]],
) -> None:
    runner, transport = runner_for(replies(SUCCESS))
    job_id, kwargs = job(expires_at=time.time() - 1)
    result = published(runner, job_id, run(runner, job_id, kwargs))
    assert (result["outcome"], result["attempts"]) == ("expired", [])
    assert transport.requests == []


def test_expired_when_the_expiry_leaves_no_room_for_a_retry(
    runner_for: Callable[[Replies], tuple[JobRunner, MockTransport]],
) -> None:
    # The API asks for 5 s, past the expiry: the delivery gives up after one attempt, and
    # retries remain but the expiry leaves no room for another delivery.
    runner, transport = runner_for(replies(MockReply(429, b"", {"Retry-After": "5"})))
    job_id, kwargs = job(expires_at=time.time() + 1.9)
    result = published(runner, job_id, run(runner, job_id, kwargs))
    assert result["outcome"] == "expired"
    assert result["message"].startswith("the job expired before it could be retried")
    assert [a["http_status"] for a in result["attempts"]] == [429]
    assert len(transport.requests) == 1


def test_cancelled_batch_sends_nothing(
    runner_for: Callable[[Replies], tuple[JobRunner, MockTransport]],
) -> None:
    runner, transport = runner_for(replies(SUCCESS))
    batch_id = f"cancel-{uuid.uuid4().hex[:8]}"
    runner.state.redis.hset(batch_key(batch_id), "cancelled", "1")
    runner.state.redis.expire(batch_key(batch_id), 60)
    job_id, kwargs = job(batch_id=batch_id)
    result = published(runner, job_id, run(runner, job_id, kwargs))
    assert result["outcome"] == "cancelled" and result["batch_id"] == batch_id
    assert transport.requests == []


def test_throttled_hand_back_keeps_its_slot_and_uses_no_retry(
    runner_for: Callable[[Replies], tuple[JobRunner, MockTransport]],
) -> None:
    """A batch rate of one close per 2 s: its second job would wait longer than the hold, so
    it goes back to the broker with its send time reserved, its retries untouched."""
    runner, transport = runner_for(replies(SUCCESS))
    batch_id = f"slow-{uuid.uuid4().hex[:8]}"
    runner.state.redis.hset(batch_key(batch_id), "rate", "0.5")
    runner.state.redis.expire(batch_key(batch_id), 60)
    first_id, first = job(batch_id=batch_id)
    assert isinstance(run(runner, first_id, first), JobResult)
    # Even with every retry used: a hand-back for the rate limit is not a failure.
    job_id, kwargs = job(batch_id=batch_id, retries=runner.policy.celery_max_retries)
    later = run(runner, job_id, kwargs)
    assert isinstance(later, RetryLater), later
    assert later.kwargs == {**kwargs, "lane": "urgent", "handbacks": 1}
    assert 0 < later.countdown < 2
    assert runner.state.redis.exists(f"streamctl:limit:slot:{job_id}")
    assert len(transport.requests) == 1  # the first job's only
    assert runner.state.final_result(job_id) is None


def test_already_final_is_neither_sent_nor_published_again(
    runner_for: Callable[[Replies], tuple[JobRunner, MockTransport]],
) -> None:
    runner, transport = runner_for(replies(SUCCESS))
    job_id, kwargs = job()
    first = published(runner, job_id, run(runner, job_id, kwargs))
    again = run(runner, job_id, kwargs)
    assert isinstance(again, AlreadyFinal) and again.result == first
    assert len(transport.requests) == 1


def test_a_bug_still_ends_the_job_with_one_result(
    runner_for: Callable[[Replies], tuple[JobRunner, MockTransport]],
) -> None:
    def broken(request: MockRequest) -> Reply:
        raise RuntimeError("a bug in the transport")

    runner, transport = runner_for(replies(UNAVAILABLE))
    job_id, kwargs = job()
    assert isinstance(run(runner, job_id, kwargs), RetryLater)  # its failed attempts are kept
    transport.handler = broken
    result = published(runner, job_id, run(runner, job_id, {**kwargs, "retries": 1}))
    assert (result["outcome"], result["message"]) == ("error", "internal error: RuntimeError")
    assert [a["http_status"] for a in result["attempts"]] == [503] * 3


# --- within a delivery ---------------------------------------------------------------------


def test_a_refused_timestamp_is_resigned_once_with_a_warning(
    runner_for: Callable[[Replies], tuple[JobRunner, MockTransport]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner, transport = runner_for(replies(refusal("0002"), SUCCESS))
    job_id, kwargs = job()
    with caplog.at_level(logging.WARNING, logger="streamctl.client"):
        result = published(runner, job_id, run(runner, job_id, kwargs))
    assert [a["http_status"] for a in result["attempts"]] == [200, 200]
    assert result["outcome"] == "success"
    assert sum("clock" in record.getMessage() for record in caplog.records) == 1
    first, second = (request.json()["timestamp"] for request in transport.requests)
    assert second > first


def test_a_second_refused_timestamp_is_final(
    runner_for: Callable[[Replies], tuple[JobRunner, MockTransport]],
) -> None:
    runner, transport = runner_for(replies(refusal("0002")))
    job_id, kwargs = job()
    result = published(runner, job_id, run(runner, job_id, kwargs))
    assert (result["outcome"], result["api_code"]) == ("failure", "0002")
    assert len(transport.requests) == 2  # re-signed once, not retried further


class Recorder(AttemptHook):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_attempt_start(self, start: AttemptStart) -> None:
        self.events.append(f"start {start.number}")

    def on_attempt_end(self, end: AttemptEnd) -> None:
        self.events.append(f"end {end.number} {end.attempt.http_status}")

    def on_retry(self, retry: RetryScheduled) -> None:
        self.events.append(f"retry after {retry.number}: {type(retry.caused_by).__name__}")


def test_hooks_run_around_every_attempt(
    runner_for: Callable[[Replies], tuple[JobRunner, MockTransport]],
) -> None:
    runner, _transport = runner_for(replies(UNAVAILABLE, SUCCESS))
    recorder = Recorder()
    runner.client._hooks = (*runner.client._hooks, recorder)
    job_id, kwargs = job()
    published(runner, job_id, run(runner, job_id, kwargs))
    assert recorder.events == [
        "start 1",
        "end 1 503",
        "retry after 1: ServerError",
        "start 2",
        "end 2 200",
    ]
