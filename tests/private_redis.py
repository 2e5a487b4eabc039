"""Redis servers with special configuration for the tests: TLS, a password, a unix socket.

``worker.dev.embedded_redis.EmbeddedRedis`` is the plain one every test shares; these are
started per test module, on a free port (or none), in a temporary directory, and report ready
from the server's own log line, since a plain-TCP PING cannot reach a TLS-only or
password-guarded one.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from worker.dev.embedded_redis import find_redis_server, free_port, stop_process


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


def make_ca(folder: Path, name: str = "ca") -> CertFiles:
    """A throwaway certificate authority (EC keys: generated in milliseconds)."""
    ca = CertFiles(folder / f"{name}.pem", folder / f"{name}-key.pem")
    _openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-days", "1", "-subj", f"/CN=streamctl test {name}"),
        *("-keyout", str(ca.key), "-out", str(ca.cert)),
    )
    return ca


def make_cert(folder: Path, ca: CertFiles, name: str, *, san: str) -> CertFiles:
    """A certificate for ``san`` (``IP:127.0.0.1``, ``DNS:other.example``) signed by ``ca``."""
    made = CertFiles(folder / f"{name}.pem", folder / f"{name}-key.pem")
    request = folder / f"{name}.csr"
    extensions = folder / f"{name}.ext"
    extensions.write_text(f"subjectAltName={san}\n")
    _openssl(
        *("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-subj", f"/CN={name}", "-keyout", str(made.key), "-out", str(request)),
    )
    _openssl(
        *("x509", "-req", "-in", str(request), "-CA", str(ca.cert), "-CAkey", str(ca.key)),
        *("-CAcreateserial", "-days", "1", "-extfile", str(extensions), "-out", str(made.cert)),
    )
    return made


class PrivateRedis:
    """``redis-server`` with extra arguments, ready once its log says so."""

    def __init__(self, folder: Path, *args: str, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.args = args
        self.log = folder / f"redis-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        self._process = subprocess.Popen(
            [
                find_redis_server(),
                *("--bind", "127.0.0.1", "--dir", str(self.folder), "--save", ""),
                *("--appendonly", "no", "--logfile", str(self.log)),
                # Never Redis' default port: that may be a shared server's.
                *(() if "--port" in self.args else ("--port", str(self.port))),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not (
            self.log.exists() and b"ready to accept connections" in self.log.read_bytes().lower()
        ):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                raise RuntimeError(f"redis-server did not start:\n{log[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        stop_process(self._process)
        self._process = None

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def tls_redis(
    folder: Path, server: CertFiles, ca: CertFiles, *, clients: str = "no"
) -> PrivateRedis:
    """A TLS-only Redis (no plain port) presenting ``server``; ``clients``: tls-auth-clients."""
    port = free_port()
    return PrivateRedis(
        folder,
        *("--port", "0", "--tls-port", str(port)),
        *("--tls-cert-file", str(server.cert), "--tls-key-file", str(server.key)),
        *("--tls-ca-cert-file", str(ca.cert), "--tls-auth-clients", clients),
        port=port,
    )


class SentinelSet:
    """A master, a replica of it and three ``redis-server --sentinel`` watching it, as
    ``sentinel monitor <MASTER> 127.0.0.1 <port> 2``: a failover within a few seconds of the
    master's death (down after 1 s, failover timeout 3 s).
    """

    MASTER = "m"

    def __init__(self, folder: Path, *, down_after_ms: int = 1000) -> None:
        self.folder = folder
        self.down_after_ms = down_after_ms
        # Diskless sync at once: Redis' default waits 5 s for more replicas before syncing one.
        self.master = PrivateRedis(
            folder, "--maxmemory-policy", "noeviction", "--repl-diskless-sync-delay", "0"
        )
        self.replica = PrivateRedis(
            folder,
            *("--maxmemory-policy", "noeviction", "--replicaof", "127.0.0.1"),
        )
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """Celery's form: the sentinels, ``;``-separated, the database on the last."""
        parts = [f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports]
        return ";".join(parts) + "/0"

    def start(self, timeout: float = 15.0) -> SentinelSet:
        self.master.start()
        self.replica.args = (*self.replica.args, str(self.master.port))
        self.replica.start()
        for port in self.sentinel_ports:
            conf = self.folder / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.folder}\n"
                f"logfile {self.folder / f'sentinel-{port}.log'}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.MASTER} 3000\n"
                f"sentinel parallel-syncs {self.MASTER} 1\n"
            )
            self._sentinels.append(
                subprocess.Popen(
                    [find_redis_server(), str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        import redis

        deadline = time.monotonic() + timeout
        with redis.Redis(port=self.replica.port) as replica:
            while replica.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the replica did not sync with its master")
                time.sleep(0.05)
        # Ready: every sentinel knows the replica and the two others.
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, socket_connect_timeout=0.5)
            while True:
                try:
                    state = client.sentinel_master(self.MASTER)
                    if state["num-slaves"] >= 1 and state["num-other-sentinels"] >= 2:
                        break
                except (redis.ConnectionError, redis.ResponseError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the sentinels did not see the master, replica and peers")
                time.sleep(0.1)
            client.close()
        return self

    def master_port(self) -> int:
        """The port of the master the sentinels name now."""
        import redis

        client = redis.Redis(port=self.sentinel_ports[0])
        try:
            return int(client.sentinel_get_master_addr_by_name(self.MASTER)[1])
        finally:
            client.close()

    def kill_master(self) -> None:
        """SIGKILL the first master: no shutdown, no last write to its replica."""
        process = self.master._process
        assert process is not None
        process.kill()
        process.wait()

    def stop(self) -> None:
        for sentinel in self._sentinels:
            stop_process(sentinel)
        self._sentinels.clear()
        self.replica.stop()
        self.master.stop()

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
