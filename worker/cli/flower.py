"""``streamctl flower``: Flower for this app, never left open to anyone by accident.

Flower's REST API enqueues jobs (``POST /api/task/async-apply/scaleengine.stream.close``) and
its pages show every worker and job, so it starts only when Flower's own authentication is
configured (basic auth or OAuth), or when ``--unauthenticated`` says on purpose that something
in front of it (an authenticating proxy, a private network) does that job.

Whether authentication is configured is read the way Flower itself reads its options
(``FLOWER_*`` environment variables, ``flowerconfig.py``, then the command line), and checked
again on the very options Flower then serves with (a ``flowerconfig.py`` is code, and Flower
reads it a second time), so that the check and Flower can never disagree.

Every basic-auth entry must be ``user:password`` with both parts non-empty. Flower splits the
option at commas and compares the decoded ``Authorization`` header with each entry, so an empty
entry (``FLOWER_BASIC_AUTH=``, a trailing comma, ``--basic-auth=``) would let in anyone who
sends ``Basic !`` (which decodes to nothing), and ``ops:`` anyone who sends ``ops:``. An empty
``FLOWER_BASIC_AUTH`` counts as unset, as an empty variable does everywhere else in streamctl.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from worker.cli.errors import friendly_errors
from worker.errors import StreamctlError

#: Flower's address unless --address (or FLOWER_ADDRESS, flowerconfig.py) says otherwise.
LOOPBACK = "127.0.0.1"

AUTH_HOWTO = """\
streamctl flower: refusing to start without authentication: anyone who reaches Flower's port
could enqueue closes and see every worker and job. Configure one of:

  basic auth   export FLOWER_BASIC_AUTH='user:password'     (several: 'u1:p1,u2:p2')
               or pass --basic-auth=user:password
  OAuth        export FLOWER_AUTH='.*@example\\.com'         (the e-mail addresses let in)
                      FLOWER_AUTH_PROVIDER=flower.views.auth.GoogleAuth2LoginHandler
                      FLOWER_OAUTH2_KEY=...  FLOWER_OAUTH2_SECRET=...
                      FLOWER_OAUTH2_REDIRECT_URI=https://flower.example.com/login

or pass --unauthenticated to start it open on purpose (behind your own authenticating proxy).
"""


#: Where Flower's basic-auth entries come from, for the refusal messages.
BASIC_AUTH_SOURCES = "basic auth (FLOWER_BASIC_AUTH, --basic-auth or flowerconfig.py)"


class FlowerOptionError(StreamctlError):
    """A Flower option streamctl refuses to start with (exit status 2)."""


def basic_auth_problem(entries: Sequence[str] | None) -> str | None:
    """What is wrong with Flower's basic-auth entries; None when each is ``user:password``.

    The message names the entry by position, never by value: it holds a password.
    """
    for position, entry in enumerate(entries or (), start=1):
        user, colon, password = entry.partition(":")
        if not entry:
            problem = "is empty (an empty value, or a stray comma)"
        elif not colon:
            problem = "has no ':' (entries are user:password)"
        elif not user:
            problem = "has no user name before the ':'"
        elif not password:
            problem = "has no password after the ':'"
        else:
            continue
        return f"{BASIC_AUTH_SOURCES}: entry {position} of {len(entries or ())} {problem}"
    return None


def auth_configured(argv: list[str]) -> bool:
    """Whether Flower, started with ``argv``, would demand a login.

    Flower guards its pages and API when ``basic_auth`` or ``auth`` (the OAuth e-mail pattern)
    is set; an OAuth provider alone lets everyone in, so it does not count. Raises
    FlowerOptionError for an option Flower would reject, or a basic-auth entry that is not a
    ``user:password``.
    """
    from flower.command import apply_env_options, apply_options
    from tornado.options import Error, options

    if os.environ.get("FLOWER_BASIC_AUTH") == "":
        # Unset for Flower too (it runs in this process and reads the environment again).
        del os.environ["FLOWER_BASIC_AUTH"]
    try:
        apply_env_options()
        apply_options("flower", argv)
    except (Error, ValueError) as exc:
        raise FlowerOptionError(f"bad Flower option: {exc}") from None
    problem = basic_auth_problem(options.basic_auth)
    if problem is not None:
        raise FlowerOptionError(problem)
    return bool(options.basic_auth or options.auth)


def _check_the_options_flower_serves_with(unauthenticated: bool) -> None:
    """Check Flower's options again at the one point where they are final.

    Flower's command reads the environment, ``flowerconfig.py`` and its arguments once more,
    then builds its settings from them (``extract_settings``) and serves: the check runs there,
    on exactly what it will serve with. It exits 2, as the first check does.
    """
    import flower.command
    from tornado.options import options

    extract_settings = flower.command.extract_settings

    def checked_extract_settings() -> None:
        problem = basic_auth_problem(options.basic_auth)
        if problem is not None:
            refusal = f"streamctl flower: {problem}\n"
        elif not (options.basic_auth or options.auth or unauthenticated):
            refusal = AUTH_HOWTO
        else:
            extract_settings()
            return
        click.echo(refusal, err=True, nl=False)
        sys.exit(2)

    flower.command.extract_settings = checked_extract_settings


def join_option_values(argv: list[str]) -> list[str]:
    """``--port 5555`` as ``--port=5555``: Flower (tornado) reads only the ``=`` form.

    A ``--name`` that is one of Flower's options, not a flag, and followed by a value takes
    that value, as every other command line does.
    """
    import flower.command  # noqa: F401  (defines Flower's options)
    from tornado.options import options

    joined: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        name = arg[2:]
        takes_value = (
            arg.startswith("--")
            and "=" not in arg
            and name in options
            and not isinstance(getattr(options, name), bool)
        )
        if takes_value and index + 1 < len(argv) and not argv[index + 1].startswith("--"):
            joined.append(f"{arg}={argv[index + 1]}")
            index += 2
            continue
        joined.append(arg)
        index += 1
    return joined


@click.command(
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": ["-h", "--help"],
    }
)
@click.option(
    "--unauthenticated",
    is_flag=True,
    help="Start without authentication, pages and API open (behind your own proxy).",
)
@click.pass_context
@friendly_errors
def flower(ctx: click.Context, unauthenticated: bool) -> None:
    """Start Flower for this app (on 127.0.0.1 unless --address). Other options go to Flower."""
    from tornado.options import options

    argv = join_option_values(list(ctx.args))
    if not auth_configured(argv) and not unauthenticated:
        click.echo(AUTH_HOWTO, err=True, nl=False)
        sys.exit(2)
    if not options.address:
        # Flower listens on every interface by default while it prints 127.0.0.1.
        argv.append(f"--address={LOOPBACK}")
    if not 1 <= options.port <= 65535:
        raise FlowerOptionError(f"Flower's --port must be 1 to 65535, not {options.port}")
    if unauthenticated and not auth_configured(argv):
        # Flower answers its API with 401 unless this is set: --unauthenticated means open.
        os.environ.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
        click.echo(
            f"streamctl flower: no authentication: the pages and the API (which enqueues "
            f"closes) are open to anyone who reaches {options.address or LOOPBACK}:{options.port}",
            err=True,
        )
    from worker.broker.app import app

    # Flower enqueues through the app's task registry: load the task modules the worker loads,
    # or async-apply would answer 404 for scaleengine.stream.close.
    app.loader.import_default_modules()
    _check_the_options_flower_serves_with(unauthenticated)
    try:
        code = app.start(["flower", *argv])
    except OSError as exc:
        raise StreamctlError(
            f"flower: cannot listen on {options.address or LOOPBACK}:{options.port}: "
            f"{exc.strerror or exc} (pick another --port)"
        ) from None
    sys.exit(code or 0)
