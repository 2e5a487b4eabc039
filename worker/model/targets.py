"""What a close-stream job may name, validated the same way at every door.

Producers validate before enqueueing (a clear error, nothing sent); the worker validates again,
because a raw message from another language reaches it without passing through a producer.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.errors import InvalidTarget

#: Longest app, inst, stream or origin_url accepted. ScaleEngine's own names are far shorter;
#: the bound keeps a broker message small and refuses garbage early.
MAX_TEXT_LENGTH = 255
#: ScaleEngine's stream_id is a database id; anything beyond a signed 64-bit integer is garbage.
MAX_STREAM_ID = 2**63 - 1

#: A stream named by its application, instance and name; or by its id.
NAME_FIELDS = ("app", "inst", "stream")
TARGET_FIELDS = (*NAME_FIELDS, "stream_id")
JOB_FIELDS = (*TARGET_FIELDS, "origin_url")
# Characters that are invisible or show as something else, so that a name spoofs what logs,
# results and Flower show (a bidi override turns "evil\u202egpj.exe" into "evilexe.jpg"):
# controls, format characters (bidi controls, zero-width ones, the BOM), surrogates,
# private-use and unassigned code points (unassigned as of Python's Unicode database). A
# category's label stands in for a name where Unicode gives none.
_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "a format character",
    "Cs": "a surrogate",
    "Co": "a private-use code point",
    "Cn": "an unassigned code point",
}
#: Line and paragraph separators break a log line as a newline does.
_LINE_BREAKS = "\u2028\u2029"
_HOSTISH = re.compile(r"^[A-Za-z0-9._\-:\[\]]+$")


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidTarget(f"{name} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidTarget(f"{name} must not be empty")
    if len(value) > MAX_TEXT_LENGTH:
        raise InvalidTarget(
            f"{name} is {len(value)} characters long; the limit is {MAX_TEXT_LENGTH}"
        )
    if value.isspace():
        raise InvalidTarget(f"{name} must not be only whitespace")
    for index, char in enumerate(value):
        if char == _ZERO_WIDTH_JOINER and _joins_emoji(value, index):
            continue
        if unicodedata.category(char) in _REFUSED_CATEGORIES or char in _LINE_BREAKS:
            raise InvalidTarget(f"{name}: {_describe(char)} is not allowed")
    return value


_ZERO_WIDTH_JOINER = "\u200d"
#: What may stand before the joiner of an emoji ZWJ sequence: a pictograph (So), a skin-tone
#: modifier (Sk) or the emoji presentation selector (U+FE0F). A pictograph must follow it.
_EMOJI_VARIATION_SELECTOR = "\ufe0f"


def _joins_emoji(value: str, index: int) -> bool:
    """Whether the joiner at ``index`` joins two emoji (👩 + ZWJ + 💻 is one glyph, 👩‍💻).

    Emoji ZWJ sequences are ordinary in stream names; a joiner anywhere else is refused, being
    invisible.
    """
    if index == 0 or index + 1 >= len(value):
        return False
    before, after = value[index - 1], value[index + 1]
    before_ok = before == _EMOJI_VARIATION_SELECTOR or unicodedata.category(before) in ("So", "Sk")
    return before_ok and unicodedata.category(after) == "So"


def _describe(char: str) -> str:
    """``U+202E (RIGHT-TO-LEFT OVERRIDE)``: the code point, named where Unicode names it."""
    point = f"U+{ord(char):04X}"
    label = unicodedata.name(char, "") or _REFUSED_CATEGORIES[unicodedata.category(char)]
    return f"{point} ({label})"


def _check_stream_id(value: object) -> int:
    # Producers in other languages may send "1000"; a digit string is unambiguous, so take it.
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
        raise InvalidTarget(f"stream_id must be a positive integer, not {shown}")
    if value > MAX_STREAM_ID:
        raise InvalidTarget(f"stream_id {value} is out of range (the largest is {MAX_STREAM_ID})")
    if value <= 0:
        raise InvalidTarget(f"stream_id must be a positive integer, not {value}")
    return value


def check_origin_url(value: object) -> str:
    """Validate an origin host such as ``jb-origin.secdn.net``."""
    text = _check_text("origin_url", value)
    if not _HOSTISH.match(text):
        raise InvalidTarget("origin_url must be a host name such as jb-origin.secdn.net")
    return text


@dataclass(frozen=True, slots=True)
class Target:
    """Exactly one of (app, inst, stream) or stream_id."""

    app: str | None = None
    inst: str | None = None
    stream: str | None = None
    stream_id: int | None = None

    @classmethod
    def parse(cls, fields: Mapping[str, Any]) -> Target:
        """Build a target from job fields, raising InvalidTarget naming what is wrong."""
        named = [name for name in NAME_FIELDS if fields.get(name) is not None]
        has_id = fields.get("stream_id") is not None
        if has_id and named:
            raise InvalidTarget(
                "give either stream_id or app, inst and stream, not both "
                f"(got stream_id and {', '.join(named)})"
            )
        if has_id:
            return cls(stream_id=_check_stream_id(fields["stream_id"]))
        if not named:
            raise InvalidTarget("no target: give app, inst and stream, or stream_id")
        missing = [name for name in NAME_FIELDS if name not in named]
        if missing:
            raise InvalidTarget(f"missing {', '.join(missing)}: app, inst and stream go together")
        return cls(
            app=_check_text("app", fields["app"]),
            inst=_check_text("inst", fields["inst"]),
            stream=_check_text("stream", fields["stream"]),
        )

    def as_fields(self) -> dict[str, str | int]:
        """The target's request fields, in the vendor example's order."""
        if self.stream_id is not None:
            return {"stream_id": self.stream_id}
        assert self.app is not None and self.inst is not None and self.stream is not None
        return {"app": self.app, "inst": self.inst, "stream": self.stream}

    @property
    def key(self) -> str:
        """A stable identity for this target, used to key per-target state in Redis."""
        if self.stream_id is not None:
            return f"id:{self.stream_id}"
        # Length-prefixed so that ("a/b", "c") and ("a", "b/c") never collide.
        parts = (self.app or "", self.inst or "", self.stream or "")
        return "name:" + ":".join(f"{len(part)}.{part}" for part in parts)

    def __str__(self) -> str:
        if self.stream_id is not None:
            return f"stream_id={self.stream_id}"
        return f"{self.app}/{self.inst}/{self.stream}"


@dataclass(frozen=True, slots=True)
class CloseJob:
    """A validated job: the target and, when given, the origin to call."""

    target: Target
    origin_url: str | None = None

    @classmethod
    def parse(cls, fields: Mapping[str, Any]) -> CloseJob:
        unknown = sorted(set(fields) - set(JOB_FIELDS))
        if unknown:
            raise InvalidTarget(f"unknown field(s): {', '.join(map(str, unknown))}")
        origin = fields.get("origin_url")
        return cls(
            target=Target.parse(fields),
            origin_url=None if origin is None else check_origin_url(origin),
        )

    def as_fields(self) -> dict[str, str | int]:
        """The job's request fields: its target's, and origin_url when given.

        They are what makes two jobs the same request (a job id's idempotency rule).
        """
        fields = self.target.as_fields()
        if self.origin_url is not None:
            fields["origin_url"] = self.origin_url
        return fields
