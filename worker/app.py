"""The Celery app. Configuration is loaded by string from ``config.celeryconfig``."""

from __future__ import annotations

from celery import Celery

app = Celery("streamctl")
app.config_from_object("config.celeryconfig")

#: The stable task name; producers in any language enqueue by it.
CLOSE_TASK = "scaleengine.stream.close"
