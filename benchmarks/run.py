"""Does the queue's cost vanish behind the API's latency? Run by hand, not in the tests.

For each API delay (default 0 ms and 300 ms) and each number of calls in flight N (default 200
and 1,000), against the same fast stand-in (benchmarks/standin.py, its own process):

- the anchor: a hand-written asyncio sender (benchmarks/asyncio_sender.py, its own process),
  N keep-alive connections signing and POSTing closes, no queue;
- streamctl: a batch enqueued through Redis to one ``streamctl worker -c N`` with its defaults
  (its processes as ``STREAMCTL_WORKER_PROCESSES=auto`` chooses: config.processes), or
  ``--processes P -c N``, every result published;
- with ``--thread-pool``, also what requests itself allows here: the worker's own HTTP path
  (one session per thread) in as many processes and threads as the worker, no queue.

Prints per (delay, N): anchor and streamctl rates and their ratio, the worker's CPU per job
(all its processes, from the batch's enqueue to its last result) beside the anchor's CPU per
request, the worker's peak memory (PSS summed over its processes), p50/p99 from enqueue to
result; then all of it as one Markdown table.

    python -m benchmarks.run                               # 20,000 jobs; 0, 300 ms; 200, 1,000
    python -m benchmarks.run --jobs 2000 --in-flight 200 --delays 0
    python -m benchmarks.run --processes 3 --in-flight 999 --delays 0.3
    python -m benchmarks.run --in-flight 1000 --worker-args '--prefetch-multiplier 2'
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.asyncio_sender import API_KEY, CDN, SECRET, signed_close
from benchmarks.procstats import MemorySampler, cpu_used, tree_cpu_seconds
from config.processes import AUTO, process_count, thread_shares
from worker.api.transport import SessionPool, send
from worker.broker.messages import split
from worker.dev.embedded_redis import EmbeddedRedis, free_port
from worker.model.targets import CloseJob


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


def _pool_process(
    url: str, jobs: list[CloseJob], threads: int, ready: Any, start: Any, done: Any
) -> None:
    """One process of ``requests_pool``: says it is ready, waits for the start, sends, reports
    when its last reply came."""
    sessions = SessionPool()

    def send_one(job: CloseJob) -> None:
        reply = send(sessions, url, signed_close(job), timeout=(3, 10))
        if reply.status_code != 200:
            raise RuntimeError(f"the stand-in answered HTTP {reply.status_code}")

    ready.put(True)
    start.wait()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(send_one, jobs))
    done.put(time.perf_counter())


def requests_pool(url: str, jobs: list[CloseJob], in_flight: int, processes: int) -> float:
    """What requests itself allows: the worker's own HTTP path (worker.api.transport: one
    session per thread, the adapter's send), in as many processes and threads as the worker
    runs, signing each close, no queue, no Redis. Returns requests per second.

    The processes are spawned, not forked: by then this process runs the result reader's
    threads, and a child forked while one of them held a lock waited for it forever."""
    context = multiprocessing.get_context("spawn")
    ready, start, done = context.Queue(), context.Event(), context.Queue()
    shares = thread_shares(in_flight, processes)
    pieces = split(jobs, thread_shares(len(jobs), processes))
    children = [
        context.Process(target=_pool_process, args=(url, list(piece), share, ready, start, done))
        for piece, share in zip(pieces, shares, strict=True)
    ]
    for child in children:
        child.start()
    for _ in children:
        ready.get(timeout=60)
    began = time.perf_counter()
    start.set()
    ended = max(done.get(timeout=900) for _ in children)
    for child in children:
        child.join(timeout=30)
        if child.exitcode != 0:
            raise RuntimeError(f"a requests pool process exited with {child.exitcode}")
    return len(jobs) / (ended - began)


def asyncio_anchor(url: str, count: int, in_flight: int, prefix: str) -> dict[str, Any]:
    """The anchor, in its own process; returns what it printed (rate, CPU, peak RSS)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.asyncio_sender",
            *("--url", url, "--jobs", str(count), "--in-flight", str(in_flight)),
            *("--prefix", prefix),
        ],
        capture_output=True,
        check=True,
        timeout=900,
    )
    figures: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return figures


def through_streamctl(
    url: str,
    jobs: list[CloseJob],
    in_flight: int,
    processes: int | None,
    redis_url: str,
    separate: bool = False,
    worker_args: tuple[str, ...] = (),
    log_level: str | None = None,
) -> dict[str, Any]:
    """One batch through the queue; returns its figures."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "SCALEENGINE_API_URL": url,
        "SCALEENGINE_CDN": str(CDN),
        "SCALEENGINE_API_KEY": API_KEY,
        "SCALEENGINE_API_SECRET": SECRET,
    }
    env.pop("CELERY_BROKER_URL", None)
    env.pop("STREAMCTL_RATE_LIMIT", None)
    env.pop("STREAMCTL_LOG_LEVEL", None)
    if log_level is not None:  # else the worker's default, INFO: a line a job, as deployed
        env["STREAMCTL_LOG_LEVEL"] = log_level
    os.environ.update({k: env[k] for k in ("REDIS_URL", "SCALEENGINE_API_URL")})
    count = process_count(in_flight, AUTO if processes is None else processes)
    # One ``streamctl worker -c N`` (its processes forked, sharing their imports), or P commands.
    if separate:
        commands = [
            ["-c", str(share), "--processes", "1", "-n", f"bench{index}@%h"]
            for index, share in enumerate(thread_shares(in_flight, count))
        ]
    else:
        chosen = [] if processes is None else ["--processes", str(processes)]
        commands = [["-c", str(in_flight), *chosen, "-n", "bench@%h"]]
    procs = []
    for index, options in enumerate(commands):
        log = Path(f"/tmp/streamctl-bench-worker-{index}.log")
        procs.append(
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "worker.cli", "worker"),
                    *options,
                    *worker_args,
                ],
                env=env,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
            )
        )
    try:
        from worker.broker.app import app
        from worker.produce.batch import BatchSender, wait_for_batch

        deadline = time.monotonic() + 60
        while len(app.control.ping(timeout=0.5)) < count:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("workers did not start; see /tmp/streamctl-bench-worker-*.log")

        roots = [p.pid for p in procs]
        sampler = MemorySampler(roots)
        sampler.start()
        sender = BatchSender()
        cpu_before = tree_cpu_seconds(roots)
        t0 = time.perf_counter()
        started = sender.start(jobs)
        enqueue_seconds = time.perf_counter() - t0
        latencies: list[float] = []

        def on_result(result: dict[str, Any]) -> None:
            end = datetime.fromisoformat(result["finished_at"]).timestamp()
            begin = datetime.fromisoformat(result["enqueued_at"]).timestamp()
            latencies.append(end - begin)

        summary = wait_for_batch(started, timeout=900, on_result=on_result, sender=sender)
        total = time.perf_counter() - t0
        worker_cpu = cpu_used(cpu_before, tree_cpu_seconds(roots))
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
            "cpu_seconds": worker_cpu,
            "peak_rss_mb": max(sampler.peak_rss.values(), default=float("nan")),
            "peak_pss_mb": sampler.peak_pss,
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def comma_list(convert: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            return [convert(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list: {text!r}") from None

    return parse


def report(delay: float, in_flight: int, jobs: int, row: dict[str, Any]) -> str:
    anchor, m = row["anchor"], row["streamctl"]
    lines = [
        f"\ndelay {delay * 1000:.0f} ms, {in_flight} in flight, {jobs} jobs",
        f"  asyncio sender (anchor) {anchor['rate']:8.0f} requests/s   "
        f"CPU {anchor['cpu_seconds'] * 1000 / anchor['requests']:.3f} ms/request   "
        f"peak RSS {anchor['peak_rss_mb']:.0f} MB",
        f"  streamctl               {m['throughput']:8.0f} jobs/s       "
        f"CPU {m['cpu_seconds'] * 1000 / jobs:.3f} ms/job (worker, all processes)",
        f"  ratio streamctl/anchor  {m['throughput'] / anchor['rate']:.2f}",
    ]
    if row.get("pool") is not None:
        lines.append(
            f"  requests pool, no queue {row['pool']:8.0f} requests/s   "
            f"streamctl/pool {m['throughput'] / row['pool']:.2f}"
        )
    lines += [
        f"  CPU per 10,000          worker {m['cpu_seconds'] * 10_000 / jobs:.1f} s, "
        f"anchor {anchor['cpu_seconds'] * 10_000 / anchor['requests']:.1f} s",
        f"  enqueue                 {jobs} jobs in {m['enqueue_seconds']:.2f} s "
        f"({m['enqueue_rate']:.0f}/s)",
        f"  enqueue -> result       p50 {m['p50']:.2f} s   p99 {m['p99']:.2f} s",
        f"  worker memory           {m['peak_pss_mb']:.0f} MB at peak, all processes (PSS); "
        f"largest process {m['peak_rss_mb']:.0f} MB (VmHWM)",
        f"  outcomes                {m['outcomes']}; anchor failures {anchor['failed']}",
        f"  stand-in                {row['stats']['requests']} requests so far, "
        f"{row['stats']['replays']} replayed",
    ]
    return "\n".join(lines)


def markdown(rows: list[tuple[float, int, int, dict[str, Any]]]) -> str:
    pooled = any(row.get("pool") is not None for *_, row in rows)
    lines = [
        "| API delay | in flight | asyncio anchor | streamctl | ratio | worker CPU / job "
        "| anchor CPU / request | worker memory at peak (PSS) | anchor peak RSS "
        "| enqueue → result p50 / p99 |"
        + (" requests pool, no queue | streamctl / pool |" if pooled else ""),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        + (" --- | --- |" if pooled else ""),
    ]
    for delay, in_flight, jobs, row in rows:
        anchor, m = row["anchor"], row["streamctl"]
        line = (
            f"| {delay * 1000:.0f} ms | {in_flight:,} | {anchor['rate']:,.0f} req/s "
            f"| {m['throughput']:,.0f} jobs/s | {m['throughput'] / anchor['rate']:.2f} "
            f"| {m['cpu_seconds'] * 1000 / jobs:.2f} ms "
            f"| {anchor['cpu_seconds'] * 1000 / anchor['requests']:.2f} ms "
            f"| {m['peak_pss_mb']:.0f} MB | {anchor['peak_rss_mb']:.0f} MB "
            f"| {m['p50']:.2f} s / {m['p99']:.2f} s |"
        )
        if pooled:
            pool = row.get("pool")
            line += f" {pool:,.0f} req/s | {m['throughput'] / pool:.2f} |" if pool else " — | — |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per run (20,000)")
    parser.add_argument(
        "--in-flight",
        type=comma_list(int),
        default=[200, 1000],
        help="calls in flight, comma-separated (200,1000)",
    )
    parser.add_argument(
        "--delays",
        type=comma_list(float),
        default=[0.0, 0.3],
        help="API reply delays in seconds, comma-separated (0,0.3)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="worker processes P sharing the in-flight calls (default: the worker's own choice)",
    )
    parser.add_argument(
        "--separate",
        action="store_true",
        help="start each worker process as its own command instead of one --processes P",
    )
    parser.add_argument(
        "--worker-args",
        default="",
        help="more options for streamctl worker, one string (e.g. '--pool threads')",
    )
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the worker's STREAMCTL_LOG_LEVEL (default: its own default, INFO)",
    )
    parser.add_argument(
        "--thread-pool",
        action="store_true",
        help="also run the worker's HTTP path (requests) alone, in its processes and threads",
    )
    args = parser.parse_args()
    if args.jobs < 1 or (args.processes or 1) < 1 or min(args.in_flight, default=0) < 1:
        parser.error("--jobs, --processes and every --in-flight must be at least 1")

    print(
        f"machine: {os.cpu_count()} cores; {args.jobs} jobs a run; worker processes: "
        + (
            f"{args.processes}, sharing the calls in flight"
            if args.processes
            else ", ".join(
                f"{process_count(n, AUTO)} at {n} in flight (auto)" for n in args.in_flight
            )
        )
    )
    rows: list[tuple[float, int, int, dict[str, Any]]] = []
    with EmbeddedRedis() as redis_server:
        for delay in args.delays:
            standin, url = start_standin(delay)
            try:
                for in_flight in args.in_flight:
                    run = f"d{int(delay * 1000)}-n{in_flight}-{int(time.time())}"
                    row: dict[str, Any] = {
                        "anchor": asyncio_anchor(url, args.jobs, in_flight, f"anchor-{run}"),
                        "pool": (
                            requests_pool(
                                url,
                                targets(args.jobs, f"pool-{run}"),
                                in_flight,
                                process_count(in_flight, args.processes or AUTO),
                            )
                            if args.thread_pool
                            else None
                        ),
                    }
                    row["streamctl"] = through_streamctl(
                        url,
                        targets(args.jobs, f"streamctl-{run}"),
                        in_flight,
                        args.processes,
                        redis_server.url,
                        separate=args.separate,
                        worker_args=tuple(shlex.split(args.worker_args)),
                        log_level=args.log_level,
                    )
                    row["stats"] = standin_stats(url)
                    rows.append((delay, in_flight, args.jobs, row))
                    print(report(delay, in_flight, args.jobs, row), flush=True)
            finally:
                standin.terminate()
                standin.wait()
    print("\n" + markdown(rows))


if __name__ == "__main__":
    main()
