"""Connection URLs: checked once when the settings load, and masked wherever one is shown.

Error messages never contain any part of the URL: it may hold a password.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

#: Schemes of REDIS_URL (job state, results, result backend, and the broker by default).
#: ``sentinel://`` is Celery's form: ``sentinel://[:password@]host:port;sentinel://host:port/DB``,
#: the master's name in STREAMCTL_SENTINEL_MASTER.
REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")
SENTINEL_SCHEME = "sentinel"
#: Sentinel's own port, for a sentinel:// address that names none.
SENTINEL_PORT = 26379
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
    if scheme == SENTINEL_SCHEME and scheme in schemes:
        parse_sentinel(url)
        return url
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


@dataclass(frozen=True, slots=True)
class SentinelAddress:
    """A ``sentinel://`` URL read: the sentinels, and the master's database and credentials."""

    sentinels: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None


def is_sentinel(url: str) -> bool:
    return url.partition("://")[0].lower() == SENTINEL_SCHEME


def parse_sentinel(url: str) -> SentinelAddress:
    """Read a ``sentinel://h1:p1;sentinel://h2:p2/DB`` URL; raise ValueError if it is bad.

    Each sentinel has its own ``sentinel://`` part; the master's database and password may be
    given on any part (Celery reads the first one's, kombu too), but once: two parts that
    disagree are refused rather than one of them silently winning.
    """
    sentinels: list[tuple[str, int]] = []
    databases: set[int] = set()
    users: set[str] = set()
    passwords: set[str] = set()
    for chunk in url.split(";"):
        chunk = chunk.strip()
        scheme, separator, rest = chunk.partition("://")
        if not separator or scheme.lower() != SENTINEL_SCHEME:
            raise ValueError(
                "each sentinel is a sentinel://host:port part, the parts joined by ';', as in "
                "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379/0"
            )
        try:
            parts = urlsplit(chunk)
        except ValueError:  # its message may quote the URL
            raise ValueError("a sentinel's host is not a valid name or address") from None
        if ("@" not in parts.netloc and "@" in rest) or parts.netloc.count("@") > 1:
            raise ValueError(f"the URL is ambiguous: {ENCODE_HINT}")
        try:
            port = parts.port or SENTINEL_PORT
        except ValueError:
            raise ValueError("a sentinel's port must be a number") from None
        if not parts.hostname:
            raise ValueError("a sentinel:// part names no host")
        if parts.query:
            raise ValueError("a sentinel:// URL takes no query: give the master's name in "
                             "STREAMCTL_SENTINEL_MASTER")
        database = parts.path.strip("/")
        if database:
            if not database.isdigit():
                raise ValueError("the database must be a number, as in sentinel://h:26379/0")
            databases.add(int(database))
        if parts.username:
            users.add(unquote(parts.username))
        if parts.password is not None:
            passwords.add(unquote(parts.password))
        sentinels.append((parts.hostname, port))
    if len(databases) > 1 or len(users) > 1 or len(passwords) > 1:
        raise ValueError("the sentinel:// parts name different databases or credentials")
    return SentinelAddress(
        tuple(sentinels),
        databases.pop() if databases else 0,
        users.pop() if users else None,
        passwords.pop() if passwords else None,
    )


def sentinel_url(address: SentinelAddress) -> str:
    """``address`` in the one spelling Celery, kombu and the state client all read alike:
    every part carries the credentials and the database."""
    user = quote(address.username, safe="") if address.username else ""
    secret = f":{quote(address.password, safe='')}" if address.password is not None else ""
    credentials = f"{user}{secret}@" if user or secret else ""
    return ";".join(
        f"sentinel://{credentials}{_host(host)}:{port}/{address.db}"
        for host, port in address.sentinels
    )


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def has_password(url: str) -> bool:
    if is_sentinel(url):
        return parse_sentinel(url).password is not None
    return urlsplit(url).password is not None


def with_password(url: str, password: str) -> str:
    """``url`` carrying ``password``, percent-encoded, so any character survives the URL."""
    if is_sentinel(url):
        address = parse_sentinel(url)
        return sentinel_url(
            SentinelAddress(address.sentinels, address.db, address.username, password)
        )
    parts = urlsplit(url)
    user, _at, host = parts.netloc.rpartition("@")
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def mask_url(url: str) -> str:
    """``url`` fit for printing: no user name, password or query (which may hold a password).

    Used for every URL shown (``streamctl check``, the demo, logs). It never fails and never
    lets a credential through, even for a URL the settings would refuse.
    """
    if ";" in url:  # several sentinels: each part masked alike
        return ";".join(mask_url(part) for part in url.split(";"))
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
