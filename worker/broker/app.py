"""The Celery app. Configuration is loaded by string from ``config.celeryconfig``.

What a worker does as it starts (the Redis eviction check, metrics exporter, janitor, GC
tuning) is connected to the app's signals by ``worker.consume.boot``, which the task modules
import: the app itself stays importable by producers without pulling in the worker's side.
"""

from __future__ import annotations

from celery import Celery

from config.lanes import CLOSE_MANY_TASK, CLOSE_TASK
from worker.broker import client_reuse, links
from worker.broker.guards import kombu as kombu_guards

# Keeps a worker alive through a Redis restart (see worker.broker.guards.kombu).
kombu_guards.install()
# One redis-py client per channel, not one per publish and ack (see worker.broker.client_reuse).
client_reuse.install()
# The base class of every task the app registers: a malformed message is dropped, not fatal.
# The task modules a worker imports as it starts: config/ may not name them (worker.broker.links).
app = Celery("streamctl", task_cls=links.TASK_CLASS, include=links.TASK_MODULES)
app.config_from_object(links.CELERY_CONFIG)

__all__ = ["CLOSE_MANY_TASK", "CLOSE_TASK", "app"]
