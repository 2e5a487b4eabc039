"""TLS to Redis and the broker verifies, always: against real TLS servers with throwaway CAs.

Each connection the project opens is probed in a fresh process configured only by the
environment, as a worker or producer would be: the Celery broker connection (kombu), the
result backend (Celery's Redis backend) and the state client (worker.consume.wiring.redis_client).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WorkerProcess
from tests.private_redis import CertFiles, PrivateRedis, make_ca, make_cert, tls_redis
from tests.test_health import failed_checks

PROBE = """
import json
results = {}
def describe(exc):
    chain = []
    while exc is not None:
        chain.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(chain)
from worker.broker.app import app
try:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=0)
        conn.default_channel.client.ping()
    results["broker"] = "connected"
except Exception as exc:
    results["broker"] = describe(exc)
try:
    app.backend.client.ping()
    results["backend"] = "connected"
except Exception as exc:
    results["backend"] = describe(exc)
try:
    from config.settings import get_settings
    from worker.store.redis import redis_client
    redis_client(get_settings()).ping()
    results["state"] = "connected"
except Exception as exc:
    results["state"] = describe(exc)
print(json.dumps(results))
"""

CONNECTIONS = ("broker", "backend", "state")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertFiles]:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder)
    return {
        "ca": ca,
        "server": make_cert(folder, ca, "server", san="IP:127.0.0.1,DNS:localhost"),
        "other": make_cert(folder, ca, "other", san="DNS:other.example"),
        "client": make_cert(folder, ca, "client", san="DNS:streamctl-client"),
        "stranger_ca": make_ca(folder, "stranger"),
    }


@pytest.fixture(scope="module")
def good_redis(
    tmp_path_factory: pytest.TempPathFactory, pki: dict[str, CertFiles]
) -> Iterator[PrivateRedis]:
    with tls_redis(tmp_path_factory.mktemp("tls-redis"), pki["server"], pki["ca"]) as server:
        yield server


def rediss(server: PrivateRedis) -> str:
    return f"rediss://127.0.0.1:{server.port}/0"


def probe(**env: str) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_an_untrusted_certificate_is_refused_by_every_connection(
    good_redis: PrivateRedis,
) -> None:
    found = probe(REDIS_URL=rediss(good_redis))
    for name in CONNECTIONS:
        assert "certificate verify failed" in found[name], (name, found[name])


def test_a_certificate_signed_by_the_configured_ca_is_accepted(
    good_redis: PrivateRedis, pki: dict[str, CertFiles]
) -> None:
    found = probe(REDIS_URL=rediss(good_redis), STREAMCTL_REDIS_CA_BUNDLE=str(pki["ca"].cert))
    assert found == dict.fromkeys(CONNECTIONS, "connected")


def test_check_reports_the_certificate_problem(
    good_redis: PrivateRedis, pki: dict[str, CertFiles]
) -> None:
    env = {**os.environ, "REDIS_URL": rediss(good_redis)}
    command = [sys.executable, "-m", "worker.cli", "check"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "fail  redis" in done.stdout and "(certificate: self-signed certificate" in done.stdout
    env["STREAMCTL_REDIS_CA_BUNDLE"] = str(pki["ca"].cert)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    # No worker consumes from this private Redis: that check alone fails (test_check_cluster).
    assert failed_checks(done.stdout) == {"workers"}, done.stdout
    assert f"ok    redis          rediss://127.0.0.1:{good_redis.port}/0 answers" in done.stdout


def test_a_certificate_for_another_host_is_refused(
    tmp_path: Path, pki: dict[str, CertFiles]
) -> None:
    with tls_redis(tmp_path, pki["other"], pki["ca"]) as server:
        found = probe(REDIS_URL=rediss(server), STREAMCTL_REDIS_CA_BUNDLE=str(pki["ca"].cert))
    for name in CONNECTIONS:
        assert "certificate verify failed" in found[name], (name, found[name])
        assert "mismatch" in found[name], (name, found[name])


def test_the_client_certificate_is_presented(tmp_path: Path, pki: dict[str, CertFiles]) -> None:
    with tls_redis(tmp_path, pki["server"], pki["ca"], clients="yes") as server:
        env = {"REDIS_URL": rediss(server), "STREAMCTL_REDIS_CA_BUNDLE": str(pki["ca"].cert)}
        without = probe(**env)
        found = probe(
            **env,
            STREAMCTL_REDIS_CLIENT_CERT=str(pki["client"].cert),
            STREAMCTL_REDIS_CLIENT_KEY=str(pki["client"].key),
        )
    assert all(without[name] != "connected" for name in CONNECTIONS), without
    assert found == dict.fromkeys(CONNECTIONS, "connected")


def test_a_query_cannot_turn_verification_off(good_redis: PrivateRedis) -> None:
    for query in ("?ssl_cert_reqs=none", "?ssl_check_hostname=false"):
        found = probe(REDIS_URL=rediss(good_redis) + query)
        for name in CONNECTIONS:
            assert "REDIS_URL: TLS options" in found[name], (name, found[name])


def test_worker_does_not_start_against_an_untrusted_broker(
    tmp_path: Path, good_redis: PrivateRedis
) -> None:
    log = tmp_path / "untrusted.log"
    worker = WorkerProcess(log, concurrency=2, env={"REDIS_URL": rediss(good_redis)})
    # Not WorkerProcess.start(): that waits for a ready worker, which must never come.
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker", "-c", "2"],
            env=worker.env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker.process = process
    try:
        deadline = time.monotonic() + 20
        while "certificate verify failed" not in worker.log() and time.monotonic() < deadline:
            assert process.poll() in (None, 1, 2), worker.log()[-2000:]  # never exits 0
            time.sleep(0.1)
        assert "certificate verify failed" in worker.log(), worker.log()[-3000:]
        assert " ready." not in worker.log()
    finally:
        worker.kill()


def test_worker_and_producer_work_with_the_ca(
    tmp_path: Path, good_redis: PrivateRedis, pki: dict[str, CertFiles]
) -> None:
    env = {"REDIS_URL": rediss(good_redis), "STREAMCTL_REDIS_CA_BUNDLE": str(pki["ca"].cert)}
    worker = WorkerProcess(tmp_path / "trusted.log", concurrency=2, env=env).start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli", "close", "--stream-id", "4242", "--wait"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        worker.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["outcome"] == "success"


# --- amqps: no TLS RabbitMQ here, so a TLS server that only shakes hands ---------------------


class Handshakes:
    """A TLS listener on loopback that counts completed handshakes and then hangs up."""

    def __init__(self, cert: CertFiles) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert.cert, cert.key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.completed = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True):
                    self.completed += 1
            except (ssl.SSLError, OSError):
                pass

    def close(self) -> None:
        self.listener.close()


def amqps_connect(port: int, **env: str) -> str:
    """Connect a kombu connection built from the settings, as Celery does; return the error."""
    from kombu import Connection

    from config.settings import load_settings

    settings = load_settings(celery_broker_url=f"amqps://guest:guest@127.0.0.1:{port}//", **env)
    connection = Connection(settings.broker_url, ssl=settings.broker_ssl, connect_timeout=3)
    try:
        connection.ensure_connection(max_retries=0)
    except Exception as exc:
        return repr(exc)
    finally:
        connection.release()
    return "connected"


@pytest.fixture
def handshakes(request: pytest.FixtureRequest, pki: dict[str, CertFiles]) -> Iterator[Any]:
    server = Handshakes(pki[request.param])
    yield server
    server.close()


@pytest.mark.parametrize("handshakes", ["server"], indirect=True)
def test_amqps_verifies_the_certificate(handshakes: Handshakes, pki: dict[str, CertFiles]) -> None:
    assert "certificate verify failed" in amqps_connect(handshakes.port)
    error = amqps_connect(handshakes.port, broker_ca_bundle=pki["stranger_ca"].cert)
    assert "certificate verify failed" in error
    assert handshakes.completed == 0
    amqps_connect(handshakes.port, broker_ca_bundle=pki["ca"].cert)  # AMQP itself then fails
    deadline = time.monotonic() + 5
    while handshakes.completed == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handshakes.completed == 1


@pytest.mark.parametrize("handshakes", ["other"], indirect=True)
def test_amqps_checks_the_hostname(handshakes: Handshakes, pki: dict[str, CertFiles]) -> None:
    error = amqps_connect(handshakes.port, broker_ca_bundle=pki["ca"].cert)
    assert "certificate verify failed" in error and "mismatch" in error
    assert handshakes.completed == 0
