"""The anchor: what a user who hand-writes an asyncio sender gets. Run by hand, not in the tests.

One asyncio process, N keep-alive HTTP/1.1 connections, each signing a close (the project's one
signing function, worker.api.signing) and POSTing it, then the next; no queue, no retries, no
results. The client is a minimal one on asyncio streams (aiohttp is not a dependency): the
stand-in's replies are a status line, a few headers and a body of Content-Length bytes.

It is its own process so that the benchmark measures its CPU and memory alone. It prints one
JSON line: requests, failures, seconds, requests/s, CPU seconds (from the first connection to
the last reply) and peak RSS.

    python -m benchmarks.asyncio_sender --url http://127.0.0.1:8090/stable/ --jobs 2000 \
        --in-flight 200 --prefix run1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Iterator
from urllib.parse import urlencode, urlsplit

from benchmarks.procstats import peak_rss_mb
from worker.api.signing import CLOSE_COMMAND, request_fields, signed_body
from worker.model.targets import CloseJob

API_KEY = "BENCHKEY0000000000000000000000AA"
SECRET = "bench-secret-not-a-real-one"
CDN = 1


class Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.failed = 0


def signed_close(job: CloseJob) -> str:
    """The signed ``json`` field of one close, timestamped now: every sender of the benchmark."""
    fields = request_fields(
        command=CLOSE_COMMAND,
        api_key=API_KEY,
        timestamp=int(time.time()),
        cdn=CDN,
        job=job,
        origin_url=None,
    )
    return signed_body(fields, SECRET)


def request_bytes(host: str, path: str, job: CloseJob) -> bytes:
    body = urlencode({"json": signed_close(job)}).encode("ascii")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def connection(
    host: str, port: int, path: str, jobs: Iterator[CloseJob], tally: Tally
) -> None:
    """One keep-alive connection: sign, send, read the reply, next job (the iterator is shared)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for job in jobs:
            writer.write(request_bytes(host, path, job))
            await writer.drain()
            status, body = await read_reply(reader)
            tally.sent += 1
            if status != 200 or b'"success"' not in body:
                tally.failed += 1
    finally:
        writer.close()


async def send_all(url: str, jobs: list[CloseJob], in_flight: int) -> Tally:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    shared = iter(jobs)
    tally = Tally()
    await asyncio.gather(
        *(connection(host, port, parts.path, shared, tally) for _ in range(in_flight))
    )
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--in-flight", type=int, required=True)
    parser.add_argument("--prefix", required=True, help="stream names' prefix (unique per run)")
    args = parser.parse_args()
    jobs = [
        CloseJob.parse({"app": "bench", "inst": "live", "stream": f"{args.prefix}-{index:06d}"})
        for index in range(args.jobs)
    ]
    cpu_before, started = time.process_time(), time.perf_counter()
    tally = asyncio.run(send_all(args.url, jobs, args.in_flight))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    print(
        json.dumps(
            {
                "requests": tally.sent,
                "failed": tally.failed,
                "seconds": seconds,
                "rate": tally.sent / seconds,
                "cpu_seconds": cpu,
                # VmHWM, not getrusage's ru_maxrss: Linux carries that over from the forked
                # benchmark across exec, so it reports the benchmark's size.
                "peak_rss_mb": peak_rss_mb(os.getpid()),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
