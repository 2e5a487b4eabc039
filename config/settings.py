"""The one settings object: every environment variable streamctl reads, validated once.

Names are fixed: deploy files and other systems depend on them. ``SCALEENGINE_*``, ``REDIS_URL``
and ``CELERY_BROKER_URL`` keep their bare names; every other tunable has the ``STREAMCTL_``
prefix. A ``.env`` file in the working directory is read too; the process environment wins.

Each default is chosen so that the timing invariants of the queue hold (see
``_check_timing``): a retry's countdown is shorter than a job's expiry, and so is the broker's
visibility timeout, so that a job lost with a crashed worker is redelivered while it may still
run. Live workers renew the messages they hold (``worker.consume.renewer``), so a countdown or
a long batch message need not fit inside the visibility timeout.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    IPvAnyAddress,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.errors import ConfigError
from config.invariants import check_timing
from config.secrets import read_secret_file
from config.tls import TLSFiles, broker_files, check_tls_files, ssl_options
from config.units import parse_rate
from config.urls import (
    BROKER_SCHEMES,
    REDIS_SCHEMES,
    check_url,
    has_password,
    is_loopback_host,
    is_sentinel,
    parse_sentinel,
    sentinel_url,
    with_password,
)
from config.variables import bare as _bare
from config.variables import config_error, variable_name

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Settings(BaseSettings):
    """Every setting of streamctl. Build it with ``load_settings()``."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMCTL_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    # --- the ScaleEngine account ---------------------------------------------------------
    api_url: str = Field(
        "https://api.scaleengine.net/stable/", validation_alias=_bare("SCALEENGINE_API_URL")
    )
    cdn: int | None = Field(None, gt=0, validation_alias=_bare("SCALEENGINE_CDN"))
    # The key is not the secret, but it is still kept out of reprs and logs. Each secret may
    # come from a file instead (``*_FILE``: Docker and Kubernetes secrets); a ``*_file`` field
    # holds the file's content, and comes first so that its variable's validator can see it.
    api_key_file: SecretStr | None = Field(None, validation_alias=_bare("SCALEENGINE_API_KEY_FILE"))
    api_key: SecretStr | None = Field(
        None, validation_alias=_bare("SCALEENGINE_API_KEY"), validate_default=True
    )
    api_secret_file: SecretStr | None = Field(
        None, validation_alias=_bare("SCALEENGINE_API_SECRET_FILE")
    )
    api_secret: SecretStr | None = Field(
        None, validation_alias=_bare("SCALEENGINE_API_SECRET"), validate_default=True
    )
    origin_url: str | None = Field(None, validation_alias=_bare("SCALEENGINE_ORIGIN_URL"))

    # --- Redis and the broker ------------------------------------------------------------
    #: Passwords given apart from the URLs (then any character works, unencoded); they are
    #: put into the URLs, percent-encoded. The URLs are kept out of reprs for that reason.
    redis_password_file: SecretStr | None = None
    redis_password: SecretStr | None = Field(None, validate_default=True)
    redis_url: str = Field(
        "redis://localhost:6379/0",
        validation_alias=_bare("REDIS_URL"),
        validate_default=True,
        repr=False,
    )
    #: The name Redis Sentinel knows the master by (``sentinel monitor <name> ...``): required
    #: when REDIS_URL or CELERY_BROKER_URL is a sentinel:// URL, and used for both.
    sentinel_master: str | None = Field(None, min_length=1)
    broker_password_file: SecretStr | None = None
    broker_password: SecretStr | None = Field(None, validate_default=True)
    celery_broker_url: str | None = Field(
        None, validation_alias=_bare("CELERY_BROKER_URL"), repr=False
    )
    #: TLS (rediss://) to Redis: the CA bundle to verify the server with (unset: the system's
    #: CAs) and a client certificate and key. Verification itself cannot be turned off.
    redis_ca_bundle: Path | None = None
    redis_client_cert: Path | None = None
    redis_client_key: Path | None = None
    #: The same for a TLS broker (rediss:// or amqps://). A Redis broker with none of these set
    #: uses the STREAMCTL_REDIS_* ones: it is usually the same server, or one of the same CA.
    broker_ca_bundle: Path | None = None
    broker_client_cert: Path | None = None
    broker_client_key: Path | None = None
    results_channel: str = Field("streamctl:results", min_length=1)
    #: Entries kept in the ``<channel>:log`` stream (approximate trim). 100k results is a few
    #: days of heavy use and about 100 MB of Redis memory at most.
    results_log_maxlen: PositiveInt = 100_000
    #: How long a job's final result and its idempotency key are kept (7 days): a producer that
    #: enqueues the same job id within that window gets the first result, not a second close.
    result_ttl: PositiveInt = 7 * 24 * 3600

    # --- HTTP ------------------------------------------------------------------------------
    #: Slightly above a multiple of 3 s, TCP's initial retransmission window (requests' advice).
    connect_timeout: PositiveFloat = 3.05
    #: The API answers in about 0.4 s; 10 s is generous but bounds a hung server.
    read_timeout: PositiveFloat = 10.0
    #: A CA bundle to verify the API's certificate with. Verification itself cannot be turned off.
    ca_bundle: Path | None = None

    # --- retries inside one delivery (tenacity) ---------------------------------------------
    #: HTTP requests per delivery before handing the job back to Celery.
    max_attempts: PositiveInt = 5
    #: Total time one delivery may spend retrying (the in-task deadline).
    retry_deadline: PositiveFloat = 45.0
    #: First backoff; doubles each attempt, up to ``backoff_max``; each wait is drawn with
    #: equal jitter (between half the backoff and all of it, see worker.api.retry).
    backoff_initial: PositiveFloat = 0.5
    backoff_max: PositiveFloat = 10.0
    #: Code 1000 means "too much traffic, try again in a few minutes": wait at least this long.
    busy_backoff: PositiveFloat = 30.0

    # --- retries across deliveries (Celery) -------------------------------------------------
    #: Times Celery re-queues a job whose in-task retries gave up on a transient error.
    celery_max_retries: Annotated[int, Field(ge=0)] = 2
    #: Countdown before the first Celery retry; doubles each time (60 s, then 120 s).
    celery_retry_countdown: PositiveFloat = 60.0
    #: Seconds after enqueue when a job expires: past it nothing is sent (outcome ``expired``),
    #: because a late close would cut off an encoder that has legitimately reconnected.
    job_expiry: PositiveFloat = 900.0
    #: Redis redelivers a message no live worker has renewed for this many seconds (a SIGKILLed
    #: worker's: worker.consume.renewer). Live workers renew theirs every quarter of it, so a
    #: long countdown or batch message is never redelivered; 30 s brings a dead worker's jobs
    #: back within about 33 s. At least 10 s: clock skew between hosts and a Redis blip of a
    #: few seconds must not look like a dead worker.
    visibility_timeout: float = Field(30.0, ge=10)

    # --- the worker --------------------------------------------------------------------------
    #: Most jobs a batch message carries (worker.broker.messages). Celery's own cost per message
    #: is then shared by up to 10 jobs, while a thread's share of a 10,000-job batch stays small
    #: enough that no thread idles long at its end (benchmarks/run.py; README, Performance).
    batch_chunk: PositiveInt = 10
    #: Calls in flight (threads: closes are I/O bound) of all a worker's processes together.
    worker_concurrency: PositiveInt = 32
    #: Threads per worker process only urgent jobs use (worker.consume.lanes), besides the
    #: above: an urgent close starts at once however busy bulk is. 4: several operators at once.
    urgent_threads: PositiveInt = 4
    #: Worker processes ``streamctl worker`` forks to share its calls in flight
    #: (worker.consume.processes); ``auto``: one per 250 calls, at most one per CPU
    #: (config.processes), as one process's threads queue for its one GIL.
    worker_processes: PositiveInt | Literal["auto"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    #: Port of the worker's Prometheus exporter. Unset: no exporter, as a fixed default port
    #: would collide when several workers share a host. With STREAMCTL_WORKER_PROCESSES, the
    #: processes take this port and the ones after it.
    metrics_port: int | None = Field(None, gt=0, lt=65536)
    #: The exporter's IP address. Loopback: metrics stay on the host unless an operator opens
    #: them (0.0.0.0, or one interface's address) for a Prometheus elsewhere.
    metrics_address: IPvAnyAddress = ipaddress.IPv4Address("127.0.0.1")
    #: Seconds between a worker's sweeps for jobs the broker lost (worker.consume.janitor).
    #: 10 s ends such a job soon after its grace; one sweep per interval runs in the whole cluster.
    janitor_interval: PositiveFloat = 10.0
    #: The janitor ends a lost job this many seconds after its expiry plus one HTTP attempt's
    #: timeouts: 30 s covers clock skew between hosts and a slow publish of a real result.
    janitor_grace: Annotated[float, Field(ge=0)] = 30.0

    # --- the cluster-wide rate limit (worker.store.limiter) -------------------------------------
    #: API requests per second for all workers together, given as ``20/s``, ``1200/m``...;
    #: unset means no limit. Every HTTP attempt counts, retries included.
    rate_limit: float | None = None
    #: Requests that may go back to back after a quiet spell. 10 lets a batch start at once
    #: without a visible spike: any one second sees at most the rate plus this burst.
    rate_burst: PositiveInt = 10
    #: HTTP requests in flight at once across all workers; unset means only the workers'
    #: thread counts bound it. A crashed worker's slots free themselves after the timeouts.
    max_in_flight: PositiveInt | None = None
    #: While the API answers code 1000 ("too much traffic, try again in a few minutes") bulk
    #: work sends at most this rate, for STREAMCTL_BUSY_BACKOFF seconds after the last such
    #: answer: one request a second probes for recovery without adding load; urgent work too
    #: once a 1000 answers a request sent while bulk was slowed already.
    busy_rate: float = 1.0
    #: A worker thread waits at most this long for the limiter; a job that would wait longer
    #: goes back to the broker with a countdown, so throttled jobs do not pin threads.
    throttle_hold: PositiveFloat = 5.0
    #: Share of STREAMCTL_RATE_LIMIT bulk work leaves to urgent work even when none waits (bulk
    #: sends at most (1 - share) x the rate). 0: urgent requests go ahead of bulk ones anyway.
    urgent_share: Annotated[float, Field(ge=0, le=0.9)] = 0.0

    # --- schedules (worker.schedule.file, ``streamctl beat``) -------------------------------------
    #: The schedule of mass reconnects, relative to the working directory: the repository's
    #: own example file, empty, so that ``streamctl beat`` starts on a fresh checkout.
    schedule_file: Path = Path("config/schedules.toml")

    @field_validator("rate_limit", "busy_rate", mode="before")
    @classmethod
    def _check_rate(cls, value: object) -> float | None:
        return parse_rate(value)

    @field_validator("api_url")
    @classmethod
    def _check_api_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://api.scaleengine.net/stable/")
        # Plain HTTP would send the signed request unprotected; only a local sandbox may use it.
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ValueError("must use https (plain http is allowed only on loopback)")
        return value

    @field_validator(
        "api_key_file",
        "api_secret_file",
        "redis_password_file",
        "broker_password_file",
        mode="before",
    )
    @classmethod
    def _read_secret_file(cls, value: object) -> SecretStr | None:
        return read_secret_file(value)

    @field_validator("api_key", "api_secret", "redis_password", "broker_password")
    @classmethod
    def _secret_or_its_file(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        assert info.field_name is not None
        from_file = info.data.get(f"{info.field_name}_file")
        if from_file is None:
            return value
        if value is not None and value.get_secret_value():
            variable = _variable_name(info.field_name)
            raise ValueError(f"set {variable} or {variable}_FILE, not both")
        return from_file  # type: ignore[no-any-return]

    @field_validator("redis_url", "celery_broker_url")
    @classmethod
    def _check_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        is_redis = info.field_name == "redis_url"
        check_url(value, REDIS_SCHEMES if is_redis else BROKER_SCHEMES)
        if is_sentinel(value):  # one spelling for Celery, kombu and the state client
            value = sentinel_url(parse_sentinel(value))
        password_field = "redis_password" if is_redis else "broker_password"
        password = info.data.get(password_field)
        if password is None:
            return value
        if has_password(value):
            raise ValueError(
                f"holds a password, and {_variable_name(password_field)} is set too: "
                "give the password in one place"
            )
        return with_password(value, password.get_secret_value())

    @field_validator(
        "redis_ca_bundle",
        "redis_client_cert",
        "redis_client_key",
        "broker_ca_bundle",
        "broker_client_cert",
        "broker_client_key",
    )
    @classmethod
    def _check_tls_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("no such file")
        return value

    @field_validator("ca_bundle")
    @classmethod
    def _check_ca_bundle(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _check_timing(self) -> Settings:
        check_timing(self)  # config.invariants: the rules the defaults are chosen to keep
        self._check_connections()
        return self

    def _check_connections(self) -> None:
        urls = (("REDIS_URL", self.redis_url), ("CELERY_BROKER_URL", self.broker_url))
        for variable, url in urls:
            if is_sentinel(url) and self.sentinel_master is None:
                raise ValueError(
                    f"STREAMCTL_SENTINEL_MASTER: required with a sentinel:// {variable}: the "
                    "name the sentinels monitor the master by (sentinel monitor <name> ...)"
                )
        if self.broker_password is not None and self.celery_broker_url is None:
            raise ValueError(
                "STREAMCTL_BROKER_PASSWORD: set only with CELERY_BROKER_URL; the broker is "
                "REDIS_URL, whose password is STREAMCTL_REDIS_PASSWORD"
            )
        check_tls_files(self.redis_url, self.broker_url, self._redis_tls, self._broker_tls)

    @property
    def _redis_tls(self) -> TLSFiles:
        return TLSFiles(self.redis_ca_bundle, self.redis_client_cert, self.redis_client_key)

    @property
    def _broker_tls(self) -> TLSFiles:
        return TLSFiles(self.broker_ca_bundle, self.broker_client_cert, self.broker_client_key)

    # --- derived -------------------------------------------------------------------------------

    @property
    def redis_ssl(self) -> dict[str, Any] | None:
        """redis-py's SSL options for REDIS_URL (state client, result backend); None: no TLS."""
        return ssl_options(self.redis_url, self._redis_tls)

    @property
    def broker_ssl(self) -> dict[str, Any] | None:
        """Celery's ``broker_use_ssl`` for the broker's URL; None: no TLS."""
        files = broker_files(self.broker_url, self._redis_tls, self._broker_tls)
        return ssl_options(self.broker_url, files)

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    @property
    def results_log(self) -> str:
        return f"{self.results_channel}:log"

    def require_credentials(self) -> tuple[int, str, str]:
        """The account's (cdn, api_key, api_secret); a worker cannot start without them."""
        missing = [
            name
            for name, value in (
                ("SCALEENGINE_CDN", self.cdn),
                ("SCALEENGINE_API_KEY", self.api_key),
                ("SCALEENGINE_API_SECRET", self.api_secret),
            )
            if value is None or (isinstance(value, SecretStr) and not value.get_secret_value())
        ]
        if missing:
            raise ConfigError(f"missing setting(s): {', '.join(missing)}")
        assert self.cdn is not None and self.api_key is not None and self.api_secret is not None
        return self.cdn, self.api_key.get_secret_value(), self.api_secret.get_secret_value()


def _variable_name(field: str) -> str:
    return variable_name(Settings, field)


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings, raising ConfigError that names each bad variable.

    Values are never echoed back in the message: one of them may be the secret.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise config_error(Settings, exc) from None


#: The settings a command built and installed for this process (``install_settings``).
_installed: Settings | None = None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings: the installed ones, else read once from the environment."""
    return _installed if _installed is not None else load_settings()


def install_settings(settings: Settings) -> Settings:
    """Make ``settings`` what ``get_settings()`` returns in this process from now on.

    A command that takes settings on its command line (``streamctl worker -c 8``) builds them
    once, ``load_settings(worker_concurrency=8)``, and installs them before Celery starts:
    Celery's configuration (``config.celeryconfig``) and the worker's wiring read them through
    ``get_settings()``. The environment is left as it was.
    """
    global _installed
    _installed = settings
    get_settings.cache_clear()
    return settings
