"""Every module or attribute named by a string rather than an import, in one place.

Celery finds its configuration, the task base class, its strategy and the task modules by
name; the worker command preloads modules by name before it forks. No import shows these
links, so they are written here once and ``tests/test_layers.py`` resolves each of them.

``CELERY_CONFIG`` is the one link of ``config/``: a module there may name nothing of
``worker/`` (it imports nothing of it), so the task modules are given to the app
(``Celery(include=...)``) rather than listed in ``config.celeryconfig``.
"""

from __future__ import annotations

#: Celery's configuration module (``app.config_from_object``).
CELERY_CONFIG = "config.celeryconfig"
#: The base class of every task the app registers (``Celery(task_cls=...)``).
TASK_CLASS = "worker.broker.guards.task_body:GuardedTask"
#: The strategy Celery builds each task's consumer with (``Task.Strategy``).
TASK_STRATEGY = "worker.broker.guards.task_body:checked"
#: The task modules a worker imports as it starts (``Celery(include=...)``): the entry points,
#: named by string so that nothing below imports them.
TASK_MODULES = ("tasks.close", "tasks.schedule")

#: Modules a Celery worker imports as it starts; a forking ``worker --processes`` loads them
#: once in the parent (measured: 34 MB private per process without, see worker.consume.processes).
#: Entry points like the task modules: the worker command imports them, nothing below does.
PRELOADED_FOR_WORKERS = (
    "billiard.pool",
    "celery.app.amqp",
    "celery.app.control",
    "celery.app.events",
    "celery.app.log",
    "celery.app.routes",
    "celery.apps.worker",
    "celery.backends.redis",
    "celery.bin.celery",
    "celery.concurrency.thread",
    "celery.events.dispatcher",
    "celery.worker.autoscale",
    "celery.worker.components",
    "celery.worker.consumer",
    "celery.worker.consumer.delayed_delivery",
    "celery.worker.strategy",
    "kombu.pidbox",
    "kombu.transport.redis",
    "worker.consume.janitor",
    "worker.consume.wiring",
    "worker.broker.guards.task_body",
)
