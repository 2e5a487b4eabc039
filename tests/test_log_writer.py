"""Log lines go through one writer thread (worker.telemetry.logs.LineWriter).

Real threads, a real fork and real processes: every line written once and whole, in each
thread's order, formatted when it was logged, and nothing lost when a process ends.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from worker.telemetry.logs import LineWriter, QueuedLineHandler


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )


def _logger(name: str, writer: LineWriter) -> logging.Logger:
    logger = logging.getLogger(f"streamctl.test-writer.{name}")
    handler = QueuedLineHandler(writer)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def test_lines_from_many_threads_are_written_once_whole_and_in_order() -> None:
    stream = io.StringIO()
    writer = LineWriter(stream)
    logger = _logger("threads", writer)

    def log_lines(thread: int) -> None:
        for index in range(500):
            logger.info("thread %d line %d %s", thread, index, "x" * 50)

    threads = [threading.Thread(target=log_lines, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 20 * 500
    for thread_number in range(20):
        mine = [line for line in lines if line.startswith(f"thread {thread_number} ")]
        assert mine == [f"thread {thread_number} line {i} {'x' * 50}" for i in range(500)]


def test_a_record_is_formatted_when_it_is_logged() -> None:
    stream = io.StringIO()
    writer = LineWriter(stream)
    logger = _logger("format", writer)
    changing = ["before"]
    logger.info("value %s", changing)
    changing[0] = "after"
    writer.flush()
    assert stream.getvalue() == "value ['before']\n"


def test_a_forked_child_writes_its_own_lines(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    with path.open("w") as stream:
        writer = LineWriter(stream)
        logger = _logger("fork", writer)
        logger.info("parent before fork")
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                logger.info("child line")
                writer.flush()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        logger.info("parent after fork")
        writer.flush()
    lines = path.read_text().splitlines()
    assert sorted(lines) == ["child line", "parent after fork", "parent before fork"]


def test_the_last_lines_are_written_when_the_process_exits() -> None:
    script = (
        "import logging, sys\n"
        "from config.settings import load_settings\n"
        "from worker.telemetry.logs import configure_logging\n"
        "configure_logging(load_settings())\n"
        "log = logging.getLogger('streamctl.test')\n"
        "for n in range(2000):\n"
        "    log.warning('line %d', n)\n"
        "log.critical('last words')\n"
        "sys.exit(3)\n"
    )
    done = run_python(script)
    assert done.returncode == 3
    lines = done.stderr.splitlines()
    assert len([line for line in lines if "/streamctl.test] line " in line]) == 2000
    assert lines[-1].endswith("CRITICAL/streamctl.test] last words")


def test_celerys_own_worker_lines_go_through_the_writer() -> None:
    """Celery's root handler (its consumer thread logs each message) is swapped as it is set
    up, keeping Celery's format; the line still comes out."""
    script = (
        "import logging\n"
        "import worker.consume.boot\n"
        "from worker.broker.app import app\n"
        "app.log.setup_logging_subsystem(loglevel='INFO', colorize=False)\n"
        "root = logging.getLogger()\n"
        "print(sorted(type(h).__name__ for h in root.handlers))\n"
        "logging.getLogger('celery.worker.strategy').info('Task received (a test line)')\n"
    )
    done = run_python(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['QueuedLineHandler']"
    assert "INFO/MainProcess] Task received (a test line)" in done.stderr


class _BlockedStream(io.StringIO):
    """A stream whose writes wait until ``release`` is set (a pipe nobody reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(30)
        return super().write(text)


def test_a_blocked_stream_holds_the_loggers_back_instead_of_queueing_without_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(LineWriter, "BACKLOG", 100)
    stream = _BlockedStream()
    writer = LineWriter(stream)
    logger = _logger("blocked", writer)
    finished = threading.Event()

    def log_many() -> None:
        for index in range(1000):
            logger.info("line %d", index)
        finished.set()

    thread = threading.Thread(target=log_many)
    thread.start()
    assert not finished.wait(1.0), "the logging thread ran on past the backlog"
    stream.release.set()
    assert finished.wait(30)
    thread.join()
    writer.flush()
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(1000)]
