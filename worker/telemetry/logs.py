"""Logging set-up: plain text or JSON lines (STREAMCTL_LOG_FORMAT).

Structured fields travel as ``extra`` (``event``, ``job_id``, ``target``...): in JSON each is a
key of the line, so a log pipeline can filter by job id without parsing messages. Callers put
only identifiers and outcomes there, never a request body, key or secret.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

from config.settings import Settings

#: Attributes every LogRecord has; anything else on a record came in through ``extra``.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        # default=str: an extra value that is not JSON (a Target, an enum) still logs.
        return json.dumps(entry, ensure_ascii=False, default=str)


class LineWriter:
    """Writes log lines on a thread of its own, all the lines waiting in one write.

    A worker's threads log two lines a job. Through a ``StreamHandler`` each line took the
    handler's lock and made its own write and flush, and at 1,000 calls in flight the threads
    queued for that lock: at the default level (INFO) a worker did 940 jobs/s at 0 ms where it
    did about 1,900 at WARNING (benchmarks/run.py, 2 cores). Here a line is formatted in the
    thread that logs it (a record's arguments are read when it is logged) and only queued; this
    thread joins what is waiting and writes it with one write and one flush.

    ``flush`` waits until every line queued before it is written: it runs before a process
    ends (``atexit``; ``flush_logs`` before the forked children's ``os._exit``), so no line is
    lost on a normal exit, and before a fork; a forked child starts a writer of its own
    (threads do not survive fork).
    """

    #: Most lines in one write: a burst is written in pieces, never held back whole.
    BATCH = 512
    #: Lines waiting past which a thread that logs waits for them to be written: a stream that
    #: blocks (a pipe nobody reads) holds the loggers back, as a StreamHandler did, instead of
    #: the queue growing without bound.
    BACKLOG = 20_000

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._start()
        # Forked with nothing half-written: a child must not inherit the stream's lock held
        # by this thread mid-write. The child then writes through a writer of its own.
        os.register_at_fork(before=self.flush, after_in_child=self._start)
        atexit.register(self.flush)

    def _start(self) -> None:
        self._queue: queue.SimpleQueue[str | threading.Event] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="streamctl-log-writer", daemon=True)
        self._thread.start()

    def put(self, line: str) -> None:
        if self._queue.qsize() >= self.BACKLOG:
            self.flush()
        self._queue.put(line)

    def flush(self, timeout: float = 5.0) -> None:
        if not self._thread.is_alive():  # interpreter shutdown has stopped it: nothing queued
            return
        written = threading.Event()
        self._queue.put(written)
        written.wait(timeout)

    def _run(self) -> None:
        pending = self._queue
        while True:
            lines: list[str] = []
            waiting: list[threading.Event] = []
            item = pending.get()
            while True:
                if isinstance(item, threading.Event):
                    waiting.append(item)
                else:
                    lines.append(item)
                if len(lines) >= self.BATCH:
                    break
                try:
                    item = pending.get_nowait()
                except queue.Empty:
                    break
            if lines:
                self._write("\n".join(lines) + "\n")
            for event in waiting:
                event.set()

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: as logging, never raise
            pass


class QueuedLineHandler(logging.Handler):
    """Formats each record where it is logged and hands the line to a ``LineWriter``.

    Without the handler lock ``logging.Handler.handle`` takes around ``emit``: formatting
    touches only the record, and the writer's queue is thread-safe.
    """

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self.writer = writer

    def handle(self, record: logging.LogRecord) -> bool:
        if self.filter(record):
            self.emit(record)
            return True
        return False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.put(self.format(record))
        except Exception:
            self.handleError(record)


_writer: LineWriter | None = None


def flush_logs() -> None:
    """Write every line logged so far (before ``os._exit``, which skips ``atexit``)."""
    if _writer is not None:
        _writer.flush()


def _shared_writer() -> LineWriter:
    global _writer
    if _writer is None:
        _writer = LineWriter(sys.stderr)
    return _writer


def queue_stderr_handlers(logger: logging.Logger) -> None:
    """Send ``logger``'s stderr lines through the shared writer, each in its own format.

    For the handlers Celery puts on the root logger as a worker starts: its consumer thread,
    which hands every message to the threads, wrote two lines a message, each with its own
    write and flush, while a thousand threads waited for it."""
    for index, handler in enumerate(logger.handlers):
        stream = getattr(handler, "stream", None)
        if type(handler) is logging.StreamHandler and stream in (sys.stderr, sys.__stderr__):
            queued = QueuedLineHandler(_shared_writer())
            queued.setFormatter(handler.formatter)
            queued.setLevel(handler.level)
            logger.handlers[index] = queued


def configure_logging(settings: Settings) -> None:
    handler = QueuedLineHandler(_shared_writer())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/%(name)s] %(message)s"))
    root = logging.getLogger("streamctl")
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    root.propagate = False
