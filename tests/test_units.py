"""The one parser of rates and durations (config/units.py), through each of its users."""

from __future__ import annotations

import pytest

from config.units import duration_seconds, parse_rate
from worker.errors import StreamctlError
from worker.schedule.file import parse_every
from worker.store.results_log import since_to_stream_id


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("20/s", 20.0),
        ("20/sec", 20.0),
        ("20/second", 20.0),
        ("1200/m", 20.0),
        ("1200/min", 20.0),
        ("1200/minute", 20.0),
        ("7200/h", 2.0),
        ("7200/hour", 2.0),
        (" 1.5 / s ", 1.5),
        ("20", 20.0),
        ("2.5", 2.5),
        (20, 20.0),
        (0.5, 0.5),
        (None, None),
        ("", None),
        ("  ", None),
    ],
)
def test_every_rate_form(text: object, rate: float | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fast", "must be a rate such as 20/s"),
        ("20/d", "must be a rate such as 20/s"),
        (True, "must be a rate such as 20/s"),
        ("0/s", "must be a positive rate"),
        (0, "must be a positive rate"),
        (-1, "must be a positive rate"),
    ],
)
def test_a_bad_rate_is_named(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30", 30), ("90s", 90), ("10m", 600), ("1h", 3600), ("1d", 86400), (" 10 m ", 600), (45, 45)],
)
def test_every_interval_form(text: object, seconds: int) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.5m", "whole seconds or a duration"),
        ("soon", "whole seconds or a duration"),
        ("0s", "at least 1"),
    ],
)
def test_a_bad_interval_is_named(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_every(text)


@pytest.mark.parametrize(
    ("since", "seconds_ago"), [("30s", 30), ("10m", 600), ("1.5h", 5400), ("2d", 172800)]
)
def test_every_since_duration(since: str, seconds_ago: int) -> None:
    now = 1_700_000_000.0
    assert since_to_stream_id(since, now=now) == f"{int((now - seconds_ago) * 1000)}-0"


def test_since_keeps_its_other_forms_and_names_a_bad_one() -> None:
    now = 1_700_000_000.0
    assert since_to_stream_id("all") == "0-0"
    # A bare number is seconds, as everywhere else (issue #14); a whole stream id keeps its form.
    assert since_to_stream_id("30", now=now) == f"{int((now - 30) * 1000)}-0"
    assert since_to_stream_id("1700000000000-3") == "1700000000000-3"
    with pytest.raises(StreamctlError, match=r"--since: expected a duration .* not 'yesterday'"):
        since_to_stream_id("yesterday")


def test_a_duration_is_none_when_it_is_not_one() -> None:
    assert duration_seconds("10") == 10.0
    assert duration_seconds("10", unit_required=True) is None
    assert duration_seconds("1.5m", whole=True) is None
    assert duration_seconds("10w") is None
