"""``streamctl flower``: Flower for this app, never left open to anyone by accident.

Flower's REST API enqueues jobs (``POST /api/task/async-apply/scaleengine.stream.close``) and
its pages show every worker and job, so it starts only when Flower's own authentication is
configured (basic auth or OAuth), or when ``--unauthenticated`` says on purpose that something
in front of it (an authenticating proxy, a private network) does that job.

Whether authentication is configured is read the way Flower itself reads its options
(``FLOWER_*`` environment variables, ``flowerconfig.py``, then the command line), so that the
check and Flower can never disagree.
"""

from __future__ import annotations

import sys

import click

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


class FlowerOptionError(click.UsageError):
    pass


def auth_configured(argv: list[str]) -> bool:
    """Whether Flower, started with ``argv``, would demand a login.

    Flower guards its pages and API when ``basic_auth`` or ``auth`` (the OAuth e-mail pattern)
    is set; an OAuth provider alone lets everyone in, so it does not count.
    """
    from flower.command import apply_env_options, apply_options
    from tornado.options import Error, options

    try:
        apply_env_options()
        apply_options("flower", argv)
    except (Error, ValueError) as exc:
        raise FlowerOptionError(f"bad Flower option: {exc}") from None
    return bool(options.basic_auth or options.auth)


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
    help="Start without authentication, on purpose (behind your own authenticating proxy).",
)
@click.pass_context
def flower(ctx: click.Context, unauthenticated: bool) -> None:
    """Start Flower for this app. Other options go to Flower, as --name=value (--port=5555)."""
    argv = list(ctx.args)
    if not auth_configured(argv) and not unauthenticated:
        click.echo(AUTH_HOWTO, err=True, nl=False)
        sys.exit(2)
    from worker.broker.app import app

    # Flower enqueues through the app's task registry: load the task modules the worker loads,
    # or async-apply would answer 404 for scaleengine.stream.close.
    app.loader.import_default_modules()
    sys.exit(app.start(["flower", *argv]) or 0)
