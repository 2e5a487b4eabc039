"""5,000 jobs, 30 % of them meeting a transient fault, some targets twice: no body sent twice."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import cluster, lost_and_doubled, outcomes, report, unique_target
from worker.model.targets import CloseJob
from worker.produce.batch import BatchSender

pytestmark = pytest.mark.faults

JOBS = 5000
DISTINCT = 4000  # the other 1,000 jobs close a target a second time
FAULTY = 0.30
TRANSIENT = [
    ("http_error", {"status": 503}),
    ("http_error", {"status": 502}),
    ("reset", {}),
    ("not_json", {}),
    ("rate_limit", {"retry_after": 0}),
]
#: Quick in-task retries; the per-target timestamp still spaces a target's requests a second.
REPLAY_TUNING = {"STREAMCTL_BACKOFF_INITIAL": "0.05", "STREAMCTL_BACKOFF_MAX": "0.2"}


def test_no_request_body_is_ever_sent_twice(tmp_path: Path, sandbox: Any) -> None:
    rng = random.Random(5000)  # the same run every time
    targets = [unique_target("replay") for _ in range(DISTINCT)]
    chosen = targets + rng.sample(targets, JOBS - DISTINCT)
    rng.shuffle(chosen)
    faulty = rng.sample(range(JOBS), int(JOBS * FAULTY))
    for index in faulty:
        kind, options = rng.choice(TRANSIENT)
        sandbox.inject(chosen[index], kind, **options)
    before = sandbox.stats()
    with cluster(tmp_path, tuning=REPLAY_TUNING) as fleet:
        fleet.start_worker("a", concurrency=64)
        fleet.start_worker("b", concurrency=64)
        batch = BatchSender(fleet.settings, fleet.app).start([CloseJob.parse(t) for t in chosen])
        results = fleet.wait_for(batch.job_ids, timeout=180)
    after = sandbox.stats()

    lost, doubled = lost_and_doubled(results)
    seen = [sandbox.requests_for(target) for target in targets]
    bodies = Counter(record["body_sha256"] for records in seen for record in records)
    timestamps_unique = all(
        len({r["timestamp"] for r in records}) == len(records) for records in seen
    )
    figures = report(
        "replays",
        jobs=JOBS,
        distinct_targets=DISTINCT,
        jobs_with_fault=len(faulty),
        requests=sum(len(records) for records in seen),
        lost=lost,
        duplicate_results=doubled,
        outcomes=dict(outcomes(results)),
        replays=after["replays"] - before["replays"],
        bodies_sent_twice=sum(1 for count in bodies.values() if count > 1),
        bad_signatures=after["bad_signatures"] - before["bad_signatures"],
        timestamp_refusals=after["replies"].get("0002", 0) - before["replies"].get("0002", 0),
    )
    assert figures["replays"] == 0
    assert figures["bodies_sent_twice"] == 0
    assert timestamps_unique
    assert figures["bad_signatures"] == 0 and figures["timestamp_refusals"] == 0
    assert figures["lost"] == 0 and figures["duplicate_results"] == 0
    assert figures["outcomes"] == {"success": JOBS}
    assert figures["requests"] == JOBS + len(faulty)
