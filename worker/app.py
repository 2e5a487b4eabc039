"""``celery -A worker.app``: the Celery app, defined in ``worker.broker.app``."""

from worker.broker.app import app as app
