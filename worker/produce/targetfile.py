"""Target files for mass reconnects: read a CSV or JSON-lines file and validate all of it.

Every line is validated (``CloseJob.parse``, as for single closes) before anything is
enqueued; bad lines are reported by line number. A target named twice is kept once.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from worker.errors import InvalidTarget, StreamctlError
from worker.model.targets import JOB_FIELDS, CloseJob


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class TargetList:
    """A validated file: the jobs to send (first occurrence of each target, in file order)."""

    jobs: list[CloseJob]
    errors: list[LineError]
    duplicates: int


# --- reading and validating --------------------------------------------------------------


def _records(text: str, fmt: str) -> Iterator[tuple[int, Mapping[str, Any] | LineError]]:
    if fmt == "auto":
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        fmt = "jsonl" if first.startswith("{") else "csv"
    if fmt == "jsonl":
        yield from _json_lines(text)
    elif fmt == "csv":
        yield from _csv_rows(text)
    else:
        raise StreamctlError(f"unknown format {fmt!r}: csv, jsonl or auto")


def _json_lines(text: str) -> Iterator[tuple[int, Mapping[str, Any] | LineError]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, LineError(number, f"not JSON ({exc.msg})")
            continue
        if not isinstance(value, dict):
            yield number, LineError(number, "expected a JSON object with the target's fields")
        else:
            yield number, value


def _csv_rows(text: str) -> Iterator[tuple[int, Mapping[str, Any] | LineError]]:
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            # Matched case-insensitively: a spreadsheet's "App,Inst,Stream" is meant the same.
            header = [cell.strip().lower() for cell in row]
            unknown = [name for name in header if name not in JOB_FIELDS]
            if unknown or len(set(header)) != len(header):
                yield (
                    number,
                    LineError(
                        number,
                        f"bad header {','.join(header)!r}: the columns are app,inst,stream or "
                        "stream_id, and optionally origin_url, each once",
                    ),
                )
                return
            continue
        if len(row) > len(header):
            yield number, LineError(number, f"{len(row)} cells, the header has {len(header)}")
            continue
        yield (
            number,
            {name: cell.strip() for name, cell in zip(header, row, strict=False) if cell.strip()},
        )


def validate(records: Iterable[tuple[int, Mapping[str, Any] | LineError]]) -> TargetList:
    """Validate every record; keep the first of each target (by ``Target.key``)."""
    jobs: dict[str, CloseJob] = {}
    errors: list[LineError] = []
    duplicates = 0
    for number, record in records:
        if isinstance(record, LineError):
            errors.append(record)
            continue
        try:
            job = CloseJob.parse(record)
        except InvalidTarget as exc:
            errors.append(LineError(number, str(exc)))
            continue
        if job.target.key in jobs:
            duplicates += 1
        else:
            jobs[job.target.key] = job
    return TargetList(jobs=list(jobs.values()), errors=errors, duplicates=duplicates)


def decode_utf8(data: bytes, name: str) -> str:
    """The file's text; a file that is not UTF-8 is refused naming the line and the fix."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise StreamctlError(
            f"{name}: line {line} is not UTF-8 (byte 0x{data[exc.start]:02x}); save the file as "
            "UTF-8 (in a spreadsheet: CSV UTF-8) and try again"
        ) from None


def read_targets(source: str | Path | TextIO, *, fmt: str = "auto") -> TargetList:
    """Read and validate a CSV or JSON-lines target file (``"-"``: standard input)."""
    if isinstance(source, str | Path):
        if str(source) == "-":
            import sys

            raw = getattr(sys.stdin, "buffer", None)
            text = decode_utf8(raw.read(), "standard input") if raw else sys.stdin.read()
        else:
            try:
                data = Path(source).read_bytes()
            except OSError as exc:
                raise StreamctlError(f"cannot read {source}: {exc.strerror or exc}") from None
            text = decode_utf8(data, str(source))
    else:
        text = source.read()
    return validate(_records(text, fmt))
