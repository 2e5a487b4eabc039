"""``streamctl worker`` passes its options as settings; it never rewrites the environment."""

from __future__ import annotations

import os
from typing import Any

import pytest
from click.testing import CliRunner

import config.settings
from config.settings import get_settings, install_settings, load_settings


@pytest.fixture(autouse=True)
def _uninstall(monkeypatch: pytest.MonkeyPatch) -> Any:
    # The installed settings, and the cache, are back to what the environment gives afterwards.
    monkeypatch.setattr(config.settings, "_installed", None)
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_the_worker_command_installs_its_options_and_leaves_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import worker.cli.main as cli

    monkeypatch.delenv("STREAMCTL_WORKER_CONCURRENCY", raising=False)
    seen: dict[str, Any] = {}

    def celery_worker(_app: object, argv: list[str]) -> int:
        # Where Celery's configuration and the wiring read them, as the worker starts.
        seen["argv"] = argv
        seen["threads"] = get_settings().worker_concurrency
        seen["environment"] = os.environ.get("STREAMCTL_WORKER_CONCURRENCY")
        return 0

    # The seam: Celery's worker command itself is run by tests/test_processes.py and others.
    monkeypatch.setattr(cli, "run_celery_worker", celery_worker)
    outcome = CliRunner().invoke(cli.main, ["worker", "-c", "3", "--processes", "1"])
    assert outcome.exit_code == 0, outcome.output
    assert seen["argv"][seen["argv"].index("--concurrency") + 1] == "3"
    assert seen["threads"] == 3
    assert seen["environment"] is None
    assert "STREAMCTL_WORKER_CONCURRENCY" not in os.environ


def test_a_bad_value_from_the_environment_is_named_by_its_variable() -> None:
    import worker.cli.main as cli

    # A bad -c is named as the option typed (tests/test_operator.py); a bad variable by its name.
    outcome = CliRunner().invoke(
        cli.main, ["worker"], env={"STREAMCTL_WORKER_CONCURRENCY": "0"}
    )
    assert outcome.exit_code != 0
    assert "STREAMCTL_WORKER_CONCURRENCY" in outcome.output
    assert "Traceback" not in outcome.output


def test_installed_settings_are_what_every_reader_gets() -> None:
    installed = install_settings(load_settings(worker_concurrency=5))
    assert get_settings() is installed
    assert get_settings().worker_concurrency == 5
