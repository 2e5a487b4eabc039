"""A ScaleEngine-compatible stand-in API server for tests, benchmarks and local runs.

It verifies a request the way the PHP backend is understood to: decode the ``json`` form field,
take out ``signature``, re-encode the rest with ``json_encode`` in the order received and compare
base64 HMAC-SHA256 digests. API replies are HTTP 200 JSON unless a fault says otherwise. It
refuses byte-identical bodies as replays, and lets a test inject faults per target (``inject``)
or take the whole API down (``outage``), from Python or over HTTP (``/_sandbox/...``).

Stats keep, per request, its target, its timestamp field, the sha256 of its ``json`` field and
the reply kind; never the signature, the api key or the secret. Only loopback is served.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from config.urls import is_loopback_host
from worker.api.signing import CLOSE_COMMAND, signature
from worker.dev.sandbox_http import (
    Handler,
    Reply,
    Server,
    Server6,
    form_field,
    html_reply,
    json_reply,
    text_reply,
)
from worker.errors import InvalidTarget
from worker.model.targets import Target

FAULT_KINDS = ("http_error", "slow", "rate_limit", "not_json", "refuse", "reset")
REQUIRED_FIELDS = ("command", "api_key", "timestamp", "cdn")
MESSAGES = {
    "0000": "unrecognized API command",
    "0001": "CDN authorization failed",
    "0002": "timestamp outside valid range, make sure your timestamp is in UTC",
    "0003": "failed HMAC-SHA256 signature",
    "0004": "unexpected error",
    "0005": "unauthorized",
    "0006": "required fields missing",
    "1000": "larger than usual volume of traffic, try again in a few minutes",
}
#: Bodies remembered for replay detection; past this the oldest are forgotten.
MAX_SEEN = 200_000
#: The reply to JSON nested past what the decoder takes (its recursion limit).
TOO_DEEP = "{} is nested too deeply to decode"
_FAULT_PARAMS = frozenset({"times", "status", "delay", "retry_after", "code"})


@dataclass
class _Fault:
    kind: str
    remaining: int
    status: int
    delay: float
    retry_after: float | None
    code: str


def _failure(kind: str, code: str, message: str | None = None) -> Reply:
    text = MESSAGES.get(code, "failure") if message is None else message
    return json_reply(kind, {"status": "failure", "code": code, "message": text})


def _target_key(request: Mapping[str, Any] | None) -> str | None:
    try:
        return Target.parse(request).key if request is not None else None
    except InvalidTarget:
        return None


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0")
    return float(value)


class Sandbox:
    """A stand-in for ``https://api.scaleengine.net/stable/`` on loopback, bound at creation."""

    def __init__(
        self,
        *,
        secret: str,
        api_key: str,
        cdn: int,
        host: str = "127.0.0.1",
        port: int = 0,
        timestamp_window: float = 300.0,
        handle_time_as_string: bool = True,
        verbose: bool = False,
    ) -> None:
        if not is_loopback_host(host):
            raise ValueError(f"the sandbox serves loopback addresses only, not {host!r}")
        self._secret, self._api_key, self._cdn = secret, api_key, cdn
        self.timestamp_window = timestamp_window
        self.handle_time_as_string = handle_time_as_string
        self.verbose = verbose
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        self._serving = False
        self._reset_state()
        self._server = (Server6 if ":" in host else Server)((host, port), Handler)
        self._server.sandbox = self
        self.port: int = self._server.server_address[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}/stable/"

    def start(self) -> Sandbox:
        """Serve in a daemon thread; returns self."""
        if self._thread is None:
            self._serving = True
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name="sandbox", daemon=True
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop()`` from another thread, or an exception."""
        self._serving = True
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._server.server_close()

    def stop(self) -> None:
        """Stop serving, cut open keep-alive connections and release the port."""
        if self._serving:
            self._server.shutdown()
            self._serving = False
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def inject(
        self,
        target: Mapping[str, Any] | str,
        fault: str,
        *,
        times: int = 1,
        status: int = 503,
        delay: float = 0.0,
        retry_after: float | None = None,
        code: str = "0005",
    ) -> None:
        """Apply ``fault`` to the next ``times`` verified requests of ``target`` ("*": any).

        A target's own faults come before those of "*"; within each, first in, first used.
        """
        if fault not in FAULT_KINDS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULT_KINDS)}")
        if not (target == "*" if isinstance(target, str) else isinstance(target, Mapping)):
            raise ValueError('target must be a mapping of target fields or "*"')
        key = target if isinstance(target, str) else Target.parse(target).key
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError("times must be a positive integer")
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        if not (isinstance(code, str) and len(code) == 4 and code.isdigit()):
            raise ValueError('code must be four digits such as "1000"')
        wait = None if retry_after is None else _seconds("retry_after", retry_after)
        queued = _Fault(fault, times, status, _seconds("delay", delay), wait, code)
        with self._lock:
            self._faults.setdefault(key, deque()).append(queued)

    def outage(self, seconds: float) -> None:
        """Answer every API request with HTTP 503 for the next ``seconds``."""
        until = time.monotonic() + _seconds("seconds", seconds)
        with self._lock:
            self._outage_until = until

    def clear_faults(self) -> None:
        """Forget queued faults and any outage."""
        with self._lock:
            self._faults.clear()
            self._outage_until = 0.0

    def reset(self) -> None:
        """Forget faults, outage, stats and the bodies seen (so nothing is a replay)."""
        with self._lock:
            self._reset_state()

    def _reset_state(self) -> None:
        self._faults: dict[str, deque[_Fault]] = {}
        self._outage_until = 0.0
        self._seen: dict[bytes, None] = {}
        # Digests only: lets a leak test ask "is this string a signature?" without keeping any.
        self._signature_digests: set[str] = set()
        self._replies: Counter[str] = Counter()
        self._records: dict[str, list[dict[str, Any]]] = {}
        self._total = self._replays = 0
        self._second = self._second_count = self._busiest = 0

    def _take_fault(self, key: str) -> _Fault | None:
        for queue_key in (key, "*"):
            queue = self._faults.get(queue_key)
            if queue:
                queue[0].remaining -= 1
                return queue.popleft() if queue[0].remaining <= 0 else queue[0]
        return None

    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot: counts per reply kind and per-target request records."""
        with self._lock:
            return {
                "total": self._total,
                "replies": dict(self._replies),
                "replays": self._replays,
                "bad_signatures": self._replies["0003"],
                "busiest_second": self._busiest,
                "targets": {k: [dict(r) for r in v] for k, v in self._records.items()},
            }

    def signature_seen(self, candidate: str) -> bool:
        """Whether ``candidate`` is the signature of a request this sandbox accepted."""
        with self._lock:
            return _sha256(candidate) in self._signature_digests

    def requests_for(self, target_fields: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The request records of one target, in the order they were answered."""
        key = Target.parse(target_fields).key
        with self._lock:
            return [dict(r) for r in self._records.get(key, [])]

    def _record(
        self, reply: Reply, at: float, key: str | None = None, ts: object = None, sha256: str = ""
    ) -> Reply:
        with self._lock:
            self._total += 1
            self._replies[reply.kind] += 1
            if key is not None:
                record = {"timestamp": ts, "received_at": at, "body_sha256": sha256}
                self._records.setdefault(key, []).append({**record, "reply": reply.kind})
        return reply

    def _answer(self, content_type: str, body: bytes) -> Reply:
        started, received_at = time.perf_counter(), time.time()
        raw = form_field(content_type, body, "json")
        if raw is None:
            return self._record(text_reply(400, "form field 'json' missing"), received_at)
        try:
            decoded = json.loads(raw)
        except ValueError:  # also UnicodeDecodeError
            decoded = None
        except RecursionError:  # past the decoder's depth: unreadable, like an oversized body
            return self._record(text_reply(400, TOO_DEEP.format("the json field")), received_at)
        request = decoded if isinstance(decoded, dict) else None
        key = _target_key(request)
        timestamp = request.get("timestamp") if request is not None else None
        digest = hashlib.sha256(raw).digest()
        reply = self._reply(request, key, digest, started)
        return self._record(reply, received_at, key, timestamp, digest.hex())

    def _reply(
        self, request: dict[str, Any] | None, key: str | None, digest: bytes, started: float
    ) -> Reply:
        with self._lock:
            down = time.monotonic() < self._outage_until
        if down:
            return html_reply("outage", 503, "503 Service Unavailable")
        code, fault = self._verify(request, key, digest)
        if code is not None:
            return _failure(code, code, "request replayed" if code == "0005" else None)
        if fault is None or fault.kind == "slow":
            if fault is not None:
                time.sleep(fault.delay)  # never under the lock
            elapsed = time.perf_counter() - started
            spent = f"{elapsed:.4f} seconds" if self.handle_time_as_string else round(elapsed, 4)
            kind = "success" if fault is None else "slow"
            return json_reply(kind, {"message": "", "status": "success", "handle_time": spent})
        if fault.kind == "http_error":
            return html_reply("http_error", fault.status, f"{fault.status} Error")
        if fault.kind == "rate_limit":
            reply = html_reply("rate_limit", 429, "429 Too Many Requests")
            if fault.retry_after is not None:
                wait = fault.retry_after
                reply.headers["Retry-After"] = str(int(wait) if wait.is_integer() else wait)
            return reply
        if fault.kind == "not_json":
            return html_reply("not_json", 200, "502 Bad Gateway")
        if fault.kind == "refuse":
            return _failure("refuse", fault.code)
        return Reply("reset")

    def _verify(
        self, request: dict[str, Any] | None, key: str | None, digest: bytes
    ) -> tuple[str | None, _Fault | None]:
        """Return (failure code, None), or (None, the fault to apply if any).

        Checked in this order: decodable with a signature (0003), fields present (0006),
        command (0000), api_key and cdn (0001), signature (0003), timestamp (0002), replay (0005).
        """
        if request is None or not isinstance(request.get("signature"), str):
            return "0003", None
        fields = {name: value for name, value in request.items() if name != "signature"}
        if key is None or any(fields.get(name) is None for name in REQUIRED_FIELDS):
            return "0006", None
        if fields["command"] != CLOSE_COMMAND:
            return "0000", None
        api_key, cdn = fields["api_key"], fields["cdn"]  # both strictly typed: int is not "158"
        if not (
            isinstance(api_key, str)
            and hmac.compare_digest(api_key.encode(), self._api_key.encode())
            and type(cdn) is int
            and cdn == self._cdn
        ):
            return "0001", None
        try:
            expected = signature(fields, self._secret)
        except (TypeError, ValueError):  # not what json_encode of a request can hold
            return "0003", None
        if not hmac.compare_digest(expected.encode(), request["signature"].encode()):
            return "0003", None
        now, timestamp = time.time(), fields["timestamp"]
        with self._lock:
            if int(now) != self._second:
                self._second, self._second_count = int(now), 0
            self._second_count += 1
            self._busiest = max(self._busiest, self._second_count)
            if type(timestamp) is not int or abs(now - timestamp) > self.timestamp_window:
                return "0002", None
            if digest in self._seen:
                self._replays += 1
                return "0005", None
            self._seen[digest] = None
            self._signature_digests.add(_sha256(request["signature"]))
            if len(self._seen) > MAX_SEEN:
                del self._seen[next(iter(self._seen))]
            return None, self._take_fault(key)

    def _control(self, path: str, body: bytes) -> Reply:
        try:
            try:
                payload = json.loads(body) if body.strip() else {}
            except RecursionError:
                return text_reply(400, TOO_DEEP.format("the body"), "control")
            if not isinstance(payload, dict):
                raise ValueError("the body must be a JSON object")
            if path == "/_sandbox/faults":
                target, fault = payload.pop("target", None), payload.pop("fault", None)
                if set(payload) - _FAULT_PARAMS or not isinstance(fault, str) or target is None:
                    raise ValueError(f"give target, fault and only {', '.join(_FAULT_PARAMS)}")
                self.inject(target, fault, **payload)
            elif path == "/_sandbox/outage":
                self.outage(_seconds("seconds", payload.get("seconds")))
            elif path == "/_sandbox/clear_faults":
                self.clear_faults()
            elif path == "/_sandbox/reset":
                self.reset()
            else:
                return text_reply(404, "unknown control endpoint", "control")
        except (ValueError, TypeError) as exc:  # InvalidTarget is a ValueError
            return text_reply(400, str(exc), "control")
        return json_reply("control", {"ok": True})


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
