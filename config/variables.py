"""How the settings' fields and their environment variables name each other.

Every message about a setting names the variable the user sets (``STREAMCTL_RATE_LIMIT``,
``REDIS_URL``), never the Python field; ``overrides`` goes the other way, for code that holds
variables to build settings from without writing them into ``os.environ``.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import AliasChoices, BaseModel, ValidationError

from config.errors import ConfigError

PREFIX = "STREAMCTL_"


def bare(name: str) -> AliasChoices:
    """Read a field from an environment variable without the STREAMCTL_ prefix."""
    return AliasChoices(name)


def variable_name(model: type[BaseModel], field: str) -> str:
    """The environment variable of ``model``'s ``field``."""
    if field.isupper():  # pydantic reports a field read through an alias by that alias
        return field
    info = model.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{PREFIX}{field.upper()}" if field else "settings"


def overrides(variables: Mapping[str, str | None]) -> dict[str, str | None]:
    """Keyword arguments for ``load_settings`` from environment variable names and values.

    A bare name (``REDIS_URL``) is its field's alias and passes as it is; a ``STREAMCTL_``
    name becomes its field's name.
    """
    return {
        name.removeprefix(PREFIX).lower() if name.startswith(PREFIX) else name: value
        for name, value in variables.items()
    }


def config_error(model: type[BaseModel], exc: ValidationError) -> ConfigError:
    """A ConfigError naming each bad variable; values are never echoed (one may be a secret)."""
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{variable_name(model, field)}: {message}" if field else message)
    return ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
