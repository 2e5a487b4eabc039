"""5,000 jobs, 30 % of them meeting a transient fault, some targets twice: no body sent twice.

On each broker; on RabbitMQ 1,000 jobs over 800 targets (the replay guard is the same Redis
script on both: the RabbitMQ case checks that its deliveries and countdowns change nothing).
It found that a worker's own publishes lost messages under load with publisher confirms on
(worker.consume.boot._publish_without_confirms).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import (
    BROKERS,
    broker,
    cluster,
    lost_and_doubled,
    outcomes,
    report,
    scaled,
    unique_target,
)
from worker.model.targets import CloseJob
from worker.produce.batch import BatchSender

pytestmark = pytest.mark.faults

#: Jobs, and the distinct targets among them (the other jobs close a target a second time).
SIZES = {"redis": scaled((5000, 4000), (2000, 1600)), "rabbitmq": (1000, 800)}
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


@pytest.mark.parametrize("kind", BROKERS)
def test_no_request_body_is_ever_sent_twice(kind: str, tmp_path: Path, sandbox: Any) -> None:
    jobs, distinct = SIZES[kind]
    rng = random.Random(5000)  # the same run every time
    targets = [unique_target("replay") for _ in range(distinct)]
    chosen = targets + rng.sample(targets, jobs - distinct)
    rng.shuffle(chosen)
    faulty = rng.sample(range(jobs), int(jobs * FAULTY))
    for index in faulty:
        fault, options = rng.choice(TRANSIENT)
        sandbox.inject(chosen[index], fault, **options)
    before = sandbox.stats()
    with broker(kind) as url, cluster(tmp_path, tuning=REPLAY_TUNING, broker_url=url) as fleet:
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
        f"replays-{kind}",
        broker=kind,
        jobs=jobs,
        distinct_targets=distinct,
        jobs_with_fault=len(faulty),
        requests=sum(len(records) for records in seen),
        lost=lost,
        duplicate_results=doubled,
        outcomes=dict(outcomes(results)),
        # Why a job did not succeed, if one did not (for the failure's diagnosis).
        not_succeeded=dict(
            Counter(
                found[0].get("message")
                for found in results.values()
                if found and found[0]["outcome"] != "success"
            )
        ),
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
    assert figures["outcomes"] == {"success": jobs}
    assert figures["requests"] == jobs + len(faulty)
