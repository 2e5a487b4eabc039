"""How every ``streamctl`` command ends on an error: a message on stderr, never a traceback.

One handler for every command: our own errors and bad values exit 2 with their message;
Redis unreachable exits 2 naming the URL (password masked) and keeping the cause; a port in
use exits 2 naming it; Ctrl-C exits 130; a closed stdout pipe (``| head``) is not an error.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from worker.errors import ConfigError, StreamctlError

F = TypeVar("F", bound=Callable[..., Any])

#: Exit status after Ctrl-C, as shells report a process ended by SIGINT.
EXIT_INTERRUPTED = 130
#: Exit status of a usage error, a bad value, or something unreachable.
EXIT_ERROR = 2

#: Every port option: a TCP port.
PORT = click.IntRange(1, 65535)


def redis_problem(exc: Exception) -> str:
    """A Redis failure in words: the URL (password masked) and the cause redis-py gave."""
    from config.settings import get_settings
    from config.urls import mask_url

    try:
        where = f" at {mask_url(get_settings().redis_url)}"
    except Exception:  # the settings themselves may be what is wrong; the cause still shows
        where = ""
    cause = str(exc).strip() or type(exc).__name__
    return f"Redis{where} (REDIS_URL) is unreachable: {cause}"


def from_dotenv(message: str) -> str:
    """The message, naming ``./.env`` for each variable it names that came from there.

    Settings read ``./.env`` below the environment: a variable named in the message that
    the environment lacks but ``./.env`` sets is where the bad value came from.
    """
    dotenv = Path(".env")
    try:
        lines = dotenv.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return message
    defined = {
        line.split("=", 1)[0].removeprefix("export ").strip()
        for line in lines
        if "=" in line and not line.lstrip().startswith("#")
    }
    named = dict.fromkeys(re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", message))
    sourced = [name for name in named if name in defined and name not in os.environ]
    if not sourced:
        return message
    return f"{message}\n  ({', '.join(sourced)}: set in ./.env)"


def silence_stdout() -> None:
    """After a closed pipe: send the rest of stdout nowhere, so exiting prints no complaint."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def emit(line: str) -> bool:
    """Print one line on stdout; False when the reader went away (``| head``): not an error."""
    try:
        click.echo(line)
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
        return False
    return True


def friendly_errors(command: F) -> F:
    """End ``command`` on any expected failure with a one-line message and its exit status."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            message = from_dotenv(str(exc))
        except StreamctlError as exc:
            message = str(exc)
        except redis.RedisError as exc:
            message = redis_problem(exc)
        except KeyboardInterrupt:
            click.echo("\nstreamctl: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            silence_stdout()
            sys.exit(0)
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
                raise
            message = f"cannot listen: {exc.strerror or exc}"
        click.echo(f"streamctl: {message}", err=True)
        sys.exit(EXIT_ERROR)

    return wrapper  # type: ignore[return-value]
