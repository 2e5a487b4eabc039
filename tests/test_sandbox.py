"""The sandbox API server, over real HTTP on a free loopback port."""

from __future__ import annotations

import base64
import hashlib
import http.client
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from worker.api.signing import request_fields, signature, signed_body
from worker.dev.sandbox import Sandbox
from worker.errors import InvalidTarget
from worker.model.targets import CloseJob

SECRET = "8fc8c48da81e6a2a06a9556379bf798af508dc0792497c678b4c3532ba8b637f"
API_KEY = "APX4GKLM0RKQLSP2FBO1ROPKSSW47DZE"
CDN = 158
NAMED = {"app": "demo-origin", "inst": "live", "stream": "my_live_stream"}
BY_ID = {"stream_id": 1000}

# Distinct timestamps inside the window, so two requests for one target never share a body.
# Relative to the clock at each use: the suite may reach this file minutes after importing it.
_sequence = itertools.count()


def next_timestamp() -> int:
    return int(time.time()) - 280 + next(_sequence) % 560


def fields_for(target: dict[str, Any] = NAMED, **overrides: Any) -> dict[str, str | int]:
    fields = request_fields(
        command=overrides.pop("command", "stream.close"),
        api_key=overrides.pop("api_key", API_KEY),
        timestamp=overrides.pop("timestamp", next_timestamp()),
        cdn=overrides.pop("cdn", CDN),
        job=CloseJob.parse(target),
        origin_url=overrides.pop("origin_url", None),
    )
    assert not overrides
    return fields


def body_for(target: dict[str, Any] = NAMED, *, secret: str = SECRET, **overrides: Any) -> str:
    return signed_body(fields_for(target, **overrides), secret)


def post(sandbox: Sandbox, body: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", 5)
    return requests.post(sandbox.url, data={"json": body}, **kwargs)


def api(sandbox: Sandbox, body: str) -> dict[str, Any]:
    response = post(sandbox, body)
    assert response.status_code == 200
    reply = response.json()
    assert isinstance(reply, dict)
    return reply


def control(
    sandbox: Sandbox, name: str, payload: dict[str, Any] | None = None
) -> requests.Response:
    url = sandbox.url.replace("/stable/", f"/_sandbox/{name}")
    return requests.post(url, json=payload or {}, timeout=5)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A private sandbox per test, with this module's keys (shadows conftest's shared one)."""
    with Sandbox(secret=SECRET, api_key=API_KEY, cdn=CDN) as running:
        yield running


# --- verification ------------------------------------------------------------------------------


def test_success_reply_has_the_vendor_shape(sandbox: Sandbox) -> None:
    response = post(sandbox, body_for())
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert "Date" in response.headers
    reply = response.json()
    assert list(reply) == ["message", "status", "handle_time"]
    assert reply["message"] == "" and reply["status"] == "success"
    assert re.fullmatch(r"\d+\.\d{4} seconds", reply["handle_time"])
    assert api(sandbox, body_for(BY_ID))["status"] == "success"
    assert sandbox.stats()["replies"] == {"success": 2}


def test_handle_time_as_float() -> None:
    with Sandbox(secret=SECRET, api_key=API_KEY, cdn=CDN, handle_time_as_string=False) as sb:
        reply = api(sb, body_for())
    assert reply["status"] == "success"
    assert isinstance(reply["handle_time"], float)


def test_keep_alive_serves_several_requests_on_one_connection(sandbox: Sandbox) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", sandbox.port, timeout=5)
    sockets = set()
    try:
        for _ in range(3):
            form = urlencode({"json": body_for()})
            connection.request(
                "POST", "/stable/", form, {"Content-Type": "application/x-www-form-urlencoded"}
            )
            response = connection.getresponse()
            assert response.status == 200
            assert response.getheader("Connection") is None
            assert json.loads(response.read())["status"] == "success"
            sockets.add(connection.sock)
        assert len(sockets) == 1 and None not in sockets  # never closed nor reopened
    finally:
        connection.close()


def test_wrong_secret_is_a_bad_signature(sandbox: Sandbox) -> None:
    reply = api(sandbox, body_for(secret="not-the-secret"))
    assert reply == {"status": "failure", "code": "0003", "message": reply["message"]}
    assert sandbox.stats()["bad_signatures"] == 1


def test_tampered_or_undecodable_bodies_are_bad_signatures(sandbox: Sandbox) -> None:
    signed = json.loads(body_for())
    tampered = dict(signed, stream="another_stream")
    reordered = {"api_key": signed["api_key"], **signed}  # same values, other key order
    unsigned = {k: v for k, v in signed.items() if k != "signature"}
    with_float = dict(unsigned, timestamp=float(unsigned["timestamp"]))
    with_float["signature"] = signed["signature"]
    for bad in (tampered, reordered, unsigned, with_float):
        assert api(sandbox, json.dumps(bad))["code"] == "0003"
    for bad_text in ("not json", "[1, 2]", '{"command": "stream.close"'):
        assert api(sandbox, bad_text)["code"] == "0003"
    assert sandbox.stats()["bad_signatures"] == 7


def test_slashes_and_unicode_are_checked_as_php_encodes_them(sandbox: Sandbox) -> None:
    target = {"app": "démo/origin", "inst": "live", "stream": "流/🎥"}
    assert api(sandbox, body_for(target))["status"] == "success"
    # The same request with the slash unescaped is another byte string but the same JSON
    # value: the server re-encodes, so it still verifies (and is not a replay of the first).
    fields = fields_for(target)
    sent = json.dumps({**fields, "signature": signature(fields, SECRET)}, ensure_ascii=False)
    assert "/" in sent and api(sandbox, sent)["status"] == "success"


def test_wrong_api_key_or_cdn(sandbox: Sandbox) -> None:
    assert api(sandbox, body_for(api_key="WRONGKEY"))["code"] == "0001"
    assert api(sandbox, body_for(cdn=159))["code"] == "0001"
    assert api(sandbox, body_for(cdn=str(CDN)))["code"] == "0001"  # integers as integers


def test_stale_or_future_timestamp(sandbox: Sandbox) -> None:
    now = int(time.time())
    assert api(sandbox, body_for(timestamp=now - 400))["code"] == "0002"
    assert api(sandbox, body_for(timestamp=now + 400))["code"] == "0002"
    assert api(sandbox, body_for(timestamp=now - 200))["status"] == "success"


def test_narrow_timestamp_window() -> None:
    with Sandbox(secret=SECRET, api_key=API_KEY, cdn=CDN, timestamp_window=5) as sb:
        assert api(sb, body_for(timestamp=int(time.time()) - 30))["code"] == "0002"
        assert api(sb, body_for(timestamp=int(time.time())))["status"] == "success"


def test_unknown_command(sandbox: Sandbox) -> None:
    reply = api(sandbox, body_for(command="stream.open"))
    assert reply["status"] == "failure" and reply["code"] == "0000"


def test_missing_fields(sandbox: Sandbox) -> None:
    no_target: dict[str, str | int] = {
        "command": "stream.close",
        "api_key": API_KEY,
        "timestamp": int(time.time()),
        "cdn": CDN,
    }
    assert api(sandbox, signed_body(no_target, SECRET))["code"] == "0006"
    half_target = {**no_target, "app": "a", "inst": "b"}
    assert api(sandbox, signed_body(half_target, SECRET))["code"] == "0006"
    no_timestamp = {k: v for k, v in fields_for().items() if k != "timestamp"}
    assert api(sandbox, signed_body(no_timestamp, SECRET))["code"] == "0006"


def test_replayed_body_is_refused_and_counted(sandbox: Sandbox) -> None:
    body = body_for()
    assert api(sandbox, body)["status"] == "success"
    reply = api(sandbox, body)
    assert reply == {"status": "failure", "code": "0005", "message": "request replayed"}
    assert api(sandbox, body)["code"] == "0005"
    assert api(sandbox, body_for())["status"] == "success"  # freshly signed: fine
    stats = sandbox.stats()
    assert stats["replays"] == 2
    assert stats["replies"] == {"success": 2, "0005": 2}


def test_multipart_body_as_the_php_example_sends(sandbox: Sandbox) -> None:
    body = body_for()
    response = requests.post(sandbox.url, files={"json": (None, body)}, timeout=5)
    assert response.request.headers["Content-Type"].startswith("multipart/form-data")
    assert response.json()["status"] == "success"
    # The same bytes again, urlencoded this time, are still a replay.
    assert api(sandbox, body)["code"] == "0005"
    manual = (
        b'--XyZ\r\nContent-Disposition: form-data; name="other"\r\n\r\nx\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="json"\r\n\r\n'
        + body_for(BY_ID).encode()
        + b"\r\n--XyZ--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    response = requests.post(sandbox.url, data=manual, headers=headers, timeout=5)
    assert response.json()["status"] == "success"


def test_missing_field_or_unparseable_body_is_http_400(sandbox: Sandbox) -> None:
    for kwargs in (
        {"data": {"jsn": body_for()}},
        {"data": b"json=%ff%fe", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        {"data": body_for(), "headers": {"Content-Type": "application/json"}},
    ):
        response = requests.post(sandbox.url, timeout=5, **kwargs)
        assert response.status_code == 400
        assert response.headers["Content-Type"].startswith("text/plain")
    assert sandbox.stats()["replies"] == {"http_400": 3}


@pytest.mark.parametrize(
    "nested",
    ["[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000, "[" * 5_000],
    ids=["lists", "objects", "unclosed"],
)
def test_deeply_nested_json_is_http_400_not_a_dropped_connection(
    sandbox: Sandbox, nested: str
) -> None:
    api_reply = requests.post(sandbox.url, data={"json": nested}, timeout=5)
    assert api_reply.status_code == 400
    assert "nested too deeply" in api_reply.text
    url = sandbox.url.replace("/stable/", "/_sandbox/faults")
    control_reply = requests.post(url, data=nested, timeout=5)
    assert control_reply.status_code == 400
    assert "nested too deeply" in control_reply.text
    assert sandbox.stats()["replies"] == {"http_400": 1}
    assert api(sandbox, body_for())["status"] == "success"  # and it serves on


# --- faults ------------------------------------------------------------------------------------


def test_http_error_is_consumed_after_times(sandbox: Sandbox) -> None:
    sandbox.inject(NAMED, "http_error", times=2)
    for _ in range(2):
        response = post(sandbox, body_for())
        assert response.status_code == 503
        assert "html" in response.headers["Content-Type"]
    assert api(sandbox, body_for())["status"] == "success"
    sandbox.inject(NAMED, "http_error", status=502)
    assert post(sandbox, body_for()).status_code == 502


def test_rate_limit_with_retry_after(sandbox: Sandbox) -> None:
    sandbox.inject(BY_ID, "rate_limit", retry_after=7)
    sandbox.inject(BY_ID, "rate_limit")
    response = post(sandbox, body_for(BY_ID))
    assert response.status_code == 429 and response.headers["Retry-After"] == "7"
    response = post(sandbox, body_for(BY_ID))
    assert response.status_code == 429 and "Retry-After" not in response.headers
    assert api(sandbox, body_for(BY_ID))["status"] == "success"
    sandbox.inject(BY_ID, "rate_limit", retry_after=0.5)
    assert post(sandbox, body_for(BY_ID)).headers["Retry-After"] == "0.5"


def test_not_json(sandbox: Sandbox) -> None:
    sandbox.inject(NAMED, "not_json")
    response = post(sandbox, body_for())
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    assert api(sandbox, body_for())["status"] == "success"


def test_refuse_with_code(sandbox: Sandbox) -> None:
    sandbox.inject(NAMED, "refuse", code="1000")
    sandbox.inject(NAMED, "refuse", code="0004")
    busy = api(sandbox, body_for())
    assert busy["status"] == "failure" and busy["code"] == "1000"
    assert api(sandbox, body_for())["code"] == "0004"
    assert api(sandbox, body_for())["status"] == "success"
    assert sandbox.stats()["replies"] == {"refuse": 2, "success": 1}


def test_slow_delays_then_succeeds(sandbox: Sandbox) -> None:
    sandbox.inject(NAMED, "slow", delay=0.3)
    started = time.monotonic()
    reply = api(sandbox, body_for())
    assert time.monotonic() - started >= 0.3
    assert reply["status"] == "success"
    assert float(reply["handle_time"].split()[0]) >= 0.3
    with pytest.raises(requests.Timeout):  # a client's read timeout fires on a slow reply
        sandbox.inject(NAMED, "slow", delay=0.5)
        post(sandbox, body_for(), timeout=0.1)
    started = time.monotonic()
    assert api(sandbox, body_for())["status"] == "success"
    assert time.monotonic() - started < 0.3


def test_slow_does_not_block_other_requests(sandbox: Sandbox) -> None:
    sandbox.inject(NAMED, "slow", delay=0.5)
    slow = threading.Thread(target=post, args=(sandbox, body_for()))
    slow.start()
    time.sleep(0.05)
    started = time.monotonic()
    assert api(sandbox, body_for(BY_ID))["status"] == "success"
    assert sandbox.stats()["replies"] == {"success": 1}  # the lock is free while it sleeps
    assert time.monotonic() - started < 0.3
    slow.join()
    assert sandbox.stats()["replies"] == {"success": 1, "slow": 1}


def test_reset_drops_the_connection(sandbox: Sandbox) -> None:
    sandbox.inject(NAMED, "reset")
    body = body_for()
    with pytest.raises(requests.ConnectionError):
        post(sandbox, body)
    # The server may have acted on it: the same bytes again are a replay.
    assert api(sandbox, body)["code"] == "0005"
    assert api(sandbox, body_for())["status"] == "success"
    with requests.Session() as session:  # a kept-alive connection is reset just the same
        assert session.post(sandbox.url, data={"json": body_for()}, timeout=5).ok
        sandbox.inject(NAMED, "reset")
        with pytest.raises(requests.ConnectionError):
            session.post(sandbox.url, data={"json": body_for()}, timeout=5)
        assert session.post(sandbox.url, data={"json": body_for()}, timeout=5).json()["status"] == (
            "success"
        )


def test_faults_are_per_target_queue_in_order_and_star_matches_all(sandbox: Sandbox) -> None:
    sandbox.inject(NAMED, "http_error")
    sandbox.inject(NAMED, "refuse", code="1000")
    assert api(sandbox, body_for(BY_ID))["status"] == "success"  # another target: untouched
    assert post(sandbox, body_for()).status_code == 503
    assert api(sandbox, body_for())["code"] == "1000"
    sandbox.inject("*", "http_error", times=2, status=500)
    assert post(sandbox, body_for(BY_ID)).status_code == 500
    assert post(sandbox, body_for()).status_code == 500
    assert api(sandbox, body_for())["status"] == "success"
    sandbox.inject("*", "http_error", times=5)
    sandbox.clear_faults()
    assert api(sandbox, body_for())["status"] == "success"


def test_faults_apply_only_to_verified_requests_and_replays_are_still_caught(
    sandbox: Sandbox,
) -> None:
    sandbox.inject(NAMED, "http_error", times=2)
    assert api(sandbox, body_for(secret="wrong"))["code"] == "0003"  # consumes nothing
    body = body_for()
    assert post(sandbox, body).status_code == 503
    assert api(sandbox, body)["code"] == "0005"  # a retry of the same bytes: replay
    assert post(sandbox, body_for()).status_code == 503  # the second unit
    assert api(sandbox, body_for())["status"] == "success"


def test_inject_validates_its_arguments(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        sandbox.inject(NAMED, "explode")
    with pytest.raises(InvalidTarget):
        sandbox.inject({"app": "only-app"}, "reset")
    with pytest.raises(ValueError):
        sandbox.inject("all", "reset")
    with pytest.raises(ValueError):
        sandbox.inject(NAMED, "reset", times=0)
    with pytest.raises(ValueError):
        sandbox.inject(NAMED, "refuse", code="busy")


def test_outage(sandbox: Sandbox) -> None:
    sandbox.outage(0.3)
    body = body_for()
    assert post(sandbox, body).status_code == 503
    assert post(sandbox, body_for(BY_ID)).status_code == 503
    time.sleep(0.35)
    assert api(sandbox, body)["status"] == "success"  # an outage verified and stored nothing
    assert sandbox.stats()["replies"] == {"outage": 2, "success": 1}


# --- stats, control, lifecycle -------------------------------------------------------------


def test_stats_records_requests_without_secrets(sandbox: Sandbox) -> None:
    bodies = [body_for(origin_url="jb-origin.secdn.net") for _ in range(3)]
    before = time.time()
    for body in bodies[:2]:
        assert api(sandbox, body)["status"] == "success"
    assert api(sandbox, bodies[0])["code"] == "0005"
    assert api(sandbox, body_for(secret="wrong"))["code"] == "0003"
    records = sandbox.requests_for(NAMED)
    assert [r["reply"] for r in records] == ["success", "success", "0005", "0003"]
    assert [r["timestamp"] for r in records[:3]] == [
        json.loads(bodies[0])["timestamp"],
        json.loads(bodies[1])["timestamp"],
        json.loads(bodies[0])["timestamp"],
    ]
    assert records[0]["body_sha256"] == hashlib.sha256(bodies[0].encode()).hexdigest()
    assert records[2]["body_sha256"] == records[0]["body_sha256"]
    assert all(before <= r["received_at"] <= time.time() for r in records)
    stats = sandbox.stats()
    assert stats["total"] == 4 and stats["replays"] == 1 and stats["bad_signatures"] == 1
    assert 1 <= stats["busiest_second"] <= 4
    assert list(stats["targets"]) == [CloseJob.parse(NAMED).target.key]
    dumped = json.dumps(stats)
    signatures = [json.loads(b)["signature"] for b in bodies]
    for secret_thing in (SECRET, API_KEY, *signatures):
        assert secret_thing not in dumped
    raw_digest = base64.b64decode(signatures[0]).hex()
    assert raw_digest not in dumped
    assert sandbox.requests_for(BY_ID) == []


def test_busiest_second_counts_a_burst(sandbox: Sandbox) -> None:
    with requests.Session() as session:
        for _ in range(5):
            reply = session.post(sandbox.url, data={"json": body_for()}, timeout=5).json()
            assert reply["status"] == "success"
    # Five quick requests straddle at most one second boundary.
    assert 3 <= sandbox.stats()["busiest_second"] <= 5


def test_reset_forgets_everything(sandbox: Sandbox) -> None:
    body = body_for()
    assert api(sandbox, body)["status"] == "success"
    sandbox.inject(NAMED, "http_error")
    sandbox.reset()
    assert sandbox.stats()["total"] == 0
    assert api(sandbox, body)["status"] == "success"  # no fault left, not a replay any more


def test_control_endpoints_over_http(sandbox: Sandbox) -> None:
    response = control(sandbox, "faults", {"target": BY_ID, "fault": "refuse", "code": "1000"})
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert api(sandbox, body_for(BY_ID))["code"] == "1000"
    assert control(sandbox, "faults", {"target": "*", "fault": "rate_limit", "retry_after": 2}).ok
    response = post(sandbox, body_for())
    assert response.status_code == 429 and response.headers["Retry-After"] == "2"

    assert control(sandbox, "outage", {"seconds": 30}).ok
    assert post(sandbox, body_for()).status_code == 503
    assert control(sandbox, "faults", {"target": NAMED, "fault": "http_error", "times": 3}).ok
    assert control(sandbox, "clear_faults").ok
    assert api(sandbox, body_for())["status"] == "success"

    stats = requests.get(sandbox.url.replace("/stable/", "/_sandbox/stats"), timeout=5).json()
    assert stats == sandbox.stats()
    assert stats["replies"] == {"refuse": 1, "rate_limit": 1, "outage": 1, "success": 1}
    assert control(sandbox, "reset").ok
    assert sandbox.stats()["total"] == 0

    for bad in (
        {"target": NAMED, "fault": "explode"},
        {"target": {"app": "x"}, "fault": "reset"},
        {"target": NAMED, "fault": "reset", "secret": "x"},
        {"fault": "reset"},
        {"target": NAMED, "fault": "reset", "times": "many"},
        {"target": 5, "fault": "reset"},
        {"target": [1], "fault": "reset"},
        {"target": True, "fault": "refuse"},
    ):
        response = control(sandbox, "faults", bad)
        assert response.status_code == 400, bad
        assert response.text.strip(), bad
    for not_a_target in (5, [1]):
        response = control(sandbox, "faults", {"target": not_a_target, "fault": "reset"})
        assert "target must be a mapping of target fields" in response.text
    assert control(sandbox, "outage", {"seconds": "long"}).status_code == 400
    assert control(sandbox, "nothing").status_code == 404
    assert sandbox.stats()["total"] == 0  # control requests are not API requests


def test_verbose_logs_the_reply_kind_but_never_the_body(
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = body_for()
    with Sandbox(secret=SECRET, api_key=API_KEY, cdn=CDN, verbose=True) as sb:
        assert api(sb, body)["status"] == "success"
        assert api(sb, body)["code"] == "0005"
    err = capsys.readouterr().err
    assert "POST /stable/ -> success" in err and "POST /stable/ -> 0005" in err
    assert json.loads(body)["signature"] not in err and API_KEY not in err


def test_quiet_by_default(sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    assert api(sandbox, body_for())["status"] == "success"
    assert post(sandbox, "junk").status_code == 200
    assert capsys.readouterr() == ("", "")


def test_localhost_is_accepted() -> None:
    with Sandbox(secret=SECRET, api_key=API_KEY, cdn=CDN, host="localhost") as sb:
        assert sb.url.startswith("http://localhost:")
        assert api(sb, body_for())["status"] == "success"


def test_refuses_non_loopback_hosts() -> None:
    for host in ("0.0.0.0", "192.0.2.1", "example.com", ""):
        with pytest.raises(ValueError, match="loopback"):
            Sandbox(secret=SECRET, api_key=API_KEY, cdn=CDN, host=host)


def test_stop_closes_the_port_and_kept_alive_connections() -> None:
    sandbox = Sandbox(secret=SECRET, api_key=API_KEY, cdn=CDN).start()
    assert sandbox.url == f"http://127.0.0.1:{sandbox.port}/stable/"
    with requests.Session() as session:
        assert session.post(sandbox.url, data={"json": body_for()}, timeout=5).ok
        sandbox.stop()
        with pytest.raises(requests.ConnectionError):
            session.post(sandbox.url, data={"json": body_for()}, timeout=5)
