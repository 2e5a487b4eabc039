"""worker.api.phpjson.php_json_encode must equal PHP's own json_encode byte for byte.

PHP-dependent tests carry the ``php`` mark and the ``php`` fixture (skip without php-cli,
fail in CI). Each PHP comparison batches its rows into a single php process.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from phpref import PhpJsonError, php_json_encode_many, require_php

from worker.api.phpjson import php_json_encode

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@pytest.fixture(scope="module")
def php() -> None:
    require_php()


# --- hand-picked cases, compared with PHP in one process ---------------------------------

_C0 = {f"c0_{code:02x}": {"v": chr(code)} for code in range(0x20)}

CASES: dict[str, dict[str, str | int]] = {
    "slash": {"v": "/"},
    "slashes_path": {"v": "a/b//c/"},
    "escaped_slash_text": {"v": "\\/"},
    "double_quote": {"v": '"'},
    "quotes_mixed": {"v": "say \"hi\" and 'bye'"},
    "backslash": {"v": "\\"},
    "backslashes": {"v": "C:\\dir\\n\\u0041"},
    **_C0,
    "all_c0_at_once": {"v": "".join(chr(code) for code in range(0x20))},
    "del": {"v": "\x7f"},
    "c1_controls": {"v": "\x80\x85\x9f"},
    "nbsp": {"v": "\xa0"},
    "e_acute": {"v": "é"},
    "e_combining": {"v": "e\u0301"},
    "cjk": {"v": "直播流"},
    "hangul": {"v": "한국어"},
    "emoji": {"v": "😀"},
    "emoji_zwj": {"v": "👩\u200d💻"},
    "astral_max": {"v": "\U0010ffff"},
    "astral_min": {"v": "\U00010000"},
    "bmp_last": {"v": "\uffff"},
    "bom": {"v": "\ufeff"},
    "line_separator": {"v": "\u2028"},
    "paragraph_separator": {"v": "\u2029"},
    "html_chars": {"v": "<>&'"},
    "script_tag": {"v": "</script><!--"},
    "empty_string": {"v": ""},
    "empty_key": {"": "x"},
    "zero": {"v": 0},
    "negative": {"v": -1},
    "negative_large": {"v": -1234567890123},
    "int64_max": {"v": INT64_MAX},
    "int64_min": {"v": INT64_MIN},
    "int32_edges": {"a": 2**31 - 1, "b": 2**31, "c": -(2**31), "d": -(2**31) - 1},
    "digit_string": {"v": "1000"},
    "float_like_string": {"v": "1.0E+25"},
    "special_keys": {"a/b": 1, 'q"': 2, "\\": 3, "é": 4, "😀": 5, "\n": 6},
    "numeric_key_not_first": {"1": "one", "0": "zero"},
    "numeric_key_alone": {"7": "seven"},
    "order_kept": {"z": 1, "a": 2, "m": "3"},
    "request_shape": {
        "command": "stream.close",
        "api_key": "APX4GKLM0RKQLSP2FBO1ROPKSSW47DZE",
        "timestamp": 1700000000,
        "cdn": 158,
        "app": "demo/origin",
        "inst": 'li"ve',
        "stream": "my\\live é 😀",
        "origin_url": "jb-origin.secdn.net",
    },
}


@pytest.fixture(scope="module")
def php_outputs(php: None) -> dict[str, str]:
    return dict(zip(CASES, php_json_encode_many(list(CASES.values())), strict=True))


@pytest.mark.php
@pytest.mark.parametrize("case", list(CASES))
def test_hand_picked_case_equals_php(case: str, php_outputs: dict[str, str]) -> None:
    assert php_json_encode(CASES[case]) == php_outputs[case]


# --- generated cases -----------------------------------------------------------------------

_SPECIAL = "/\\\"'<>&\x00\x1f\x7f\u2028\u2029é直😀\U0010ffff"
_chars = st.one_of(st.characters(codec="utf-8"), st.sampled_from(_SPECIAL))
_text = st.text(_chars, max_size=20)
_keys = st.one_of(_text, st.sampled_from(["command", "app", "stream", "stream_id", "0", "1"]))
_values = st.one_of(_text, st.integers(INT64_MIN, INT64_MAX))


def _not_a_php_list(row: dict[str, str | int]) -> bool:
    """PHP turns keys "0".."n-1" in order into a list: see test_php_list_shaped_keys."""
    return list(row) != [str(index) for index in range(len(row))]


_rows = st.dictionaries(_keys, _values, min_size=1, max_size=8).filter(_not_a_php_list)


# Each example is 50 rows and one php process. No shrinking (each step would start php again)
# and no example database (nothing written into the work tree): the assertion names the first
# differing row instead.
@pytest.mark.php
@settings(
    max_examples=20,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(rows=st.lists(_rows, min_size=50, max_size=50))
def test_generated_rows_equal_php(php: None, rows: list[dict[str, str | int]]) -> None:
    theirs = php_json_encode_many(rows)
    for row, php_says in zip(rows, theirs, strict=True):
        assert php_json_encode(row) == php_says, f"row {row!r}"


# --- refusals --------------------------------------------------------------------------------


LONE_SURROGATES = ["\ud800", "\udfff", "a\udc80b", "\ude00\ud83d"]


@pytest.mark.parametrize("text", LONE_SURROGATES)
def test_lone_surrogate_in_value_raises(text: str) -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        php_json_encode({"v": text})


@pytest.mark.parametrize("text", LONE_SURROGATES)
def test_lone_surrogate_in_key_raises(text: str) -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        php_json_encode({text: "v"})


@pytest.mark.php
@pytest.mark.parametrize("row", [{"v": "a\ud800b"}, {"a\udfffb": "v"}], ids=["value", "key"])
def test_php_refuses_lone_surrogates_too(php: None, row: dict[str, str]) -> None:
    # Sent as the ill-formed UTF-8 bytes a PHP string would hold (surrogatepass).
    with pytest.raises(PhpJsonError, match="Malformed UTF-8"):
        php_json_encode_many([row])


@pytest.mark.parametrize("value", [1.0, 0.5, float("nan"), True, False, None, b"x", [1]])
def test_non_request_values_raise(value: object) -> None:
    with pytest.raises(TypeError):
        php_json_encode({"v": value})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        php_json_encode({"outer": {"v": value}})  # type: ignore[dict-item]


def test_non_str_key_raises() -> None:
    with pytest.raises(TypeError):
        php_json_encode({1: "x"})  # type: ignore[dict-item]


# --- known spellings (no PHP needed) --------------------------------------------------------


def test_known_spellings() -> None:
    assert php_json_encode({"a": "é/😀"}) == '{"a":"\\u00e9\\/\\ud83d\\ude00"}'
    assert php_json_encode({"a": "\x00\x08\t<>&'"}) == '{"a":"\\u0000\\b\\t<>&\'"}'
    assert php_json_encode({"b": 1, "a": -2}) == '{"b":1,"a":-2}'


# --- outside the contract: PHP arrays whose keys are 0..n-1 ------------------------------


@pytest.mark.php
def test_php_list_shaped_keys(php: None) -> None:
    """PHP stores "0".."n-1" as integer keys, and json_encode writes such an array (and the
    empty array) as a JSON list. php_json_encode writes an object. No request has such keys
    (they are fixed names), so this documents the boundary rather than a defect in use."""
    assert php_json_encode_many([{"0": "x"}, {"0": "a", "1": "b"}]) == ['["x"]', '["a","b"]']
    assert php_json_encode({"0": "x"}) == '{"0":"x"}'
