"""How every ``streamctl`` command reports our own errors: the message and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from worker.errors import StreamctlError

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(command: F) -> F:
    """Our own errors end the command with their message and exit code 2, no traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except StreamctlError as exc:
            click.echo(f"streamctl: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
