"""Bad input, fuzzed: at the producer, as task messages and as raw bytes on the broker's queue.

A producer answers bad fields with a clear InvalidTarget and enqueues nothing; whatever reaches
the worker ends ``rejected`` or is discarded, and the worker goes on serving.
"""

from __future__ import annotations

import base64
import json
import pickle
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from config.lanes import URGENT_QUEUE
from tests.faults.harness import Cluster, cluster, report, unique_target
from worker.broker.app import CLOSE_TASK, app
from worker.consume.runner import META_FIELDS, parse_meta
from worker.errors import IdempotencyConflict, InvalidTarget
from worker.model.targets import CloseJob
from worker.schedule.run import SCHEDULE_TASK

pytestmark = pytest.mark.faults

FUZZ = hsettings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure can be reproduced
    database=None,
    suppress_health_check=list(HealthCheck),
)
HUGE = "x" * 100_000
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=300),
    st.just(HUGE),
    st.sampled_from(["1000", "0", "-1", "demo", "a\nb", "jb-origin.secdn.net", "\u2028"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=5,
)
anything = st.one_of(json_values, st.binary(max_size=8), st.floats(), st.tuples(st.integers()))
#: Names a producer may well send (printable, 1 to 255 characters), so many examples pass.
names = st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "Zs"]), min_size=1)
hosts = st.from_regex(r"[a-z0-9.-]{1,40}", fullmatch=True)
FIELD_NAMES = ["app", "inst", "stream", "stream_id", "origin_url", *META_FIELDS]


def worker_verdict(args: list[Any], kwargs: dict[str, Any]) -> str | None:
    """What the worker's own validation says of a message: an error, or None if it is valid."""
    if args:
        return "positional arguments"
    try:
        parse_meta(kwargs)
        CloseJob.parse({k: v for k, v in kwargs.items() if k not in META_FIELDS})
    except InvalidTarget as exc:
        return str(exc)
    return None


def fuzz_producer(fleet: Cluster) -> dict[str, int]:
    """Producer.close with random fields: a job id, or a clear InvalidTarget; nothing else."""
    counts = {"accepted": 0, "refused": 0}
    refusals: list[str] = []

    @FUZZ
    # A shape first (names, an id, or anything at all), so that a good share of examples pass.
    @given(
        shape=st.sampled_from(["names", "stream_id", "anything"]),
        app=st.one_of(names, names, names, anything),
        inst=st.one_of(names, names, names, anything),
        stream=st.one_of(names, names, names, anything),
        stream_id=st.one_of(st.integers(), st.from_regex(r"[0-9]{1,20}", fullmatch=True), anything),
        origin_url=st.one_of(st.none(), st.none(), hosts, anything),
        expires=st.one_of(st.none(), st.none(), st.integers(1, 10**6), st.floats(), st.integers()),
        job_id=st.one_of(st.none(), st.text(min_size=1, max_size=80)),
    )
    def one(shape: str, **fields: Any) -> None:
        if shape == "names":
            fields["stream_id"] = None
        elif shape == "stream_id":
            fields.update(app=None, inst=None, stream=None)
        try:
            fleet.producer.close(**fields)
        except (InvalidTarget, IdempotencyConflict) as exc:
            # A random job id may repeat with other fields: refused as a reused key, clearly.
            assert str(exc).strip(), f"a {type(exc).__name__} without a message"
            refusals.append(str(exc))
            counts["refused"] += 1
        else:
            counts["accepted"] += 1

    one()
    # Nothing the producer accepted is refused by the worker: check every queued message.
    queued = 0
    while (raw := fleet.redis.rpop(URGENT_QUEUE)) is not None:  # single closes are urgent
        envelope = json.loads(raw)
        args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        assert worker_verdict(args, kwargs) is None, kwargs
        queued += 1
    assert all(len(message) < 400 for message in refusals)  # clear and short, not an echo
    return {**counts, "queued": queued}


def fuzz_task_messages(fleet: Cluster) -> dict[str, str | None]:
    """Task messages with random kwargs and args, sent by name as another language would."""
    sent: dict[str, str | None] = {}

    @FUZZ
    @given(
        kwargs=st.dictionaries(
            st.sampled_from(FIELD_NAMES) | st.text(max_size=20), json_values, max_size=6
        ),
        args=st.lists(json_scalars, max_size=2) | st.just([]),
    )
    def one(kwargs: dict[str, Any], args: list[Any]) -> None:
        job_id = str(uuid.uuid4())
        fleet.app.send_task(CLOSE_TASK, args=args, kwargs=kwargs, task_id=job_id)
        sent[job_id] = worker_verdict(args, kwargs)

    one()
    return sent


Envelope = Callable[..., tuple[str, bytes]]


def envelope_maker(fleet: Cluster) -> Envelope:
    """``envelope(body, **changes)``: a raw kombu message for the queue, ``(job id, bytes)``.

    Built from a real task message captured on a side queue; ``changes`` replace or update its
    top-level fields (``headers={"task": ...}``), None removes one.
    """
    fleet.app.send_task(
        CLOSE_TASK, kwargs=unique_target("raw"), task_id="template", queue="capture"
    )
    template = json.loads(fleet.redis.rpop("capture") or b"{}")

    def envelope(body: bytes, **changes: Any) -> tuple[str, bytes]:
        job_id = str(uuid.uuid4())
        message = json.loads(json.dumps(template))
        message["headers"]["id"] = message["headers"]["root_id"] = job_id
        message["properties"]["correlation_id"] = job_id
        message["properties"]["delivery_tag"] = str(uuid.uuid4())
        message["body"] = base64.b64encode(body).decode()
        for key, value in changes.items():
            if value is None:
                message.pop(key, None)
            elif isinstance(value, dict):
                message[key].update(value)
            else:
                message[key] = value
        return job_id, json.dumps(message).encode()

    return envelope


def raw_broker_messages(fleet: Cluster, canary: Path) -> dict[str, bytes]:
    """Bytes LPUSHed straight onto the queue: not JSON, wrong shapes, a pickle, unknown tasks."""
    envelope = envelope_maker(fleet)

    class Touch:  # unpickling this creates the canary file: proof that a pickle was loaded
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(canary), "w"))

    kwargs_ok = json.dumps([[], unique_target("raw"), {}]).encode()
    cases = dict(
        [
            envelope(b"{not json"),
            envelope(pickle.dumps(Touch()), **{"content-type": "application/x-python-serialize"}),
            envelope(kwargs_ok, headers={"task": "no.such.task"}),
            envelope(json.dumps(["a", "b"]).encode()),
            envelope(json.dumps([[], "kwargs, not a mapping", {}]).encode()),
            envelope(json.dumps([{}, {}, {}]).encode()),
            envelope(b"5"),
            envelope(b'"args"'),
            envelope(json.dumps({"task": CLOSE_TASK, "args": 5}).encode()),
            envelope(json.dumps([[], {"stream_id": HUGE}, {}]).encode()),
            envelope(kwargs_ok, properties={"body_encoding": "rot13"}),
            envelope(kwargs_ok, properties=None),
            envelope(kwargs_ok, headers=None),
            (str(uuid.uuid4()), b"this is not JSON at all {"),
            (str(uuid.uuid4()), b"[1, 2, 3]"),
            (str(uuid.uuid4()), b'"a string"'),
            (str(uuid.uuid4()), b"\xff\xfe\x00garbage"),
            (str(uuid.uuid4()), b"{}"),
        ]
    )
    for raw in cases.values():
        fleet.redis.lpush("streamctl", raw)
    return cases


def test_bad_input_is_refused_clearly_and_never_takes_a_worker_down(tmp_path: Path) -> None:
    canary = tmp_path / "unpickled"
    with cluster(tmp_path) as fleet:
        producer_figures = fuzz_producer(fleet)
        worker = fleet.start_worker("worker", concurrency=16)
        sent = fuzz_task_messages(fleet)
        raw = raw_broker_messages(fleet, canary)
        results = fleet.wait_for(sent, timeout=120)
        good = fleet.producer.close(**unique_target("after-fuzz"))
        after = fleet.wait_for([good], timeout=60)[good]
        raw_results = {job_id: fleet.read_results().get(job_id, []) for job_id in raw}
        stuck = fleet.redis.hlen("unacked") + fleet.redis.llen("streamctl")
        alive = worker.alive()
        log = worker.log()

    wrong = {}
    for job_id, verdict in sent.items():
        found = results[job_id]
        outcome = found[0]["outcome"] if found else "lost"
        expected = {"rejected"} if verdict else {"success", "expired"}
        if outcome not in expected or len(found) != 1:
            wrong[job_id] = (verdict, outcome)
    raw_outcomes = sorted({found[0]["outcome"] for found in raw_results.values() if found})
    report(
        "bad-input",
        producer_examples=producer_figures["accepted"] + producer_figures["refused"],
        producer_refused=producer_figures["refused"],
        producer_accepted=producer_figures["accepted"],
        task_messages=len(sent),
        rejected=sum(
            1 for found in results.values() if found and found[0]["outcome"] == "rejected"
        ),
        wrong_outcomes=len(wrong),
        raw_messages=len(raw),
        raw_with_result=sum(1 for found in raw_results.values() if found),
        raw_discarded=sum(1 for found in raw_results.values() if not found),
        messages_stuck=stuck,
        worker_alive=alive,
        pickle_loaded=canary.exists(),
    )
    assert not wrong, wrong
    assert set(raw_outcomes) <= {"rejected"}, raw_outcomes
    assert not canary.exists(), "a pickle from the broker was loaded"
    assert alive, log[-3000:]
    assert after and after[0]["outcome"] == "success"
    assert stuck == 0
    assert "Unrecoverable error" not in log


#: Bodies that are not ``[args, kwargs, embed]``, or whose parts have the wrong types.
MALFORMED_BODIES = [
    ["a", "b"],
    5,
    "args",
    None,
    [],
    {"args": 5},
    {"kwargs": "a string"},
    [[], 5, {}],
    [[], {}, 5],
    [5, {}, {}],
    [{}, {}, {}],
    [[], {}, {}, {}],
    # A protocol-1 body under protocol-2 headers (the task named in the headers): Celery
    # unpacks it as [args, kwargs, embed] and died of the ValueError.
    {"args": [], "kwargs": {}},
    {"a": 1},
]


def test_a_malformed_body_for_any_registered_task_is_dropped(tmp_path: Path) -> None:
    """Every task name the app registers, each with every malformed body: the worker goes on."""
    app.loader.import_default_modules()
    names = sorted(app.tasks)
    assert SCHEDULE_TASK in names and CLOSE_TASK in names
    with cluster(tmp_path) as fleet:
        worker = fleet.start_worker("worker", concurrency=4)
        envelope = envelope_maker(fleet)
        for name in names:
            for body in MALFORMED_BODIES:
                _job_id, raw = envelope(json.dumps(body).encode(), headers={"task": name})
                fleet.redis.lpush("streamctl", raw)
        # Every malformed message was taken and dropped (none waits, none is held unacked).
        deadline = time.monotonic() + 30
        while fleet.redis.llen("streamctl") + fleet.redis.hlen("unacked"):
            if time.monotonic() > deadline or not worker.alive():
                break
            time.sleep(0.1)
        stuck = fleet.redis.llen("streamctl") + fleet.redis.hlen("unacked")
        good = fleet.producer.close(**unique_target("after-malformed"))
        after = fleet.wait_for([good], timeout=30)[good]
        # Celery's own tasks get the guard too, and still run (this one returns its arguments).
        accumulated = fleet.app.send_task("celery.accumulate", args=[1, 2]).get(timeout=10)
        alive = worker.alive()
        log = worker.log()
    report("malformed-bodies", task_names=len(names), messages=len(names) * len(MALFORMED_BODIES))
    assert alive, log[-3000:]
    assert "Unrecoverable error" not in log
    assert stuck == 0
    assert after and after[0]["outcome"] == "success", after
    assert accumulated == [1, 2]
