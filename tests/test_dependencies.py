"""The dependency tree is pinned, and the floors in pyproject.toml are what the code needs.

The batch publisher uses kombu's ``Producer.batch`` (kombu 5.7) and worker.broker.guards.kombu
patches kombu 5.7's private names, so an install that admits an older celery or kombu would
start and then fail at the first batch or the first Redis restart. The README's commands and CI
install through the constraints file, so every machine runs the tree the suite was run on.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).parent.parent
CONSTRAINTS = ROOT / "constraints.txt"


def pins() -> dict[str, Version]:
    pinned: dict[str, Version] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        assert version, f"constraints.txt: {line!r} is not pinned with =="
        pinned[re.sub(r"[-_.]+", "-", name).lower()] = Version(version)
    return pinned


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        listed.extend(extra)
    return [Requirement(text) for text in listed]


def test_every_requirement_is_pinned_within_its_range() -> None:
    pinned = pins()
    problems = []
    for requirement in requirements():
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name not in pinned:
            problems.append(f"{name} is not in constraints.txt")
        elif not requirement.specifier.contains(pinned[name], prereleases=True):
            problems.append(f"{name}=={pinned[name]} is outside {requirement.specifier}")
    assert problems == []


def test_floors_admit_only_the_kombu_the_code_needs() -> None:
    by_name = {r.name.lower(): r for r in requirements()}
    for name in ("celery", "kombu"):
        assert name in by_name, f"{name} must be a direct dependency with its floor"
        specifier = by_name[name].specifier
        assert not specifier.contains("5.6.99"), f"{name} {specifier} admits a release before 5.7"
        assert specifier.contains("5.7.0")


def test_readme_and_ci_install_through_the_constraints_file() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if "pip install" in line and ".venv" in line]
    assert commands, "README has no install commands"
    assert all("-c constraints.txt" in command for command in commands), commands
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command.strip().removeprefix("```sh").strip() in ci
