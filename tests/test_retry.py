"""``RetryPolicy.run`` in-process: attempt numbers, re-signs and the deadline, with the first
attempt made before tenacity is set up (worker.api.retry)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from worker.api.retry import RetryPolicy
from worker.errors import ApiError, ApiRefused, ServerError, TimestampRejected


def policy(*, max_attempts: int = 3, deadline: float = 20.0, backoff: float = 0.001) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=max_attempts,
        deadline=deadline,
        backoff_initial=backoff,
        backoff_max=backoff,
        busy_backoff=backoff,
        celery_max_retries=3,
        celery_retry_countdown=1.0,
    )


def sender(
    *outcomes: BaseException | str, pause: float = 0.0
) -> tuple[Callable[[], str], list[int]]:
    """A send giving ``outcomes`` in order (raising the exceptions), counting its calls."""
    calls: list[int] = []

    def send() -> str:
        calls.append(1)
        time.sleep(pause)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return send, calls


def test_a_first_success_is_one_call() -> None:
    send, calls = sender("ok")
    assert policy().run(send, deadline=20) == "ok"
    assert len(calls) == 1


def test_failures_are_numbered_from_the_first_attempt() -> None:
    retries: list[tuple[int, type[ApiError]]] = []
    send, calls = sender(
        ServerError("503", http_status=503), ServerError("502", http_status=502), "ok"
    )
    result = policy().run(send, deadline=20, on_retry=lambda n, _w, e: retries.append((n, type(e))))
    assert (result, len(calls)) == ("ok", 3)
    assert retries == [(1, ServerError), (2, ServerError)]


def test_the_attempts_run_out_and_a_resign_uses_none() -> None:
    rejected = TimestampRejected("0002", http_status=200, api_code="0002")
    send, calls = sender(rejected, *[ServerError("503", http_status=503)] * 3)
    with pytest.raises(ServerError):
        policy(max_attempts=2).run(send, deadline=20)
    assert len(calls) == 3  # the re-sign, then two attempts


def test_a_refusal_is_raised_as_it_was_without_a_retry() -> None:
    refusal = ApiRefused("no such stream", http_status=200, api_code="0001")
    send, calls = sender(refusal)
    with pytest.raises(ApiRefused) as raised:
        policy().run(send, deadline=20)
    assert raised.value is refusal and len(calls) == 1


def test_the_first_attempts_time_counts_toward_the_deadline() -> None:
    # 0.3 s spent in the first attempt, then a wait of at least 0.05 s: past the 0.35 s
    # deadline, so no second attempt (one counted from after the first would be made).
    send, calls = sender(*[ServerError("503", http_status=503)] * 3, pause=0.3)
    with pytest.raises(ServerError):
        policy(backoff=0.1).run(send, deadline=0.35)
    assert len(calls) == 1
