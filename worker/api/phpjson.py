"""JSON exactly as PHP's ``json_encode($value)`` (default flags) writes it.

The ScaleEngine backend is PHP and checks the HMAC over its own re-encoding of the request,
so one differing byte is a refused request. With default flags PHP:

* writes no whitespace between tokens;
* escapes every non-ASCII character as ``\\uXXXX`` in lower-case hex, astral characters as a
  UTF-16 surrogate pair (JSON_UNESCAPED_UNICODE is off);
* escapes ``/`` as ``\\/`` (JSON_UNESCAPED_SLASHES is off);
* writes ``\\b \\f \\n \\r \\t``, ``\\"`` and ``\\\\`` in short form, other C0 controls as
  ``\\u00XX``, and leaves ``<>&'`` and DEL as they are (the JSON_HEX_* flags are off);
* fails on text that is not valid UTF-8.

Python's ``json.dumps`` with ``ensure_ascii=True`` and compact separators agrees on all of that
but two things. It leaves the slash alone: every escape either writes begins with a backslash
and none contains ``/``, so replacing each ``/`` of the output is exact. And it escapes DEL as
``\\u007f``: that escape is turned back into the raw byte, scanning escapes left to right so
that an escaped backslash followed by the text ``u007f`` is left alone. Lone surrogates are the
one input PHP refuses (invalid UTF-8) where Python would escape them, so they are refused
too. tests/test_phpjson.py checks all of this against PHP's own json_encode.

Only what a request holds is accepted: str, int (never bool or float, whose PHP spelling
depends on ini settings) and dicts of those, in insertion order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

PhpScalar = str | int
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_BACKSLASH_OR_DEL = re.compile(r"\\\\|\\u007f")


def _check(value: object, path: str) -> None:
    # Exact str and int first: the request's own fields, checked twice per request.
    if type(value) is str:
        if _LONE_SURROGATE.search(value):
            raise ValueError(f"{path}: text is not valid UTF-8 (lone surrogate)")
        return
    if type(value) is int and -(2**63) <= value < 2**63:
        return
    if isinstance(value, bool) or not isinstance(value, str | int | Mapping):
        raise TypeError(
            f"{path}: only str, int and mappings are encoded, not {type(value).__name__}"
        )
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ValueError(f"{path}: PHP integers are 64-bit; {value} does not fit")
    if isinstance(value, str) and _LONE_SURROGATE.search(value):
        raise ValueError(f"{path}: text is not valid UTF-8 (lone surrogate)")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: keys must be str")
            _check(key, f"{path} key")
            _check(item, f"{path}.{key}")


def php_json_encode(value: Mapping[str, object]) -> str:
    """Return ``json_encode($value)`` as PHP would, for an associative array of str/int."""
    _check(value, "$")
    encoded = json.dumps(value, ensure_ascii=True, separators=(",", ":")).replace("/", "\\/")
    if "\\u007f" in encoded:
        encoded = _BACKSLASH_OR_DEL.sub(_raw_del, encoded)
    return encoded


def _raw_del(match: re.Match[str]) -> str:
    return "\x7f" if match.group() == "\\u007f" else match.group()
