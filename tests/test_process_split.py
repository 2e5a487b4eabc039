"""``streamctl worker -c N``: how N calls in flight are spread over processes (config.processes)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from config import processes
from config.errors import ConfigError
from config.processes import AUTO, THREADS_PER_PROCESS, process_count, thread_shares
from config.settings import load_settings


@pytest.mark.parametrize(
    ("concurrency", "cpus", "expected"),
    [
        (32, 2, 1),  # the default stays one process
        (THREADS_PER_PROCESS, 8, 1),
        (THREADS_PER_PROCESS + 1, 8, 2),
        (1000, 2, 2),  # never more processes than CPUs
        (1000, 8, 4),
        (1000, 1, 1),
    ],
)
def test_auto_takes_one_process_per_250_calls_up_to_the_cpus(
    monkeypatch: pytest.MonkeyPatch, concurrency: int, cpus: int, expected: int
) -> None:
    monkeypatch.setattr(processes, "usable_cpus", lambda: cpus)
    assert process_count(concurrency, AUTO) == expected


def test_a_number_of_processes_given_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "usable_cpus", lambda: 2)
    assert process_count(1000, 3) == 3


@pytest.mark.parametrize(
    ("concurrency", "count", "expected"),
    [(1000, 2, [500, 500]), (1000, 3, [334, 333, 333]), (5, 2, [3, 2]), (3, 3, [1, 1, 1])],
)
def test_shares_add_up_to_the_calls_in_flight(
    concurrency: int, count: int, expected: list[int]
) -> None:
    assert thread_shares(concurrency, count) == expected


def test_more_processes_than_calls_is_refused() -> None:
    with pytest.raises(ValueError, match="3 worker processes need at least 3 calls in flight"):
        thread_shares(2, 3)


def test_the_settings_take_auto_and_refuse_more_processes_than_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STREAMCTL_WORKER_PROCESSES", raising=False)
    assert load_settings().worker_processes == AUTO
    monkeypatch.setenv("STREAMCTL_WORKER_PROCESSES", "auto")
    assert load_settings(worker_concurrency=1000).worker_processes == AUTO
    monkeypatch.setenv("STREAMCTL_WORKER_PROCESSES", "4")
    with pytest.raises(ConfigError) as refused:
        load_settings(worker_concurrency=2)
    message = str(refused.value)
    assert "STREAMCTL_WORKER_PROCESSES (4)" in message
    assert "STREAMCTL_WORKER_CONCURRENCY (2)" in message


def test_the_worker_command_names_the_options_typed() -> None:
    from worker.cli import main as cli

    done = CliRunner().invoke(cli.main, ["worker", "-c", "2", "--processes", "3"])
    assert done.exit_code == 2
    assert "--processes 3 needs at least 3 calls in flight (-c)" in done.output
