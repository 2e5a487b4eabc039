"""Every task the app registers drops a malformed message instead of dying of it."""

from __future__ import annotations

import pytest
from celery.exceptions import InvalidTaskError
from celery.utils.imports import symbol_by_name

from worker.broker.app import app
from worker.broker.guards.task_body import check_body, checked


def registered_tasks() -> dict[str, object]:
    app.loader.import_default_modules()
    return dict(app.tasks)


def test_every_registered_task_uses_the_checked_strategy() -> None:
    tasks = registered_tasks()
    ours = {name for name in tasks if name.startswith(("streamctl.", "scaleengine."))}
    # The app's own tasks are there (a rename would silently shrink this test otherwise).
    assert {"scaleengine.stream.close", "scaleengine.stream.close_many"} <= ours
    assert "streamctl.schedule.run" in ours
    unguarded = {
        name
        for name, task in tasks.items()
        if symbol_by_name(getattr(task, "Strategy")) is not checked
    }
    assert not unguarded, f"tasks without the checked strategy: {sorted(unguarded)}"


def test_a_task_registered_later_is_guarded_too() -> None:
    @app.task(name="streamctl.test.registered_later", shared=False)
    def later() -> None:
        """A task no module of the project defines: it gets the guard from the base class."""

    try:
        assert symbol_by_name(app.tasks["streamctl.test.registered_later"].Strategy) is checked
    finally:
        app.tasks.pop("streamctl.test.registered_later", None)


@pytest.mark.parametrize(
    "body",
    [["a", "b"], 5, "args", None, {"args": 5}, [[], 5, {}], [[], {}, 5], [{}, {}, {}], []],
)
def test_check_body_refuses_malformed_bodies(body: object) -> None:
    with pytest.raises(InvalidTaskError):
        check_body(body)


@pytest.mark.parametrize("body", [[[], {}, {}], [[1], {"a": 1}, None], ([], {}, {})])
def test_check_body_lets_well_formed_bodies_through(body: object) -> None:
    check_body(body)
    check_body(body, protocol=1)


@pytest.mark.parametrize("body", [{"args": [], "kwargs": {}}, {"a": 1}])
def test_a_mapping_is_a_body_of_protocol_1_only(body: object) -> None:
    check_body(body, protocol=1)
    with pytest.raises(InvalidTaskError):
        check_body(body)  # under protocol-2 headers Celery would unpack it as three items
