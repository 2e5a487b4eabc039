"""Signing as the vendor's PHP example does it: vendor vectors, key order, and PHP itself."""

from __future__ import annotations

import base64
import json

import pytest
from phpref import php_sign_many, require_php

from worker.api.phpjson import php_json_encode
from worker.api.signing import CLOSE_COMMAND, request_fields, signature, signed_body
from worker.model.targets import CloseJob

API_KEY = "APX4GKLM0RKQLSP2FBO1ROPKSSW47DZE"
SECRET = "8fc8c48da81e6a2a06a9556379bf798af508dc0792497c678b4c3532ba8b637f"
CDN = 158
TIMESTAMP = 1700000000


def _fields(job_fields: dict[str, str | int]) -> dict[str, str | int]:
    job = CloseJob.parse(job_fields)
    return request_fields(
        command=CLOSE_COMMAND,
        api_key=API_KEY,
        timestamp=TIMESTAMP,
        cdn=CDN,
        job=job,
        origin_url=job.origin_url,
    )


BY_NAME = {
    "app": "demo-origin",
    "inst": "live",
    "stream": "my_live_stream",
    "origin_url": "jb-origin.secdn.net",
}


# --- vendor vectors (no PHP needed; both were also produced by PHP 8.2 from the example) ---


def test_vendor_vector_by_name_with_origin() -> None:
    fields = _fields(BY_NAME)
    assert php_json_encode(fields) == (
        '{"command":"stream.close","api_key":"APX4GKLM0RKQLSP2FBO1ROPKSSW47DZE",'
        '"timestamp":1700000000,"cdn":158,"app":"demo-origin","inst":"live",'
        '"stream":"my_live_stream","origin_url":"jb-origin.secdn.net"}'
    )
    assert signature(fields, SECRET) == "YTy77IL/rmAGUl4oOv4mcdqrQgJsRlmQIzf19980McM="


def test_vendor_vector_by_stream_id_without_origin() -> None:
    fields = _fields({"stream_id": 1000})
    assert php_json_encode(fields) == (
        '{"command":"stream.close","api_key":"APX4GKLM0RKQLSP2FBO1ROPKSSW47DZE",'
        '"timestamp":1700000000,"cdn":158,"stream_id":1000}'
    )
    assert signature(fields, SECRET) == "EMSN+CfInQuC7MZmdt46a3FN55sapTovE/KvRNSJCTE="


def test_signature_depends_on_secret_and_fields() -> None:
    fields = _fields(BY_NAME)
    assert signature(fields, SECRET + "x") != signature(fields, SECRET)
    assert signature({**fields, "stream": "other"}, SECRET) != signature(fields, SECRET)
    # A standard, padded base64 of a 32-byte digest.
    assert len(base64.b64decode(signature(fields, SECRET), validate=True)) == 32


# --- key order and the signed body -----------------------------------------------------------


def test_key_order_by_name() -> None:
    # Job fields given in another order: the request still follows the vendor's order.
    fields = _fields({"origin_url": "o.example", "stream": "s", "inst": "i", "app": "a"})
    assert list(fields) == [
        "command", "api_key", "timestamp", "cdn", "app", "inst", "stream", "origin_url",
    ]  # fmt: skip


def test_key_order_by_stream_id_with_origin() -> None:
    fields = _fields({"origin_url": "o.example", "stream_id": "42"})
    assert list(fields) == ["command", "api_key", "timestamp", "cdn", "stream_id", "origin_url"]
    assert fields["stream_id"] == 42


def test_no_origin_key_without_origin() -> None:
    assert "origin_url" not in _fields({"app": "a", "inst": "i", "stream": "s"})


def test_signed_body_has_signature_last() -> None:
    fields = _fields(BY_NAME)
    before = dict(fields)
    body = signed_body(fields, SECRET)
    decoded = json.loads(body)
    assert list(decoded) == [*fields, "signature"]
    assert decoded["signature"] == "YTy77IL/rmAGUl4oOv4mcdqrQgJsRlmQIzf19980McM="
    assert {key: decoded[key] for key in fields} == fields
    # The body is itself PHP's encoding of the signed array, and the input is left alone.
    assert body == php_json_encode({**fields, "signature": decoded["signature"]})
    assert "\\/" in body  # the base64 '/' of the signature is escaped as PHP does
    assert fields == before


# --- PHP-checked: our signature() equals PHP's for awkward names ----------------------------

AWKWARD_TARGETS: dict[str, dict[str, str | int]] = {
    "slashes": {"app": "a/b", "inst": "live/", "stream": "/x/y/z"},
    "quotes": {"app": 'say "hi"', "inst": "it's", "stream": '""'},
    "backslashes": {"app": "C:\\app", "inst": "\\", "stream": "a\\/b\\\\"},
    "non_ascii": {"app": "café", "inst": "直播", "stream": "stream 😀 é\u00a0x"},
    "html": {"app": "<app>", "inst": "&inst", "stream": "</script>"},
    "mixed_origin": {"app": 'a/"é', "inst": "i", "stream": "s/😀", "origin_url": "o.example"},
    "stream_id": {"stream_id": 9223372036854775807},
}


@pytest.mark.php
def test_signature_equals_php() -> None:
    require_php()
    rows = [_fields(target) for target in AWKWARD_TARGETS.values()]
    php = php_sign_many(rows, SECRET)
    ours = [signature(row, SECRET) for row in rows]
    assert dict(zip(AWKWARD_TARGETS, ours, strict=True)) == dict(
        zip(AWKWARD_TARGETS, php, strict=True)
    )


@pytest.mark.php
def test_signature_equals_php_with_non_ascii_secret() -> None:
    require_php()
    secret = 'sécret/"😀'
    row = _fields(AWKWARD_TARGETS["non_ascii"])
    assert signature(row, secret) == php_sign_many([row], secret)[0]
