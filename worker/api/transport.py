"""HTTP to the API: one keep-alive session per thread, and classifying what came back.

``classify`` turns one reply into success or an exception from ``worker.errors``; ``send``
turns transport failures into the same tree. Nothing here reads or writes the request body
beyond handing it to requests, and no message built here quotes it.

The client sends through a ``Transport``: ``RequestsTransport`` over HTTP, or, in tests of the
decision logic, ``MockTransport(handler)`` (as httpx's), whose handler answers in-process.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import requests
from requests.adapters import BaseAdapter, HTTPAdapter

from worker.errors import (
    ApiBusy,
    ApiError,
    ApiRefused,
    ApiUnavailable,
    ConnectionFailed,
    HttpRefused,
    InvalidResponse,
    RateLimited,
    RequestTimedOut,
    ServerError,
    TimestampRejected,
    TlsFailed,
)
from worker.model.results import parse_handle_time

USER_AGENT = "streamctl/0.1 (+python-requests)"
_MAX_MESSAGE = 200


@dataclass(frozen=True, slots=True)
class ApiSuccess:
    message: str
    handle_time: float | None


class Reply(Protocol):
    """What ``classify`` reads of a reply (a ``requests.Response`` is one)."""

    @property
    def status_code(self) -> int: ...
    @property
    def content(self) -> bytes: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


class Transport(Protocol):
    """Sends one signed body; transport failures raise the ApiErrors of ``send``."""

    def send(self, url: str, body: str, *, timeout: tuple[float, float]) -> Reply: ...


class SessionPool:
    """One ``requests.Session`` per thread, each with one keep-alive connection.

    A worker thread sends one request at a time, so a per-thread pool of one connection sizes
    the whole pool to the worker's concurrency without sharing a pool across threads.
    TLS verification is always on: ``verify`` is True or a CA bundle, never False.
    """

    def __init__(self, *, ca_bundle: Path | None = None) -> None:
        self._verify: bool | str = str(ca_bundle) if ca_bundle is not None else True
        self._proxies = {
            scheme: url
            for scheme, url in urllib.request.getproxies().items()
            if scheme in ("http", "https")
        }
        self._local = threading.local()
        self._templates: dict[str, requests.PreparedRequest] = {}

    @property
    def verify(self) -> bool | str:
        return self._verify

    @property
    def proxies(self) -> dict[str, str]:
        return dict(self._proxies)

    def form_post(self, url: str, fields: dict[str, str]) -> requests.PreparedRequest:
        """A POST of ``fields`` as an HTML form, prepared from a template made once per URL.

        requests prepares every request from scratch (URL parsing, header and cookie merging,
        form encoding through generic mapping checks): a third of a job's CPU in the worker.
        The same request differs only in its body, so only the body is encoded per request,
        and only what the adapter reads is set (``PreparedRequest.copy`` also copies the
        template's cookie jar and hooks, which nothing here uses).
        """
        template = self._templates.get(url)
        if template is None:
            headers = requests.utils.default_headers()
            headers["User-Agent"] = USER_AGENT
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            template = requests.Request("POST", url, headers=headers).prepare()
            self._templates[url] = template
        body = form_encode(fields)
        request = requests.PreparedRequest()
        request.method = template.method
        request.url = template.url
        request.headers = template.headers.copy()
        request.headers["Content-Length"] = str(len(body))
        request.body = body
        return request

    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            session.headers["User-Agent"] = USER_AGENT
            session.verify = self._verify
            # requests re-reads proxy and CA variables from the environment on every request
            # (over a millisecond each); read the proxies once, and never let the environment
            # change TLS verification.
            session.trust_env = False
            session.proxies.update(self._proxies)
            self._local.session = session
        return session

    def adapter(self, url: str) -> BaseAdapter:
        """The thread's session's adapter for ``url`` (its one keep-alive connection)."""
        return self.session().get_adapter(url)


#: What ``urllib.parse.quote_plus`` makes of each ASCII character: itself when always safe
#: (letters, digits, ``_.-~``), ``+`` for a space, ``%XX`` otherwise.
_FORM_ESCAPES = {
    code: char if char.isascii() and (char.isalnum() or char in "_.-~") else f"%{code:02X}"
    for code, char in ((code, chr(code)) for code in range(128))
}
_FORM_ESCAPES[ord(" ")] = "+"


def form_encode(fields: dict[str, str]) -> bytes:
    """``urllib.parse.urlencode(fields)``, as bytes. ASCII text (a signed body always is: PHP's
    JSON escapes the rest) is escaped by one ``str.translate`` per value, not by
    ``quote_plus``'s Python loop over its bytes (5% of the HTTP path's CPU in a profile)."""
    if all(name.isascii() and value.isascii() for name, value in fields.items()):
        return "&".join(
            f"{name.translate(_FORM_ESCAPES)}={value.translate(_FORM_ESCAPES)}"
            for name, value in fields.items()
        ).encode("ascii")
    return urllib.parse.urlencode(fields).encode("ascii")


def send(
    pool: SessionPool, url: str, body: str, *, timeout: tuple[float, float]
) -> requests.Response:
    """POST the signed body as the form field ``json``; transport failures become ApiErrors.

    Sent through the session's adapter itself: ``Session.send`` adds only what a bare POST
    does not use (response hooks, a cookie jar filled from every reply but never sent, a
    look for a redirect to follow) at a tenth of the request's CPU. The adapter never follows
    a redirect (a redirected POST would be re-sent as a GET): the 3xx is classified as a
    refusal. The body is read here, so that a reply cut short is a ``ConnectionFailed`` too.
    """
    try:
        response = pool.adapter(url).send(
            pool.form_post(url, {"json": body}),
            timeout=timeout,
            verify=pool.verify,
            proxies=pool.proxies,
            stream=False,
            cert=None,
        )
        response.content  # noqa: B018 -- reads the whole body, as Session.send(stream=False)
        return response
    except requests.exceptions.SSLError as exc:
        raise TlsFailed(f"TLS verification failed: {_short(exc)}") from None
    except requests.exceptions.Timeout as exc:
        kind = "connect" if isinstance(exc, requests.exceptions.ConnectTimeout) else "read"
        raise RequestTimedOut(
            f"{kind} timeout after {timeout[0 if kind == 'connect' else 1]:g} s"
        ) from None
    except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
        raise ConnectionFailed(f"connection failed: {_short(exc)}") from None
    except requests.exceptions.RequestException as exc:
        raise ConnectionFailed(f"request failed: {type(exc).__name__}") from None


class RequestsTransport:
    """The real transport: ``send`` over a ``SessionPool``."""

    def __init__(self, pool: SessionPool) -> None:
        self.pool = pool

    def send(self, url: str, body: str, *, timeout: tuple[float, float]) -> Reply:
        return send(self.pool, url, body, timeout=timeout)


@dataclass(frozen=True, slots=True)
class MockRequest:
    """A request as a ``MockTransport`` handler sees it: the signed body, never the secret."""

    url: str
    body: str
    timeout: tuple[float, float]

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass(frozen=True, slots=True)
class MockReply:
    status_code: int = 200
    content: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, payload: object, status_code: int = 200, **headers: str) -> MockReply:
        """A reply whose body is ``payload`` as JSON."""
        return cls(status_code, json.dumps(payload).encode(), headers)


class MockTransport:
    """A transport whose ``handler`` answers in-process, as httpx's ``MockTransport``.

    The handler returns a reply, or raises an ApiError (``ConnectionFailed``...) as ``send``
    would for a transport failure. Every request is kept in ``requests``.
    """

    def __init__(self, handler: Callable[[MockRequest], Reply]) -> None:
        self.handler = handler
        self.requests: list[MockRequest] = []

    def send(self, url: str, body: str, *, timeout: tuple[float, float]) -> Reply:
        request = MockRequest(url, body, timeout)
        self.requests.append(request)
        return self.handler(request)


def classify(response: Reply) -> ApiSuccess:
    """Return the success, or raise the ApiError that names what the reply means."""
    status = response.status_code
    if status == 429:
        raise RateLimited("HTTP 429 Too Many Requests", retry_after=retry_after(response))
    if status >= 500:
        raise ServerError(f"HTTP {status} from the API", http_status=status)
    if status != 200:
        raise HttpRefused(f"HTTP {status} from the API", http_status=status)
    try:
        payload: Any = json.loads(response.content)
    except ValueError:
        raise InvalidResponse("the reply is not JSON", http_status=status) from None
    if not isinstance(payload, dict):
        raise InvalidResponse("the reply is not a JSON object", http_status=status)
    message = str(payload.get("message") or "")[:_MAX_MESSAGE]
    outcome = payload.get("status")
    if outcome == "success":
        return ApiSuccess(
            message=message, handle_time=parse_handle_time(payload.get("handle_time"))
        )
    if outcome != "failure":
        raise InvalidResponse("the reply has no status of success or failure", http_status=status)
    code = api_code(payload.get("code"))
    error_type: type[ApiError] = {
        "1000": ApiBusy,
        "0004": ApiUnavailable,
        "0002": TimestampRejected,
    }.get(code or "", ApiRefused)
    raise error_type(message or "the API refused the request", http_status=status, api_code=code)


def api_code(value: object) -> str | None:
    """Codes are four digits ("0002"); accept them as numbers too."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return f"{value:04d}"
    text = str(value).strip()[:16]
    return text.zfill(4) if text.isdigit() else text or None


def retry_after(response: Reply) -> float | None:
    """Retry-After in seconds, from either of its forms (delta-seconds or an HTTP date)."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _short(exc: BaseException) -> str:
    return str(exc)[:_MAX_MESSAGE]
