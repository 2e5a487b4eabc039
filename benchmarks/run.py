"""Does the queue's cost vanish behind the API's latency? Run by hand, not in the tests.

For each API delay (default 0 ms and 300 ms) and the same N targets, against the same fast
stand-in (benchmarks/standin.py, its own process):

(a) the limit: a bare thread pool of ``requests.Session``s sending signed requests, no queue;
(b) streamctl: a batch enqueued through Redis, worker processes, results published.

Both keep the same number of calls in flight. Prints throughput of each and (b)/(a), p50/p99
from enqueue to result, the enqueue rate and the workers' peak memory.

    python -m benchmarks.run                       # 10,000 jobs, 0 and 300 ms, 200 in flight,
                                                   # one worker of 3 processes x 66 threads
    python -m benchmarks.run --jobs 2000 --delays 0.3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from worker.api.signing import CLOSE_COMMAND, request_fields, signed_body
from worker.dev.embedded_redis import EmbeddedRedis, free_port
from worker.model.targets import CloseJob

API_KEY = "BENCHKEY0000000000000000000000AA"
SECRET = "bench-secret-not-a-real-one"
CDN = 1


def start_standin(delay: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.standin", "--port", str(port), "--delay", str(delay)],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/stable/"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=1).read()
            return process, url
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("stand-in did not start")


def standin_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url.replace("/stable/", "/stats"), timeout=5) as reply:
        return dict(json.loads(reply.read()))


def targets(count: int, prefix: str) -> list[CloseJob]:
    return [
        CloseJob.parse({"app": "bench", "inst": "live", "stream": f"{prefix}-{index:06d}"})
        for index in range(count)
    ]


def bare_pool(url: str, jobs: list[CloseJob], in_flight: int) -> float:
    """(a): sign and send each close from a thread pool; returns requests per second."""
    local = threading.local()

    def send(job: CloseJob) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        fields = request_fields(
            command=CLOSE_COMMAND,
            api_key=API_KEY,
            timestamp=int(time.time()),
            cdn=CDN,
            job=job,
            origin_url=None,
        )
        reply = session.post(url, data={"json": signed_body(fields, SECRET)}, timeout=(3, 10))
        reply.raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        list(pool.map(send, jobs))
    return len(jobs) / (time.perf_counter() - started)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (the forked worker processes)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree.extend(frontier)
    return tree


def pss_mb(pid: int) -> float:
    """Proportional set size: shared pages count once across the processes sharing them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class MemorySampler(threading.Thread):
    """Samples the workers' memory while the batch runs; keeps the peaks."""

    def __init__(self, roots: list[int]) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.peak_pss = 0.0
        self.peak_rss: dict[int, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.25):
            pids = [pid for root in self.roots for pid in process_tree(root)]
            self.peak_pss = max(self.peak_pss, sum(pss_mb(pid) for pid in pids))
            for pid in pids:
                with contextlib.suppress(OSError, ValueError):
                    self.peak_rss[pid] = peak_rss_mb(pid)


def through_streamctl(
    url: str,
    jobs: list[CloseJob],
    in_flight: int,
    workers: int,
    redis_url: str,
    separate: bool = False,
) -> dict[str, Any]:
    """(b): one batch through the queue; returns its figures."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "SCALEENGINE_API_URL": url,
        "SCALEENGINE_CDN": str(CDN),
        "SCALEENGINE_API_KEY": API_KEY,
        "SCALEENGINE_API_SECRET": SECRET,
        "STREAMCTL_LOG_LEVEL": "WARNING",
    }
    env.pop("CELERY_BROKER_URL", None)
    env.pop("STREAMCTL_RATE_LIMIT", None)
    os.environ.update({k: env[k] for k in ("REDIS_URL", "SCALEENGINE_API_URL")})
    per_worker = max(1, in_flight // workers)
    # One ``streamctl worker --processes N`` (forked, sharing their imports), or N commands.
    commands = (
        [["--processes", "1", "-n", f"bench{index}@%h"] for index in range(workers)]
        if separate
        else [["--processes", str(workers), "-n", "bench@%h"]]
    )
    procs = []
    for index, options in enumerate(commands):
        log = Path(f"/tmp/streamctl-bench-worker-{index}.log")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "worker", "-c", str(per_worker), *options],
                env=env,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
    try:
        from worker.broker.app import app
        from worker.produce.batch import BatchSender, wait_for_batch

        deadline = time.monotonic() + 60
        while len(app.control.ping(timeout=0.5)) < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("workers did not start; see /tmp/streamctl-bench-worker-*.log")

        sampler = MemorySampler([p.pid for p in procs])
        sampler.start()
        sender = BatchSender()
        t0 = time.perf_counter()
        started = sender.start(jobs)
        enqueue_seconds = time.perf_counter() - t0
        latencies: list[float] = []
        finished: list[float] = []

        def on_result(result: dict[str, Any]) -> None:
            end = datetime.fromisoformat(result["finished_at"]).timestamp()
            begin = datetime.fromisoformat(result["enqueued_at"]).timestamp()
            latencies.append(end - begin)
            finished.append(end)

        summary = wait_for_batch(started, timeout=600, on_result=on_result, sender=sender)
        total = time.perf_counter() - t0
        sampler.done.set()
        sampler.join()
        assert summary is not None, "the batch did not finish"
        latencies.sort()
        return {
            "throughput": len(jobs) / total,
            "enqueue_seconds": enqueue_seconds,
            "enqueue_rate": len(jobs) / enqueue_seconds,
            "p50": statistics.median(latencies),
            "p99": latencies[int(len(latencies) * 0.99) - 1],
            "outcomes": {k: v for k, v in summary["counts"].items() if v},
            "peak_rss_mb": max(sampler.peak_rss.values()),
            "peak_pss_mb": sampler.peak_pss,
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument(
        "--workers", type=int, default=3, help="worker processes sharing --in-flight"
    )
    parser.add_argument(
        "--separate",
        action="store_true",
        help="start each worker process as its own command instead of one --processes N",
    )
    args = parser.parse_args()

    per_worker = max(1, args.in_flight // args.workers)
    print(
        f"machine: {os.cpu_count()} cores; {args.jobs} jobs; calls in flight: (a) "
        f"{args.in_flight} threads, (b) {args.workers} processes x {per_worker} threads = "
        f"{args.workers * per_worker}"
    )
    with EmbeddedRedis() as redis_server:
        for delay in args.delays:
            standin, url = start_standin(delay)
            try:
                run = f"d{int(delay * 1000)}-{int(time.time())}"
                baseline = bare_pool(url, targets(args.jobs, f"a-{run}"), args.in_flight)
                measured = through_streamctl(
                    url,
                    targets(args.jobs, f"b-{run}"),
                    args.in_flight,
                    args.workers,
                    redis_server.url,
                    separate=args.separate,
                )
                stats = standin_stats(url)
            finally:
                standin.terminate()
                standin.wait()
            ratio = measured["throughput"] / baseline
            m = measured
            print(
                f"\ndelay {delay * 1000:.0f} ms\n"
                f"  (a) bare thread pool   {baseline:8.0f} requests/s\n"
                f"  (b) streamctl          {m['throughput']:8.0f} jobs/s"
                f"   ratio (b)/(a) {ratio:.2f}\n"
                f"  enqueue                {args.jobs} jobs in {m['enqueue_seconds']:.2f} s "
                f"({m['enqueue_rate']:.0f}/s)\n"
                f"  enqueue -> result      p50 {m['p50']:.2f} s   p99 {m['p99']:.2f} s\n"
                f"  worker memory          {m['peak_pss_mb']:.0f} MB at peak, all {args.workers} "
                f"processes (PSS); largest process {m['peak_rss_mb']:.0f} MB (VmHWM)\n"
                f"  outcomes               {m['outcomes']}\n"
                f"  stand-in               {stats['requests']} requests, "
                f"{stats['replays']} replayed"
            )


if __name__ == "__main__":
    main()
