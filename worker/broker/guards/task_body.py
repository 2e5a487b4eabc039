"""The app's task base class: a malformed task message is discarded, never fatal.

Found by the fault suite (tests/faults/test_fault_bad_input.py), Celery 5.7: a message whose
body is not ``[args, kwargs, embed]`` (``["a", "b"]`` or ``5``, say) raises a ValueError or a
TypeError while Celery turns it into a request, outside the errors its consumer handles, and
the worker exits ("Unrecoverable error"). Given back to the queue, the same message then stops
the next worker. Checking the body's shape first and raising InvalidTaskError makes Celery log
and drop the message instead.

The guard is the strategy of the app's task base class (``Celery(task_cls=GuardedTask)``), not an
option of each task: every task the app registers gets it, Celery's own ``celery.*`` tasks and
any task added later included (tests/test_taskstrategy.py fails for a task without it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import InvalidTaskError
from celery.worker.strategy import default

from worker.broker import links


def check_body(payload: object, *, protocol: int = 2) -> None:
    """Raise InvalidTaskError unless ``payload`` has the shape of a task message body.

    Protocol 2 (the task named in the headers): ``[args, kwargs, embed]``; protocol 1 (the
    whole message in the body): a mapping with ``args`` and ``kwargs``. A mapping under
    protocol-2 headers is malformed: Celery would unpack it as three items and die of it.
    """
    if isinstance(payload, dict) and protocol == 1:
        args, kwargs, embed = payload.get("args", []), payload.get("kwargs", {}), None
    elif isinstance(payload, list | tuple) and len(payload) == 3:
        args, kwargs, embed = payload
    else:
        raise InvalidTaskError("malformed task message: the body must be [args, kwargs, embed]")
    if not (
        isinstance(args, list | tuple)
        and isinstance(kwargs, dict)
        and isinstance(embed, dict | None)
    ):
        raise InvalidTaskError("malformed task message: args must be a list, kwargs a mapping")


def checked(task: Any, app: Any, consumer: Any, **options: Any) -> Callable[..., Any]:
    """Celery's default strategy, behind a check of each message's body."""
    handle: Callable[..., Any] = default(task, app, consumer, **options)

    def on_message(message: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        # body is None for protocol 2: decoding it here raises DecodeError, which Celery handles.
        if body is None:
            check_body(message.payload, protocol=2)
        else:
            check_body(body, protocol=1)
        return handle(message, body, *args, **kwargs)

    return on_message


class GuardedTask(Task):  # type: ignore[misc]  # celery ships no type hints
    """Every task of the app: Celery's Task, its messages' bodies checked before use."""

    Strategy = links.TASK_STRATEGY
