"""The operator's experience (issue #14): what each command prints, where, and its exit status.

Every test runs the real command (a subprocess, or click's runner) and checks its output and
exit code. Tests that must find no worker use a Redis database no test worker listens on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from config.lanes import CONSUMED_QUEUES
from tests.private_redis import PrivateRedis
from worker.cli.main import main
from worker.dev.embedded_redis import free_port

pytestmark = pytest.mark.e2e

DOWN = "redis://127.0.0.1:1/0"


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "worker.cli", *args]


def streamctl(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        env={**os.environ, "COLUMNS": "80", **(env or {})},
    )


@pytest.fixture
def no_worker_env(redis_url: str) -> dict[str, str]:
    """The test Redis, in a database no worker consumes: jobs wait, as with no worker."""
    return {"REDIS_URL": re.sub(r"/\d*$", "", redis_url.rstrip("/")) + "/9"}


def wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float = 30) -> str:
    """Read the process's stderr until a line holds ``needle``; fails (never hangs) past
    ``timeout``. Returns what was read."""
    import select

    assert process.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([process.stderr], [], [], left)
        if not ready:
            break
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        seen += line
        if needle in line:
            return seen
    raise AssertionError(f"never printed {needle!r}; printed:\n{seen}")


def interrupt(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=20)
    return process.returncode, out, err


def targets_file(tmp_path: Path, count: int, header: str = "app,inst,stream") -> Path:
    tag = uuid.uuid4().hex[:6]
    path = tmp_path / "targets.csv"
    rows = [f"demo-origin,live,op-{tag}-{i}" for i in range(count)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


# --- item 7: stdout is for scripts ---------------------------------------------------------


def test_close_wait_pipes_into_jq_style_parsing(worker: Any, sandbox: Any) -> None:
    stream = f"op-{uuid.uuid4().hex[:8]}"
    done = streamctl(
        "close", "--app", "demo-origin", "--inst", "live", "--stream", stream, "--wait"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # exactly one document
    assert result["outcome"] == "success"
    assert f"enqueued job {result['job_id']}" in done.stderr


def test_reconnect_prints_the_summary_alone_on_stdout(
    tmp_path: Path, worker: Any, sandbox: Any
) -> None:
    done = streamctl("reconnect", str(targets_file(tmp_path, 3)))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["type"] == "batch" and summary["total"] == 3
    assert f"enqueued batch {summary['batch_id']}" in done.stderr


def test_watch_into_a_closed_pipe_is_not_an_error(redis_client: redis.Redis) -> None:
    channel = f"op-pipe-{uuid.uuid4().hex[:6]}:results"
    log = f"{channel}:log"
    redis_client.xadd(log, {"result": json.dumps({"type": "job", "n": 1})})
    watcher = subprocess.Popen(
        ["bash", "-c", f"{' '.join(command('watch', '--since', '5s'))} | head -n 1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "STREAMCTL_RESULTS_CHANNEL": channel},
    )
    time.sleep(3)  # head has read its line and gone; the next line meets a closed pipe
    redis_client.xadd(log, {"result": json.dumps({"type": "job", "n": 2})})
    redis_client.xadd(log, {"result": json.dumps({"type": "job", "n": 3})})
    out, err = watcher.communicate(timeout=20)
    assert json.loads(out)["n"] == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err


# --- item 3: Ctrl-C --------------------------------------------------------------------------


def test_ctrl_c_on_reconnect_says_the_batch_goes_on_and_exits_130(
    tmp_path: Path, no_worker_env: dict[str, str]
) -> None:
    process = subprocess.Popen(
        command("reconnect", str(targets_file(tmp_path, 2)), "--expires", "30"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **no_worker_env},
    )
    seen = wait_for_line(process, "following batch")
    batch_id = re.search(r"enqueued batch (\S+):", seen)[1]  # type: ignore[index]
    code, out, err = interrupt(process)
    assert code == 130, err
    assert "Aborted!" not in err
    assert "goes on" in err
    assert f"streamctl batch {batch_id} --wait" in err
    assert f"streamctl batch {batch_id} --cancel" in err
    assert out == ""


def test_ctrl_c_on_close_wait_exits_130(no_worker_env: dict[str, str]) -> None:
    process = subprocess.Popen(
        command("close", "--stream-id", "4711", "--wait", "--expires", "30"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **no_worker_env},
    )
    wait_for_line(process, "waiting for its result")
    code, _out, err = interrupt(process)
    assert code == 130, err
    assert "Aborted!" not in err and "goes on" in err


def test_ctrl_c_on_watch_exits_130() -> None:
    process = subprocess.Popen(
        command("watch"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(2.5)
    code, _out, err = interrupt(process)
    assert code == 130, err
    assert "Traceback" not in err


# --- item 6: messages, not tracebacks ----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("watch",),
        ("batch", "20260101-000000-abcdef"),
        ("reconnect", "-"),
        ("close", "--stream-id", "5"),
    ],
)
def test_redis_down_is_a_message_with_its_cause(args: tuple[str, ...]) -> None:
    done = streamctl(*args, env={"REDIS_URL": DOWN}, input="stream_id\n5\n")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "unreachable" in done.stderr and "Connection refused" in done.stderr
    assert "REDIS_URL" in done.stderr


def test_watch_follows_through_a_redis_restart(tmp_path: Path) -> None:
    port = free_port()
    server = PrivateRedis(tmp_path, port=port).start()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    watcher = subprocess.Popen(
        command("watch"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        time.sleep(2.5)
        server.stop()
        seen = wait_for_line(watcher, "lost the connection to Redis")
        server = PrivateRedis(tmp_path, port=port).start()
        seen += wait_for_line(watcher, "connected to Redis again")
        log = os.environ["STREAMCTL_RESULTS_CHANNEL"] + ":log"
        redis.Redis(port=port).xadd(log, {"result": json.dumps({"after": "restart"})})
        assert watcher.stdout is not None
        assert json.loads(watcher.stdout.readline()) == {"after": "restart"}
        assert "Traceback" not in seen
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
        server.stop()


def test_a_port_in_use_is_named(sandbox: Any) -> None:
    port = str(sandbox.port)
    done = streamctl("sandbox", "--port", port)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Address already in use" in done.stderr and "Traceback" not in done.stderr


def test_flower_on_a_port_in_use_with_the_space_form(sandbox: Any) -> None:
    # --port PORT (not --port=PORT) reaches Flower; its address defaults to loopback.
    done = streamctl(
        "flower", "--basic-auth=ops:secret-pw", "--port", str(sandbox.port), timeout=90
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "requires a value" not in done.stderr
    assert f"cannot listen on 127.0.0.1:{sandbox.port}" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "secret-pw" not in done.stderr


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("--host", "0.0.0.0"), "the sandbox serves loopback addresses only"),
        (("--port", "99999"), "99999 is not in the range 1<=x<=65535"),
    ],
)
def test_sandbox_options_are_checked(args: tuple[str, ...], complaint: str) -> None:
    done = streamctl("sandbox", *args)
    assert done.returncode == 2
    assert complaint in done.stderr and "Traceback" not in done.stderr


# --- item 5: the demo ---------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--jobs", "--concurrency"])
def test_demo_refuses_zero(option: str) -> None:
    done = streamctl("demo", option, "0", timeout=20)
    assert done.returncode == 2
    assert f"'{option}'" in done.stderr and "0 is not in the range" in done.stderr


# --- item 12: values as everywhere else -----------------------------------------------------


def test_watch_since_a_number_means_seconds(redis_client: redis.Redis) -> None:
    channel = f"op-since-{uuid.uuid4().hex[:6]}:results"
    log = f"{channel}:log"
    now_ms = int(time.time() * 1000)
    redis_client.xadd(log, {"result": json.dumps({"age": "2 minutes"})}, id=f"{now_ms - 120000}-0")
    redis_client.xadd(log, {"result": json.dumps({"age": "recent"})}, id=f"{now_ms - 1000}-0")
    watcher = subprocess.Popen(
        command("watch", "--since", "30"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "STREAMCTL_RESULTS_CHANNEL": channel},
    )
    try:
        assert watcher.stdout is not None
        assert json.loads(watcher.stdout.readline()) == {"age": "recent"}
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)


def test_close_strips_the_stream_as_the_csv_reader_does(worker: Any, sandbox: Any) -> None:
    stream = f"op-{uuid.uuid4().hex[:8]}"
    done = streamctl(
        "close", "--app", "demo-origin", "--inst", "live", "--stream", f" {stream}", "--wait"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["target"]["stream"] == stream


def test_an_empty_job_id_is_refused(redis_client: redis.Redis) -> None:
    before = {queue: redis_client.llen(queue) for queue in CONSUMED_QUEUES}
    done = streamctl("close", "--stream-id", "5", "--job-id", "")
    assert done.returncode == 2
    assert "'--job-id'" in done.stderr and "empty" in done.stderr
    assert {queue: redis_client.llen(queue) for queue in CONSUMED_QUEUES} == before


def test_csv_headers_are_matched_case_insensitively(tmp_path: Path) -> None:
    done = streamctl("reconnect", "--dry-run", str(targets_file(tmp_path, 2, "App,Inst,STREAM")))
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["app"] for line in done.stdout.splitlines()] == ["demo-origin"] * 2


# --- item 13: messages that show the value and name the option -------------------------------


@pytest.mark.parametrize(
    ("stream_id", "complaint"),
    [
        ('"abc"', "stream_id must be a positive integer, not 'abc'"),
        ("99999999999999999999", "is out of range"),
    ],
)
def test_a_bad_stream_id_shows_the_value(stream_id: str, complaint: str) -> None:
    done = streamctl("reconnect", "--dry-run", "-", input=f'{{"stream_id": {stream_id}}}\n')
    assert done.returncode == 2
    assert complaint in done.stderr, done.stderr


def test_a_non_utf8_csv_says_which_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("app,inst,stream\ndemo,live,ok\ndemo,live,caf\u00e9\n".encode("latin-1"))
    done = streamctl("reconnect", "--dry-run", str(path))
    assert done.returncode == 2
    assert "line 3" in done.stderr and "save the file as UTF-8" in done.stderr
    assert "codec" not in done.stderr


@pytest.mark.parametrize("option", ["-c", "--processes"])
def test_worker_counts_name_the_option_typed(option: str) -> None:
    done = streamctl("worker", option, "0", timeout=30)
    assert done.returncode == 2
    assert option in done.stderr and "STREAMCTL_WORKER" not in done.stderr


# --- item 11: following and mending batches ---------------------------------------------------


def test_batch_wait_follows_a_no_wait_batch_to_its_summary(
    tmp_path: Path, worker: Any, sandbox: Any
) -> None:
    started = streamctl("reconnect", "--no-wait", str(targets_file(tmp_path, 3)))
    assert started.returncode == 0, started.stderr
    batch_id = started.stdout.strip()
    followed = streamctl("batch", batch_id, "--wait", "--timeout", "60")
    assert followed.returncode == 0, followed.stderr
    summary = json.loads(followed.stdout)
    assert summary["batch_id"] == batch_id and summary["counts"]["success"] == 3


def test_batch_failed_prints_a_target_file_reconnect_reads(
    tmp_path: Path, worker: Any, sandbox: Any
) -> None:
    path = targets_file(tmp_path, 3)
    refused = path.read_text().splitlines()[1].split(",")
    sandbox.inject(
        dict(zip(("app", "inst", "stream"), refused, strict=True)), "refuse", times=1, code="0009"
    )
    first = streamctl("reconnect", str(path))
    assert first.returncode == 1, first.stderr
    batch_id = json.loads(first.stdout)["batch_id"]
    failed = streamctl("batch", batch_id, "--failed")
    assert failed.returncode == 0, failed.stderr
    assert [json.loads(line)["stream"] for line in failed.stdout.splitlines()] == [refused[2]]
    again = streamctl("reconnect", "--dry-run", "-", input=failed.stdout)
    assert again.returncode == 0 and json.loads(again.stdout)["stream"] == refused[2]
    cancel = streamctl("batch", batch_id, "--cancel")
    assert cancel.returncode == 1
    assert "had ended" in cancel.stderr


@pytest.mark.parametrize("option", ["--timeout", "--expires"])
@pytest.mark.parametrize("value", ["0", "-5"])
def test_durations_must_be_positive(option: str, value: str, tmp_path: Path) -> None:
    for args in (("close", "--stream-id", "5"), ("reconnect", str(targets_file(tmp_path, 1)))):
        done = streamctl(*args, option, value)
        assert done.returncode == 2, (args, done.stderr)
        assert f"'{option}'" in done.stderr and "x>0" in done.stderr


def test_a_rate_that_outlasts_the_expiry_is_warned_about(tmp_path: Path) -> None:
    path = targets_file(tmp_path, 20)
    done = streamctl("reconnect", "--dry-run", "--rate", "2/s", "--expires", "5", str(path))
    assert done.returncode == 0
    assert "warning" in done.stderr and "about 10 will end expired" in done.stderr


# --- item 8: version and help ------------------------------------------------------------------


def test_version_and_whole_summaries() -> None:
    version = CliRunner().invoke(main, ["--version"])
    assert version.exit_code == 0 and re.match(r"streamctl, version \d", version.stdout)
    shown = CliRunner().invoke(main, ["--help"], terminal_width=80)
    assert shown.exit_code == 0
    assert not [
        line for line in shown.stdout.splitlines() if line.endswith("...") and "[" not in line
    ]
    assert "enqueue closes." in shown.stdout
    assert all(len(line) <= 80 for line in shown.stdout.splitlines())


# --- item 10: feedback on long waits ------------------------------------------------------------

QUIET_SOON = (
    "import sys, worker.store.results_log as log, worker.cli.progress as rc; "
    "log.QUIET_FIRST = rc.QUIET_FIRST = 0.5; log.QUIET_EVERY = 0.5; rc.PLAIN_PROGRESS_EVERY = 1; "
    "from worker.cli.main import main; main(sys.argv[1:], prog_name='streamctl')"
)


@pytest.mark.parametrize("what", ["close", "reconnect"])
def test_waiting_with_no_worker_says_so(
    what: str, tmp_path: Path, no_worker_env: dict[str, str]
) -> None:
    args = (
        ["close", "--stream-id", "4712", "--wait"]
        if what == "close"
        else ["reconnect", str(targets_file(tmp_path, 2))]
    )
    done = subprocess.run(
        [sys.executable, "-c", QUIET_SOON, *args, "--timeout", "3", "--expires", "30"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **no_worker_env},
    )
    assert done.returncode == 3, done.stderr
    assert "is a worker running?" in done.stderr


def test_close_wait_says_a_retry_is_under_way(worker: Any, sandbox: Any) -> None:
    stream_id = 810_000 + uuid.uuid4().int % 10_000
    sandbox.inject({"stream_id": stream_id}, "http_error", times=3, status=503)
    done = subprocess.run(
        [sys.executable, "-c", QUIET_SOON, "close", "--stream-id", str(stream_id), "--wait"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] == "success"
    assert "request(s) so far, the last ended" in done.stderr, done.stderr


def test_reconnect_off_a_terminal_prints_progress_lines(
    tmp_path: Path, no_worker_env: dict[str, str]
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            QUIET_SOON,
            "reconnect",
            str(targets_file(tmp_path, 2)),
            "--timeout",
            "3.5",
            "--expires",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **no_worker_env},
    )
    assert re.search(r"batch \S+: 0/2", done.stderr), done.stderr


# --- item 14: 80 columns ------------------------------------------------------------------------


def test_the_summary_fits_80_columns(tmp_path: Path, worker: Any, sandbox: Any) -> None:
    done = streamctl("reconnect", str(targets_file(tmp_path, 2)))
    assert done.returncode == 0, done.stderr
    batch_id = json.loads(done.stdout)["batch_id"]
    lines = done.stderr.splitlines()
    assert f"batch {batch_id}" in lines
    assert all(len(line) <= 80 for line in lines), done.stderr


# --- item 9: Flower's options -------------------------------------------------------------------


def _other_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for UDP connect
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_flower_unauthenticated_opens_its_api_on_loopback_only(tmp_path: Path) -> None:
    import requests

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    log = tmp_path / "flower.log"
    with log.open("wb") as log_file:
        flower = subprocess.Popen(
            command("flower", "--unauthenticated", "--port", str(port)),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/api/workers", timeout=5)
                break
            except requests.ConnectionError:
                assert flower.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
        assert answer.status_code == 200, answer.text
        assert "open to anyone who reaches 127.0.0.1:" in log.read_text()
        other = _other_address()
        if other is not None:
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://{other}:{port}/healthcheck", timeout=5)
    finally:
        flower.terminate()
        flower.wait(timeout=20)


def test_a_bad_value_from_dotenv_names_the_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STREAMCTL_JOB_EXPIRY=soon\n")
    env = {k: v for k, v in os.environ.items() if k != "STREAMCTL_JOB_EXPIRY"}
    done = subprocess.run(
        command("close", "--stream-id", "5"),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == 2
    assert "STREAMCTL_JOB_EXPIRY" in done.stderr and "./.env" in done.stderr, done.stderr


def test_a_bad_schedule_name_is_explained_in_words(tmp_path: Path) -> None:
    schedule = tmp_path / "schedules.toml"
    schedule.write_text(
        '[[schedule]]\nname = "nightly run"\nevery = 60\ntargets = [{stream_id = 5}]\n'
    )
    done = streamctl("beat", env={"STREAMCTL_SCHEDULE_FILE": str(schedule)}, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "'nightly run' is not a name" in done.stderr
    assert "pattern" not in done.stderr and "^[" not in done.stderr


def test_demo_notices_a_dead_worker_and_keeps_its_log(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCALEENGINE_", "STREAMCTL_"))}
    env.pop("REDIS_URL", None)
    env["TMPDIR"] = str(tmp_path)
    demo = subprocess.Popen(
        command("demo", "--jobs", "200", "--concurrency", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert demo.stdout is not None
    seen = ""
    try:
        for line in demo.stdout:
            seen += line
            if match := re.search(r"worker\s+pid (\d+)", line):
                os.kill(int(match[1]), signal.SIGKILL)
                break
        out, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    seen += out
    assert demo.returncode == 1, seen
    assert "the worker exited" in seen
    kept = list(tmp_path.glob("streamctl-demo-*/worker.log"))
    assert len(kept) == 1 and "the worker's log is kept for you" in seen
    assert str(kept[0]) in seen.replace("\n", "")


def test_a_running_reconnect_follows_through_a_redis_restart(tmp_path: Path) -> None:
    port = free_port()
    server = PrivateRedis(tmp_path, port=port).start()
    process = subprocess.Popen(
        command("reconnect", str(targets_file(tmp_path, 2)), "--expires", "60"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0"},
    )
    try:
        wait_for_line(process, "following batch")
        server.stop()
        wait_for_line(process, "lost the connection to Redis")
        server = PrivateRedis(tmp_path, port=port).start()
        wait_for_line(process, "connected to Redis again")
        code, out, err = interrupt(process)
        assert code == 130 and "Traceback" not in err and out == ""
    finally:
        if process.poll() is None:
            process.kill()
        server.stop()


def test_reconnect_from_a_terminal_says_it_reads_standard_input(tmp_path: Path) -> None:
    import pty

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        command("reconnect", "-", "--dry-run"),
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(terminal)
    try:
        wait_for_line(process, "reading targets from standard input", timeout=20)
        os.write(controller, b'{"stream_id": 5}\n\x04')
        out, _err = process.communicate(timeout=20)
        assert process.returncode == 0 and json.loads(out)["stream_id"] == 5
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
