"""An API that answers slowly, rate-limits, sends HTML or resets: each job still ends right."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import cluster, lost_and_doubled, report, unique_target

pytestmark = pytest.mark.faults

#: A 0.5 s read timeout, so a 1 s reply is "too slow"; short in-task retries (3 s) and one
#: Celery retry. Invariants: 2 x 1 s countdown and 3 + 0.5 s stay under the 10 s timeout.
MISBEHAVING_TUNING = {
    "STREAMCTL_READ_TIMEOUT": "0.5",
    "STREAMCTL_CONNECT_TIMEOUT": "0.5",
    "STREAMCTL_MAX_ATTEMPTS": "4",
    "STREAMCTL_BACKOFF_INITIAL": "0.1",
    "STREAMCTL_BACKOFF_MAX": "0.5",
    "STREAMCTL_RETRY_DEADLINE": "3",
    "STREAMCTL_CELERY_RETRY_COUNTDOWN": "1",
    "STREAMCTL_CELERY_MAX_RETRIES": "1",
}
STORM = 20

Check = Callable[[list[str]], bool]


def _only(kind: str) -> Check:
    return lambda kinds: len(kinds) >= 2 and set(kinds) == {kind}


# Code 1000 ("busy") is left out: it slows the whole cluster down on purpose (worker.store.limiter).
# name: (faults to inject, expected outcome, check on the sandbox's reply kinds in order)
CASES: dict[str, tuple[list[dict[str, Any]], str, Check]] = {
    "slow-once": (
        [{"fault": "slow", "delay": 1.5}],
        "success",
        lambda kinds: kinds == ["slow", "success"],
    ),
    "slow-always": ([{"fault": "slow", "delay": 1.0, "times": 50}], "error", _only("slow")),
    "retry-after-beyond-deadline": (
        [{"fault": "rate_limit", "retry_after": 4}],
        "success",
        lambda kinds: kinds == ["rate_limit", "success"],
    ),
    "html-502-twice": (
        [{"fault": "http_error", "status": 502, "times": 2}],
        "success",
        lambda kinds: kinds == ["http_error", "http_error", "success"],
    ),
    "html-page-with-200": (
        [{"fault": "not_json"}],
        "success",
        lambda kinds: kinds == ["not_json", "success"],
    ),
    "html-404": (
        [{"fault": "http_error", "status": 404}],
        "failure",
        lambda k: k == ["http_error"],
    ),
    "reset-once": ([{"fault": "reset"}], "success", lambda kinds: kinds == ["reset", "success"]),
    "reset-always": ([{"fault": "reset", "times": 50}], "error", _only("reset")),
    "refused-0005": ([{"fault": "refuse", "code": "0005"}], "failure", lambda k: k == ["refuse"]),
    **{
        f"429-storm-{n}": (
            [{"fault": "rate_limit", "retry_after": 2, "times": 2}],
            "success",
            lambda kinds: kinds == ["rate_limit", "rate_limit", "success"],
        )
        for n in range(STORM)
    },
}
#: Retry-After a case's server sent: the next request of its target came no sooner.
WAITS = {"retry-after-beyond-deadline": 4.0, **{f"429-storm-{n}": 2.0 for n in range(STORM)}}


def test_misbehaving_api_each_job_ends_with_the_right_outcome(tmp_path: Path, sandbox: Any) -> None:
    targets = {name: unique_target(name) for name in CASES}
    for name, (faults, _outcome, _check) in CASES.items():
        for fault in faults:
            sandbox.inject(targets[name], **fault)
    with cluster(tmp_path, tuning=MISBEHAVING_TUNING) as fleet:
        worker = fleet.start_worker("worker", concurrency=32)
        jobs = {fleet.producer.close(**targets[name]): name for name in CASES}
        results = fleet.wait_for(jobs, timeout=90)
        alive_after = worker.alive()
        after = fleet.producer.close(**unique_target("after"))
        still_serving = fleet.wait_for([after], timeout=30)[after]

    wrong = {}
    for job_id, name in jobs.items():
        found = results[job_id]
        # In the order received (a slow reply is recorded when it is answered, after the retry).
        seen = sorted(sandbox.requests_for(targets[name]), key=lambda r: r["received_at"])
        kinds = [record["reply"] for record in seen]
        _faults, expected, check = CASES[name]
        if not found or found[0]["outcome"] != expected or not check(kinds):
            wrong[name] = (found[0]["outcome"] if found else "lost", kinds)
        if name in WAITS:
            gaps = [b["received_at"] - a["received_at"] for a, b in itertools.pairwise(seen)]
            assert min(gaps) >= WAITS[name] - 0.05, f"{name}: Retry-After not honoured {gaps}"
    lost, doubled = lost_and_doubled(results)
    figures = report(
        "api-misbehaving",
        jobs=len(jobs),
        lost=lost,
        duplicate_results=doubled,
        wrong_outcomes=len(wrong),
        outcomes=dict(Counter(found[0]["outcome"] for found in results.values() if found)),
        requests=sum(len(sandbox.requests_for(target)) for target in targets.values()),
        worker_alive=alive_after,
    )
    assert not wrong, wrong
    assert figures["lost"] == 0 and figures["duplicate_results"] == 0
    assert alive_after and still_serving and still_serving[0]["outcome"] == "success"
