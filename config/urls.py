"""Connection URLs: checked once when the settings load, and masked wherever one is shown.

Error messages never contain any part of the URL: it may hold a password.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

#: Schemes of REDIS_URL (job state, results, result backend, and the broker by default).
REDIS_SCHEMES = ("redis", "rediss", "unix")
#: Schemes of CELERY_BROKER_URL: the Redis ones and RabbitMQ's (kombu's py-amqp transport).
BROKER_SCHEMES = (*REDIS_SCHEMES, "amqp", "amqps")
TLS_SCHEMES = ("rediss", "amqps")

ENCODE_HINT = (
    "percent-encode the special characters of the user name and password "
    "(# as %23, / as %2F, ? as %3F, @ as %40, % as %25, : as %3A)"
)

#: Query keys that would reach the TLS layer (kombu, Celery's backend, redis-py and py-amqp all
#: read some of them). Verification is not negotiable, so none of them is taken from a URL.
_TLS_QUERY_WORDS = ("ssl", "tls", "cert", "ca_", "check_hostname", "server_hostname", "keyfile")


def check_url(url: str, schemes: tuple[str, ...]) -> str:
    """Return ``url`` if it is a well-formed URL of one of ``schemes``; raise ValueError if not."""
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    if not separator:
        raise ValueError("must be a URL such as redis://localhost:6379/0")
    if scheme == "sentinel":
        raise ValueError(
            "Sentinel is not supported yet: give the master's address as redis:// or rediss://"
        )
    if scheme not in schemes:
        raise ValueError(
            f"must be a {', '.join(f'{name}://' for name in schemes[:-1])} or {schemes[-1]}:// URL"
        )
    try:
        parts = urlsplit(url)
    except ValueError:  # its message may quote the URL
        raise ValueError("the host is not a valid name or address") from None
    # A raw '#', '/' or '?' in the password ends the authority early; the '@' that follows the
    # password is then found in what was read as the path, query or fragment.
    if ("@" not in parts.netloc and "@" in rest) or parts.netloc.count("@") > 1:
        raise ValueError(f"the URL is ambiguous: {ENCODE_HINT}")
    try:
        parts.port  # noqa: B018 (the property parses it)
    except ValueError:
        raise ValueError("the port must be a number") from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(word in key.lower() for key, _value in query for word in _TLS_QUERY_WORDS):
        raise ValueError(
            "TLS options in the URL's query are not accepted: certificates are always "
            "verified; name the CA bundle and client certificate with the STREAMCTL_*_CA_BUNDLE, "
            "*_CLIENT_CERT and *_CLIENT_KEY settings"
        )
    if scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL names the socket's path, as unix:///run/redis.sock")
        database = dict(query).get("db", "0")
    elif scheme in ("redis", "rediss"):
        database = parts.path.strip("/") or "0"
    else:
        database = "0"
    if not database.isdigit():
        raise ValueError("the database must be a number, as in redis://localhost:6379/0")
    return url


def has_password(url: str) -> bool:
    return urlsplit(url).password is not None


def with_password(url: str, password: str) -> str:
    """``url`` carrying ``password``, percent-encoded, so any character survives the URL."""
    parts = urlsplit(url)
    user, _at, host = parts.netloc.rpartition("@")
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def mask_url(url: str) -> str:
    """``url`` fit for printing: no user name, password or query (which may hold a password).

    Used for every URL shown (``streamctl check``, the demo, logs). It never fails and never
    lets a credential through, even for a URL the settings would refuse.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return "(not a URL)"
    _credentials, at, after = rest.rpartition("@")
    shown = f"***@{after}" if at else rest
    for end in ("?", "#"):
        shown = shown.split(end, 1)[0]
    return f"{scheme}://{shown}"


def celery_url(url: str) -> str:
    """``url`` as kombu and Celery's Redis backend spell it: neither knows ``unix://``.

    Both take a socket as ``redis+socket:///path``, with the database as ``virtual_host``;
    redis-py (the state client) reads ``unix:///path?db=N`` as it is.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "unix":
        return url
    query = [
        ("virtual_host" if key == "db" else key, value) for key, value in parse_qsl(parts.query)
    ]
    # Built by hand: urlunsplit drops the "//" of an empty authority, which kombu needs.
    suffix = f"?{urlencode(query)}" if query else ""
    return f"redis+socket://{parts.netloc}{parts.path}{suffix}"


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address: where plain HTTP is allowed (a local sandbox)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
