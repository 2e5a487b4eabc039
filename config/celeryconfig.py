"""Celery's configuration, loaded by string (``app.config_from_object("config.celeryconfig")``).

Every value comes from the one settings object; nothing here is a second source of a fact.
"""

from __future__ import annotations

from config import lanes as _lanes
from config.brokers import broker_transport_options as _broker_transport_options
from config.brokers import declare_queue as _declare_queue
from config.settings import get_settings as _get_settings
from config.urls import celery_url, is_sentinel

_settings = _get_settings()

broker_url = celery_url(_settings.broker_url)
result_backend = celery_url(_settings.redis_url)
# TLS verified, always (config.tls): kombu alone would not check a rediss:// certificate.
broker_use_ssl = _settings.broker_ssl or False
redis_backend_use_ssl = _settings.redis_ssl or {}
# Per broker (config.brokers): RabbitMQ publishes with confirms; Redis has its visibility
# timeout (live workers renew their held messages' claims, worker.consume.renewer).
broker_transport_options: dict[str, object] = _broker_transport_options(_settings)
result_backend_transport_options: dict[str, object] = {"retry_policy": {"timeout": 5.0}}
# Sentinel (sentinel://...): kombu and the result backend ask the sentinels for the master.
if is_sentinel(_settings.broker_url):
    broker_transport_options["master_name"] = _settings.sentinel_master
if is_sentinel(_settings.redis_url):
    result_backend_transport_options["master_name"] = _settings.sentinel_master
broker_connection_retry_on_startup = True

# JSON only: a pickle from the broker would be code execution.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# At least once: a job is acknowledged after it ran, and given back if its worker dies. Set
# here for every task, and nowhere else (tests/test_links.py).
task_acks_late = True
task_reject_on_worker_lost = True
# One message running and one waiting per thread: a thread that finishes takes the waiting one
# at once instead of waiting for the consumer's next round trip to the broker, which at the
# end of a batch (single-job messages, see worker.broker.messages) left up to half the threads idle
# (benchmarks/run.py). A waiting message ages toward its expiry by one message's run at most.
worker_prefetch_multiplier = 2
result_expires = _settings.result_ttl
# One result backend object for the process, not one per thread: Celery's trace builds it on a
# thread's first task (a Redis client, its pool, a package-metadata lookup), so -c 1000 made a
# thousand. redis-py's pool is thread-safe (and greenlet-safe under gevent).
result_backend_thread_safe = True

# Flower: workers send task events, producers send sent-events.
worker_send_task_events = True
task_send_sent_event = True

# The task modules are given to the app (worker.broker.links.TASK_MODULES): config/ names
# nothing of worker/ or tasks/.
# The lanes' queues (config.lanes), declared here and nowhere else, each as its broker should
# hold it (config.brokers: a quorum queue on RabbitMQ). Each task goes to its default lane's
# queue (``celery call``, Flower's apply); producers name a queue for another lane. Anything
# unrouted goes to the pre-lane queue, which workers still consume.
task_queues = [_declare_queue(name, _settings) for name in _lanes.CONSUMED_QUEUES]
task_routes = {
    task: {"queue": _lanes.queue_for(lane), "routing_key": _lanes.queue_for(lane)}
    for task, lane in _lanes.TASK_LANES.items()
}
task_default_queue = _lanes.LEGACY_QUEUE
# Messages survive a broker restart (Celery's default, stated here because it is relied on).
task_default_delivery_mode = "persistent"
worker_hijack_root_logger = False
