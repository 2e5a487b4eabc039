"""The ``streamctl`` command."""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from config.lanes import URGENT, Lane
from worker.broker.links import PRELOADED_FOR_WORKERS
from worker.cli.beat import beat
from worker.cli.check import check
from worker.cli.errors import EXIT_INTERRUPTED, PORT, emit, friendly_errors
from worker.cli.flower import flower
from worker.cli.reconnect import POSITIVE_SECONDS, batch, lane_option, reconnect
from worker.errors import StreamctlError

if TYPE_CHECKING:
    from celery import Celery


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamctl")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


class _Commands(click.Group):
    """Lists each command with its whole one-line summary (click cuts them at ~45 columns)."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", "-V", prog_name="streamctl")
def main() -> None:
    """Close ScaleEngine live streams through a Celery job queue."""


@main.command()
@click.option("--app", "app_name", help="Application name (with --inst and --stream).")
@click.option("--inst", help="Application instance.")
@click.option("--stream", help="Stream name.")
@click.option("--stream-id", type=int, help="Close by stream id instead.")
@click.option("--origin-url", help="Origin to call (default: SCALEENGINE_ORIGIN_URL, if set).")
@click.option(
    "--expires",
    type=POSITIVE_SECONDS,
    help="Seconds until the job expires (default: STREAMCTL_JOB_EXPIRY).",
)
@click.option("--job-id", help="Your own job id: an idempotency key.")
@click.option("--wait", is_flag=True, help="Wait for the result, print it, exit 0 only on success.")
@click.option(
    "--timeout", type=POSITIVE_SECONDS, help="With --wait: seconds to wait (default: until expiry)."
)
@lane_option(URGENT, "bulk: behind urgent work, at the pace of the batches.")
@friendly_errors
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
    lane: Lane,
) -> None:
    """Enqueue one close: print its job id, or with --wait its result (JSON)."""
    from worker.produce.producer import Producer
    from worker.store.results_log import wait_for_result

    if job_id is not None and not job_id.strip():
        raise click.BadParameter("must not be empty", param_hint="'--job-id'")
    # Stripped as the target-file reader strips its cells: ' x' and 'x' are one stream.
    app_name, inst, stream = (None if v is None else v.strip() for v in (app_name, inst, stream))
    producer = Producer()
    job_id = producer.close(
        app=app_name,
        inst=inst,
        stream=stream,
        stream_id=stream_id,
        origin_url=origin_url,
        expires=expires,
        job_id=job_id,
        lane=lane,
    )
    if not wait:
        emit(job_id)
        return
    # With --wait stdout is the result alone (it holds the job id): ``| jq .outcome`` works.
    settings = producer.settings
    limit = timeout if timeout is not None else (expires or settings.job_expiry) + 30
    try:
        click.echo(f"enqueued job {job_id}; waiting for its result", err=True)
        result = wait_for_result(
            producer.state.redis,
            settings.results_channel,
            job_id,
            timeout=limit,
            state_lookup=producer.state.final_result,
            on_quiet=_quiet_notice(f"job {job_id}", limit, lambda: producer.state.attempts(job_id)),
        )
    except KeyboardInterrupt:
        click.echo(
            f"\nstreamctl: stopped waiting; job {job_id} goes on and ends on its own "
            f"(its result: streamctl watch --since 1h | grep {job_id})",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    if result is None:
        click.echo(f"streamctl: no result for job {job_id} within {limit:g} s", err=True)
        sys.exit(3)
    emit(json.dumps(result, ensure_ascii=False))
    sys.exit(0 if result.get("outcome") == "success" else 1)


def _quiet_notice(
    what: str, limit: float, attempts: Callable[[], list[Any]]
) -> Callable[[float], None]:
    """A line on stderr while no result comes: a retry's wait or a missing worker shows."""

    def notice(waited: float) -> None:
        tried = attempts()
        if tried:
            last = tried[-1]
            how = last.error or f"HTTP {last.http_status}"
            state = (
                f"{len(tried)} request(s) so far, the last ended {how}; "
                "the worker tries again later (a Celery retry waits up to a minute)"
            )
        else:
            state = "no request sent yet: is a worker running? (streamctl worker)"
        click.echo(
            f"still waiting for {what} after {waited:.0f} s (up to {limit:g} s): {state}",
            err=True,
        )

    return notice


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
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    help="Calls in flight, all processes together (default: STREAMCTL_WORKER_CONCURRENCY).",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    help="Worker processes sharing --concurrency (default: STREAMCTL_WORKER_PROCESSES, auto: "
    "one per 250 calls in flight, at most one per CPU).",
)
@click.option("--loglevel", "-l", default=None, help="Log level (default: STREAMCTL_LOG_LEVEL).")
@click.pass_context
@friendly_errors
def worker(
    ctx: click.Context, concurrency: int | None, processes: int | None, loglevel: str | None
) -> None:
    """Start a worker (thread pool: closes are I/O bound). Extra options go to Celery."""
    from config.processes import process_count, thread_shares
    from config.settings import install_settings, load_settings
    from worker.consume.processes import with_nodename
    from worker.telemetry.logs import configure_logging

    if concurrency is not None and processes is not None and processes > concurrency:
        raise click.UsageError(
            f"--processes {processes} needs at least {processes} calls in flight (-c), "
            "one thread per process"
        )
    # One source for these counts: the Redis pool is sized from the threads, for one. The
    # options override the environment in the settings this process installs.
    overrides = {"worker_concurrency": concurrency, "worker_processes": processes}
    settings = install_settings(
        load_settings(**{name: value for name, value in overrides.items() if value is not None})
    )
    settings.require_credentials()
    configure_logging(settings)
    from config.lanes import CONSUMED_QUEUES
    from worker.broker.app import app

    # A node name of its own unless -n gives one: plain workers on one host never collide; the
    # processes of a group number it (child_argv).
    extra_args = with_nodename(ctx.args)

    def celery_argv(threads: int) -> list[str]:
        return [
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(threads),
            "--loglevel",
            loglevel or settings.log_level,
            "--queues",
            ",".join(CONSUMED_QUEUES),
            "--without-mingle",
            "--without-gossip",
            *extra_args,
        ]

    count = process_count(settings.worker_concurrency, settings.worker_processes)
    shares = thread_shares(settings.worker_concurrency, count)
    if count == 1:
        sys.exit(run_celery_worker(app, celery_argv(shares[0])))

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
        threads = shares[index - 1]
        update: dict[str, Any] = {"worker_concurrency": threads}
        if settings.metrics_port is not None:
            update["metrics_port"] = settings.metrics_port + index - 1
        install_settings(settings.model_copy(update=update))
        return run_celery_worker(app, child_argv(celery_argv(threads), index))

    sys.exit(supervise(count, run_child))


@main.command()
@click.option(
    "--since", help="Replay from the results log first: 30 (seconds), 10m, 2h, all, or an entry id."
)
@friendly_errors
def watch(since: str | None) -> None:
    """Print results as JSON lines as they arrive (Ctrl-C stops)."""
    from config.settings import get_settings
    from worker.store.redis import redis_client
    from worker.store.results_log import follow

    settings = get_settings()
    client = redis_client(settings)

    def notify(text: str) -> None:
        click.echo(f"streamctl watch: {text}", err=True)

    try:
        for _entry_id, result in follow(client, settings.results_log, since=since, notify=notify):
            if not emit(json.dumps(result, ensure_ascii=False)):
                return  # the reader went away (| head): done, not an error
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to bind.")
@click.option("--port", default=8089, show_default=True, type=PORT)
@friendly_errors
def sandbox(host: str, port: int) -> None:
    """Serve a local ScaleEngine-compatible API (for tests and demos)."""
    from config.settings import get_settings
    from config.urls import is_loopback_host
    from worker.dev.sandbox import Sandbox

    if not is_loopback_host(host):
        raise click.BadParameter(
            f"the sandbox serves loopback addresses only (127.0.0.1, ::1), not {host!r}",
            param_hint="'--host'",
        )
    cdn, api_key, secret = get_settings().require_credentials()
    try:
        server = Sandbox(secret=secret, api_key=api_key, cdn=cdn, host=host, port=port)
    except OSError as exc:
        raise StreamctlError(
            f"sandbox: cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(another sandbox running? pick another --port)"
        ) from None
    click.echo(f"sandbox listening on {server.url}  (SCALEENGINE_API_URL={server.url})")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


@main.command()
@click.option(
    "--jobs",
    default=40,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Closes to enqueue.",
)
@click.option(
    "--concurrency",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Worker threads.",
)
@friendly_errors
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
    main(prog_name="streamctl")
