"""One key schema (worker/model/keys.py); the Lua scripts of worker/model/lua/, loaded by name."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import redis

from worker.model.scripts import load_script, script_names

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "worker" / "model" / "lua"
#: Key names are spelled in the schema only; the results channel is a setting (its default).
SPELLED_ELSEWHERE = {("config/settings.py", "streamctl:results")}


def python_files() -> list[Path]:
    return [path for top in ("worker", "config", "tasks") for path in (ROOT / top).rglob("*.py")]


def test_every_script_named_in_the_code_exists_and_loads_in_redis(redis_url: str) -> None:
    named = {
        match
        for path in python_files()
        for match in re.findall(r'load_script\("([^"]+)"\)', path.read_text())
    }
    assert named, "no load_script call found"
    assert named <= set(script_names()), named - set(script_names())
    client = redis.Redis.from_url(redis_url)
    for name in script_names():
        source = load_script(name)
        assert "--#include" not in source, name
        sha = client.script_load(source)
        assert client.script_exists(sha) == [True], name


def test_fragments_read_no_keys_or_argv_and_every_script_documents_its_own() -> None:
    for fragment in LUA.glob("*.lib.lua"):
        code = "\n".join(
            line for line in fragment.read_text().splitlines() if not line.startswith("--")
        )
        assert "KEYS[" not in code and "ARGV[" not in code, fragment.name
    for script in LUA.glob("*.lua"):
        if script.name.endswith(".lib.lua"):
            continue
        text = script.read_text()
        header = "\n".join(line for line in text.splitlines() if line.startswith("--"))
        for used in set(re.findall(r"(KEYS|ARGV)\[(\d+)\]", text)):
            assert f"{used[0]}[{used[1]}]" in header, f"{script.name}: {used} not in its header"


def test_the_claim_rule_is_defined_once_and_shared() -> None:
    definitions = [p.name for p in LUA.glob("*.lua") if "function claim_timestamp" in p.read_text()]
    assert definitions == ["claim_timestamp.lib.lua"]
    for name in ("claim_timestamp", "limiter_acquire"):
        assert load_script(name).count("local function claim_timestamp") == 1


def test_the_lua_files_ship_with_the_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["worker.model"]
    shipped = {path for pattern in globs for path in (ROOT / "worker" / "model").glob(pattern)}
    assert set(LUA.glob("*.lua")) <= shipped


def test_no_key_is_spelled_outside_the_schema() -> None:
    found = []
    for path in python_files():
        relative = path.relative_to(ROOT).as_posix()
        if relative == "worker/model/keys.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and re.search(r"streamctl:\S", node.value)
                and (relative, node.value) not in SPELLED_ELSEWHERE
            ):
                found.append(f"{relative}:{node.lineno}: {node.value!r}")
    assert not found, found
