"""A fast ScaleEngine stand-in for benchmarks: asyncio, keep-alive, a set reply delay.

It answers every POST with a success after ``delay`` seconds and refuses a body it has seen
before (code 0005), so a benchmark also proves that no request was replayed. It does not check
signatures (the sandbox does that); it exists to cost as little CPU as possible per request, so
that the measurement is of the client side.

Run alone: ``python -m benchmarks.standin --port 8090 --delay 0.3``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field

SUCCESS = b'{"message":"","status":"success","handle_time":"0.0001 seconds"}'
REPLAYED = b'{"status":"failure","code":"0005","message":"request replayed"}'


@dataclass
class Counters:
    requests: int = 0
    replays: int = 0
    per_second: dict[int, int] = field(default_factory=dict)
    seen: set[bytes] = field(default_factory=set)

    def busiest_second(self) -> int:
        return max(self.per_second.values(), default=0)


class StandIn:
    def __init__(self, *, delay: float, host: str = "127.0.0.1", port: int = 0) -> None:
        self.delay = delay
        self.host = host
        self.port = port
        self.counters = Counters()
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                if head.startswith(b"GET /stats"):
                    self._reply(writer, self._stats())
                    await writer.drain()
                    continue
                digest = hashlib.sha256(body).digest()
                counters = self.counters
                counters.requests += 1
                second = int(time.time())
                counters.per_second[second] = counters.per_second.get(second, 0) + 1
                if digest in counters.seen:
                    counters.replays += 1
                    reply = REPLAYED
                else:
                    counters.seen.add(digest)
                    reply = SUCCESS
                if self.delay:
                    await asyncio.sleep(self.delay)
                self._reply(writer, reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _reply(writer: asyncio.StreamWriter, reply: bytes) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(reply)).encode()
            + b"\r\n\r\n"
            + reply
        )

    def _stats(self) -> bytes:
        counters = self.counters
        return json.dumps(
            {
                "requests": counters.requests,
                "replays": counters.replays,
                "busiest_second": counters.busiest_second(),
                # Requests received in each wall-clock second (unix seconds as keys).
                "per_second": {str(k): v for k, v in counters.per_second.items()},
            }
        ).encode()

    async def serve(self, ready: threading.Event | None = None) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, backlog=4096, limit=1 << 20
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if ready is not None:
            ready.set()
        async with self._server:
            await self._server.serve_forever()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/stable/"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    standin = StandIn(delay=args.delay, port=args.port)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print(f"stand-in on {standin.url}, delay {args.delay}s", flush=True)
    asyncio.run(standin.serve())


if __name__ == "__main__":
    main()
