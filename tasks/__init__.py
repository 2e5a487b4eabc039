"""The Celery tasks, imported by every worker as it starts (``config.celeryconfig``'s ``imports``).

Importing them connects the worker's start hooks (``worker.consume.boot``): the broker app does
not import the worker's side, and a worker always imports its tasks before ``worker_init``.
"""

import worker.consume.boot  # noqa: F401
