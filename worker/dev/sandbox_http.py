"""The sandbox's HTTP layer: a threaded loopback server, its request handler, its replies.

What the sandbox answers is decided in ``worker.dev.sandbox`` (the ``Backend`` here); this module
only reads requests (bounded bodies, urlencoded or multipart forms) and writes replies,
including a connection dropped with a TCP RST for the ``reset`` fault.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs

#: Largest request body read; a bigger one is refused unread.
MAX_BODY = 1 << 20


class Backend(Protocol):
    """What the handler asks of the sandbox."""

    verbose: bool

    def stats(self) -> dict[str, Any]: ...

    def _track(self, conn: socket.socket, *, add: bool) -> None: ...

    def _record(self, reply: Reply, at: float) -> Reply: ...

    def _control(self, path: str, body: bytes) -> Reply: ...

    def _answer(self, content_type: str, body: bytes) -> Reply: ...


@dataclass
class Reply:
    kind: str
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False


def json_reply(kind: str, payload: Mapping[str, object]) -> Reply:
    return Reply(kind, body=json.dumps(payload).encode())


def html_reply(kind: str, status: int, title: str) -> Reply:
    page = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>\n"
    return Reply(kind, status, page.encode(), "text/html; charset=UTF-8")


def text_reply(status: int, text: str, kind: str = "http_400", *, close: bool = False) -> Reply:
    return Reply(kind, status, text.encode() + b"\n", "text/plain; charset=UTF-8", close=close)


def form_field(content_type: str, body: bytes, name: str) -> bytes | None:
    """The last value of form field ``name`` (urlencoded or multipart body), or None."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/x-www-form-urlencoded":
        try:
            values = parse_qs(body.decode("utf-8"), keep_blank_values=True, errors="strict")
        except ValueError:  # also UnicodeDecodeError
            return None
        return values[name][-1].encode("utf-8") if name in values else None
    if mime != "multipart/form-data":
        return None
    header = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(header + body)
    found: bytes | None = None
    if message.is_multipart():
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == name:
                payload = part.get_payload(decode=True)
                found = payload if isinstance(payload, bytes) else found
    return found


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    sandbox: Backend

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client that went away is no news
            traceback.print_exc()


class Server6(Server):
    address_family = socket.AF_INET6


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "streamctl-sandbox"
    timeout = 120.0
    server: Server

    def setup(self) -> None:
        super().setup()
        self.server.sandbox._track(self.connection, add=True)

    def finish(self) -> None:
        self.server.sandbox._track(self.connection, add=False)
        super().finish()

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet; Sandbox(verbose=True) logs method, path and reply kind only

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/_sandbox/stats":
            self._send(json_reply("control", self.server.sandbox.stats()))
        else:
            self._send(text_reply(405, "POST only", "control"))

    def do_POST(self) -> None:
        sandbox = self.server.sandbox
        path = self.path.split("?", 1)[0]
        length = self.headers.get("Content-Length", "0")
        if self.headers.get("Transfer-Encoding") or not length.isdigit() or int(length) > MAX_BODY:
            reply = text_reply(400, "unreadable body", close=True)  # not read: no keep-alive
            if not path.startswith("/_sandbox/"):
                sandbox._record(reply, time.time())
        elif path.startswith("/_sandbox/"):
            reply = sandbox._control(path, self.rfile.read(int(length)))
        else:
            body = self.rfile.read(int(length))
            reply = sandbox._answer(self.headers.get("Content-Type", ""), body)
        if sandbox.verbose:
            sys.stderr.write(f"sandbox: {self.command} {path} -> {reply.kind}\n")
        if reply.kind == "reset":
            self._reset()
        else:
            self._send(reply)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)  # also sends Date and Server
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    def _reset(self) -> None:
        """Drop the connection with a TCP RST and no reply."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # it holds a reference: the socket really closes only without it
        self.connection.close()
