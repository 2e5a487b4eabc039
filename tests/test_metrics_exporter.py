"""The worker's Prometheus exporter over real sockets: its address, its timeouts, its bound.

A client that connects and sends nothing (or trickles a byte now and then) must not hold a
thread for ever, and many such clients must not make the exporter start a thread each.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from config.settings import load_settings
from worker.dev.embedded_redis import free_port
from worker.errors import ConfigError
from worker.telemetry.metrics import MetricsServer, serve_metrics

#: Short, so that the tests take seconds; the defaults are a few seconds too.
TIMEOUT = 1.0
BOUND = 3


@pytest.fixture
def exporter() -> Iterator[MetricsServer]:
    server = serve_metrics("127.0.0.1", free_port(), timeout=TIMEOUT, max_connections=BOUND)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def url(server: MetricsServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/metrics"


def idle_connection(server: MetricsServer) -> socket.socket:
    """A connection that sends nothing."""
    connection = socket.create_connection(server.server_address[:2], timeout=10)
    connection.settimeout(10)
    return connection


def closed_after(connection: socket.socket) -> float:
    """Seconds until the server closes ``connection`` (reads until EOF)."""
    started = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        while connection.recv(1024):
            pass
    return time.monotonic() - started


def serving_threads() -> int:
    return sum(1 for thread in threading.enumerate() if "process_request" in thread.name)


def test_metrics_are_served(exporter: MetricsServer) -> None:
    reply = requests.get(url(exporter), timeout=5)
    assert reply.status_code == 200
    assert "streamctl_jobs_total" in reply.text or "streamctl_api_request_seconds" in reply.text


def test_idle_connections_are_dropped_after_the_timeout(exporter: MetricsServer) -> None:
    connections = [idle_connection(exporter) for _ in range(BOUND)]
    try:
        waited = [closed_after(connection) for connection in connections]
    finally:
        for connection in connections:
            connection.close()
    assert max(waited) < TIMEOUT + 2, waited  # not the client's own 10 s timeout
    assert requests.get(url(exporter), timeout=5).status_code == 200


def test_a_trickling_client_is_dropped_at_the_deadline(exporter: MetricsServer) -> None:
    """One byte every half second never lets a per-read timeout expire; the deadline does."""
    connection = idle_connection(exporter)
    started = time.monotonic()
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for byte in b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"a" * 100:
                connection.sendall(bytes([byte]))
                time.sleep(TIMEOUT / 2)
                if time.monotonic() - started > TIMEOUT + 3:
                    break
        closed_after(connection)
    finally:
        connection.close()
    assert time.monotonic() - started < TIMEOUT + 1.5


def test_connections_beyond_the_bound_are_closed_at_once() -> None:
    # A longer timeout than the other tests': the held connections must outlast the checks.
    exporter = serve_metrics("127.0.0.1", free_port(), timeout=3.0, max_connections=BOUND)
    try:
        check_the_bound(exporter, timeout=3.0)
    finally:
        exporter.shutdown()
        exporter.server_close()


def check_the_bound(exporter: MetricsServer, timeout: float) -> None:
    before = serving_threads()
    held = [idle_connection(exporter) for _ in range(BOUND)]
    try:
        time.sleep(0.3)  # accepted, each in its thread
        assert serving_threads() - before == BOUND
        extra = [idle_connection(exporter) for _ in range(10)]
        try:
            for connection in extra:
                assert closed_after(connection) < 0.5  # refused, not served later
            assert serving_threads() - before == BOUND
        finally:
            for connection in extra:
                connection.close()
    finally:
        for connection in held:
            connection.close()
    # The slots come back: once the held connections end, a scrape is served again.
    deadline = time.monotonic() + timeout + 2
    while serving_threads() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert requests.get(url(exporter), timeout=5).status_code == 200


def test_a_scrape_is_answered_while_fewer_than_the_bound_are_idle(exporter: MetricsServer) -> None:
    held = [idle_connection(exporter) for _ in range(BOUND - 1)]
    try:
        assert requests.get(url(exporter), timeout=5).status_code == 200
    finally:
        for connection in held:
            connection.close()


def test_the_address_is_honoured() -> None:
    port = free_port()
    server = serve_metrics("127.0.0.1", port)
    try:
        assert server.server_address[:2] == ("127.0.0.1", port)
        assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
        # 127.0.0.2 is loopback too, but another address: a socket bound to 127.0.0.1 only
        # does not answer there, as it would not on the host's other interfaces.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
    finally:
        server.shutdown()
        server.server_close()
    everywhere = serve_metrics("0.0.0.0", port)
    try:
        assert everywhere.server_address[:2] == ("0.0.0.0", port)
        socket.create_connection(("127.0.0.2", port), timeout=5).close()
    finally:
        everywhere.shutdown()
        everywhere.server_close()


def test_the_address_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.delenv("STREAMCTL_METRICS_ADDRESS", raising=False)
    monkeypatch.chdir(str(tmp_path))  # no .env from the checkout
    assert str(load_settings().metrics_address) == "127.0.0.1"  # loopback unless told
    monkeypatch.setenv("STREAMCTL_METRICS_ADDRESS", "0.0.0.0")
    assert str(load_settings().metrics_address) == "0.0.0.0"
    monkeypatch.setenv("STREAMCTL_METRICS_ADDRESS", "::1")
    assert str(load_settings().metrics_address) == "::1"
    monkeypatch.setenv("STREAMCTL_METRICS_ADDRESS", "every-interface")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "STREAMCTL_METRICS_ADDRESS" in str(caught.value)
