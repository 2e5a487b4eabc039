"""The ``streamctl`` command."""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from typing import TYPE_CHECKING

import click

from worker.broker.links import PRELOADED_FOR_WORKERS
from worker.cli.beat import beat
from worker.cli.check import check
from worker.cli.errors import friendly_errors
from worker.cli.flower import flower
from worker.cli.reconnect import batch, reconnect

if TYPE_CHECKING:
    from celery import Celery

# Shared with the commands defined in their own modules (they cannot import this one).
_friendly_errors = friendly_errors


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Close ScaleEngine live streams through a Celery job queue."""


@main.command()
@click.option("--app", "app_name", help="Application name (with --inst and --stream).")
@click.option("--inst", help="Application instance.")
@click.option("--stream", help="Stream name.")
@click.option("--stream-id", type=int, help="Close by stream id instead.")
@click.option("--origin-url", help="Origin to call (default: SCALEENGINE_ORIGIN_URL, if set).")
@click.option(
    "--expires", type=float, help="Seconds until the job expires (default: STREAMCTL_JOB_EXPIRY)."
)
@click.option("--job-id", help="Your own job id: an idempotency key.")
@click.option("--wait", is_flag=True, help="Wait for the result, print it, exit 0 only on success.")
@click.option("--timeout", type=float, help="With --wait: seconds to wait (default: until expiry).")
@_friendly_errors
def close(
    app_name: str | None,
    inst: str | None,
    stream: str | None,
    stream_id: int | None,
    origin_url: str | None,
    expires: float | None,
    job_id: str | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Enqueue one close and print its job id."""
    from worker.produce.producer import Producer
    from worker.store.results_log import wait_for_result

    producer = Producer()
    job_id = producer.close(
        app=app_name,
        inst=inst,
        stream=stream,
        stream_id=stream_id,
        origin_url=origin_url,
        expires=expires,
        job_id=job_id,
    )
    click.echo(job_id)
    if not wait:
        return
    settings = producer.settings
    limit = timeout if timeout is not None else (expires or settings.job_expiry) + 30
    result = wait_for_result(
        producer.state.redis,
        settings.results_channel,
        job_id,
        timeout=limit,
        state_lookup=producer.state.final_result,
    )
    if result is None:
        click.echo(f"streamctl: no result for job {job_id} within {limit:g} s", err=True)
        sys.exit(3)
    click.echo(json.dumps(result, ensure_ascii=False))
    sys.exit(0 if result.get("outcome") == "success" else 1)


def run_celery_worker(app: Celery, argv: list[str]) -> int:
    """Run Celery's worker command; return its exit status (0 after a warm shutdown, 1 after
    an "Unrecoverable error").

    ``app.worker_main`` and ``app.start`` drop that status: they call Celery's click command
    with ``standalone_mode=False``, which returns the worker's ``ctx.exit(code)`` instead of
    exiting, and they return nothing. This is ``app.start`` keeping what it drops.
    """
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = app  # the --app option, as app.start sets it
    try:
        code = celery_command.main(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    finally:
        celery_command.params[0].default = None
    return code if isinstance(code, int) else 0


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--concurrency", "-c", type=int, help="Threads (default: STREAMCTL_WORKER_CONCURRENCY)."
)
@click.option(
    "--processes",
    type=int,
    help="Worker processes, each with --concurrency threads (default: STREAMCTL_WORKER_PROCESSES).",
)
@click.option("--loglevel", "-l", default=None, help="Log level (default: STREAMCTL_LOG_LEVEL).")
@click.pass_context
@_friendly_errors
def worker(
    ctx: click.Context, concurrency: int | None, processes: int | None, loglevel: str | None
) -> None:
    """Start a worker (thread pool: closes are I/O bound). Extra options go to Celery."""
    from config.settings import install_settings, load_settings
    from worker.consume.processes import with_nodename
    from worker.telemetry.logs import configure_logging

    # One source for these counts: the Redis pool is sized from the threads, for one. The
    # options override the environment in the settings this process installs.
    overrides = {"worker_concurrency": concurrency, "worker_processes": processes}
    settings = install_settings(
        load_settings(**{name: value for name, value in overrides.items() if value is not None})
    )
    settings.require_credentials()
    configure_logging(settings)
    from worker.broker.app import app

    argv = [
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(settings.worker_concurrency),
        "--loglevel",
        loglevel or settings.log_level,
        "--queues",
        app.conf.task_default_queue,
        "--without-mingle",
        "--without-gossip",
        *ctx.args,
    ]
    # A node name of its own unless -n gives one: plain workers on one host never collide.
    argv = with_nodename(argv)
    if settings.worker_processes == 1:
        sys.exit(run_celery_worker(app, argv))

    from worker.consume.boot import refuse_evicting_redis
    from worker.consume.processes import child_argv, supervise

    # Imported before forking, so that every process shares them (see worker.consume.processes): the
    # tasks, and what Celery's worker command imports only once it runs.
    app.loader.import_default_modules()
    # Checked once, here: a child that refused would only be restarted by the supervisor.
    refuse_evicting_redis()
    for module in PRELOADED_FOR_WORKERS:
        importlib.import_module(module)

    def run_child(index: int) -> int:
        if settings.metrics_port is not None:
            port = settings.metrics_port + index - 1
            install_settings(settings.model_copy(update={"metrics_port": port}))
        return run_celery_worker(app, child_argv(argv, index))

    sys.exit(supervise(settings.worker_processes, run_child))


@main.command()
@click.option("--since", help="Replay from the results log first: 10m, 2h, all, or a stream id.")
@_friendly_errors
def watch(since: str | None) -> None:
    """Print results as JSON lines as they arrive."""
    from config.settings import get_settings
    from worker.store.redis import redis_client
    from worker.store.results_log import follow

    settings = get_settings()
    client = redis_client(settings)
    with contextlib.suppress(KeyboardInterrupt):
        for _entry_id, result in follow(client, settings.results_log, since=since):
            click.echo(json.dumps(result, ensure_ascii=False))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to bind.")
@click.option("--port", default=8089, show_default=True, type=int)
@_friendly_errors
def sandbox(host: str, port: int) -> None:
    """Serve a local ScaleEngine-compatible API (for tests and demos)."""
    from config.settings import get_settings
    from worker.dev.sandbox import Sandbox

    cdn, api_key, secret = get_settings().require_credentials()
    server = Sandbox(secret=secret, api_key=api_key, cdn=cdn, host=host, port=port)
    click.echo(f"sandbox listening on {server.url}  (SCALEENGINE_API_URL={server.url})")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


@main.command()
@click.option("--jobs", default=40, show_default=True, help="Closes to enqueue.")
@click.option("--concurrency", default=8, show_default=True, help="Worker threads.")
@_friendly_errors
def demo(jobs: int, concurrency: int) -> None:
    """Run everything locally: embedded Redis, sandbox with faults, a worker; enqueue closes."""
    from worker.dev.demo import run_demo

    sys.exit(run_demo(jobs=jobs, concurrency=concurrency))


main.add_command(flower)
main.add_command(check)
main.add_command(reconnect)
main.add_command(batch)
main.add_command(beat)

if __name__ == "__main__":
    main()
