"""The Lua scripts of ``lua/``, loaded by name.

Each script's header lists its KEYS and ARGV. A line ``--#include <name>`` is replaced by the
fragment ``lua/<name>.lib.lua``, a ``local function`` the script calls with named arguments:
one definition shared by two scripts (the timestamp claim), and no script reads another
script's KEYS or ARGV by position.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

_INCLUDE = re.compile(r"^--#include (\S+)$", re.MULTILINE)


def _read(filename: str) -> str:
    return resources.files("worker.model").joinpath("lua", filename).read_text(encoding="utf-8")


@functools.cache
def load_script(name: str) -> str:
    """The source of ``lua/<name>.lua`` with its fragments included."""
    return _INCLUDE.sub(lambda match: _read(f"{match[1]}.lib.lua"), _read(f"{name}.lua"))


def script_names() -> list[str]:
    """Every script of ``lua/`` (fragments excluded)."""
    folder = resources.files("worker.model").joinpath("lua")
    return sorted(
        entry.name.removesuffix(".lua")
        for entry in folder.iterdir()
        if entry.name.endswith(".lua") and not entry.name.endswith(".lib.lua")
    )
