"""Flower and enqueueing from other systems: a real Flower process, the test Redis, a real worker.

Jobs come in three ways a non-Python system would use: Flower's REST API, ``celery call``, and
a raw Celery protocol-2 message pushed onto the queue's Redis list by hand.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from tests.conftest import TEST_API_KEY, TEST_SECRET, WorkerProcess, wait_for_result
from worker.dev.embedded_redis import free_port

pytestmark = pytest.mark.e2e
TASK = "scaleengine.stream.close"
QUEUE = "streamctl"
FLOWER_AUTH = ("ops", f"pw-{uuid.uuid4().hex[:12]}")
# Any base64 HMAC-SHA256 (44 characters, one "=" of padding), raw or JSON-escaped.
LOOPBACK = ("--address=127.0.0.1",)
SIGNATURE_SHAPE = re.compile(r"(?:[A-Za-z0-9+]|\\?/){43}=")


def unique_stream(prefix: str) -> dict[str, str]:
    return {"app": "demo-origin", "inst": "live", "stream": f"{prefix}-{uuid.uuid4().hex[:10]}"}


def raw_celery_message(task_id: str, kwargs: dict[str, Any], queue: str = QUEUE) -> str:
    """A Celery protocol-2 message as Redis holds it, built by hand as another language would.

    The body is the JSON array ``[args, kwargs, embed]``, base64-encoded; the task name and
    job id travel in the headers; ``delivery_tag`` must be unique (it keys the unacked set).
    """
    body = json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None}])
    return json.dumps(
        {
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": TASK,
                "id": task_id,
                "root_id": task_id,
                "parent_id": None,
                "group": None,
                "retries": 0,
                "eta": None,
                "expires": None,
                "timelimit": [None, None],
                "argsrepr": "()",
                "kwargsrepr": json.dumps(kwargs),
                "origin": "billing-service@host",
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


class Flower(WorkerProcess):
    """``streamctl flower`` with basic auth, on a free loopback port (stopped as a worker is)."""

    def __init__(self, log_path: Path) -> None:
        super().__init__(log_path, env={"FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.session = requests.Session()
        self.session.auth = FLOWER_AUTH

    def start(self, timeout: float = 30.0) -> Flower:
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "flower", f"--port={self.port}", *LOOPBACK],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.log_path.parent,  # no stray flowerconfig.py
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.session.get(f"{self.url}/healthcheck", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            if not self.alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("Flower did not start:\n" + self.log()[-3000:])
            time.sleep(0.2)

    def get(self, path: str) -> requests.Response:
        return self.session.get(self.url + path, timeout=10)


@pytest.fixture(scope="module")
def flower(
    tmp_path_factory: pytest.TempPathFactory, worker: Any, producer: Any
) -> Iterator[Flower]:
    process = Flower(tmp_path_factory.mktemp("flower") / "flower.log").start()
    try:
        wait_for_event_capture(process, producer)
        yield process
    finally:
        process.stop()


def wait_for_event_capture(flower: Flower, producer: Any, timeout: float = 60) -> None:
    """Flower answers HTTP before it listens to the workers' events, and events are pub/sub:
    a job that ends before it listens is never shown. Probe jobs until one is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = producer.close(**unique_stream("flower-probe"))
        with contextlib.suppress(AssertionError):
            task_in_flower(flower, probe, within=5)
            return
    raise RuntimeError("Flower never showed a job's events:\n" + flower.log()[-3000:])


def task_in_flower(
    flower: Flower, job_id: str, state: str = "SUCCESS", within: float = 20
) -> dict[str, Any]:
    """The job as Flower's task list shows it, once Flower has seen it reach ``state``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        tasks = flower.get("/api/tasks").json()
        if job_id in tasks and tasks[job_id].get("state") == state:
            return dict(tasks[job_id])
        time.sleep(0.2)
    raise AssertionError(f"Flower did not show job {job_id} as {state}")


def test_enqueue_through_flower_api_and_nothing_secret_is_served(
    flower: Flower, producer: Any, sandbox: Any
) -> None:
    target = unique_stream("flower")
    unauthenticated = requests.post(
        f"{flower.url}/api/task/async-apply/{TASK}", json={"kwargs": target}, timeout=10
    )
    assert unauthenticated.status_code == 401

    reply = flower.session.post(
        f"{flower.url}/api/task/async-apply/{TASK}", json={"kwargs": target}, timeout=10
    )
    assert reply.status_code == 200, reply.text
    job_id = reply.json()["task-id"]
    result = wait_for_result(producer, job_id)
    assert result["outcome"] == "success", result
    assert result["target"] == target
    assert len(sandbox.requests_for(target)) == 1

    shown = task_in_flower(flower, job_id)
    assert shown["name"] == TASK
    assert shown["args"] == "()"
    assert shown["kwargs"] == repr(target)  # the target and nothing else

    served = {
        "task list": flower.get("/api/tasks").text,
        "task info": flower.get(f"/api/task/info/{job_id}").text,
        "task result": flower.get(f"/api/task/result/{job_id}").text,
        "task types": flower.get("/api/task/types").text,
        "workers": flower.get("/api/workers?refresh=1").text,
        "queues": flower.get("/api/queues/length").text,
        "metrics": flower.get("/metrics").text,
    }
    assert job_id in served["task info"] and target["stream"] in served["task list"]
    assert "streamctl-" in served["workers"]  # the workers API did answer (node streamctl-<pid>-…)
    for where, text in served.items():
        assert TEST_SECRET not in text, f"Flower serves the secret in its {where}"
        assert TEST_API_KEY not in text, f"Flower serves the API key in its {where}"
        for candidate in SIGNATURE_SHAPE.findall(text):
            unescaped = candidate.replace("\\/", "/")
            assert not sandbox.signature_seen(unescaped), f"a signature in Flower's {where}"


def test_flower_shows_a_refused_close_as_failed(
    flower: Flower, producer: Any, sandbox: Any
) -> None:
    target = unique_stream("flower-refused")
    sandbox.inject(target, "refuse", code="0005")
    job_id = producer.close(**target)
    assert wait_for_result(producer, job_id)["outcome"] == "failure"
    shown = task_in_flower(flower, job_id, state="FAILURE")
    assert "JobNotSucceeded" in str(shown.get("exception")), shown
    assert "failure (code 0005)" in str(shown.get("exception")), shown
    assert TEST_SECRET not in json.dumps(shown)


def test_enqueue_with_celery_call(flower: Flower, producer: Any) -> None:
    target = unique_stream("celery-call")
    kwargs = json.dumps(target)
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.app", "call", TASK, "--kwargs", kwargs],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    job_id = done.stdout.strip().splitlines()[-1]
    result = wait_for_result(producer, job_id)
    assert result["outcome"] == "success", result
    assert result["target"] == target
    assert task_in_flower(flower, job_id)["kwargs"] == repr(target)


def test_enqueue_with_a_raw_message_pushed_to_redis(
    flower: Flower, producer: Any, redis_client: redis.Redis, sandbox: Any
) -> None:
    target = {"stream_id": 800_000 + uuid.uuid4().int % 100_000}
    job_id = str(uuid.uuid4())
    redis_client.lpush(QUEUE, raw_celery_message(job_id, target))
    result = wait_for_result(producer, job_id)
    assert result["outcome"] == "success", result
    assert result["target"] == target
    assert len(sandbox.requests_for(target)) == 1
    assert task_in_flower(flower, job_id)["name"] == TASK


@pytest.mark.parametrize(
    "flower_env",
    [{}, {"FLOWER_AUTH_PROVIDER": "flower.views.auth.GoogleAuth2LoginHandler"}],
    ids=["nothing", "oauth-provider-without-allowed-emails"],
)
def test_flower_refuses_to_start_without_authentication(
    tmp_path: Path, flower_env: dict[str, str]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")} | flower_env
    refused = subprocess.run(
        [sys.executable, "-m", "worker.cli", "flower", f"--port={free_port()}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "refusing to start without authentication" in refused.stderr
    assert "FLOWER_BASIC_AUTH" in refused.stderr and "--unauthenticated" in refused.stderr


# --- basic auth: every entry a user:password, checked on the values Flower uses ------------

#: What an attacker sends: "!" is no base64 character, so it decodes to an empty credential.
EMPTY_CREDENTIAL = {"Authorization": "Basic !"}
#: How a refusal names the option at fault.
BASIC_AUTH_NAMED = re.compile(r"basic[ _-]auth", re.IGNORECASE)
MALFORMED_BASIC_AUTH = {
    "comma": ({"FLOWER_BASIC_AUTH": ","}, []),
    "trailing-comma": ({"FLOWER_BASIC_AUTH": f"{FLOWER_AUTH[0]}:{FLOWER_AUTH[1]},"}, []),
    "no-user": ({"FLOWER_BASIC_AUTH": f":{FLOWER_AUTH[1]}"}, []),
    "no-password": ({"FLOWER_BASIC_AUTH": "ops:"}, []),
    "no-colon": ({"FLOWER_BASIC_AUTH": "ops"}, []),
    "empty-option": ({}, ["--basic-auth="]),
    "option-without-value": ({}, ["--basic-auth", ""]),
    "empty-option-over-valid-variable": (
        {"FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)},
        ["--basic-auth="],
    ),
}


@pytest.fixture
def flower_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Flower's options (tornado's global ones) as unset, and no FLOWER_* variable or
    flowerconfig.py around; restored afterwards."""
    from flower.command import options  # defines Flower's options on tornado's global ones

    for name in [name for name in os.environ if name.startswith("FLOWER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    saved = {name: option._value for name, option in options._options.items()}
    for option in options._options.values():
        option._value = option.UNSET
    yield
    for name, value in saved.items():
        options._options[name]._value = value


@pytest.mark.parametrize(
    ("env", "argv"), MALFORMED_BASIC_AUTH.values(), ids=MALFORMED_BASIC_AUTH.keys()
)
def test_the_check_refuses_every_malformed_basic_auth_entry(
    flower_options: None, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], argv: list[str]
) -> None:
    from worker.cli.flower import FlowerOptionError, auth_configured

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(FlowerOptionError) as refused:
        auth_configured(argv)
    message = str(refused.value)
    assert BASIC_AUTH_NAMED.search(message), message
    assert FLOWER_AUTH[1] not in message  # never the password


def test_the_check_counts_an_empty_variable_as_unset(
    flower_options: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.cli.flower import auth_configured

    monkeypatch.setenv("FLOWER_BASIC_AUTH", "")
    assert auth_configured([]) is False
    assert auth_configured([f"--basic-auth={':'.join(FLOWER_AUTH)}"]) is True


def test_the_check_accepts_user_password_entries(
    flower_options: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.cli.flower import auth_configured

    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:pw,auditor:a:colon:in:the:password")
    assert auth_configured([]) is True


def attack(
    tmp_path: Path, env: dict[str, str], argv: list[str], config: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Start ``streamctl flower`` as configured; while it runs, send it an empty credential
    as an attacker would. Fails the test if the attacker gets in (or Flower stays up)."""
    if config is not None:
        (tmp_path / "flowerconfig.py").write_text(config)
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    log_path = tmp_path / "flower.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "flower", f"--port={port}", *LOOPBACK, *argv],
            env=clean | env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            text=True,
        )
    try:
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(requests.ConnectionError):
                reply = requests.get(
                    f"http://127.0.0.1:{port}/api/tasks", headers=EMPTY_CREDENTIAL, timeout=2
                )
                assert reply.status_code != 200, "an empty credential got into Flower"
                pytest.fail(f"Flower started (answering {reply.status_code}) instead of refusing")
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, "", log_path.read_text())


@pytest.mark.parametrize(
    ("env", "argv"),
    [({"FLOWER_BASIC_AUTH": ""}, []), *MALFORMED_BASIC_AUTH.values()],
    ids=["empty-variable", *MALFORMED_BASIC_AUTH.keys()],
)
def test_flower_refuses_malformed_basic_auth_and_never_lets_an_empty_credential_in(
    tmp_path: Path, env: dict[str, str], argv: list[str]
) -> None:
    refused = attack(tmp_path, env, argv)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert FLOWER_AUTH[1] not in refused.stderr
    if env == {"FLOWER_BASIC_AUTH": ""} and not argv:  # an empty variable is unset: the how-to
        assert "refusing to start without authentication" in refused.stderr
    else:
        assert BASIC_AUTH_NAMED.search(refused.stderr), refused.stderr[-2000:]


@pytest.mark.parametrize(
    "config",
    [
        "basic_auth = ['']\n",
        # Read once by the check, then again by Flower: what Flower uses is what counts.
        "import os\n"
        "basic_auth = [''] if os.environ.get('FLOWERCONFIG_READ') else ['ops:pw']\n"
        "os.environ['FLOWERCONFIG_READ'] = '1'\n",
    ],
    ids=["empty-entry", "empty-entry-on-flowers-own-read"],
)
def test_flower_refuses_an_empty_entry_from_flowerconfig(tmp_path: Path, config: str) -> None:
    refused = attack(tmp_path, {"FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)}, [], config)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert BASIC_AUTH_NAMED.search(refused.stderr), refused.stderr[-2000:]


def test_flower_with_valid_basic_auth_lets_only_that_credential_in(tmp_path: Path) -> None:
    process = Flower(tmp_path / "flower.log")
    process.log_path.parent.mkdir(parents=True, exist_ok=True)
    process.start()
    try:
        url = f"{process.url}/api/tasks"
        assert requests.get(url, headers=EMPTY_CREDENTIAL, timeout=10).status_code == 401
        assert requests.get(url, auth=(FLOWER_AUTH[0], ""), timeout=10).status_code == 401
        assert requests.get(url, timeout=10).status_code == 401
        assert process.get("/api/tasks").status_code == 200
    finally:
        process.stop()


def test_no_example_file_ships_an_empty_or_malformed_credential() -> None:
    from worker.cli.flower import basic_auth_problem

    root = Path(__file__).resolve().parent.parent
    for example in [root / ".env.example", *sorted((root / "deploy").glob("*.env"))]:
        for line in example.read_text().splitlines():
            name, equals, value = line.strip().partition("=")
            if equals and name == "FLOWER_BASIC_AUTH":  # set, not a "# FLOWER_..." example
                assert value, f"{example.name}: an empty FLOWER_BASIC_AUTH"
                assert basic_auth_problem(value.split(",")) is None, example.name
