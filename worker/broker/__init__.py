"""The Celery app, its batch messages, and guards against kombu/Celery faults."""
