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
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


def redis_ssl_options(
    url: str, *, ca_bundle: Path | None, client_cert: Path | None, client_key: Path | None
) -> dict[str, Any] | None:
    """redis-py's SSL keyword arguments for a ``rediss://`` URL; None for a plain one.

    The same dict serves redis-py itself, Celery's ``redis_backend_use_ssl`` and kombu's
    ``broker_use_ssl`` for a Redis broker: both hand it on to redis-py's SSLConnection.
    Without a CA bundle, the system's CAs are trusted.
    """
    if urlsplit(url).scheme.lower() != "rediss":
        return None
    return {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": _path(ca_bundle),
        "ssl_certfile": _path(client_cert),
        "ssl_keyfile": _path(client_key),
        "ssl_check_hostname": True,
    }


def amqp_ssl_options(
    url: str, *, ca_bundle: Path | None, client_cert: Path | None, client_key: Path | None
) -> dict[str, Any] | None:
    """py-amqp's SSL options (kombu's ``ssl``) for an ``amqps://`` URL; None for a plain one.

    py-amqp 5 builds its own SSLContext: it sets ``check_hostname`` only when
    ``server_hostname`` is given, and ``verify_mode`` from ``cert_reqs``; without ``ca_certs``
    it loads the system's CAs.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "amqps":
        return None
    return {
        "cert_reqs": ssl.CERT_REQUIRED,
        "ca_certs": _path(ca_bundle),
        "certfile": _path(client_cert),
        "keyfile": _path(client_key),
        "server_hostname": parts.hostname or "localhost",
    }
