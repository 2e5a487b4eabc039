"""Do urgent closes get through while a big batch drains at the rate limit? Run by hand.

Issue #12's scenario: a 10,000-target reconnect at ``STREAMCTL_RATE_LIMIT=200/s`` through two
workers (default settings otherwise) against the stand-in (benchmarks/standin.py) answering in
50 ms; 20 urgent closes sent one every 2 s while it drains. Prints the urgent closes' p95 and
worst time from enqueue to final result, the batch's duration with and without them, and the
busiest second the stand-in saw (at most the rate plus ``STREAMCTL_RATE_BURST``).

    python -m benchmarks.lanes
    python -m benchmarks.lanes --jobs 4000 --urgent 10 --rate 150
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.run import API_KEY, CDN, SECRET, standin_stats, start_standin, targets
from worker.dev.embedded_redis import EmbeddedRedis


def start_workers(count: int, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    procs = []
    for index in range(count):
        log = Path(f"/tmp/streamctl-lanes-worker-{index}.log")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "worker", "-n", f"lanes{index}@%h"],
                env=env,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
    return procs


def busiest_seconds(url: str, since: float, until: float) -> list[tuple[float, int]]:
    """The three busiest wall-clock seconds the stand-in saw in this window, busiest first:
    (seconds from the window's start, requests)."""
    per_second = standin_stats(url)["per_second"]
    window = [
        (int(second) - since, n)
        for second, n in per_second.items()
        if int(since) <= int(second) <= int(until)
    ]
    return [(round(at, 1), n) for at, n in sorted(window, key=lambda s: -s[1])[:3]]


def run_batch(
    url: str, jobs: int, prefix: str, *, urgent: int, every: float, first_after: float
) -> dict[str, Any]:
    """One batch; with ``urgent`` > 0, that many single closes sent while it drains."""
    from worker.produce.batch import BatchSender, wait_for_batch
    from worker.produce.producer import Producer

    sender = BatchSender()
    producer = Producer()
    started_at = time.monotonic()
    wall_start = time.time()
    started = sender.start(targets(jobs, prefix))
    sent: dict[str, float] = {}
    next_at = started_at + first_after

    def on_result(_result: dict[str, Any]) -> None:
        nonlocal next_at
        # Sent from the results loop, which wakes several times a second while the batch runs.
        if len(sent) < urgent and time.monotonic() >= next_at:
            index = len(sent)
            enqueued = time.time()
            job_id = producer.close(app="bench", inst="live", stream=f"{prefix}-urgent-{index}")
            sent[job_id] = enqueued
            next_at += every

    summary = wait_for_batch(started, timeout=900, on_result=on_result, sender=sender)
    duration = time.monotonic() - started_at
    assert summary is not None, "the batch did not finish"
    latencies = []
    for job_id, enqueued in sent.items():
        deadline = time.monotonic() + 60
        result = producer.state.final_result(job_id)
        while result is None and time.monotonic() < deadline:
            time.sleep(0.05)
            result = producer.state.final_result(job_id)
        assert result is not None, f"urgent close {job_id} got no result"
        assert result["outcome"] == "success" and result["lane"] == "urgent", result
        finished = datetime.fromisoformat(result["finished_at"]).timestamp()
        latencies.append(finished - enqueued)
    latencies.sort()
    return {
        "duration_s": round(duration, 1),
        "busiest_seconds": busiest_seconds(url, wall_start, time.time()),
        "outcomes": {k: v for k, v in summary["counts"].items() if v},
        "urgent_sent": len(sent),
        "urgent_p95_s": round(latencies[max(0, int(len(latencies) * 0.95) - 1)], 3)
        if latencies
        else None,
        "urgent_worst_s": round(latencies[-1], 3) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--delay", type=float, default=0.05, help="The stand-in's reply time.")
    parser.add_argument("--urgent", type=int, default=20)
    parser.add_argument("--every", type=float, default=2.0)
    args = parser.parse_args()

    redis_server = EmbeddedRedis().start()
    standin, url = start_standin(args.delay)
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "SCALEENGINE_API_URL": url,
        "SCALEENGINE_CDN": str(CDN),
        "SCALEENGINE_API_KEY": API_KEY,
        "SCALEENGINE_API_SECRET": SECRET,
        "STREAMCTL_LOG_LEVEL": "WARNING",
        "STREAMCTL_RATE_LIMIT": f"{args.rate:g}/s",
    }
    env.pop("CELERY_BROKER_URL", None)
    os.environ.clear()
    os.environ.update(env)
    procs = start_workers(args.workers, env)
    try:
        from config.settings import get_settings
        from worker.broker.app import app

        deadline = time.monotonic() + 60
        while len(app.control.ping(timeout=0.5)) < args.workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("workers did not start; see /tmp/streamctl-lanes-worker-*.log")
        burst = get_settings().rate_burst
        alone = run_batch(url, args.jobs, "alone", urgent=0, every=args.every, first_after=0)
        time.sleep(2)
        mixed = run_batch(
            url, args.jobs, "mixed", urgent=args.urgent, every=args.every, first_after=3.0
        )
        stats = standin_stats(url)
        figures = {
            "jobs": args.jobs,
            "rate": args.rate,
            "burst": burst,
            "workers": args.workers,
            "standin_delay_s": args.delay,
            "batch_alone_s": alone["duration_s"],
            "batch_with_urgent_s": mixed["duration_s"],
            "batch_slowdown_pct": round(
                100 * (mixed["duration_s"] - alone["duration_s"]) / alone["duration_s"], 1
            ),
            "urgent_sent": mixed["urgent_sent"],
            "urgent_p95_s": mixed["urgent_p95_s"],
            "urgent_worst_s": mixed["urgent_worst_s"],
            "busiest_second_alone": alone["busiest_seconds"][0][1],
            "busiest_second_with_urgent": mixed["busiest_seconds"][0][1],
            "busiest_seconds_alone": alone["busiest_seconds"],
            "busiest_seconds_with_urgent": mixed["busiest_seconds"],
            "limit_plus_burst": args.rate + burst,
            "replays": stats["replays"],
            "outcomes_alone": alone["outcomes"],
            "outcomes_mixed": mixed["outcomes"],
        }
        print(json.dumps(figures, indent=2))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        standin.terminate()
        redis_server.cleanup()


if __name__ == "__main__":
    main()
