"""String links named once (worker/broker/links.py), and delivery options set once."""

from __future__ import annotations

import ast
from pathlib import Path

from worker.broker import links

ROOT = Path(__file__).resolve().parent.parent


def sources() -> dict[str, str]:
    return {
        path.relative_to(ROOT).as_posix(): path.read_text()
        for top in ("worker", "config", "tasks")
        for path in (ROOT / top).rglob("*.py")
    }


def test_the_app_is_built_from_the_links() -> None:
    from worker.broker.app import app

    assert app.task_cls == links.TASK_CLASS
    assert tuple(app.conf.include) == links.TASK_MODULES
    app.loader.import_default_modules()
    assert {"scaleengine.stream.close", "streamctl.schedule.run"} <= set(app.tasks)
    assert app.tasks["scaleengine.stream.close"].Strategy == links.TASK_STRATEGY


def test_no_string_link_is_spelled_outside_the_links_module() -> None:
    names = {links.CELERY_CONFIG, links.TASK_CLASS, links.TASK_STRATEGY, *links.TASK_MODULES}
    found = []
    for name, text in sources().items():
        if name == "worker/broker/links.py":
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{name}:{node.lineno}: {node.value!r}")
    assert not found, found


def test_every_task_acks_late_and_is_rejected_when_its_worker_dies() -> None:
    from worker.broker.app import app

    app.loader.import_default_modules()
    ours = [task for name, task in app.tasks.items() if not name.startswith("celery.")]
    assert ours
    assert all(task.acks_late and task.reject_on_worker_lost for task in ours)
    # Set once: Celery's configuration, never again in a task's options.
    assert setters_of("acks_late") == ["config/celeryconfig.py:task_acks_late"]
    assert setters_of("reject_on_worker_lost") == [
        "config/celeryconfig.py:task_reject_on_worker_lost"
    ]


def setters_of(option: str) -> list[str]:
    """Where ``option`` is given a value: a setting, an option mapping's key, a keyword."""
    found = []
    for name, text in sources().items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Assign):
                spelled = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.Dict):
                spelled = [k.value for k in node.keys if isinstance(k, ast.Constant)]
            elif isinstance(node, ast.Call):
                spelled = [k.arg for k in node.keywords if k.arg]
            else:
                continue
            found += [f"{name}:{s}" for s in spelled if isinstance(s, str) and s.endswith(option)]
    return found
