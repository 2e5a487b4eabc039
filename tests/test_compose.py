"""docker-compose.yml, checked without a Docker engine: commands, variables, secrets, services.

Every command must be a ``streamctl`` command that click accepts as written, every variable
set in the compose file or its env files one the settings read (or Flower's own, for Flower),
and no secret may be written in the compose file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from pydantic import AliasChoices

from config.settings import Settings, load_settings
from worker.cli.main import main
from worker.schedule.file import load_schedule

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
#: The env file compose reads is not committed; its committed template stands in for it.
ENV_FILES = {
    ".env": ROOT / ".env.example",
    ".env.broker": ROOT / ".env.broker.example",
    "deploy/demo.env": ROOT / "deploy" / "demo.env",
}
SECRET_VARIABLES = {
    "SCALEENGINE_API_SECRET",
    "SCALEENGINE_API_KEY",
    "FLOWER_BASIC_AUTH",
    "STREAMCTL_BROKER_PASSWORD",
    "RABBITMQ_DEFAULT_PASS",
}
#: The secrets the broker's own shell reads (the rabbitmq service's command).
BROKER_PASSWORD_READERS = {"STREAMCTL_BROKER_PASSWORD", "RABBITMQ_DEFAULT_PASS"}
#: The services that run someone else's image: the broker and Redis.
INFRASTRUCTURE = {"rabbitmq", "redis"}
_ASSIGNMENT = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")


def _settings_variables() -> dict[str, str]:
    """Environment variable -> settings field, as config.settings reads them."""
    names = {}
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update({str(choice): field for choice in alias.choices})
        else:
            names[f"STREAMCTL_{field.upper()}"] = field
    return names


SETTINGS_VARIABLES = _settings_variables()


def _app_services() -> dict[str, dict[str, Any]]:
    """The services that run this project's image (all but the broker and Redis)."""
    return {name: svc for name, svc in SERVICES.items() if name not in INFRASTRUCTURE}


def _env_files(service: dict[str, Any]) -> list[str]:
    raw = service.get("env_file", [])
    entries = [raw] if isinstance(raw, str) else raw
    return [entry if isinstance(entry, str) else entry["path"] for entry in entries]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {key: str(value) for key, value in raw.items()}


def _file_assignments(path: Path, *, commented: bool) -> dict[str, str]:
    """NAME=value lines of an env file; with ``commented``, also the ``# NAME=`` examples."""
    found = {}
    for line in path.read_text().splitlines():
        match = _ASSIGNMENT.match(line.strip())
        if match and (commented or not line.lstrip().startswith("#")):
            found[match[1]] = match[2]
    return found


def _subcommand(service: dict[str, Any]) -> str:
    return str(service["command"][1])


def _is_flower(service: dict[str, Any]) -> bool:
    return _subcommand(service) == "flower"


def _known(variable: str, services: list[dict[str, Any]]) -> bool:
    if variable in SETTINGS_VARIABLES:
        return True
    return variable.startswith("FLOWER_") and any(_is_flower(svc) for svc in services)


@pytest.mark.parametrize("name", sorted(_app_services()))
def test_every_command_is_a_streamctl_command_click_accepts(name: str) -> None:
    command = SERVICES[name]["command"]
    assert isinstance(command, list) and command[0] == "streamctl"
    group_ctx = main.make_context("streamctl", list(command[1:]))
    sub = main.get_command(group_ctx, command[1])
    assert sub is not None, f"{name}: streamctl has no command {command[1]!r}"
    ctx = sub.make_context(command[1], list(command[2:]), parent=group_ctx)  # raises if bad
    if _is_flower(SERVICES[name]):
        # Extra options go to Flower, which takes only --name=value of its own options.
        from flower.options import options

        for arg in ctx.args:
            match = re.fullmatch(r"--([a-z_]+)=.+", arg)
            assert match and match[1] in options, f"{name}: Flower has no option {arg!r}"
    else:
        assert ctx.args == [], f"{name}: arguments streamctl {command[1]} does not take"


def test_a_bad_option_would_be_caught() -> None:
    group_ctx = main.make_context("streamctl", ["beat", "--every", "5"])
    with pytest.raises(click.UsageError):
        main.get_command(group_ctx, "beat").make_context("beat", ["--every", "5"])  # type: ignore[union-attr]


@pytest.mark.parametrize("name", sorted(_app_services()))
def test_every_variable_set_is_one_the_settings_know(name: str) -> None:
    service = SERVICES[name]
    for variable in _environment(service):
        assert _known(variable, [service]), f"{name}: unknown variable {variable}"
    for env_file in _env_files(service):
        assert env_file in ENV_FILES, f"{name}: env file {env_file} has no committed template"


@pytest.mark.parametrize("env_file", sorted(ENV_FILES))
def test_every_variable_of_the_env_files_is_known(env_file: str) -> None:
    readers = [svc for svc in _app_services().values() if env_file in _env_files(svc)]
    assert readers, f"no service reads {env_file}"
    for variable in _file_assignments(ENV_FILES[env_file], commented=True):
        assert _known(variable, readers), f"{env_file}: unknown variable {variable}"


def test_no_secret_is_written_in_the_compose_file() -> None:
    lines = (ROOT / "docker-compose.yml").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    for service in SERVICES.values():
        assert not SECRET_VARIABLES & set(_environment(service))
    for variable in SECRET_VARIABLES:
        # Never interpolated by compose ($NAME, ${NAME}: `docker compose config` would print
        # the value); only a container's own shell may read one ($$NAME, escaped from compose).
        assert not re.search(rf"(?<!\$)\$\{{?{variable}\b", text), variable
        if variable not in BROKER_PASSWORD_READERS:
            assert variable not in text
    demo = _file_assignments(ENV_FILES["deploy/demo.env"], commented=False)
    assert demo["SCALEENGINE_API_SECRET"] not in text
    # The template leaves every secret empty.
    for env_file in (".env", ".env.broker"):
        template = _file_assignments(ENV_FILES[env_file], commented=False)
        assert all(template.get(variable, "") == "" for variable in SECRET_VARIABLES)


def test_the_demo_settings_are_valid_and_clearly_fake() -> None:
    demo = _file_assignments(ENV_FILES["deploy/demo.env"], commented=False)
    settings = load_settings(**{SETTINGS_VARIABLES[name]: value for name, value in demo.items()})
    _cdn, api_key, secret = settings.require_credentials()
    assert "not-a-real" in secret.lower() and "not-a-real" in api_key.lower()
    assert settings.api_url.startswith("http://127.0.0.1:")  # the sandbox, on loopback
    # The schedule the demo's beat runs is valid (paths are relative to the image's /app).
    assert load_schedule(ROOT / settings.schedule_file).entries


def test_redis_has_a_healthcheck_and_persistence() -> None:
    redis_service = SERVICES["redis"]
    assert redis_service["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    command = " ".join(redis_service["command"])
    assert "--appendonly yes" in command
    volumes = [v.split(":") for v in redis_service["volumes"]]
    assert any(target == "/data" and source in COMPOSE["volumes"] for source, target in volumes)


def test_rabbitmq_is_the_production_broker_with_a_healthcheck_and_its_data_kept() -> None:
    rabbitmq = SERVICES["rabbitmq"]
    assert rabbitmq["image"].startswith("rabbitmq:3.13")  # quorum queues need 3.8 or later
    assert rabbitmq["healthcheck"]["test"] == [
        "CMD",
        "rabbitmq-diagnostics",
        "-q",
        "check_port_connectivity",
    ]
    # Its data directory is named after the node, the node after the host name: fixed.
    assert rabbitmq["hostname"] == "rabbitmq"
    volumes = [v.split(":") for v in rabbitmq["volumes"]]
    assert ["rabbitmq-data", "/var/lib/rabbitmq"] in volumes and "rabbitmq-data" in COMPOSE[
        "volumes"
    ]
    # Its user's password from .env.broker alone (not .env, which holds the API secret).
    assert _env_files(rabbitmq) == [".env.broker"]
    assert _environment(rabbitmq) == {"RABBITMQ_DEFAULT_USER": "streamctl"}
    script = rabbitmq["command"][-1]
    assert 'RABBITMQ_DEFAULT_PASS="$$STREAMCTL_BROKER_PASSWORD"' in script
    assert "exec docker-entrypoint.sh rabbitmq-server" in script
    assert "ports" not in rabbitmq  # reached by the services, on the compose network only


@pytest.mark.parametrize("name", ["worker", "beat", "flower"])
def test_the_production_services_use_rabbitmq_as_their_broker(name: str) -> None:
    service = SERVICES[name]
    assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert ".env.broker" in _env_files(service)
    environment = _environment(service)
    user = SERVICES["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_USER"]
    assert environment["CELERY_BROKER_URL"] == f"amqp://{user}@rabbitmq:5672//"
    # The settings accept it with the password of .env.broker (as the template names it).
    password = _file_assignments(ENV_FILES[".env.broker"], commented=False)
    assert set(password) == {"STREAMCTL_BROKER_PASSWORD"}
    settings = load_settings(
        redis_url=environment["REDIS_URL"],
        celery_broker_url=environment["CELERY_BROKER_URL"],
        broker_password="a-long-random-password",
    )
    assert settings.broker_url.startswith(f"amqp://{user}:")
    assert settings.broker_url.endswith("@rabbitmq:5672//")


def test_the_demo_needs_no_broker_password() -> None:
    for name, service in _app_services().items():
        if service.get("profiles") == ["demo"]:
            assert "rabbitmq" not in service.get("depends_on", {}), name
            assert "CELERY_BROKER_URL" not in _environment(service), name


def test_the_worker_can_be_scaled() -> None:
    worker = SERVICES["worker"]
    assert _subcommand(worker) == "worker"
    assert "container_name" not in worker and "ports" not in worker
    assert "profiles" not in worker
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_beat_and_flower_run_by_default() -> None:
    for name, subcommand in (("beat", "beat"), ("flower", "flower")):
        assert _subcommand(SERVICES[name]) == subcommand and "profiles" not in SERVICES[name]


def test_the_sandbox_runs_only_in_the_demo_profile() -> None:
    for name, service in _app_services().items():
        demo = service.get("profiles") == ["demo"]
        if _subcommand(service) == "sandbox":
            assert demo, f"{name}: the sandbox outside the demo profile"
        # Demo services see only the fake credentials; the others never see them.
        if demo:
            assert _env_files(service) == ["deploy/demo.env"], name
        else:
            assert "deploy/demo.env" not in _env_files(service), name
        mode = service.get("network_mode", "")
        if mode.startswith("service:"):
            assert SERVICES[mode.removeprefix("service:")].get("profiles") == service.get(
                "profiles"
            )


def test_the_image_never_contains_the_env_file() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "FROM python:3.11-slim" in dockerfile
    assert "RUN pip install ." in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored
