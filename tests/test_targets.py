"""Target fields refuse characters that spoof what logs and Flower show, naming field and point.

Bidi overrides, zero-width and other format characters, private-use, unassigned and surrogate
code points, controls and whitespace-only values are refused at every door: Target.parse (the
worker's parser too), the ``close`` command, and each line of a ``reconnect`` target file.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from tests.conftest import wait_for_result
from worker.cli.main import main
from worker.errors import InvalidTarget
from worker.model.targets import CloseJob, Target

SPOOFING = [
    ("\u202e", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
    ("\u200b", "U+200B (ZERO WIDTH SPACE)"),
    ("\ufeff", "U+FEFF (ZERO WIDTH NO-BREAK SPACE)"),
    ("\u2066", "U+2066 (LEFT-TO-RIGHT ISOLATE)"),
    ("\u00ad", "U+00AD (SOFT HYPHEN)"),
    ("\ue000", "U+E000 (a private-use code point)"),
    ("\U0010fffd", "U+10FFFD (a private-use code point)"),
    ("\u0378", "U+0378 (an unassigned code point)"),
    ("\ud800", "U+D800 (a surrogate)"),
    ("\x1b", "U+001B (a control character)"),
    ("\t", "U+0009 (a control character)"),
    ("\u2028", "U+2028 (LINE SEPARATOR)"),
    # A joiner between letters hides nothing useful and can split lookalikes: refused.
    ("\u200d", "U+200D (ZERO WIDTH JOINER)"),
]


@pytest.mark.parametrize(("char", "named"), SPOOFING)
@pytest.mark.parametrize("field", ["app", "inst", "stream"])
def test_spoofing_characters_are_refused_naming_field_and_code_point(
    field: str, char: str, named: str
) -> None:
    fields = {"app": "demo-origin", "inst": "live", "stream": "s1"}
    fields[field] = f"ab{char}cd"
    with pytest.raises(InvalidTarget) as refused:
        Target.parse(fields)
    assert str(refused.value) == f"{field}: {named} is not allowed"


def test_origin_url_is_held_to_the_same_rule() -> None:
    with pytest.raises(InvalidTarget, match=r"^origin_url: U\+200B \(ZERO WIDTH SPACE\)"):
        CloseJob.parse({"stream_id": 5, "origin_url": "jb-origin\u200b.secdn.net"})


@pytest.mark.parametrize("blank", [" ", "   ", "\u3000", "\u00a0 ", " \u2003"])
def test_whitespace_only_values_are_refused(blank: str) -> None:
    with pytest.raises(InvalidTarget, match=r"^inst must not be only whitespace$"):
        Target.parse({"app": "demo-origin", "inst": blank, "stream": "s1"})


@pytest.mark.parametrize("name", ["café", "直播", "трансляция", "नमस्ते", "live stream 1", "ü-ß"])
def test_letters_of_any_script_are_kept(name: str) -> None:
    target = Target.parse({"app": name, "inst": "live", "stream": name})
    assert target.app == target.stream == name


# Emoji ZWJ sequences: woman technologist, with a skin tone, heart on fire (after VS16).
@pytest.mark.parametrize("name", ["👩\u200d💻", "live 👩🏽\u200d💻", "❤\ufe0f\u200d🔥 now"])
def test_emoji_joined_by_zero_width_joiners_are_kept(name: str) -> None:
    target = Target.parse({"app": "demo-origin", "inst": "live", "stream": name})
    assert target.stream == name


@pytest.mark.parametrize("name", ["\u200d💻", "👩\u200d", "👩\u200d\u200d💻", "a\u200d💻"])
def test_a_joiner_outside_an_emoji_sequence_is_refused(name: str) -> None:
    with pytest.raises(InvalidTarget, match=r"U\+200D \(ZERO WIDTH JOINER\) is not allowed"):
        Target.parse({"app": "demo-origin", "inst": "live", "stream": name})



def test_close_refuses_a_bidi_override_and_enqueues_nothing(redis_client: redis.Redis) -> None:
    before = redis_client.llen("streamctl")
    done = CliRunner().invoke(
        main, ["close", "--app", "demo", "--inst", "live", "--stream", "evil\u202egpj.exe"]
    )
    assert done.exit_code == 2
    assert "stream: U+202E (RIGHT-TO-LEFT OVERRIDE) is not allowed" in done.stderr
    assert done.stdout == ""
    assert done.exception is None or isinstance(done.exception, SystemExit)
    assert redis_client.llen("streamctl") == before


def test_reconnect_names_the_line_of_a_spoofing_target(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    rows = [
        {"app": "demo", "inst": "live", "stream": "fine"},
        {"app": "demo", "inst": "live", "stream": "café"},
        {"app": "demo", "inst": "li\u200bve", "stream": "hidden"},
        {"stream_id": 77, "origin_url": " "},
    ]
    path = tmp_path / "targets.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    before = set(redis_client.scan_iter("streamctl:batch:*"))
    done = CliRunner().invoke(main, ["reconnect", str(path)])
    assert done.exit_code == 2
    assert "2 invalid line(s)" in done.stderr
    assert "line 3: inst: U+200B (ZERO WIDTH SPACE) is not allowed" in done.stderr
    assert "line 4: origin_url must not be only whitespace" in done.stderr
    assert set(redis_client.scan_iter("streamctl:batch:*")) == before


@pytest.mark.e2e
def test_a_raw_message_with_a_spoofing_target_ends_rejected(
    producer: Any, worker: Any, sandbox: Any
) -> None:
    before = sandbox.stats()["total"]
    job_id = f"raw-bidi-{uuid.uuid4().hex}"
    fields = {"app": "demo-origin", "inst": "live", "stream": "x\u202eyz"}
    producer.app.send_task("scaleengine.stream.close", kwargs=fields, task_id=job_id)
    result = wait_for_result(producer, job_id)
    assert result["outcome"] == "rejected"
    assert result["message"].endswith("stream: U+202E (RIGHT-TO-LEFT OVERRIDE) is not allowed")
    assert result["attempts"] == []
    assert sandbox.stats()["total"] == before
    assert worker.alive()
