"""The one place that turns the TLS settings into each library's SSL options.

Verification is always on, for every connection the project opens: the Celery broker (kombu's
Redis or py-amqp transport), the result backend (Celery's Redis backend) and the state client
(redis-py). There is no setting that turns it off, and the settings refuse TLS options in a
URL's query, which kombu and Celery would otherwise prefer (``?ssl_cert_reqs=none``).

Why this is needed at all: kombu connects to a bare ``rediss://`` broker *without* checking the
certificate (it substitutes ``ssl_cert_reqs=CERT_NONE``), and py-amqp checks an ``amqps://``
broker's hostname only when it is given ``server_hostname``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """The CA bundle to verify a server with (None: the system's CAs), and a client certificate."""

    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def given(self) -> bool:
        return any(path is not None for path in (self.ca_bundle, self.client_cert, self.client_key))


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.lower()


def ssl_options(url: str, files: TLSFiles) -> dict[str, Any] | None:
    """The SSL options for ``url``'s library: redis-py's for rediss://, py-amqp's for amqps://."""
    scheme = _scheme(url)
    if scheme == "rediss":
        return redis_ssl_options(url, files)
    if scheme == "amqps":
        return amqp_ssl_options(url, files)
    return None


def broker_files(broker_url: str, redis: TLSFiles, broker: TLSFiles) -> TLSFiles:
    """The broker's TLS files: a Redis broker with none of its own uses the Redis ones."""
    if _scheme(broker_url) == "rediss" and not broker.given():
        return redis
    return broker


def check_tls_files(redis_url: str, broker_url: str, redis: TLSFiles, broker: TLSFiles) -> None:
    """Refuse TLS files that would go unused (a plain URL) or a client key without its cert."""
    redis_used = _scheme(redis_url) == "rediss" or broker_files(broker_url, redis, broker) is redis
    broker_used = _scheme(broker_url) in ("rediss", "amqps")
    for prefix, files, used in (("REDIS", redis, redis_used), ("BROKER", broker, broker_used)):
        cert, key = f"STREAMCTL_{prefix}_CLIENT_CERT", f"STREAMCTL_{prefix}_CLIENT_KEY"
        if files.client_key is not None and files.client_cert is None:
            raise ValueError(f"{key}: needs {cert}, the certificate of that key")
        if files.given() and not used:
            url, tls = (
                ("REDIS_URL", "rediss://")
                if prefix == "REDIS"
                else ("CELERY_BROKER_URL", "rediss:// or amqps://")
            )
            for part in ("CA_BUNDLE", "CLIENT_CERT", "CLIENT_KEY"):
                if getattr(files, part.lower()) is not None:
                    raise ValueError(
                        f"STREAMCTL_{prefix}_{part}: {url} is not a {tls} URL, so it is unused"
                    )


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def redis_ssl_options(url: str, files: TLSFiles) -> dict[str, Any] | None:
    """redis-py's SSL keyword arguments for a ``rediss://`` URL; None for a plain one.

    The same dict serves redis-py itself, Celery's ``redis_backend_use_ssl`` and kombu's
    ``broker_use_ssl`` for a Redis broker: both hand it on to redis-py's SSLConnection.
    Without a CA bundle, the system's CAs are trusted.
    """
    if _scheme(url) != "rediss":
        return None
    return {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": _path(files.ca_bundle),
        "ssl_certfile": _path(files.client_cert),
        "ssl_keyfile": _path(files.client_key),
        "ssl_check_hostname": True,
    }


def amqp_ssl_options(url: str, files: TLSFiles) -> dict[str, Any] | None:
    """py-amqp's SSL options (kombu's ``ssl``) for an ``amqps://`` URL; None for a plain one.

    py-amqp 5 builds its own SSLContext: it sets ``check_hostname`` only when
    ``server_hostname`` is given, and ``verify_mode`` from ``cert_reqs``; without ``ca_certs``
    it loads the system's CAs.
    """
    parts = urlsplit(url)
    if _scheme(url) != "amqps":
        return None
    return {
        "cert_reqs": ssl.CERT_REQUIRED,
        "ca_certs": _path(files.ca_bundle),
        "certfile": _path(files.client_cert),
        "keyfile": _path(files.client_key),
        "server_hostname": parts.hostname or "localhost",
    }
